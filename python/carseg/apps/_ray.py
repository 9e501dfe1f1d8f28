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


def stop_on_signals() -> None:
    """SIGINT and SIGTERM both become KeyboardInterrupt in the main thread, so that an app's
    `finally` shuts Ray (and Serve) down either way: a shell starts background jobs with SIGINT
    ignored, and `kill` sends SIGTERM, whose default would end the process at once and leave
    Ray's processes behind."""
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
