"""Errors that say what was wrong and where (file, field, index) instead of failing deep inside torch."""

from __future__ import annotations


class PointPeftError(Exception):
    """Base class of every error pointpeft raises on purpose."""


class ConfigError(PointPeftError, ValueError):
    """A config file or key is wrong: unknown key, bad value, malformed YAML, missing _base_."""


class InputError(PointPeftError, ValueError):
    """A tensor or sample has the wrong shape, dtype, size or contains NaN/inf."""


class DataError(PointPeftError, ValueError):
    """A data set root or file is missing, corrupt or in an unexpected layout."""


class CheckpointError(PointPeftError, ValueError):
    """A checkpoint or adapter file is not what it claims to be, or does not fit the model."""


class UnsafePickleError(PointPeftError, ValueError):
    """A pickle asked for something other than numpy arrays and builtins; it was refused and nothing ran."""
