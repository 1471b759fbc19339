"""Latency pruning: drop int8 groups that do not pay for themselves on a matching host (issue #3, step 4).

After the accuracy fallback, the still-quantized nodes are grouped by op type (graph order of first
appearance). For each group the model with that group reverted to float is timed against the
current model, interleaved, several rounds, beside an A/A control (the current model against itself);
the group's quantization is dropped only when float is faster by a wide, stable margin beyond the
control's noise floor (``PRUNE_MARGIN`` in the median *and* in most rounds, with
non-overlapping quartiles). Timing is noisy and the same inputs must give the same bytes, so a
borderline group always stays quantized; only a large, consistent loss (Q/DQ around cheap
elementwise ops, tiny MatMuls) flips it.

Runs only when the host has the target's ISA (otherwise the timing says nothing about the target);
the decision is recorded either way. Reverting to float can only help accuracy, but the pruned model
is re-scored and kept only if the metric still passes.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..metrics import MetricSpec
from .evaluate import AA_SUFFIX, measure_latency, noise_floor, p50

PRUNE_MARGIN = 0.10
"""Float must beat the quantized group by >10%: noise on a shared host must never flip the bytes."""
PRUNE_ROUNDS = 7
"""Interleaved rounds per group (each the best of 3 runs); fewer than ``MIN_ROUNDS`` never drops."""
MIN_ROUNDS = 5
MIN_GAIN_MS = 0.05
"""And by at least this much in absolute terms: on microsecond-scale models timer and scheduler noise
reach 20% (seen here: a 0.06 ms two-conv model flipped between builds at a 10% margin alone)."""
MAX_GROUPS = 8
"""At most this many op-type groups are tried (one build and one timing each); the rest stay int8."""

Measure = Callable[..., Dict[str, List[float]]]
"""``measure(models: {name: path}, feed, levels: {name: level}, threads=, rounds=, deadline=, control=)``
-> {name: [per-round ms]} (plus ``control + AA_SUFFIX``: the A/A control); ``evaluate.measure_latency``
by default (spinning off, threads pinned), injectable for tests."""


def group_by_op_type(nodes: Sequence[Tuple[str, str]]) -> List[Tuple[str, List[str]]]:
    """[(op_type, [node names in graph order])] in order of each op type's first appearance."""
    groups: Dict[str, List[str]] = {}
    for name, op in nodes:
        groups.setdefault(op, []).append(name)
    return list(groups.items())


def clearly_slower_quantized(quantized: List[float], reverted: List[float], margin: float = PRUNE_MARGIN,
                             min_gain_ms: float = MIN_GAIN_MS) -> bool:
    """True when the float-reverted model beat the quantized one by more than ``margin`` (and by
    ``min_gain_ms``) in the median and in at least 80% of the rounds, and the quartiles do not
    overlap (reverted Q3 < quantized Q1)."""
    n = min(len(quantized), len(reverted))
    if n < MIN_ROUNDS:
        return False
    q, r = quantized[:n], reverted[:n]
    wins = sum(1 for a, b in zip(r, q) if a * (1.0 + margin) < b)
    return (wins >= 0.8 * n and p50(r) * (1.0 + margin) < p50(q) and p50(q) - p50(r) >= min_gain_ms
            and float(np.percentile(r, 75)) < float(np.percentile(q, 25)))


class PruneResult:
    """The model after pruning, its score, the kept_float entries it adds, and a JSON record."""

    def __init__(self, model_path: Path, metric: Dict[str, float], dropped: List[dict], record: Dict[str, Any]):
        self.model_path = model_path
        self.metric = metric
        self.dropped = dropped
        self.record = record


