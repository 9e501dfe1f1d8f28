"""Exceptions raised by carseg's library code; only the CLIs turn them into messages."""

from __future__ import annotations


class CarsegError(RuntimeError):
    """A failure carseg can explain: the message names the file and the reason."""


class DataError(CarsegError, ValueError):
    """A data file or data set is unusable (missing, corrupt, mismatched)."""


class ConfigError(CarsegError, ValueError):
    """A config or run folder is unusable (unknown key, missing section, bad value)."""
