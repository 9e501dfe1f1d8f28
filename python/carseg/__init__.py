"""carseg: car segmentation from a Catalyst config to a fast C++ service."""

from __future__ import annotations

from carseg.errors import CarsegError, ConfigError, DataError

__version__ = "0.1.0"

__all__ = ["CarsegError", "ConfigError", "DataError", "__version__"]
