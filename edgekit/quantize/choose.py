"""Choosing between the scored candidates: the profile's order, overridden by clear host timing."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import targets as _targets
from ..errors import AccuracyError
from ..guard import describe
from ..metrics import MetricSpec
from ..targets import TargetProfile
from .evaluate import clearly_faster, measure_latency, p50
from .presets import runtime_level_for
from .result import Candidate

LATENCY_MARGIN = 0.10
"""Timing overrides the profile's order only when another candidate is faster by >10% in most
interleaved rounds and in the median. Timing is noisy and the same inputs must give the same bytes,
so a borderline difference never flips the choice; a real one (int8 at 0.5x FP32 speed) always
does."""
INT8_VS_FLOAT_MARGIN = 0.0
"""int8 against float gets no margin: float that is faster in most interleaved rounds and in the
median, by however little, replaces int8 (int8 slower than float is never shipped on a matching
host). A tie stays stable: noise does not make most rounds agree, so the profile's order holds."""


def _order(wanted: List[str]):
    def key(c: Candidate) -> Tuple[int, int]:
        return wanted.index(c.precision), 0
    return key


def choose(cands: List[Candidate], files: Dict[str, Path], wanted: List[str], precision: str,
           profile: TargetProfile, metric: MetricSpec, arch_ok: bool, host_ok: bool,
           latency: Dict[str, object], feed: Dict[str, np.ndarray], deadline: float,
           measure: Optional[Callable[..., Dict[str, List[float]]]] = None) -> Tuple[Candidate, str]:
    """(chosen candidate, one-sentence reason). Fills ``latency`` and each candidate's ``p50_ms``."""
    passing = sorted((c for c in cands if c.passed), key=_order(wanted))  # stable: int8 variants keep order
    if not passing:
        raise _nothing_passes(cands, metric, precision)
    chosen, reason = _choose(passing, cands, files, wanted, profile, metric, arch_ok, host_ok, latency, feed,
                             deadline, measure)
    return chosen, reason + _guard_refusals(cands, metric)


def _guard_refusals(cands: List[Candidate], metric: MetricSpec) -> str:
    """Name the candidates that met the metric but failed a guard: the reason must say why they lost."""
    return "".join(f"; {c.name} met {metric.name} ({c.metric['value']:.4f}) but the guards refused it: "  # type: ignore[index]
                   f"{guard_refusal(c)}" for c in cands if guard_refusal(c) and metric.passes(c.metric["value"]))  # type: ignore[index]


def guard_refusal(c: Candidate) -> str:
    """Why the guards refused candidate ``c`` (empty when they did not)."""
    if c.passed or c.metric is None:
        return ""
    if c.guard and not c.guard.get("passed", True):
        return describe(c.guard, 2)
    note = next((p for p in c.note.split("; guard: ")[1:2]), None)  # refused after a guard fallback
    if note is None and c.note.startswith("guard: "):
        note = c.note[len("guard: "):]
    return note or ""


def _choose(passing: List[Candidate], cands: List[Candidate], files: Dict[str, Path], wanted: List[str],
            profile: TargetProfile, metric: MetricSpec, arch_ok: bool, host_ok: bool, latency: Dict[str, object],
            feed: Dict[str, np.ndarray], deadline: float,
            measure: Optional[Callable[..., Dict[str, List[float]]]]) -> Tuple[Candidate, str]:
    pick = passing[0]
    what = f"{metric.name} {'>=' if metric.higher_is_better else '<='} {metric.threshold}"

    if not arch_ok or profile.is_gpu:
        latency["note"] = ("not measured: this host cannot run the target's "
                           + ("accelerator" if profile.is_gpu else "architecture"))
        why = "GPU latency cannot be timed on this CPU host" if profile.is_gpu else "the target's CPU is not this host's"
        return pick, (f"{pick.name}: the first of the profile's precisions ({', '.join(wanted)}) that meets {what} "
                      f"({pick.metric['value']:.4f}); {why}, so the choice follows the profile order")  # type: ignore[index]

    timed = [c for c in cands if c.metric is not None and (c.passed or c.precision == "fp32")]
    levels = {c.name: runtime_level_for(c.method, profile) for c in timed}
    rounds = (measure or measure_latency)({c.name: files[c.name] for c in timed}, feed, levels,
                             threads=profile.intra_op_threads or 2, deadline=max(deadline, time.monotonic() + 5))
    for c in timed:
        c.p50_ms = round(p50(rounds[c.name]), 4)
        latency[c.name] = c.p50_ms
    if not host_ok:
        missing = sorted(set(profile.isa_features) - _targets.host_cpu_flags())
        latency["note"] = (f"measured on this host, which lacks the target's {', '.join(missing)}: not representative "
                           "of the target and not used for the choice")
        return pick, (f"{pick.name}: the first of the profile's precisions ({', '.join(wanted)}) that meets {what} "
                      f"({pick.metric['value']:.4f}); this host lacks {', '.join(missing)}, so its timing cannot "  # type: ignore[index]
                      "rank candidates for the target")
    latency["note"] = "measured on this host, which has the target's ISA features (best of 3 runs per round, median of rounds)"
    fastest = min(passing, key=lambda c: p50(rounds[c.name]))
    floats = [c for c in passing if c.precision != "int8"]
    if pick.precision == "int8" and floats:
        best_float = min(floats, key=lambda c: p50(rounds[c.name]))
        if clearly_faster(rounds[best_float.name], rounds[pick.name], INT8_VS_FLOAT_MARGIN):
            return best_float, (f"{best_float.name}: {pick.name} met {what} but ran slower here ({pick.p50_ms} vs "
                                f"{best_float.p50_ms} ms), and int8 slower than float is never shipped")
    if fastest is not pick and clearly_faster(rounds[fastest.name], rounds[pick.name], LATENCY_MARGIN):
        return fastest, (f"{fastest.name}: meets {what} ({fastest.metric['value']:.4f}) and ran faster than "  # type: ignore[index]
                         f"{pick.name} here by more than {int(LATENCY_MARGIN * 100)}% ({fastest.p50_ms} vs {pick.p50_ms} ms)")
    speed = ""
    fp32 = next((c for c in timed if c.precision == "fp32"), None)
    if fp32 is not None and pick is not fp32 and pick.p50_ms:
        speed = f", {fp32.p50_ms / pick.p50_ms:.2f}x FP32 speed here"  # type: ignore[operator]
    return pick, (f"{pick.name}: the profile's first choice that meets {what} ({pick.metric['value']:.4f}{speed}); "  # type: ignore[index]
                  "no other candidate was clearly faster on this host")


def _nothing_passes(cands: List[Candidate], metric: MetricSpec, precision: str) -> AccuracyError:
    scored = [c for c in cands if c.metric is not None]
    if not scored:
        return AccuracyError(f"no candidate could be scored on this host for {metric.name}")
    best = scored[0]
    for c in scored[1:]:
        if metric.better(c.metric["value"], best.metric["value"]):  # type: ignore[index]
            best = c
    what = f"the forced precision {precision}" if precision != "auto" else "every allowed precision"
    notes = "; ".join(f"{c.name}: {c.note}" for c in cands if c.note and ("unreachable" in c.note or "guard" in c.note))
    return AccuracyError(
        f"{metric.name} misses its threshold with {what}: best {best.metric['value']:.4f} ({best.name}), "  # type: ignore[index]
        f"threshold {metric.threshold}" + (f" ({notes})" if notes else ""),
        hint="relax the threshold in edgekit.toml, or choose another precision",
        metric=metric.name, best=best.metric["value"], threshold=metric.threshold)  # type: ignore[index]
