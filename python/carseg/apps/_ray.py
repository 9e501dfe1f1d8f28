"""Ray is an optional dependency (the `scale` extra): one check and one hint for both apps."""

from __future__ import annotations

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
