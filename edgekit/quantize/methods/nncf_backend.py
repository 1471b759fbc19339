"""NNCF post-training quantization (OpenVINO's ``nncf``, ONNX backend) as a second int8 backend beside
``onnxruntime.quantization``.

What NNCF adds over onnxruntime's quantizer, read from its source (nncf/quantization/algorithms):
* bias correction after quantization (``fast_bias_correction``: per-layer mean shift of the int8
  output against float on the calibration set, folded into the bias; ``False`` runs the slower
  layer-by-layer ``BiasCorrection``). This is the bias correction of Nagel et al. 2019 (section
  4.2), measured instead of derived from BatchNorm statistics, which are folded away in ONNX;
* SmoothQuant (``model_type=transformer`` with a ``smooth_quant`` alpha): activation outliers moved
  into the weights per input channel before static int8 (Xiao et al. 2023), with an ONNX backend;
* its own quantizer placement (hardware config patterns: Conv+Relu, residual Adds) and
  ``overflow_fix`` (7-bit weights where an int8 kernel without VNNI could saturate 16-bit sums).

Everything NNCF writes is standard QDQ (QuantizeLinear/DequantizeLinear), so the model runs where
edgekit's static QDQ runs. ``nncf`` is optional (``pip install edgekit[nncf]``); a missing package
is a QuantizationError naming the extra, never an ImportError traceback.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from ...errors import QuantizationError
from ...optimize import quiet

EXTRA = "nncf"


def available() -> bool:
    try:
        import nncf  # noqa: F401
    except Exception:
        return False
    return True


def _nncf():
    # NNCF stubs its usage telemetry (openvino-telemetry) when this is set: a build never phones home.
    os.environ.setdefault("NNCF_CI", "1")
    try:
        import nncf
    except Exception as exc:  # ImportError, or nncf failing on an unsupported torch/onnx version
        raise QuantizationError(f"NNCF is not usable here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                f"install it with: pip install 'edgekit[{EXTRA}]'") from None
    return nncf


def recipe(preset: str = "performance", transformer: bool = False, fast_bias_correction: bool = True,
           smooth_quant_alpha: Optional[float] = None, overflow_fix: Optional[str] = None,
           ignored: Sequence[str] = (), subset_size: int = 300) -> Dict[str, Any]:
    """The recipe, as the manifest records it (plain JSON values)."""
    return {"backend": "nncf", "preset": preset, "model_type": "transformer" if transformer else None,
            "fast_bias_correction": fast_bias_correction, "smooth_quant_alpha": smooth_quant_alpha,
            "overflow_fix": overflow_fix, "ignored_nodes": sorted(ignored), "subset_size": subset_size}


def _advanced(nncf, rec: Dict[str, Any]):
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                       AdvancedSmoothQuantParameters, OverflowFix)

    kw: Dict[str, Any] = {}
    if rec.get("overflow_fix"):  # None: NNCF's own default
        kw["overflow_fix"] = OverflowFix(rec["overflow_fix"])
    alpha = rec.get("smooth_quant_alpha")
    if rec.get("model_type") == "transformer" and alpha is not None:
        # None keeps NNCF's default (SmoothQuant on MatMuls for transformers); -1 disables it
        kw["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=float(alpha), convolution=-1.0)
    return AdvancedQuantizationParameters(**kw)


def _common(nncf, rec: Dict[str, Any]) -> Dict[str, Any]:
    kw: Dict[str, Any] = {
        "preset": getattr(nncf.QuantizationPreset, str(rec["preset"]).upper()),
        "subset_size": int(rec["subset_size"]),
        "fast_bias_correction": bool(rec["fast_bias_correction"]),
    }
    if rec.get("model_type") == "transformer":
        kw["model_type"] = nncf.ModelType.TRANSFORMER
    if rec.get("ignored_nodes"):
        kw["ignored_scope"] = nncf.IgnoredScope(names=list(rec["ignored_nodes"]), validate=False)
    return kw


def build_nncf(model_path: Path, out_path: Path, calibration: List[Dict[str, np.ndarray]],
               rec: Dict[str, Any]) -> Path:
    """NNCF PTQ of ``model_path`` with ``rec`` (see ``recipe``); writes ``out_path``."""
    import onnx

    nncf = _nncf()
    if not calibration:
        raise QuantizationError("NNCF quantization needs calibration samples; none were given")
    model = onnx.load(str(model_path))
    try:
        with quiet():  # NNCF draws progress bars; only the CLI may talk to the user
            q = nncf.quantize(model, nncf.Dataset(list(calibration)), advanced_parameters=_advanced(nncf, rec),
                              **_common(nncf, rec))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantizationError(f"NNCF quantization failed: {first}") from None
    onnx.save(q, str(out_path))
    return out_path


def build_nncf_accuracy_control(model_path: Path, out_path: Path, calibration: List[Dict[str, np.ndarray]],
                                validation: List[Dict[str, np.ndarray]],
                                validate: Callable[[Any, Iterable[Any]], float], max_drop: float,
                                rec: Dict[str, Any]) -> Path:
    """``nncf.quantize_with_accuracy_control``: NNCF's own revert-until-within-``max_drop`` loop, used
    as an anchor (``validate(model, items)`` returns the metric, higher better)."""
    import onnx

    nncf = _nncf()
    model = onnx.load(str(model_path))
    try:
        with quiet():
            q = nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(list(calibration)), nncf.Dataset(list(validation)), validation_fn=validate,
                max_drop=max_drop, advanced_quantization_parameters=_advanced(nncf, rec), **_common(nncf, rec))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantizationError(f"NNCF accuracy-control quantization failed: {first}") from None
    onnx.save(q, str(out_path))
    return out_path
