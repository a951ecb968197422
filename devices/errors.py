"""The error hierarchy shared by the device side and the workstation toolkit.

Every error names the offending value and says how to fix it, so that the CLI can print it as is.
"""

from __future__ import annotations


class EdgesightError(Exception):
    """Base class: a problem the user can fix. ``fix`` says how."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}" if fix else problem)


class ConfigError(EdgesightError):
    """A setting the user wrote is invalid."""


class DataError(EdgesightError):
    """An image or annotation file cannot be used (names the file, and the line where there is one)."""


class ModelFileError(EdgesightError):
    """A weights, model or bundle file is missing, truncated, tampered with or of the wrong kind."""


class MissingDependencyError(EdgesightError):
    """An optional package is not installed; names the package and the extra that brings it."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the package '{package}', which is not installed",
            f"pip install 'edgesight[{extra}]'  (or: pip install {package})",
        )


class FrameError(DataError, ValueError):
    """A frame is not a BGR uint8 image (e.g. ``None`` from ``cv2.imread``); the daemon counts and skips it."""


class SourceError(EdgesightError):
    """A camera or video source failed to open or stopped delivering frames."""


class CalibrationError(EdgesightError):
    """The calibration set is unusable for INT8 quantization."""


class AccuracyGateError(EdgesightError):
    """An exported model lost more accuracy than allowed."""


def require(module: str, extra: str, purpose: str):
    """Import an optional module or raise MissingDependencyError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from exc
