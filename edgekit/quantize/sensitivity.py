"""Which quantized nodes hurt the output most: leave-one-out reverts on the QDQ graph.

For each quantized compute node we rewrite the QDQ graph, in memory, into what a real build that
excludes it would be (``_Revert``: float weights, the Relu/Clip the quantizer fused into it restored,
Q/DQ pairs nobody needs any more removed), and measure how much closer the output gets to FP32.
That costs one session per node instead of one ``quantize_static`` each. The first version of this
pointed the node at the float tensors of the same names; onnxruntime's quantizer renames a Conv's
output to the Relu/Clip it removed, so a reverted node read un-clipped values and the ranking
measured how badly the edit broke the graph (EfficientNet-Lite0: 54 of 60 gains negative). The
top-ranked reverts are checked against real builds; a mismatch ranks by real builds instead.

Ranking uses a continuous error (relative L2 of the metric's output), not the metric itself,
because a top-1 agreement rarely moves for one node; ties keep graph order, so it is deterministic.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import AccuracyError, QuantizationError
from .evaluate import make_session, output_error, run_outputs


FUSED_ACTIVATIONS = ("Relu", "Clip")
"""onnxruntime's QDQ quantizer removes a Relu/Clip that follows a quantized Conv/Gemm/MatMul and
gives its output name to the Conv (the Q range clamps instead). A node kept float gets them back."""


class _Revert:
    """Rewrites a QDQ graph, in memory, into what ``quantize_static(nodes_to_exclude=names)`` builds.

    What a real excluding build does (read off onnxruntime 1.32's QDQ quantizer, checked by
    tests/test_fallback_exact.py against real builds):

    * the excluded node reads its float weight and bias;
    * a Relu/Clip that had been fused into it comes back as a float node after it;
    * a Q/DQ pair on a tensor next to it survives only if some quantized node still needs it: a
      quantized producer (which quantizes its output) or a quantized consumer. Otherwise the float
      tensor passes straight through (an Identity keeps every name valid).
    """

    def __init__(self, qdq: "onnx.ModelProto", fp32: "onnx.ModelProto", op_types: Optional[Sequence[str]],  # type: ignore[name-defined]  # noqa: F821
                 names: Sequence[str]) -> None:
        self.qdq, self.fp32 = qdq, fp32
        self.op_types = set(op_types) if op_types else None  # None: every op counts as quantized
        self.wanted = set(names)
        self.exact = True
        self.why = ""

    def build(self) -> "onnx.ModelProto":  # type: ignore[name-defined]  # noqa: F821
        import onnx
        from onnx import helper

        model = onnx.ModelProto()
        model.CopyFrom(self.qdq)
        g = model.graph
        fnodes = {n.name: n for n in self.fp32.graph.node}
        finits = {i.name: i for i in self.fp32.graph.initializer}
        fcons = _consumers(self.fp32.graph)
        qinits = {i.name for i in g.initializer}
        added = []
        extra_nodes = []
        for node in g.node:
            if node.name not in self.wanted:
                continue
            orig = fnodes.get(node.name)
            if orig is None or orig.op_type != node.op_type:
                self._inexact(f"{node.name} has no float counterpart")
                continue
            for pos, src in enumerate(orig.input):
                if pos >= len(node.input) or not src or src not in finits:
                    continue
                fresh = f"{src}__edgekit_float"
                if fresh not in qinits:
                    t = onnx.TensorProto()
                    t.CopyFrom(finits[src])
                    t.name = fresh
                    added.append(t)
                    qinits.add(fresh)
                node.input[pos] = fresh
            out_f, out_q = orig.output[0], node.output[0]
            if out_f != out_q and not _renamed_graph_output(out_q, out_f, g):
                chain = _fused_chain(out_f, out_q, fcons)
                if chain is None:
                    self._inexact(f"{node.name}: its output was renamed by something other than a fused Relu/Clip")
                    continue
                node.output[0] = out_f + "__edgekit_float"
                prev = node.output[0]
                for act in chain:
                    copy = helper.make_node(act.op_type, [prev] + list(act.input[1:]),
                                            [act.output[0] if act is not chain[-1] else out_q],
                                            name=act.name + "__edgekit_float")
                    copy.attribute.extend(act.attribute)
                    for extra in act.input[1:]:
                        if extra and extra in finits and extra not in qinits:
                            added.append(finits[extra])
                            qinits.add(extra)
                    extra_nodes.append(copy)
                    prev = copy.output[0]
        g.initializer.extend(added)
        g.node.extend(extra_nodes)
        self._drop_unneeded_qdq(g)
        _toposort(g)
        return model

    def _inexact(self, why: str) -> None:
        self.exact = False
        self.why = self.why or why

    def _quantized(self, node: Any) -> bool:
        if node is None or node.name in self.wanted or node.name.endswith("__edgekit_float"):
            return False
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            return False
        return self.op_types is None or node.op_type in self.op_types

    def _drop_unneeded_qdq(self, g) -> None:
        from onnx import helper

        nodes = list(g.node)
        prod = {o: i for i, n in enumerate(nodes) for o in n.output}
        cons = {}
        for i, n in enumerate(nodes):
            for x in n.input:
                cons.setdefault(x, []).append(i)
        inits = {i.name for i in g.initializer}
        touched = set()
        for n in nodes:
            if n.name in self.wanted or n.name.endswith("__edgekit_float"):
                touched.update(n.input)
                touched.update(n.output)

        def quantized(i):
            return i is not None and self._quantized(nodes[i])

        drop, replace = set(), []
        for qi, q in enumerate(nodes):
            if q.op_type != "QuantizeLinear" or q.input[0] in inits:
                continue
            users = cons.get(q.output[0], [])
            if len(users) != 1 or nodes[users[0]].op_type != "DequantizeLinear":
                continue
            di = users[0]
            t, d = q.input[0], nodes[di].output[0]
            if t not in touched and d not in touched:
                continue
            if quantized(prod.get(t)) or any(quantized(c) for c in cons.get(d, [])):
                continue
            drop.update((qi, di))
            replace.append(helper.make_node("Identity", [t], [d], name=q.name + "__edgekit_float"))
        if drop:
            kept = [_copy(n) for i, n in enumerate(nodes) if i not in drop]
            del g.node[:]
            g.node.extend(kept + replace)


def _renamed_graph_output(out_q: str, out_f: str, g) -> bool:
    """The quantizer renames a graph output's producer to ``<name>_QuantizeLinear_Input`` and ends
    the graph with Q -> DQ -> ``<name>``: nothing was fused, the Q/DQ rule handles the pair."""
    q = next((n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == out_q), None)
    if q is None:
        return False
    return any(n.op_type == "DequantizeLinear" and n.input[0] == q.output[0] and n.output[0] == out_f for n in g.node)


def _consumers(graph):
    cons = {}
    for n in graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    return cons


def _fused_chain(out_f, out_q, fcons):
    chain, cur = [], out_f
    while cur != out_q:
        nxt = fcons.get(cur, [])
        if len(nxt) != 1 or nxt[0].op_type not in FUSED_ACTIVATIONS:
            return None
        chain.append(nxt[0])
        cur = nxt[0].output[0]
    return chain


def _copy(node):
    import onnx

    c = onnx.NodeProto()
    c.CopyFrom(node)
    return c


def _toposort(g) -> None:
    """Kahn's order, ties in the original order (the inserted float activations follow their node)."""
    import heapq

    nodes = [_copy(n) for n in g.node]
    produced_by = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [set(produced_by[x] for x in n.input if x in produced_by and produced_by[x] != i) for i, n in enumerate(nodes)]
    users = [[] for _ in nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    left = [len(d) for d in deps]
    ready = [i for i, k in enumerate(left) if k == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            left[u] -= 1
            if left[u] == 0:
                heapq.heappush(ready, u)
    order += [i for i in range(len(nodes)) if i not in set(order)]
    del g.node[:]
    g.node.extend(nodes[i] for i in order)


def revert_in_memory(qdq: Any, fp32: Any, op_types: Optional[Sequence[str]], names: Sequence[str]) -> Tuple[Any, bool, str]:
    """(model, exact, why): ``qdq`` rewritten as the build that excludes ``names`` would be.
    ``exact`` is False when some node's structure is not one this rewrite knows (the caller then
    ranks by real builds)."""
    rw = _Revert(qdq, fp32, op_types, names)
    model = rw.build()
    return model, rw.exact, rw.why


VERIFY_BUILDS = 2
"""Real excluding builds that check the in-memory reverts (the top-ranked groups): a mismatch means
the graph has a structure the rewrite does not know, and the ranking is redone by real builds."""
VERIFY_TOLERANCE = 1e-4
"""Max |in-memory error - real-build error| (relative L2 units): both are the same graph when the
rewrite is right, so only float reassociation differs."""


def rank_by_leave_one_out(
    qdq_path: Path,
    fp32_path: Path,
    nodes: Sequence[str],
    feeds: Sequence[Dict[str, np.ndarray]],
    references: Sequence[np.ndarray],
    index: int,
    level: str,
    deadline: float,
    group_size: int = 1,
    progress: Optional[Callable[[str], None]] = None,
    op_types: Optional[Sequence[str]] = None,
    build: Optional[Callable[[Sequence[str]], Path]] = None,
    record: Optional[Dict[str, object]] = None,
) -> List[Tuple[str, float]]:
    """[(node, error reduction when reverted)], most harmful first.

    ``group_size`` > 1 reverts consecutive nodes together (big graphs); every node of a group gets
    the group's gain. Running past ``deadline`` raises (a partial ranking would make the recipe
    depend on the machine's speed). With ``build`` (a real excluding build), a revert the rewrite
    cannot make exact, or a top-ranked one that disagrees with its real build, switches the ranking
    to real builds (``rank_by_rebuild``); ``record`` says which was used and why.
    """
    import onnx

    qdq = onnx.load(str(qdq_path))
    fp32 = onnx.load(str(fp32_path))
    rec: Dict[str, object] = record if record is not None else {}
    errors: Dict[Tuple[str, ...], float] = {}

    def error_without(group: Sequence[str]) -> float:
        if not group:
            model = qdq
        else:
            model, exact, why = revert_in_memory(qdq, fp32, op_types, group)
            if not exact:
                raise _NotExact(why)
        err = output_error(run_outputs(make_session(model.SerializeToString(), level), feeds, index), references)
        errors[tuple(group)] = err
        return err

    def by_rebuild(why: str) -> List[Tuple[str, float]]:
        assert build is not None
        rec.update(method="real builds", why=why)
        if progress:
            progress(f"ranking by real builds: {why}")
        return rank_by_rebuild(build, nodes, feeds, references, index, level, deadline,
                               group_size=max(group_size, -(-len(nodes) // MAX_REBUILD_GROUPS)), progress=progress)

    try:
        ranked = _rank(error_without, nodes, deadline, group_size, progress, every=8)
    except _NotExact as exc:
        if build is None:
            raise QuantizationError(f"ranking quantized nodes: {exc}") from None
        return by_rebuild(f"the in-memory revert is not exact here ({exc})")
    rec.update(method="in-memory reverts", checked=[])
    if build is None:
        return ranked
    groups = [list(nodes[i:i + group_size]) for i in range(0, len(nodes), group_size)]
    first = {name: g for g in groups for name in g}
    seen: List[Tuple[str, ...]] = []
    for name, _gain in ranked:
        g = tuple(first[name])
        if g in seen:
            continue
        seen.append(g)
        if len(seen) > VERIFY_BUILDS or time.monotonic() > deadline:
            break
        real = output_error(run_outputs(make_session(build(list(g)), level), feeds, index), references)
        mem = errors[g]
        rec["checked"].append({"nodes": list(g), "in_memory": round(mem, 6), "real_build": round(real, 6)})  # type: ignore[union-attr]
        if abs(real - mem) > VERIFY_TOLERANCE * max(1.0, abs(real)):
            return by_rebuild(f"reverting {g[0]} in memory gave output error {mem:.4g}, a real build {real:.4g}")
    return ranked


class _NotExact(Exception):
    pass


MAX_REBUILD_GROUPS = 16
"""Ranking by real builds costs one quantize_static per group: big graphs share groups."""


def _rank(error_without: Callable[[Sequence[str]], float], nodes: Sequence[str], deadline: float,
          group_size: int, progress: Optional[Callable[[str], None]], every: int) -> List[Tuple[str, float]]:
    """Leave-one-(group-)out: the error drop when each group goes back to float, most harmful first
    (ties keep graph order, so the ranking is deterministic)."""
    base = error_without([])
    gains: Dict[str, float] = {}
    groups = [list(nodes[i:i + group_size]) for i in range(0, len(nodes), group_size)]
    for gi, group in enumerate(groups):
        if time.monotonic() > deadline:
            raise budget_exceeded(f"ranking {len(nodes)} quantized nodes")
        if progress and gi % every == 0:
            progress(f"sensitivity {gi + 1}/{len(groups)}")
        err = error_without(group)
        for name in group:
            gains[name] = base - err
    order = {name: i for i, name in enumerate(nodes)}
    ranked = sorted(nodes, key=lambda n: (-round(gains.get(n, 0.0), 9), order[n]))
    return [(n, gains.get(n, 0.0)) for n in ranked]


def rank_by_rebuild(
    build: Callable[[Sequence[str]], Path],
    nodes: Sequence[str],
    feeds: Sequence[Dict[str, np.ndarray]],
    references: Sequence[np.ndarray],
    index: int,
    level: str,
    deadline: float,
    group_size: int = 1,
    progress: Optional[Callable[[str], None]] = None,
) -> List[Tuple[str, float]]:
    """Leave-one-out by real builds (``build(excluded)``): for quantizers whose graphs we do not
    edit in memory (dynamic quantization). Slower, same contract as ``rank_by_leave_one_out``."""

    def error_without(group: Sequence[str]) -> float:
        return output_error(run_outputs(make_session(build(group), level), feeds, index), references)

    return _rank(error_without, nodes, deadline, group_size, progress, every=4)


def budget_exceeded(doing: str) -> AccuracyError:
    """The time budget ran out. Never silently settle for a partial search: the result would then
    depend on how fast the host was, and two builds of the same inputs could differ."""
    return AccuracyError(f"the quantization time budget ran out while {doing}",
                         hint="raise the budget (budget_s), or force a precision (--precision fp32)",
                         budget=True)
