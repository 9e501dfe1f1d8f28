"""Ray for carseg's apps: the optional dependency's one check and hint, and the start and stop
of a local Ray that a signal cannot leave half done."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from carseg.errors import CarsegError

EXTRA_HINT = "install the `scale` extra: pip install 'carseg[scale]' (ray[serve,data])"

STOP_GRACE_S = 30.0
"""After SIGINT or SIGTERM, how long a job may take to shut Ray down before it is killed."""


def require_ray(what: str = "Ray") -> None:
    """Raise CarsegError with the install hint unless Ray Serve and Ray Data import."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise CarsegError(f"{what} is not installed ({e}); {EXTRA_HINT}") from None


_stopped_by: list[str] = []  # the signals stop_on_signals' handler has seen, this job
_watchdogs: list[threading.Timer] = []  # armed by a signal, disarmed when the job has stopped


def _force_exit(signum: int, why: str) -> None:
    """Kill every process this one started (Ray's node and its workers) and exit 128 + signum.
    Writes with os.write: the main thread may hold logging's or sys.stderr's lock."""
    import psutil

    children = psutil.Process().children(recursive=True)
    os.write(2, f"carseg: {why}; killing the {len(children)} process(es) it started\n".encode())
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=5)
    os._exit(128 + signum)


def stop_on_signals(*, fresh: bool = True, grace_s: float = STOP_GRACE_S) -> None:
    """SIGINT and SIGTERM both become KeyboardInterrupt in the main thread, so that an app's
    `finally` shuts Ray (and Serve) down either way: a shell starts background jobs with SIGINT
    ignored, and `kill` sends SIGTERM, whose default would end the process at once and leave
    Ray's processes behind. Ray's own code may catch that KeyboardInterrupt or hang in its
    shutdown, so a stop is also bounded: `grace_s` after the first signal, or at once on a
    second one, every process this one started is killed and it exits 128 + the signal.
    Call it before starting Ray and again after (ours again, whatever Ray's start installed),
    then raise_if_stopped(); local_ray does. `fresh` forgets the signals seen before (the
    first call of a job, not the second)."""
    if fresh:
        _stopped_by.clear()

    def stop(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if _stopped_by:
            _force_exit(signum, f"{name} while stopping after {_stopped_by[0]}")
        _stopped_by.append(name)
        watchdog = threading.Timer(grace_s, _force_exit, args=(
            signum, f"still running {grace_s:g} s after {name}"))
        watchdog.daemon = True
        _watchdogs.append(watchdog)
        watchdog.start()
        raise KeyboardInterrupt(name)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    # a process started with them blocked (a parent's thread can leave them so) never sees one
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _stop_handled(previous: tuple[Any, Any]) -> None:
    """The job has stopped (or ended): no watchdog, and SIGINT's and SIGTERM's handlers from
    before it (`previous`; None, one not set from Python, is the default)."""
    for watchdog in _watchdogs:
        watchdog.cancel()
    _watchdogs.clear()
    signal.signal(signal.SIGINT, previous[0] if previous[0] is not None else signal.SIG_DFL)
    signal.signal(signal.SIGTERM, previous[1] if previous[1] is not None else signal.SIG_DFL)


def raise_if_stopped() -> None:
    """KeyboardInterrupt if stop_on_signals' handler has seen a signal, even one whose own
    KeyboardInterrupt was caught by the code it interrupted."""
    if _stopped_by:
        raise KeyboardInterrupt(_stopped_by[0])


class _QuietOffMainThread(logging.Filter):
    """Ray's warning that it sets no SIGTERM handler off the main thread: that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set")


def _init_off_main_thread(init_kwargs: dict[str, Any], release: threading.Event) -> None:
    """ray.init in a thread of its own while the main thread waits, interruptibly.

    From the main thread, ray.init installs a SIGTERM handler of its own (sys.exit) and, with
    the driver's core worker, a crash handler that aborts on SIGTERM; a signal during the
    seconds Ray takes to start then ended the job with exit 15 or -6, or raised SystemExit
    inside Ray's start-up, after which the job could hang. Off the main thread Ray sets no
    SIGTERM handler, and Ray's RAY_DISABLE_FAILURE_SIGNAL_HANDLER switch (read from its
    constants when the driver connects; set here for the driver alone, its workers keep
    theirs) keeps the crash handler out, so the signal reaches stop_on_signals' handler here,
    in the wait. Ray must finish starting before it can be shut down, so a stop waits for it
    (the watchdog bounds the wait). The thread lives on until `release` is set, after
    ray.shutdown: Ray starts its node's processes with Linux's parent-death signal, which
    fires when the thread that started them ends."""
    import ray
    from ray._private import ray_constants

    failed: list[BaseException] = []
    done = threading.Event()

    def init() -> None:
        try:
            ray.init(**init_kwargs)
        except BaseException as e:  # handed to the main thread
            failed.append(e)
            return
        finally:
            done.set()
        release.wait()

    quiet = _QuietOffMainThread()
    worker_log = logging.getLogger("ray._private.worker")
    worker_log.addFilter(quiet)
    switch = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"
    crash_handler_off = getattr(ray_constants, switch, None)
    if crash_handler_off is not None:
        setattr(ray_constants, switch, True)
    try:
        threading.Thread(target=init, name="carseg-ray-init", daemon=True).start()
        try:
            while not done.wait(0.1):
                pass
        except KeyboardInterrupt:
            done.wait()
            raise
    finally:
        if crash_handler_off is not None:
            setattr(ray_constants, switch, crash_handler_off)
        worker_log.removeFilter(quiet)
    if failed:
        raise failed[0]


@contextmanager
def local_ray(*, handle_signals: bool, **init_kwargs: Any) -> Iterator[None]:
    """Ray for one job: started here (ray.init(**init_kwargs)) unless this process has one
    already, which is then left running; shut down on the way out, whatever ends the job.
    `handle_signals` (a CLI's, from the main thread): SIGINT and SIGTERM, at any moment until
    Ray is shut down, end the job with KeyboardInterrupt and a bounded stop (stop_on_signals);
    then the handlers from before are back and raise_if_stopped() still says if one came."""
    import ray

    started = False
    release = threading.Event()  # ends the thread that started Ray, once Ray is shut down
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    if handle_signals:
        stop_on_signals()  # a signal while Ray starts counts too
    try:
        if not ray.is_initialized():
            started = True  # before init: a stop inside it must still shut down what started
            if handle_signals:
                _init_off_main_thread(init_kwargs, release)
                stop_on_signals(fresh=False)  # ours again, whatever Ray's start installed
                raise_if_stopped()
            else:
                ray.init(**init_kwargs)
        yield
    finally:
        try:
            if started:
                ray.shutdown()
        finally:
            release.set()
            if handle_signals:
                _stop_handled(previous)
