"""Running candidates on the host: outputs for the metric, and latency measured side by side."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import QuantizationError
from ..metrics import MetricSpec
from ..optimize import ort_level
from .presets import DISABLED_OPTIMIZERS

EVAL_THREADS = 2
"""Fixed for scoring, so the metric (and so every accuracy decision) is host-independent."""

ModelSource = Union[Path, bytes]


def make_session(model: ModelSource, level: str = "extended", threads: int = EVAL_THREADS) -> "ort.InferenceSession":  # type: ignore[name-defined]  # noqa: F821
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort_level(level)
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle onnxruntime workers spin for a while after each run; with sessions interleaved, the idle
    # one steals cores from the one being timed (measured: int8 read 1.38x FP32 spinning, 0.86x not).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(DISABLED_OPTIMIZERS))
    except Exception as exc:
        where = "the candidate model" if isinstance(model, bytes) else str(model)
        raise QuantizationError(f"onnxruntime cannot load {where}: {str(exc).splitlines()[0]}") from None


StreamPlan = Tuple[Tuple[Tuple[str, str], ...], Tuple[bool, ...]]
"""((state input, state output) pairs, per-feed stream starts): see MetricSpec.stream_plan."""


def run_outputs(session: "ort.InferenceSession", feeds: Sequence[Dict[str, np.ndarray]], index: int,  # type: ignore[name-defined]  # noqa: F821
                stream: Optional[StreamPlan] = None) -> List[np.ndarray]:
    """Output ``index`` for every feed; with ``stream``, the feeds are chunks of streams and each
    state input is the model's own previous state output (the runner's carry, so host and device
    score streams alike)."""
    outputs = session.get_outputs()
    name = outputs[index].name
    if not stream:
        return [np.asarray(session.run([name], feed)[0]) for feed in feeds]
    from ..device import runner

    pairs, starts = stream
    try:
        carry = runner.stream_carry({"state": [{"input": i, "output": o} for i, o in pairs]}, list(starts),
                                    [o.name for o in outputs], len(feeds))
    except runner.RunnerError as exc:
        raise QuantizationError(exc.message) from None
    result, prev = [], None
    for i, feed in enumerate(feeds):
        prev = session.run(None, carry(feed, i, prev))
        result.append(np.asarray(prev[index]))
    return result


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
        self._hard_first: Optional[List[int]] = None
        """Sample order for ``screen``: the samples the first fully scored candidate missed, first."""
        self._rows: Optional[List[int]] = None
        self.screened = 0
        """How many ``screen`` calls stopped early (the build record reports it)."""

    def outputs(self, model: ModelSource) -> List[np.ndarray]:
        return run_outputs(make_session(model, self.level), self.feeds, self.index, self.metric.stream_plan)

    def score(self, model: ModelSource) -> Dict[str, float]:
        outs = self.outputs(model)
        if self._hard_first is None and self.metric.screenable:
            self._learn_order(outs)
        return self._result(outs)

    def _result(self, outs: List[np.ndarray]) -> Dict[str, float]:
        """The metric on every sample's output, with the continuous ``output_error`` beside it."""
        result = dict(self.metric.score(outs, self.references, self.feeds))
        result["output_error"] = output_error(outs, self.references)
        return result

    def passes(self, result: Dict[str, float]) -> bool:
        return self.metric.passes(result["value"])

    def _hits(self, i: int, out: np.ndarray) -> Tuple[int, int]:
        """(hits, rows) of sample ``i``."""
        one = self.metric.score([out], [self.references[i]], [self.feeds[i]])
        n = int(one.get("n", 1))
        return int(round(float(one["value"]) * n)), n

    def _learn_order(self, outs: List[np.ndarray]) -> None:
        per = [self._hits(i, o) for i, o in enumerate(outs)]
        self._rows = [n for _, n in per]
        # the samples with the most missed rows first, then in sample order: deterministic
        self._hard_first = sorted(range(len(outs)), key=lambda i: (-(per[i][1] - per[i][0]), i))

    def screen(self, model: ModelSource) -> Dict[str, float]:
        """``score``, except that for a share-of-rows metric (``MetricSpec.screenable``) it runs the
        samples the first scored candidate missed first and stops once this candidate's misses rule
        the threshold out. A stopped result has ``screened`` = 1 and ``value`` = the best the metric
        could still have reached (below the threshold; no ``output_error``). A candidate that can
        pass is always scored on every sample, so every passing value is a full score.
        Deterministic: the order and the stopping point depend only on the models' outputs."""
        if not self.metric.screenable or self._hard_first is None or self._rows is None:
            return self.score(model)
        total = sum(self._rows)
        session = make_session(model, self.level)
        name = session.get_outputs()[self.index].name
        outs: List[Optional[np.ndarray]] = [None] * len(self.feeds)
        misses = 0
        for i in self._hard_first:
            outs[i] = np.asarray(session.run([name], self.feeds[i])[0])
            hits, n = self._hits(i, outs[i])
            misses += n - hits
            best = (total - misses) / max(total, 1)
            if not self.metric.passes(best):
                self.screened += 1
                return {"value": best, "n": float(total), "screened": 1.0}
        return self._result([o for o in outs if o is not None])


AA_SUFFIX = " (A/A)"
"""``measure_latency(control=name)`` returns a second session of ``name`` under ``name + AA_SUFFIX``."""


def measure_latency(models: Dict[str, ModelSource], feed: Dict[str, np.ndarray], levels: Dict[str, str],
                    threads: int, rounds: int = 12, per_round: int = 3,
                    deadline: Optional[float] = None, control: Optional[str] = None) -> Dict[str, List[float]]:
    """Per-round latency (ms) of each model: the best of ``per_round`` runs, models interleaved.

    The host is shared (other builds, tests): interleaving makes load hit every candidate alike,
    and the best of a few back-to-back runs filters the preemption spikes that dominate a mean.
    Every session has spinning off and ``threads`` intra-op threads. ``control`` (a name in
    ``models``) adds an A/A control: a second session of that model, timed in the same rounds, whose
    difference from the first is pure noise (see ``noise_floor``). The order rotates every round so
    no model always runs right after another. Returns {name: [round 1, round 2, ...]}; their
    median is what we report as p50.
    """
    sessions = {name: make_session(src, levels[name], threads) for name, src in models.items()}
    if control is not None and control in models:
        sessions[control + AA_SUFFIX] = make_session(models[control], levels[control], threads)
    for s in sessions.values():  # warm-up: first runs allocate buffers and pack weights
        for _ in range(3):
            s.run(None, feed)
    result: Dict[str, List[float]] = {name: [] for name in sessions}
    order = list(sessions.items())
    for r in range(rounds):
        for name, s in order[r % len(order):] + order[:r % len(order)]:
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


def noise_floor(a: List[float], b: List[float]) -> float:
    """The relative spread of an A/A pair (one model timed twice, interleaved): the larger of the
    medians' relative difference and the 80th percentile of the per-round relative differences.
    A difference between candidates no larger than this is indistinguishable from noise on this host
    right now; ``clearly_faster`` uses the 80% of rounds, so the floor does too."""
    n = min(len(a), len(b))
    if n == 0:
        return 0.0
    per_round = [abs(x / y - 1.0) for x, y in zip(a[:n], b[:n]) if y > 0]
    median = abs(p50(a[:n]) / p50(b[:n]) - 1.0) if p50(b[:n]) > 0 else 0.0
    return float(max(median, float(np.percentile(per_round, 80)) if per_round else 0.0))


def p50(rounds: List[float]) -> float:
    return float(np.median(rounds))


Progress = Callable[[str], None]
