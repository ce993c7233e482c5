"""Every error a user can cause, with a message that says what to do.

The CLI turns an :class:`EdgeTLError` into one line on stderr and a non-zero exit;
anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "EdgeTLError",
    "ConfigError",
    "DataError",
    "RunDirError",
    "BackboneError",
    "ExportMismatchError",
    "QuantizationError",
    "BundleError",
    "TargetError",
    "RuntimeUnavailableError",
    "RetrainError",
    "NonConformingError",
    "StageError",
]


class EdgeTLError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what the CLI returns."""

    exit_code = 2


class ConfigError(EdgeTLError, ValueError):
    """An option has a bad value (wrong type, out of range, unknown choice)."""


class DataError(EdgeTLError):
    """An image folder is missing, empty, has too few classes, or holds unreadable files."""


class RunDirError(EdgeTLError):
    """A RUN directory is missing, incomplete, or from a stage not yet run."""


class BackboneError(EdgeTLError):
    """A backbone name is unknown or its weights cannot be loaded."""


class ExportMismatchError(EdgeTLError):
    """An exported model disagrees with PyTorch; ``failures`` lists every check that failed."""

    def __init__(self, failures: list[str]):
        self.failures = list(failures)
        super().__init__(
            f"export validation failed ({len(self.failures)} check(s)): "
            + "; ".join(self.failures)
            + " (re-export with another --exporter or --opset, or pass --no-validate to keep it anyway)"
        )


class QuantizationError(EdgeTLError):
    """int8 quantization could not meet its accuracy budget or its inputs are missing."""


class BundleError(EdgeTLError):
    """A bundle is missing, tampered with, of an unknown format, or cannot be updated."""


class TargetError(EdgeTLError):
    """A deployment target is unknown or its file does not match the schema."""


class RuntimeUnavailableError(EdgeTLError):
    """The inference runtime a target needs is not installed here."""


class RetrainError(EdgeTLError):
    """On-device retraining or adaptation was refused; the bundle is unchanged."""


class NonConformingError(BundleError):
    """A bundle's backbone gives other answers on this CPU and runtime than the ones it was
    validated with (its conformance set): e.g. int8 that saturates on a CPU without VNNI."""

    exit_code = 3


class StageError(EdgeTLError):
    """``edgetl build`` stopped at a stage; ``stage`` names it, ``cause`` is the original error."""

    def __init__(self, stage: str, index: int, total: int, cause: EdgeTLError):
        self.stage, self.cause = stage, cause
        self.exit_code = cause.exit_code
        super().__init__(f"build stopped at stage {index}/{total} ({stage}): {cause}")
