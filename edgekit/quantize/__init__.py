"""Quantization per target profile: ISA-aware presets, calibration, accuracy-aware fallback, and a
choice between the registered candidates (``registry``: int8 static QDQ / dynamic, FP16, FP32, and
any precision a builder module or plugin adds).

Public contract (the build stage calls it)::

    quantize_for_target(model_path, work_dir, profile, calibration, validation, metric,
                        precision="auto", budget_s=300.0, seed=0, progress=None,
                        measure=None) -> QuantizeResult

Heavy libraries (onnx, onnxruntime) are imported inside the functions that use them. The names
below load lazily, so the light ``registry`` module can be imported by the targets schema and the
CLI without pulling in the engine.
"""
from __future__ import annotations

from typing import Any

__all__ = ["quantize_for_target", "QuantizeResult", "Candidate", "KeptFloat"]


def __getattr__(name: str) -> Any:
    if name == "quantize_for_target":
        from .engine import quantize_for_target

        return quantize_for_target
    if name in ("QuantizeResult", "Candidate", "KeptFloat"):
        from . import result

        return getattr(result, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
