"""Accuracy-aware fallback: revert the most harmful quantized nodes to float until the metric holds.

Given a ranking (``sensitivity.rank_by_leave_one_out``), reverting a longer prefix of it should
only improve the metric, so we search the shortest passing prefix: doubling (1, 2, 4, ...) until one
passes, then bisect between the last failing and the first passing length. That costs about
2*log2(N) real builds (``quantize_static(nodes_to_exclude=...)``) instead of N, and is
deterministic: the sequence of builds depends only on the metric values.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from pydantic import BaseModel

from ..errors import AccuracyError
from ..metrics import MetricSpec


class FallbackResult(BaseModel):
    excluded: List[str]
    model_path: Path
    metric: Dict[str, float]
    builds: int
    """How many quantized models were built and scored (the first, full one included)."""


Build = Callable[[Sequence[str]], Path]
Score = Callable[[Path], Dict[str, float]]


def revert_until_within_tolerance(
    build: Build,
    score: Score,
    metric: MetricSpec,
    ranked: Sequence[str],
    deadline: float,
    first: Optional[Tuple[Path, Dict[str, float]]] = None,
    progress: Optional[Callable[[str], None]] = None,
    accept: Optional[Callable[[Dict[str, float]], bool]] = None,
) -> FallbackResult:
    """Smallest prefix of ``ranked`` whose exclusion makes ``metric`` pass.

    ``build(excluded)`` returns a quantized model; ``score(path)`` returns MetricSpec.score's dict.
    ``first`` is the already scored full quantization (nothing excluded), if the caller has it.
    Raises AccuracyError when even reverting every ranked node misses the threshold, or when the
    time budget runs out first; the message names the metric, the best value and the threshold.
    ``accept(score)`` replaces "the metric passes" as the test (the guard fallback adds its guards).
    """
    results: Dict[int, Tuple[Path, Dict[str, float]]] = {}
    builds = 0

    def check(k: int) -> bool:
        nonlocal builds
        if k not in results:
            if time.monotonic() > deadline:
                raise _budget_error(metric, results)
            if progress:
                progress(f"fallback: {k} node(s) float")
            path = build(list(ranked[:k]))
            results[k] = (path, score(path))
            builds += 1
        return accept(results[k][1]) if accept else metric.passes(results[k][1]["value"])

    if first is not None:
        results[0] = first
    n = len(ranked)
    if check(0):
        return _done(ranked, 0, results, builds)
    lo, hi = 0, None  # lo: longest prefix known to fail; hi: shortest known to pass
    k = 1
    while k <= n:
        if check(k):
            hi = k
            break
        lo = k
        if k == n:
            break
        k = min(2 * k, n)
    if hi is None:
        best = _best(metric, results)
        raise AccuracyError(
            f"{metric.name} reached at best {best:.4f} with all {n} quantized node(s) reverted to float, "
            f"threshold {metric.threshold}",
            hint="int8 cannot meet this threshold for this model; use --precision fp32 (or fp16), "
                 "or relax the threshold in edgekit.toml",
            metric=metric.name, best=best, threshold=metric.threshold)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok = check(mid)  # out of time here raises too: stopping early would make bytes depend on speed
        if ok:
            hi = mid
        else:
            lo = mid
    return _done(ranked, hi, results, builds)


def _best(metric: MetricSpec, results: Dict[int, Tuple[Path, Dict[str, float]]]) -> float:
    values = [r[1]["value"] for r in results.values()]
    best = values[0]
    for v in values[1:]:
        if metric.better(v, best):
            best = v
    return best


def _budget_error(metric: MetricSpec, results: Dict[int, Tuple[Path, Dict[str, float]]]) -> AccuracyError:
    best = _best(metric, results) if results else float("nan")
    return AccuracyError(
        f"{metric.name} reached at best {best:.4f} before the quantization time budget ran out, "
        f"threshold {metric.threshold}",
        hint="raise the budget (budget_s), use --precision fp32, or relax the threshold",
        metric=metric.name, best=best, threshold=metric.threshold, budget=True)


def _done(ranked: Sequence[str], k: int, results: Dict[int, Tuple[Path, Dict[str, float]]], builds: int) -> FallbackResult:
    path, value = results[k]
    return FallbackResult(excluded=list(ranked[:k]), model_path=path, metric=value, builds=builds)
