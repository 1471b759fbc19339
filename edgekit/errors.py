"""The one error hierarchy. Only ``edgekit.cli`` turns these into output and exit codes."""
from __future__ import annotations

from typing import Any, Optional


class EdgekitError(Exception):
    """A failure the user can act on: one clear line, an optional hint, an exit code."""

    exit_code = 1

    def __init__(self, message: str, hint: Optional[str] = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        return self.message


class ConfigError(EdgekitError):
    """edgekit.toml (or another user-supplied file) is malformed or inconsistent."""

    exit_code = 2


class TargetError(EdgekitError):
    """Unknown target name or an invalid target profile file."""

    exit_code = 3


class ExportError(EdgekitError):
    """The model could not be exported to ONNX, or the export disagrees with the framework."""

    exit_code = 4


class QuantizationError(EdgekitError):
    """Calibration or quantization failed."""

    exit_code = 5


class AccuracyError(EdgekitError):
    """A metric missed its threshold (on the host or on the device)."""

    exit_code = 6


class DeployError(EdgekitError):
    """Copying or switching a release on a device failed. The previous release stays current."""

    exit_code = 7


class DeviceError(EdgekitError):
    """The device (or the runner on it) failed or could not be reached."""

    exit_code = 8


class FleetError(DeployError):
    """Some devices of a fleet operation failed; ``results`` keeps every device's outcome."""

    def __init__(self, message: str, results: Any, hint: Optional[str] = None) -> None:
        super().__init__(message, hint)
        self.results = results
