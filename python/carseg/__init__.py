"""carseg: car segmentation from a Catalyst config to a fast C++ service."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from carseg import _compat
from carseg.errors import CarsegError, ConfigError, DataError

if TYPE_CHECKING:
    from carseg._native import Pipeline, Predictor

__version__ = "0.1.0"

__all__ = ["CarsegError", "ConfigError", "DataError", "Pipeline", "Predictor", "__version__"]

_compat.install()  # configs and logdirs that name carseg.runner, carseg.models, ...


def __getattr__(name: str) -> Any:
    """carseg.Predictor and carseg.Pipeline: the C++ core's, imported on first use.

    `import carseg` works where the C++ module is not built; only using them needs it.
    """
    if name in ("Predictor", "Pipeline"):
        import torch  # noqa: F401  # loads libtorch before the module that links against it

        try:
            from carseg import _native
        except ImportError as e:
            raise ImportError(
                f"carseg.{name} needs the C++ module carseg._native, which is not built or "
                f"not loadable here ({e}). Build it with `pip install --no-build-isolation -e .` "
                f"(CMake option CARSEG_BUILD_PYTHON=ON), or use "
                f"carseg.runtime.reference.ReferencePredictor") from e
        globals()[name] = getattr(_native, name)
        return globals()[name]
    raise AttributeError(f"module 'carseg' has no attribute {name!r}")
