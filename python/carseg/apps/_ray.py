"""Ray is an optional dependency (the `scale` extra): one check and one hint for both apps."""

from __future__ import annotations

import signal
from typing import Any

from carseg.errors import CarsegError

EXTRA_HINT = "install the `scale` extra: pip install 'carseg[scale]' (ray[serve,data])"


def require_ray(what: str = "Ray") -> None:
    """Raise CarsegError with the install hint unless Ray Serve and Ray Data import."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise CarsegError(f"{what} is not installed ({e}); {EXTRA_HINT}") from None


_stopped_by: list[str] = []  # the signals stop_on_signals' handler has seen, this process


def stop_on_signals(*, fresh: bool = True) -> None:
    """SIGINT and SIGTERM both become KeyboardInterrupt in the main thread, so that an app's
    `finally` shuts Ray (and Serve) down either way: a shell starts background jobs with SIGINT
    ignored, and `kill` sends SIGTERM, whose default would end the process at once and leave
    Ray's processes behind. Call it before ray.init (a signal during the start must count) and
    again after (ray.init installs its own SIGTERM handler), then raise_if_stopped(): a
    KeyboardInterrupt raised inside ray.init can be swallowed there, and the job would run on.
    `fresh` forgets the signals seen before (the first call of a job, not the second)."""
    if fresh:
        _stopped_by.clear()
    def stop(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        _stopped_by.append(name)
        raise KeyboardInterrupt(name)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def raise_if_stopped() -> None:
    """KeyboardInterrupt if stop_on_signals' handler has seen a signal, even one whose own
    KeyboardInterrupt was caught by the code it interrupted."""
    if _stopped_by:
        raise KeyboardInterrupt(_stopped_by[0])
