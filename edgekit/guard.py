"""Host side of the promotion guards: run a candidate on the validation set, judge every output with
the arithmetic the device uses (``edgekit/device/guard.py``), and keep Q/DQ off graph outputs.

A static QDQ model from onnxruntime's quantizer ends in ``Concat -> QuantizeLinear ->
DequantizeLinear -> output``: one per-tensor step for everything the output concatenates. On a
detector that is pixel boxes (hundreds) beside sigmoid scores ([0, 1]); a step of ~1.3 rounds every
score to 0 while cosine stays at 0.9999. ``float_graph_outputs`` removes those pairs, so outputs
are produced in float from their (separately quantized) inputs; the guards then check each slice,
and the build reverts the nodes nearest a failing output when they still fail.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .device import guard as arithmetic

MOVE_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
"""Ops that only move values: a Q/DQ pair in front of one that feeds an output still quantizes it."""
StreamPlan = Tuple[Tuple[Tuple[str, str], ...], Tuple[bool, ...]]
"""(state pairs, per-sample stream starts): MetricSpec.stream_plan."""


def all_outputs(session: Any, feeds: Sequence[Dict[str, np.ndarray]],
                stream: Optional[StreamPlan] = None) -> List[List[np.ndarray]]:
    """Every output of ``session`` per feed (sample-major, in the model's output order). With
    ``stream`` (MetricSpec.stream_plan) the feeds are chunks of streams whose state inputs carry the
    previous chunk's state outputs, as the metric's outputs and the device's are computed."""
    if not stream:
        return [[np.asarray(a) for a in session.run(None, feed)] for feed in feeds]
    from .device import runner
    from .errors import QuantizationError

    pairs, starts = stream
    try:
        carry = runner.stream_carry({"state": [{"input": i, "output": o} for i, o in pairs]}, list(starts),
                                    [o.name for o in session.get_outputs()], len(feeds))
    except runner.RunnerError as exc:
        raise QuantizationError(exc.message) from None
    result: List[List[np.ndarray]] = []
    prev = None
    for i, feed in enumerate(feeds):
        prev = session.run(None, carry(feed, i, prev))
        result.append([np.asarray(a) for a in prev])
    return result


def check_model(model: Any, feeds: Sequence[Dict[str, np.ndarray]], references: List[List[np.ndarray]],
                names: Sequence[str], level: str, conf: Optional[Dict[str, Any]] = None,
                stream: Optional[StreamPlan] = None) -> Dict[str, Any]:
    """The guard report of one candidate (a path or serialized model) against FP32 ``references``."""
    from .quantize.evaluate import make_session

    conf = arithmetic.settings(conf)
    if not conf["enabled"]:
        return arithmetic.check_outputs(names, [], [], conf)
    outputs = all_outputs(make_session(model, level), feeds, stream)
    return arithmetic.check_outputs(list(names), outputs, references, conf, feeds)


def resolve(conf: Dict[str, Any], model_path: Path, mask_input: Optional[str] = None) -> Dict[str, Any]:
    """The settings with every output's feature axis decided from the model's declared shapes, so
    the build and the device slice alike. Axis 1 when it is a fixed dimension smaller than the rest
    (or the rest is dynamic): [1, 4+C, anchors], [N, C, H, W]; a dynamic axis 1 is a sequence
    ([batch, sequence, hidden]) and the last axis is used. The user's feature_axis wins."""
    import onnx

    out = dict(conf)
    axes = dict(conf.get("feature_axis") or {})
    graph = onnx.load(str(model_path), load_external_data=False).graph
    for o in graph.output:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim]
        if o.name in axes or not dims:
            continue
        later = dims[2:]
        channels_first = (len(dims) >= 3 and dims[1] is not None
                          and (None in later or dims[1] < int(np.prod([d for d in later if d]))))
        axes[o.name] = 1 if channels_first else len(dims) - 1
    out["feature_axis"] = dict(sorted(axes.items()))
    if mask_input:
        out["mask_input"] = mask_input
    return out


