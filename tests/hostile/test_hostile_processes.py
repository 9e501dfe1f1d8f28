"""Processes: stopping `carseg batch` (SIGINT, SIGTERM, or killing its process group) stops every
worker it started, and `carseg serve` stops cleanly on SIGINT and SIGTERM. Ray's processes are
found by the session folder each run makes, so other Ray users of the machine do not count."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import copy_photos

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


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "killpg"])
def test_stopping_carseg_batch_stops_every_worker(how: str, tiny_data: Path,
                                                  tiny_artifacts: Path, tmp_path: Path) -> None:
    ray_tmp = Path("/tmp") / f"rt{os.getpid()}{how[-3:]}"  # short: Ray's socket paths
    photos = copy_photos(tiny_data, tmp_path / "photos", 24)
    out = tmp_path / "out"
    proc = _start([str(CARSEG), "batch", str(photos), "--model", str(tiny_artifacts),
                   "--output", str(out), "--batch-size", "1", "--workers", "1"], ray_tmp)
    try:
        _wait_for(lambda: len(_ray_processes(ray_tmp)) >= 2, proc)  # Ray is up and working
        if how == "killpg":
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group, as a shell's kill does
        else:
            proc.send_signal(getattr(signal, how))
        proc.communicate(timeout=120)
        assert not _wait_gone(ray_tmp), "Ray processes outlived carseg batch"
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in _ray_processes(ray_tmp):
            p.kill()


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
