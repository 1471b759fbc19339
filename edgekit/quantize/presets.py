"""ISA-aware quantization presets: what the target's int8 kernels want, as data.

The profile's ``[quantization]`` table is the source of truth (a target is a data file); this module
turns it into concrete onnxruntime arguments and adds the per-model-family choices (which op types
to quantize) that the profile cannot know. The reasoning, from onnxruntime's own guidance
(``quantize_static`` docstring and docs/performance/model-optimizations/quantization):

* x86 with VNNI (VPDPBUSD): u8 activations x s8 weights accumulate without saturation -> U8S8,
  per-channel, no reduce_range.
* x86 AVX2 without VNNI: the u8s8 kernel uses VPMADDUBSW, whose pairwise 16-bit sums can saturate;
  either 7-bit weights (reduce_range) or U8U8 (a widening kernel that cannot saturate). Both are
  tried; the profile lists U8U8 as a type candidate.
* ARM64 (SDOT/UDOT with asimddp): S8S8 and U8S8 run alike on recent cores; try both, keep the
  better (``type_candidates``).
* Jetson / TensorRT: symmetric S8S8 QDQ (zero point 0) is the only int8 form TensorRT imports;
  activations symmetric too. FP16 is a separate candidate.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from pydantic import BaseModel, ConfigDict, Field

from ..targets import TargetProfile

TRANSFORMER_OPS = ("MatMul", "Gemm")
"""Transformers on ORT CPU: only the weight GEMMs pay off. Quantizing Add/Softmax/LayerNorm/Gather
as the defaults do wraps cheap float ops in Q/DQ pairs (measured 0.5x FP32 speed on MiniLM)."""

CNN_OPS = ("Conv", "Gemm", "MatMul", "Add", "Mul", "Concat", "MaxPool", "AveragePool",
           "GlobalAveragePool", "Relu", "Clip", "Reshape", "Flatten", "Transpose", "Squeeze",
           "Unsqueeze", "Resize", "Pad", "Split", "Slice")
"""CNNs: keep tensors int8 between convolutions so ORT fuses QLinearConv chains (Relu/Clip fold into
the quantization range; Add/Concat/pools have QLinear kernels) instead of round-tripping to float."""

GENERIC_OPS = ("Conv", "Gemm", "MatMul")


class QuantPreset(BaseModel):
    """One concrete static-quantization recipe. Stored in the manifest as ``preset``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    format: str = "QDQ"
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False
    calibration_method: str = "MinMax"
    symmetric_activations: bool = False
    symmetric_weights: bool = True
    op_types: Tuple[str, ...] = GENERIC_OPS
    extra_options: Dict[str, Any] = Field(default_factory=dict)

    def summary(self) -> Dict[str, Any]:
        return self.model_dump(mode="json")

    def ort_kwargs(self) -> Dict[str, Any]:
        """Arguments for ``onnxruntime.quantization.quantize_static`` (calibration excluded)."""
        from onnxruntime.quantization import QuantFormat, QuantType

        extra: Dict[str, Any] = {
            "ActivationSymmetric": self.symmetric_activations,
            "WeightSymmetric": self.symmetric_weights,
        }
        extra.update(self.extra_options)
        return {
            "quant_format": QuantFormat.QDQ if self.format == "QDQ" else QuantFormat.QOperator,
            "op_types_to_quantize": list(self.op_types),
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "activation_type": getattr(QuantType, self.activation_type),
            "weight_type": getattr(QuantType, self.weight_type),
            "extra_options": extra,
        }


def model_family(op_counts: Dict[str, int]) -> str:
    """'transformer', 'cnn' or 'generic', from the op histogram of the prepared graph."""
    conv = op_counts.get("Conv", 0) + op_counts.get("ConvTranspose", 0)
    gemm = op_counts.get("MatMul", 0) + op_counts.get("Gemm", 0)
    attention_like = op_counts.get("Softmax", 0) + op_counts.get("LayerNormalization", 0)
    if conv and conv >= gemm:
        return "cnn"
    if gemm and attention_like:
        return "transformer"
    return "generic"


def _family_options(family: str, per_channel: bool) -> Tuple[Tuple[str, ...], Dict[str, Any]]:
    if family == "transformer":
        extra: Dict[str, Any] = {
            # Activation x activation MatMuls (Q.K^T, probs.V) carry softmax outputs and scores whose
            # range changes per input; static ranges hurt them most, and their FLOPs are small.
            "MatMulConstBOnly": True,
        }
        if per_channel:
            # A MatMul weight is [in, out], so its output channel is axis 1. ORT 1.32 defaults to 1
            # for MatMul too; stating it keeps the recipe explicit in the manifest.
            extra["QDQOpTypePerChannelSupportToAxis"] = {"MatMul": 1}
        return TRANSFORMER_OPS, extra
    if family == "cnn":
        return CNN_OPS, {}
    return GENERIC_OPS, {"MatMulConstBOnly": True}


