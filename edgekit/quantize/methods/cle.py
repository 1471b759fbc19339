"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", section 4.1) on an ONNX graph.

Per-channel weight ranges in depthwise / MobileNet-style networks differ by orders of magnitude, so
one int8 step per tensor (or per output channel of the *next* layer's input) wastes most of the
range on a few channels. For two convolutions joined by a positively homogeneous activation
(``f(s x) = s f(x)`` for ``s > 0``: Relu, or nothing), scaling output channel ``i`` of the first by
``1/s_i`` and input channel ``i`` of the second by ``s_i`` leaves the float function unchanged; with
``s_i = sqrt(r1_i / r2_i)`` both layers' channel ``i`` ranges become ``sqrt(r1_i * r2_i)``.

Why our own code: NNCF's ONNX backend has no equalization (its ChannelAlignment is OpenVINO-only) and
``aimet-onnx`` installs on Python 3.11 CPU only with ~25 extra packages (torchvision, pandas, bokeh,
panel...), far too heavy for an optional method; the transform itself is ~100 lines of numpy.

ReLU6 (``Clip(0, 6)``) is not positively homogeneous. As the paper does, ``relu6_to_relu=True``
replaces a Clip between an equalized pair with Relu (a changed float model, which the candidate's
metric against the *original* FP32 then judges); with ``False`` such pairs are left alone.
Pairs are equalized repeatedly until the scales settle, which for conv -> depthwise -> conv chains
converges to the paper's three-layer solution.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

HOMOGENEOUS = ("Relu",)
EPS = 1e-8


@dataclass
class CleReport:
    """What equalization did; recorded in the manifest as the candidate's recipe."""

    pairs: int = 0
    relu6_replaced: int = 0
    iterations: int = 0
    skipped: Dict[str, int] = field(default_factory=dict)
    range_ratio_before: float = 0.0
    range_ratio_after: float = 0.0

    def as_dict(self) -> Dict[str, object]:
        return {"method": "cross-layer equalization", "pairs": self.pairs, "relu6_replaced": self.relu6_replaced,
                "iterations": self.iterations, "skipped": dict(sorted(self.skipped.items())),
                "median_channel_range_ratio_before": round(self.range_ratio_before, 3),
                "median_channel_range_ratio_after": round(self.range_ratio_after, 3)}


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def _const(inits: Dict[str, np.ndarray], consts: Dict[str, np.ndarray], name: str) -> Optional[np.ndarray]:
    return inits.get(name, consts.get(name))


def _is_relu6(node, inits, consts) -> bool:
    """Clip(0, 6), as opset >= 11 inputs or opset 6 attributes."""
    if node.op_type != "Clip":
        return False
    if len(node.input) >= 3 and node.input[1] and node.input[2]:
        lo, hi = _const(inits, consts, node.input[1]), _const(inits, consts, node.input[2])
        return lo is not None and hi is not None and float(lo) == 0.0 and float(hi) == 6.0
    return float(_attr(node, "min", -np.inf)) == 0.0 and float(_attr(node, "max", np.inf)) == 6.0


def _conv_kind(node, weights: Dict[str, np.ndarray]) -> Optional[str]:
    """'dense' (group 1) or 'depthwise' (group == channels, one filter each); None otherwise."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return None
    w = weights[node.input[1]]
    group = int(_attr(node, "group", 1))
    if group == 1:
        return "dense"
    if w.shape[1] == 1 and group == w.shape[0]:
        return "depthwise"
    return None


def _out_range(w: np.ndarray) -> np.ndarray:
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def _in_range(w: np.ndarray, kind: str) -> np.ndarray:
    if kind == "depthwise":  # channel i in is channel i out
        return _out_range(w)
    return np.abs(w).transpose(1, 0, *range(2, w.ndim)).reshape(w.shape[1], -1).max(axis=1)


def find_pairs(model, relu6_to_relu: bool) -> Tuple[List[Tuple[object, Optional[object], object]], Dict[str, int]]:
    """(conv1, activation or None, conv2) triples where conv1's output feeds only the activation and
    the activation only conv2 (a branch would see the rescaled channels)."""
    g = model.graph
    inits = {i.name: None for i in g.initializer}
    consts: Dict[str, np.ndarray] = {}
    from onnx import numpy_helper

    arrays = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    consumers: Dict[str, List[object]] = {}
    for n in g.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    outputs = {o.name for o in g.output}
    skipped: Dict[str, int] = {}
    pairs = []

    def only(name: str):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in outputs else None

    del inits
    for n in g.node:
        if _conv_kind(n, arrays) is None:
            continue
        nxt = only(n.output[0])
        act = None
        if nxt is not None and (nxt.op_type in HOMOGENEOUS or _is_relu6(nxt, arrays, consts)):
            if nxt.op_type == "Clip" and not relu6_to_relu:
                skipped["relu6 (not homogeneous)"] = skipped.get("relu6 (not homogeneous)", 0) + 1
                continue
            act, nxt = nxt, only(nxt.output[0])
        if nxt is None or _conv_kind(nxt, arrays) is None or nxt.input[0] != (act or n).output[0]:
            skipped["no single conv consumer"] = skipped.get("no single conv consumer", 0) + 1
            continue
        w1, w2 = arrays[n.input[1]], arrays[nxt.input[1]]
        if w1.shape[0] != (w2.shape[0] if _conv_kind(nxt, arrays) == "depthwise" else w2.shape[1]):
            skipped["channel mismatch"] = skipped.get("channel mismatch", 0) + 1
            continue
        pairs.append((n, act, nxt))
    return pairs, skipped


def equalize(model, relu6_to_relu: bool = True, iterations: int = 20, tol: float = 1e-4):
    """Return (equalized copy of ``model``, CleReport). The input model is not modified."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    pairs, skipped = find_pairs(model, relu6_to_relu)
    report = CleReport(pairs=len(pairs), skipped=skipped)
    if not pairs:
        return model, report
    init_by_name = {i.name: i for i in g.initializer}
    arrays = {name: numpy_helper.to_array(t).astype(np.float64) for name, t in init_by_name.items()
              if t.data_type == onnx.TensorProto.FLOAT}
    shared = {}
    for n in g.node:
        for name in n.input:
            shared[name] = shared.get(name, 0) + 1
    usable = [(a, act, b) for a, act, b in pairs
              if shared.get(a.input[1]) == 1 and shared.get(b.input[1]) == 1
              and a.input[1] in arrays and b.input[1] in arrays
              and (len(a.input) < 3 or not a.input[2] or a.input[2] in arrays)]
    if len(usable) < len(pairs):
        skipped["shared or non-float weights"] = len(pairs) - len(usable)
    report.pairs = len(usable)

    def ratios() -> float:
        vals = []
        for a, _, _ in usable:
            r = _out_range(arrays[a.input[1]])
            vals.append(float(r.max() / max(float(np.median(r)), EPS)))
        return float(np.median(vals)) if vals else 0.0

    report.range_ratio_before = ratios()
    kinds = {a.name: _conv_kind(a, arrays) for a, _, _ in usable}
    kinds.update({b.name: _conv_kind(b, arrays) for _, _, b in usable})
    for it in range(iterations):
        worst = 0.0
        for a, _, b in usable:
            w1, w2 = arrays[a.input[1]], arrays[b.input[1]]
            r1, r2 = _out_range(w1), _in_range(w2, kinds[b.name])
            ok = (r1 > EPS) & (r2 > EPS)  # a dead channel keeps scale 1
            s = np.ones_like(r1)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            worst = max(worst, float(np.max(np.abs(np.log(s)))))
            shape1 = (-1,) + (1,) * (w1.ndim - 1)
            arrays[a.input[1]] = w1 / s.reshape(shape1)
            if len(a.input) >= 3 and a.input[2]:
                arrays[a.input[2]] = arrays[a.input[2]] / s
            if kinds[b.name] == "depthwise":
                arrays[b.input[1]] = w2 * s.reshape((-1,) + (1,) * (w2.ndim - 1))
            else:
                arrays[b.input[1]] = w2 * s.reshape((1, -1) + (1,) * (w2.ndim - 2))
        report.iterations = it + 1
        if worst < tol:
            break
    report.range_ratio_after = ratios()
    touched = {x for a, _, b in usable for x in (a.input[1], b.input[1], a.input[2] if len(a.input) >= 3 else "") if x}
    for name in touched:
        init_by_name[name].CopyFrom(numpy_helper.from_array(arrays[name].astype(np.float32), name))
    for _, act, _ in usable:
        if act is not None and act.op_type == "Clip":
            act.op_type = "Relu"
            del act.input[1:]
            del act.attribute[:]
            report.relu6_replaced += 1
    return model, report


def equalize_file(src, dst, relu6_to_relu: bool = True) -> CleReport:
    """File-to-file form for the build; ``dst`` is saved with onnx's checker-clean protobuf."""
    import onnx

    model, report = equalize(onnx.load(str(src)), relu6_to_relu=relu6_to_relu)
    onnx.save(model, str(dst))
    return report
