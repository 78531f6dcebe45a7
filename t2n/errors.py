"""One error class per stage. Each carries a hint: the fix, shown on the same line by the CLI."""
from __future__ import annotations

__all__ = [
    "T2NError", "OptionError", "LoadError", "CompressionError", "TraceError",
    "UnsupportedOpsError", "TranslationError", "WriteError", "VerificationError",
]


class T2NError(Exception):
    """Base of every error t2n raises on purpose. ``str(err)`` is one line: problem, then fix."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class OptionError(T2NError, ValueError):
    """An export option has a bad value."""


class LoadError(T2NError):
    """The model or its example inputs could not be loaded."""


class CompressionError(T2NError):
    """A compression name, registry or function failed."""


class TraceError(T2NError):
    """torch.export could not capture the model."""


class UnsupportedOpsError(T2NError):
    """The graph holds ops that have no NNEF translator. ``missing`` lists all of them."""

    def __init__(self, message: str, hint: str | None = None, missing=()):
        super().__init__(message, hint)
        self.missing = list(missing)


class TranslationError(T2NError):
    """A translator met arguments it cannot express in NNEF."""


class WriteError(T2NError):
    """The bundle could not be written at the destination."""


class VerificationError(T2NError):
    """tract disagrees with torch beyond the tolerance, or failed to run the bundle."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, verification=None):
        super().__init__(message, hint)
        self.verification = verification