def presets_for(profile: TargetProfile, family: str = "generic") -> List[QuantPreset]:
    """The static int8 presets to try for ``profile``, the profile's primary one first."""
    q = profile.quantization
    op_types, extra = _family_options(family, q.per_channel)
    pairs: List[Tuple[str, str]] = [(q.activation_type, q.weight_type)]
    pairs += [tuple(p) for p in q.type_candidates if tuple(p) not in pairs]  # type: ignore[misc]
    presets = []
    for act, wt in pairs:
        # reduce_range exists for the u8 x s8 VPMADDUBSW saturation; with u8 weights (U8U8) or s8
        # activations (S8S8) ORT takes kernels that do not saturate, and the 7-bit loss is wasted.
        reduce_range = q.reduce_range and act == "QUInt8" and wt == "QInt8"
        # TensorRT and ARM s8 kernels expect zero-point 0 on s8 activations.
        sym_act = q.symmetric_activations or (act == "QInt8" and profile.is_gpu)
        presets.append(QuantPreset(
            name=f"{'s' if act == 'QInt8' else 'u'}8{'s' if wt == 'QInt8' else 'u'}8"
                 + ("-rr" if reduce_range else "") + ("-pc" if q.per_channel else ""),
            format=q.format,
            activation_type=act,
            weight_type=wt,
            per_channel=q.per_channel,
            reduce_range=reduce_range,
            calibration_method=q.calibration_method,
            symmetric_activations=sym_act,
            symmetric_weights=q.symmetric_weights,
            op_types=op_types,
            extra_options=dict(extra),
        ))
    return presets


def dynamic_supported(profile: TargetProfile) -> bool:
    """Dynamic quantization (DynamicQuantizeLinear + MatMulInteger) is a CPU-EP feature; TensorRT
    only imports QDQ, so GPU targets never get a dynamic candidate."""
    return not profile.is_gpu


def runtime_level_for(method: str, profile: TargetProfile) -> str:
    """The session graph-optimization level the chosen file should run at on the device.

    Measured here (ORT 1.32, 2 threads, AVX2): QDQ int8 at *basic* runs DQ -> float op -> Q, slower
    than FP32 (MiniLM 0.75x); the QDQ -> QLinearMatMul/QLinearConv fusion is an *extended* rewrite,
    and the NHWC int8 conv layout (MobileNetV2: 2x over *extended*) and the NCHWc FP32 conv layout
    (FP32 MobileNetV2 1.5x over *basic*) are *all*-level. Those layout passes are hardware specific,
    which is why they must run in the device's own session rather than be baked in offline (see
    optimize.OFFLINE_LEVELS). So CPU targets run at *all*; GPU targets keep the profile's level
    (TensorRT consumes explicit QDQ and does its own fusion).
    """
    if profile.is_gpu:
        return profile.graph_optimization
    return "all"


DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)
"""Session graph transformers every host and device session of a quantized model turns off.

onnxruntime >= 1.20's ``WeightBiasQuantization`` (basic level and above) finds a float Conv/Gemm
between a per-tensor DQ and a Q, which is exactly what ``nodes_to_exclude`` leaves, and quantizes
its weights per-tensor at load time: a node the manifest says is kept float would run int8, and
worse than the int8 the quantizer would have given it (EfficientNet-Lite0, one excluded depthwise
conv: output error 0.14 without the pass, 0.51 with it). Quantized nodes already have DQ weights
and int32 biases, which the pass skips, so turning it off changes only the nodes kept float.
Older onnxruntime builds ignore names they do not know."""


def calibration_extra(preset: QuantPreset) -> Dict[str, Any]:
    """Calibrator options (``create_calibrator`` extra_options) matching the preset."""
    opts: Dict[str, Any] = {"symmetric": preset.symmetric_activations}
    if preset.calibration_method == "Percentile":
        opts["percentile"] = 99.999
    return opts


PRECISION_FLAGS = {"trt_int8_enable": "int8", "trt_fp16_enable": "fp16"}
"""TensorRT builder flags and the lowest precision each lets the engine use."""


def provider_options_for(profile: TargetProfile, precision: str) -> Dict[str, Dict[str, Any]]:
    """The profile's execution-provider options for a shipped artifact of ``precision``.

    TensorRT's precision flags let the engine builder pick lower-precision kernels than the model's
    own: ``trt_int8_enable`` on an FP16/FP32 model runs int8 that was never calibrated or checked, and
    ``trt_fp16_enable`` on an FP32 model (which ships only when FP16 missed the threshold) runs the
    precision that failed. So int8 stays only on int8 artifacts, fp16 on int8/fp16 ones.
    """
    from . import registry

    # a .tflite 'as-converted' artifact (no builder) or FP32 lets the engine use nothing lower
    allowed = registry.get(precision).engine_precisions if precision in registry.names() else frozenset()
    options: Dict[str, Dict[str, Any]] = {}
    for provider, opts in profile.runtime.provider_options.items():
        fixed = dict(opts)
        if provider == "TensorrtExecutionProvider":
            for flag, needs in PRECISION_FLAGS.items():
                if flag in fixed and needs not in allowed:
                    fixed[flag] = False
        options[provider] = fixed
    return options
