"""Running candidates on the host: outputs for the metric, and latency measured side by side."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from ..errors import QuantizationError
from ..metrics import MetricSpec
from .presets import DISABLED_OPTIMIZERS

EVAL_THREADS = 2
"""Fixed for scoring, so the metric (and so every accuracy decision) is host-independent."""

_LEVELS = ("disabled", "basic", "extended", "all")

ModelSource = Union[Path, bytes]


def make_session(model: ModelSource, level: str = "extended", threads: int = EVAL_THREADS) -> "ort.InferenceSession":  # type: ignore[name-defined]  # noqa: F821
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = [
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    ][_LEVELS.index(level)]
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(DISABLED_OPTIMIZERS))
    except Exception as exc:
        where = "the candidate model" if isinstance(model, bytes) else str(model)
        raise QuantizationError(f"onnxruntime cannot load {where}: {str(exc).splitlines()[0]}") from None


def run_outputs(session: "ort.InferenceSession", feeds: Sequence[Dict[str, np.ndarray]], index: int) -> List[np.ndarray]:  # type: ignore[name-defined]  # noqa: F821
    name = session.get_outputs()[index].name
    return [np.asarray(session.run([name], feed)[0]) for feed in feeds]


def output_error(outputs: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> float:
    """A continuous, metric-independent damage score (mean relative L2 error) used for ranking.

    Threshold metrics like top-1 are flat for most single-node changes; ranking needs a signal that
    moves with every node.
    """
    errs = []
    for o, r in zip(outputs, references):
        o64 = np.asarray(o, dtype=np.float64).ravel()
        r64 = np.asarray(r, dtype=np.float64).ravel()
        errs.append(float(np.linalg.norm(o64 - r64) / max(np.linalg.norm(r64), 1e-12)))
    return float(np.mean(errs))


class Scorer:
    """Scores a candidate against the FP32 references on fixed feeds."""

    def __init__(self, metric: MetricSpec, feeds: Sequence[Dict[str, np.ndarray]], references: List[np.ndarray],
                 index: int, level: str) -> None:
        self.metric = metric
        self.feeds = list(feeds)
        self.references = references
        self.index = index
        self.level = level

    def outputs(self, model: ModelSource) -> List[np.ndarray]:
        return run_outputs(make_session(model, self.level), self.feeds, self.index)

    def score(self, model: ModelSource) -> Dict[str, float]:
        outs = self.outputs(model)
        result = dict(self.metric.score(outs, self.references, self.feeds))
        result["output_error"] = output_error(outs, self.references)
        return result

    def passes(self, result: Dict[str, float]) -> bool:
        return self.metric.passes(result["value"])


def measure_latency(models: Dict[str, ModelSource], feed: Dict[str, np.ndarray], levels: Dict[str, str],
                    threads: int, rounds: int = 12, per_round: int = 3,
                    deadline: Optional[float] = None) -> Dict[str, List[float]]:
    """Per-round latency (ms) of each model: the best of ``per_round`` runs, models interleaved.

    The host is shared (other builds, tests): interleaving makes load hit every candidate alike,
    and the best of a few back-to-back runs filters the preemption spikes that dominate a mean.
    Returns {name: [round 1, round 2, ...]}; their median is what we report as p50.
    """
    sessions = {name: make_session(src, levels[name], threads) for name, src in models.items()}
    for s in sessions.values():  # warm-up: first runs allocate buffers and pack weights
        for _ in range(3):
            s.run(None, feed)
    result: Dict[str, List[float]] = {name: [] for name in sessions}
    for r in range(rounds):
        for name, s in sessions.items():
            best = float("inf")
            for _ in range(per_round):
                t0 = time.perf_counter()
                s.run(None, feed)
                best = min(best, (time.perf_counter() - t0) * 1000.0)
            result[name].append(best)
        if deadline is not None and time.monotonic() > deadline and r >= 2:
            break
    return result


def clearly_faster(a: List[float], b: List[float], margin: float, agree: float = 0.8) -> bool:
    """True when ``a`` beat ``b`` by more than ``margin`` (0.1 = 10%) in most rounds (``agree``)
    and in the median.

    Choices that depend on timing must not flip between two builds of the same inputs; requiring
    interleaved rounds to agree by a wide margin keeps borderline cases on the default side.
    """
    wins = sum(1 for x, y in zip(a, b) if x * (1.0 + margin) < y)
    return wins >= agree * min(len(a), len(b)) and p50(a) * (1.0 + margin) < p50(b)


def p50(rounds: List[float]) -> float:
    return float(np.median(rounds))


Progress = Callable[[str], None]
