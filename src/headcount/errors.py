"""Errors headcount raises for input a user can fix.

Every class derives from both `HeadcountError` (so the CLI can report it as one line) and the
built-in exception a Python user would expect (`ValueError`, `TypeError`).
"""

from __future__ import annotations


class HeadcountError(Exception):
    """Base class of errors caused by the user's input, not by a bug in headcount."""


class ConfigError(HeadcountError, ValueError):
    """An impossible configuration: sizes that are not positive, heads that do not divide."""


class ShapeError(HeadcountError, ValueError):
    """A tensor whose shape does not fit the module or the other inputs."""


class DTypeError(HeadcountError, TypeError):
    """Tensors of different dtypes mixed in one call."""


class CacheOverflowError(HeadcountError, ValueError):
    """Appending to a KV cache past its preallocated length."""


class CheckpointError(HeadcountError, ValueError):
    """A checkpoint that is missing, truncated, corrupt, or of an unknown architecture."""


class OutputError(HeadcountError, ValueError):
    """An output folder headcount must not write: it holds other files or the model's own source."""


class MissingPackageError(HeadcountError, ImportError):
    """An optional package that a feature needs is not installed; the message says how to."""


class UnknownModelError(HeadcountError, LookupError):
    """A model name that is neither a file, an embedded default, nor a known preset."""
