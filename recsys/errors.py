"""One family of exceptions for recsys.

Every error a user can cause subclasses :class:`RecsysError`, and also the builtin
exception a Python user would expect (``ValueError`` for bad values, ``KeyError`` for
unknown ids), so ``except ValueError`` keeps working. Messages say what to do next.
"""

from __future__ import annotations


class RecsysError(Exception):
    """Base class of every error raised on purpose by recsys."""


class InputError(RecsysError, ValueError):
    """Bad input: a wrong argument, a malformed file, a missing column."""


class SchemaError(InputError):
    """An input table does not match the declared column mapping or types."""


class DataQualityError(InputError):
    """Too many rows were rejected by validation (threshold exceeded)."""


class ConfigError(InputError):
    """A configuration value is invalid or two settings contradict each other."""


class UnknownIdError(RecsysError, KeyError):
    """An external user or item id that the id map does not know."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class NotFittedError(RecsysError, AttributeError):
    """A model was queried before ``fit`` (or ``load``)."""


class BundleError(RecsysError, ValueError):
    """An artifact bundle is corrupted, incomplete or of an unknown version."""


class ClosedError(RecsysError, ValueError):
    """An object was used after ``close()`` (like a closed file: load it again)."""


class QualityGateError(RecsysError):
    """A quality gate (ANN recall, champion comparison) refused to publish."""


class LockError(RecsysError):
    """Another run holds the lock on the output directory."""


class TrackingError(RecsysError):
    """The MLflow tracking server cannot be reached or refused a request."""
