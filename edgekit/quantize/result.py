"""The value ``quantize_for_target`` returns; the build stores it (minus ``model_path``) in the manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from .registry import PrecisionName


class KeptFloat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str
    op_type: str
    reason: str


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    """e.g. ``int8-static-u8s8-rr-pc``, ``int8-dynamic``, ``fp16``, ``fp32``."""
    precision: PrecisionName
    method: str
    metric: Optional[Dict[str, float]] = None
    """MetricSpec.score on the validation feeds vs FP32 (None: could not run on this host)."""
    passed: Optional[bool] = None
    """Whether it met the threshold (a measurement, whatever else is decided about the candidate)."""
    refused: str = ""
    """Why it may not ship even though it met the threshold (too few int8 nodes left to pay for their
    Q/DQ, no quantized node at all, a built-in guard failed: "guard: <findings>"); empty when it may."""
    quantized_nodes: Optional[int] = None
    """int8 candidates: nodes that quantize or compute in int8 (QuantizeLinear, QLinear*, ...)."""
    p50_ms: Optional[float] = None
    """Host latency; a measurement, so it varies between builds (never hashed)."""
    size_bytes: int = 0
    kept_float: int = 0
    note: str = ""
    scored_at: str = ""
    """The onnxruntime level ``metric`` was computed at when it is not the runtime level: 'basic'
    (exact int8 arithmetic) for static int8 on a host whose int8 kernels are not the target's."""
    guard: Optional[Dict[str, Any]] = None
    """The built-in guards on every output (edgekit/device/guard.py): passed, findings naming the
    output and slice, per-output figures. None for FP32 (the reference itself) or when not run."""


class QuantizeResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: Path
    """The chosen ONNX file, inside work_dir (excluded from the manifest)."""
    target: str
    precision: PrecisionName
    method: str
    """``static-qdq``, ``static-qoperator``, ``dynamic``, ``fp16`` or ``fp32``."""
    preset: Dict[str, Any] = Field(default_factory=dict)
    """The chosen recipe: format, activation/weight types, per_channel, reduce_range, calibration
    method, symmetric flags, op types, onnxruntime extra_options. Empty for fp32."""
    kept_float: List[KeptFloat] = Field(default_factory=list)
    metric_before: Dict[str, float] = Field(default_factory=dict)
    """The first full int8 quantization with the profile's preset, before any fallback (for a
    float-only run: the chosen model's own score)."""
    metric_after: Dict[str, float] = Field(default_factory=dict)
    """The chosen model on the validation feeds vs the FP32 outputs."""
    latency_ms: Dict[str, Union[float, bool, str, None]] = Field(default_factory=dict)
    """{candidate name: host p50 ms, 'host_matches_target': bool, 'note': str}."""
    latency_pruning: Dict[str, Any] = Field(default_factory=dict)
    """{int8 candidate name: record of the latency pruning (issue #3 step 4)}: skipped and why, or per
    op-type group the host p50 ms quantized vs reverted to float and whether it was dropped. A
    measurement, so it varies between builds (never hashed); which nodes were dropped is in kept_float."""
    fallback_search: Dict[str, Any] = Field(default_factory=dict)
    """{int8 candidate name: how its float set was found}: how the nodes were ranked (in-memory
    reverts checked against real builds, or real builds and why), the noise floor, each strategy's
    float set size and score, and host timings where the host matches the target (varies between
    builds; which nodes stayed float is in kept_float)."""
    candidates: List[Candidate] = Field(default_factory=list)
    reason: str = ""
    runtime_graph_optimization: Literal["disabled", "basic", "extended", "all"] = "basic"
    """The session level the device must use for the chosen file: QDQ int8 is fused into
    QLinearMatMul/QLinearConv only at *extended* and above (at *basic* it runs slower than FP32)."""
    disabled_optimizers: List[str] = Field(default_factory=list)
    """onnxruntime graph transformers the device session must turn off (``presets.DISABLED_OPTIMIZERS``):
    the host scored the model without them, and with them nodes kept float would run int8."""
    family: str = "generic"
    calibration: Dict[str, Any] = Field(default_factory=dict)
    """Method, samples used, seed, and a digest of the calibration feeds."""
    seed: int = 0
    guard: Dict[str, Any] = Field(default_factory=dict)
    """The chosen candidate's guard report (see Candidate.guard)."""
    fp32_size_bytes: int = 0
    """The FP32 model this build would ship (the same prepared graph), for size ratios."""
    methods_skipped: Dict[str, str] = Field(default_factory=dict)
    """Quantization methods (edgekit/quantize/methods) that were due but not built, and why (NNCF not
    installed, budget spent, nothing to equalize...); empty when every due method ran or none was due."""
    reference_outputs: Any = Field(default=None, exclude=True, repr=False)
    """Every FP32 output per validation feed (sample-major), computed once by the engine: the build's
    reference.npz. Never serialized."""
    candidate_files: Dict[str, Path] = Field(default_factory=dict, exclude=True)
    """{candidate name: its file inside work_dir}, for on-device tuning (excluded from the manifest)."""
    candidate_extras: Dict[str, Dict[str, Any]] = Field(default_factory=dict, exclude=True)
    """{candidate name: its recipe ('preset'), kept_float and, for int8, a builder of group reverts
    ('variant')}, so tuning can ship another candidate and prune on the device (in memory only: never serialised)."""


QUANTIZED_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QGemm",
                           "QAttention", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})


def quantized_node_count(model_path: Path) -> int:
    """Nodes that quantize or compute in int8, subgraphs included: zero means the file is a float
    model whatever the method that produced it, and it must never be labelled int8."""
    import onnx

    def walk(graph: "onnx.GraphProto") -> int:  # type: ignore[name-defined]  # noqa: F821
        count = 0
        for node in graph.node:
            if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
                count += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    count += walk(attr.g)
                for g in attr.graphs:
                    count += walk(g)
        return count

    return walk(onnx.load(str(model_path), load_external_data=False).graph)
