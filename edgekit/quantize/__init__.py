"""Quantization per target profile: ISA-aware presets, calibration, accuracy-aware fallback, and a
choice between int8 (static QDQ, dynamic), FP16 and FP32 candidates.

Public contract (the build stage calls it)::

    quantize_for_target(model_path, work_dir, profile, calibration, validation, metric,
                        precision="auto", budget_s=300.0, seed=0, progress=None,
                        measure=None) -> QuantizeResult

Heavy libraries (onnx, onnxruntime) are imported inside the functions that use them.
"""
from __future__ import annotations

from .engine import quantize_for_target
from .result import Candidate, KeptFloat, QuantizeResult

__all__ = ["quantize_for_target", "QuantizeResult", "Candidate", "KeptFloat"]