def drop_unprofitable_quantization(
    build: Callable[[Sequence[str]], Path],
    current: Tuple[Path, Dict[str, float]],
    nodes: Sequence[Tuple[str, str]],
    score: Callable[[Path], Dict[str, float]],
    metric: MetricSpec,
    host_ok: bool,
    feed: Dict[str, np.ndarray],
    level: str,
    threads: int,
    deadline: float,
    skip_reason: str = "the host does not have the target's ISA features",
    measure: Optional[Measure] = None,
    margin: float = PRUNE_MARGIN,
    rounds: int = PRUNE_ROUNDS,
    progress: Optional[Callable[[str], None]] = None,
) -> PruneResult:
    """Revert op-type groups whose int8 version runs clearly slower than float on this host.

    ``build(extra)`` returns the model with ``extra`` (names from ``nodes``) also kept float (the
    caller's build already excludes what the fallback reverted); ``current`` is the fallback's model
    and score; ``nodes`` the (name, op_type) pairs still quantized in it, in graph order. Never reverts the last quantized group (int8 vs FP32
    as a whole is the candidate choice's job) and never returns a model that misses ``metric``.
    """
    say = progress or (lambda _msg: None)
    path0, score0 = current
    record: Dict[str, Any] = {"margin": margin, "min_gain_ms": MIN_GAIN_MS, "groups": []}
    if not host_ok:
        record["skipped"] = f"not run: {skip_reason}, so host timing says nothing about the target"
        return PruneResult(path0, score0, [], record)
    groups = group_by_op_type(nodes)
    if len(groups) < 2:
        record["skipped"] = ("not run: a single quantized op-type group; whether int8 pays as a whole is the "
                             "candidate choice's decision")
        return PruneResult(path0, score0, [], record)
    measure = measure or measure_latency
    ops = dict(nodes)
    reverted: List[str] = []
    path = path0
    left = len(groups)
    for i, (op, names) in enumerate(groups):
        entry: Dict[str, Any] = {"group": op, "nodes": len(names)}
        record["groups"].append(entry)
        if i >= MAX_GROUPS:
            entry["result"] = f"not tried: only the first {MAX_GROUPS} groups are timed"
            continue
        if left <= 1:
            entry["result"] = "kept: the last quantized group"
            continue
        if time.monotonic() > deadline:
            entry["result"] = "not tried: the time budget ran out"
            continue
        say(f"latency pruning: timing {op} ({len(names)} node(s)) int8 vs float")
        trial = build(reverted + list(names))
        times = measure({"quantized": path, "reverted": trial}, feed, {"quantized": level, "reverted": level},
                        threads=threads, rounds=rounds, deadline=deadline, control="quantized")
        q, r = times["quantized"], times["reverted"]
        twin = times.get("quantized" + AA_SUFFIX)
        floor = noise_floor(q, twin) if twin else 0.0
        entry.update(quantized_ms=round(p50(q), 4), reverted_ms=round(p50(r), 4), rounds=min(len(q), len(r)),
                     noise_floor=round(floor, 4) if twin else None)
        if clearly_slower_quantized(q, r, max(margin, floor)):
            entry["result"] = "dropped"
            reverted += list(names)
            path = trial
            left -= 1
        elif clearly_slower_quantized(q, r, margin):
            entry["result"] = (f"kept: float was more than {int(round(margin * 100))}% faster, but within the A/A "
                               f"noise floor of {floor:.1%}")
        else:
            entry["result"] = "kept"
    if not reverted:
        return PruneResult(path0, score0, [], record)
    final = score(path)
    if not metric.passes(final["value"]):  # float only improves accuracy, but never ship an unchecked model
        record["skipped"] = f"pruned model missed {metric.name} ({final['value']:.4f}): kept the unpruned one"
        for entry in record["groups"]:
            if entry.get("result") == "dropped":
                entry["result"] = "kept: the pruned model missed the metric"
        return PruneResult(path0, score0, [], record)
    pct = int(round(margin * 100))
    dropped = [{"node": n, "op_type": ops[n],
                "reason": f"no latency gain: group {ops[n]} was more than {pct}% slower quantized than float on "
                          "this host (see latency_pruning)"} for n in reverted]
    say(f"latency pruning: {len(reverted)} node(s) back to float")
    return PruneResult(path, final, dropped, record)