def summary(report: Dict[str, Any]) -> Dict[str, Any]:
    """What a candidate records in the manifest: passed, the findings, and per-output figures."""
    keep = ("output", "axis", "slices", "rel_error", "worst_slice", "collapsed", "score_slices",
            "argmax_agreement", "rank_agreement", "passed", "findings_omitted")
    return {"passed": bool(report.get("passed", True)), "findings": list(report.get("findings") or []),
            "outputs": [{k: o[k] for k in keep if k in o} for o in report.get("outputs") or []]}


def describe(report: Optional[Dict[str, Any]], limit: int = 3) -> str:
    return arithmetic.describe(report or {}, limit)


def float_graph_outputs(model: "onnx.ModelProto") -> int:  # type: ignore[name-defined]  # noqa: F821
    """Remove QuantizeLinear -> DequantizeLinear pairs that sit on a graph output, also through
    value-moving ops (Reshape, Transpose, ...) in front of it. Edits ``model`` in place; returns how
    many pairs were removed. Graph inputs keep their quantization: only the producer's side changes."""
    graph = model.graph
    removed = 0
    for out in graph.output:
        tensor = out.name
        for _ in range(len(graph.node)):
            producers = {o: n for n in graph.node for o in n.output}
            node = producers.get(tensor)
            if node is None:
                break
            if node.op_type == "DequantizeLinear":
                q = producers.get(node.input[0])
                src = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None
                if src is None or src not in producers:
                    break
                _bypass(graph, node, q, src, tensor)
                removed += 1
                continue  # ``tensor`` is now written by the float producer: look at it next
            if node.op_type in MOVE_OPS and node.input:
                dq = producers.get(node.input[0])
                q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
                if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in producers:
                    node.input[0] = q.input[0]
                    _drop_unused(graph, [dq, q])
                    removed += 1
                tensor = node.input[0]
                continue
            break
    if removed:  # the pairs' scales and zero points are now read by nobody
        read = _reads(graph)
        for init in [t for t in graph.initializer if t.name not in read]:
            graph.initializer.remove(init)
    return removed


def _bypass(graph: Any, dq: Any, q: Any, src: str, tensor: str) -> None:
    """Make ``src``'s producer write ``tensor`` itself (every reader of ``src`` follows), then drop
    the pair if nothing else reads it."""
    from .quantize.graph import iter_nodes  # here: edgekit.quantize imports this module

    for node, _depth in iter_nodes(graph):  # If/Loop bodies may read it from the outer scope too
        if node is dq:
            continue
        for i, name in enumerate(node.input):
            if name == src:
                node.input[i] = tensor
        for i, name in enumerate(node.output):
            if name == src:
                node.output[i] = tensor
    graph.node.remove(dq)
    _drop_unused(graph, [q])
    for vi in [v for v in graph.value_info if v.name in (src, tensor)]:
        graph.value_info.remove(vi)


def _drop_unused(graph: Any, nodes: Sequence[Any]) -> None:
    outputs = {o.name for o in graph.output}
    for node in nodes:
        read = _reads(graph)
        if node in graph.node and not any(o in read or o in outputs for o in node.output):
            graph.node.remove(node)


def _reads(graph: Any) -> set:
    """Every tensor name some node reads, subgraph bodies included."""
    from .quantize.graph import iter_nodes
    return {i for n, _depth in iter_nodes(graph) for i in n.input}


def nearest_first(model: "onnx.ModelProto", outputs: Sequence[str], candidates: Sequence[str]) -> List[str]:  # type: ignore[name-defined]  # noqa: F821
    """``candidates`` (node names) upstream of ``outputs``, nearest the outputs first (ties: later in
    the graph first): the order in which the guard fallback reverts nodes to float."""
    producers = {o: n for n in model.graph.node for o in n.output}
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    dist: Dict[str, int] = {}
    queue = deque((producers[o], 0) for o in outputs if o in producers)
    while queue:
        node, d = queue.popleft()
        if node.name in dist:
            continue
        dist[node.name] = d
        queue.extend((producers[i], d + 1) for i in node.input if i in producers)
    wanted = [c for c in candidates if c in dist]
    return sorted(wanted, key=lambda c: (dist[c], -order.get(c, 0)))


def strip_output_qdq(path: Path) -> int:
    """``float_graph_outputs`` on a model file (rewritten only when something changed)."""
    import onnx

    from .optimize import save_model

    model = onnx.load(str(path))
    removed = float_graph_outputs(model)
    if removed:
        save_model(model, path)
    return removed
