"""carseg: car segmentation from a Catalyst config to a fast C++ service."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from carseg import _compat
from carseg.errors import CarsegError, ConfigError, DataError

if TYPE_CHECKING:
    from carseg._native import Predictor

__version__ = "0.1.0"

__all__ = ["CarsegError", "ConfigError", "DataError", "Predictor", "__version__"]

_compat.install()  # configs and logdirs that name carseg.runner, carseg.models, ...


def __getattr__(name: str) -> Any:
    """carseg.Predictor: the C++ core's predictor, imported on first use.

    `import carseg` works where the C++ module is not built; only using Predictor needs it.
    """
    if name == "Predictor":
        import torch  # noqa: F401  # loads libtorch before the module that links against it

        try:
            from carseg._native import Predictor
        except ImportError as e:
            raise ImportError(
                f"carseg.Predictor needs the C++ module carseg._native, which is not built or "
                f"not loadable here ({e}). Build it with `pip install --no-build-isolation -e .` "
                f"(CMake option CARSEG_BUILD_PYTHON=ON), or use "
                f"carseg.runtime.reference.ReferencePredictor") from e
        globals()["Predictor"] = Predictor
        return Predictor
    raise AttributeError(f"module 'carseg' has no attribute {name!r}")
