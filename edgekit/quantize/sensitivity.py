"""Which quantized nodes hurt the output most: leave-one-out reverts on the QDQ graph.

For each quantized compute node we revert just that node to float, in memory, by pointing its
inputs back at the float tensors (the Q/DQ pairs stay for other consumers), and measure how much
closer the output gets to FP32. That is the question the fallback asks ("what do I gain by
reverting this node?"), and it avoids a full ``quantize_static`` per node: one model copy and one
session per node. The final model is still produced by ``quantize_static(nodes_to_exclude=...)``.

Ranking uses a continuous error (relative L2 of the metric's output), not the metric itself,
because a top-1 agreement rarely moves for one node; ties keep graph order, so it is deterministic.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import AccuracyError
from .evaluate import make_session, output_error, run_outputs


def _revert_nodes(qdq: "onnx.ModelProto", fp32: "onnx.ModelProto", names: Sequence[str]) -> "onnx.ModelProto":  # type: ignore[name-defined]  # noqa: F821
    """A copy of ``qdq`` where nodes ``names`` read the float inputs they had in ``fp32``."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    float_nodes = {n.name: n for n in fp32.graph.node}
    float_inits = {i.name: i for i in fp32.graph.initializer}
    present_inits = {i.name for i in model.graph.initializer}
    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    wanted = set(names)
    for node in model.graph.node:
        if node.name not in wanted or node.name not in float_nodes:
            continue
        original = float_nodes[node.name]
        for pos, src in enumerate(original.input):
            if pos >= len(node.input) or not src:
                continue
            if src in produced or src in present_inits:
                # The float tensor still exists: an activation feeding a Q node, or a bias whose
                # DequantizeLinear kept the original name.
                node.input[pos] = src
            elif src in float_inits:
                model.graph.initializer.append(float_inits[src])
                present_inits.add(src)
                node.input[pos] = src
            # else: the float producer was folded away (e.g. a Relu removed into the Q range);
            # that input stays quantized, which only makes the estimate conservative.
    return model


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
) -> List[Tuple[str, float]]:
    """[(node, error reduction when reverted)], most harmful first.

    ``group_size`` > 1 reverts consecutive nodes together (big graphs); every node of a group gets
    the group's gain. Running past ``deadline`` raises (a partial ranking would make the recipe
    depend on the machine's speed).
    """
    import onnx

    qdq = onnx.load(str(qdq_path))
    fp32 = onnx.load(str(fp32_path))

    def error_without(group: Sequence[str]) -> float:
        model = qdq if not group else _revert_nodes(qdq, fp32, group)
        return output_error(run_outputs(make_session(model.SerializeToString(), level), feeds, index), references)

    return _rank(error_without, nodes, deadline, group_size, progress, every=8)


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
