"""Processes: stopping `carseg batch` (SIGINT, SIGTERM, or killing its process group), while Ray
starts or while it works, stops every worker it started; a stop that does not end the job kills
it after a grace time, or at a second signal; `carseg serve` stops cleanly on SIGINT and
SIGTERM. Ray's processes are found by the session folder each run makes, so other Ray users of
the machine do not count."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import copy_photos
from PIL import Image

pytest.importorskip("ray", reason="the `scale` extra (ray) is not installed")
import psutil  # noqa: E402  (ray's own dependency)

CARSEG = Path(sys.executable).parent / "carseg"


def _ray_processes(tmp: Path) -> list[psutil.Process]:
    """Ray's processes whose command line names this test's temporary folder."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(tmp) in arg for arg in p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _wait_gone(tmp: Path, seconds: float = 60.0) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    left = _ray_processes(tmp)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _ray_processes(tmp)
    return left


def _start(cmd: list[str], tmp: Path) -> subprocess.Popen:
    env = dict(os.environ, RAY_TMPDIR=str(tmp))  # Ray's session folder: ours to find
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _wait_for(cond, proc: subprocess.Popen, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


def _interrupted(proc: subprocess.Popen, output: str, report: Path) -> None:
    """What a stop by SIGINT or SIGTERM leaves, whenever it comes: carseg's own exit (not Ray's
    handlers' 15 or an abort) and message, and the report saying why the job ended."""
    assert proc.returncode == 130, output[-3000:]
    assert "carseg batch: interrupted" in output
    assert "Traceback" not in output
    error = json.loads(report.read_text())["error"]
    assert error.startswith("KeyboardInterrupt: SIG"), error


@pytest.mark.slow
@pytest.mark.parametrize(("how", "when"), [("SIGINT", "starting"), ("SIGTERM", "starting"),
                                           ("SIGTERM", "working"), ("killpg", "working")])
def test_stopping_carseg_batch_stops_every_worker(how: str, when: str, tiny_data: Path,
                                                  tiny_artifacts: Path, tmp_path: Path) -> None:
    """`starting`: as soon as Ray's first processes are up, while ray.init still runs (where
    Ray's own handlers used to take the signal); `working`: once the first outputs are
    written, photos still to do."""
    ray_tmp = Path("/tmp") / f"rt{os.getpid()}{how[-3:]}{when[0]}"  # short: Ray's socket paths
    photos = copy_photos(tiny_data, tmp_path / "photos", 24)
    if when == "working":  # enough photos that the job is still running when it is stopped
        for p in sorted(photos.glob("*.jpg")):
            for i in range(40):
                shutil.copy(p, photos / f"{p.stem}_{i}.jpg")
    out, report = tmp_path / "out", tmp_path / "report.json"
    proc = _start([str(CARSEG), "batch", str(photos), "--model", str(tiny_artifacts),
                   "--output", str(out), "--batch-size", "1", "--workers", "1",
                   "--report", str(report)], ray_tmp)
    try:
        if when == "starting":
            _wait_for(lambda: len(_ray_processes(ray_tmp)) >= 2, proc)
        else:
            _wait_for(lambda: any(out.glob("*_mask.png")), proc)
        if how == "killpg":
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group, as a shell's kill does
        else:
            proc.send_signal(getattr(signal, how))
        output, _ = proc.communicate(timeout=120)
        assert not _wait_gone(ray_tmp), "Ray processes outlived carseg batch"
        if how == "killpg":
            assert proc.returncode == -signal.SIGKILL
        else:
            _interrupted(proc, output, report)
        if when == "working":  # stopped before the end, and what it wrote is whole
            masks = sorted(out.glob("*_mask.png"))
            assert 0 < len(masks) < 24 * 41
            for m in masks:
                with Image.open(m) as im:
                    im.load()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in _ray_processes(ray_tmp):
            p.kill()


_STUBBORN = """
import subprocess, sys, time
from carseg.apps._ray import stop_on_signals
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         stdout=subprocess.DEVNULL)  # its end is not the test's EOF
stop_on_signals(grace_s=float(sys.argv[1]))
told = False
while True:
    try:
        if not told:  # inside the try: a signal right after the line is caught too
            told = True
            print(child.pid, flush=True)
        time.sleep(600)
    except KeyboardInterrupt:
        print("caught", flush=True)  # and carried on, as code run in the main thread may do
"""


def _line(proc: subprocess.Popen, seconds: float = 60.0) -> str:
    """The next line `proc` prints (read a byte at a time: nothing waits in a buffer that
    select cannot see); what it said on stderr if none comes in `seconds`."""
    deadline, line = time.monotonic() + seconds, b""
    fd = proc.stdout.fileno()
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        byte = os.read(fd, 1) if ready else b""
        if not byte:
            proc.kill()
            pytest.fail(f"no line from the process in {seconds:g} s (got {line!r}): "
                        f"{proc.communicate()[1]}")
        line += byte
    return line.decode()


@contextmanager
def _stubborn(grace_s: float) -> Iterator[tuple[subprocess.Popen, int]]:
    """A process that swallows the KeyboardInterrupt of stop_on_signals, with a child of its
    own (as a job's Ray node), and the child's pid; both killed on the way out if alive."""
    proc = subprocess.Popen([sys.executable, "-c", _STUBBORN, str(grace_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=0, start_new_session=True)
    child = int(_line(proc))
    try:
        yield proc, child
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if not _gone(child):
            os.kill(child, signal.SIGKILL)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_stop_that_does_not_end_the_job_kills_it_after_the_grace_time() -> None:
    with _stubborn(2.0) as (proc, child):
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert _line(proc) == "caught\n"
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert time.monotonic() - t0 >= 2.0, "killed before its grace time"
        assert "still running 2 s after SIGTERM; killing the 1 process(es) it started" in err
        assert _gone(child), "the job's own process outlived it"


def test_a_second_signal_while_stopping_kills_at_once() -> None:
    with _stubborn(600.0) as (proc, child):
        proc.send_signal(signal.SIGINT)
        assert _line(proc) == "caught\n"  # stopping, and stuck
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # not the 600 s of grace
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "SIGTERM while stopping after SIGINT; killing the 1 process(es) it started" in err
        assert _gone(child)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_carseg_serve_stops_cleanly(sig: str, tiny_artifacts: Path) -> None:
    ray_tmp = Path("/tmp") / f"rs{os.getpid()}{sig[-3:]}"
    port = _free_port()
    proc = _start([str(CARSEG), "serve", "--model", str(tiny_artifacts), "--port", str(port)],
                  ray_tmp)
    try:
        _wait_for(lambda: _answers(port), proc)
        proc.send_signal(getattr(signal, sig))
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output[-3000:]
        assert "shutting down" in output
        assert not _wait_gone(ray_tmp), "Ray processes outlived carseg serve"
        assert not _answers(port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in _ray_processes(ray_tmp):
            p.kill()
