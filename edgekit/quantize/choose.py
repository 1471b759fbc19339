"""Choosing between the scored candidates: the profile's order, overridden by clear host timing."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import targets as _targets
from ..errors import AccuracyError, QuantizationError
from ..guard import describe
from ..metrics import MetricSpec
from ..targets import TargetProfile
from .evaluate import AA_SUFFIX, clearly_faster, measure_latency, noise_floor, p50
from . import registry
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
    passing = sorted((c for c in cands if c.passed and not c.refused), key=_order(wanted))  # stable: int8 variants keep order
    if not passing:
        raise _nothing_passes(cands, metric, precision)
    pick = passing[0]
    what = f"{metric.name} {'>=' if metric.higher_is_better else '<='} {metric.threshold}"

    if not arch_ok or profile.is_gpu:
        latency["note"] = ("not measured: this host cannot run the target's "
                           + ("accelerator" if profile.is_gpu else "architecture"))
        latency["decision"] = "profile order"
        why = "GPU latency cannot be timed on this CPU host" if profile.is_gpu else "the target's CPU is not this host's"
        return pick, (f"{pick.name}: the first of the profile's precisions ({', '.join(wanted)}) that meets {what} "
                      f"({pick.metric['value']:.4f}); {why}, so the choice follows the profile order"  # type: ignore[index]
                      + _refusals(cands, what, None))

    # Candidates refused despite meeting the threshold are timed too, so their reason can say how fast they were.
    timed = [c for c in cands if c.metric is not None and (c.passed or registry.is_reference(c.precision))]
    levels = {c.name: runtime_level_for(c.method, profile) for c in timed}
    fp32 = next((c for c in timed if registry.is_reference(c.precision)), None)
    control = (fp32 or pick).name
    threads = profile.intra_op_threads or 2
    rounds = (measure or measure_latency)({c.name: files[c.name] for c in timed}, feed, levels,
                                          threads=threads, deadline=max(deadline, time.monotonic() + 5),
                                          control=control)
    for c in timed:
        c.p50_ms = round(p50(rounds[c.name]), 4)
        latency[c.name] = c.p50_ms
    floor = _record_control(latency, rounds, control, threads)
    if not host_ok:
        missing = sorted(set(profile.isa_features) - _targets.host_cpu_flags())
        latency["note"] = (f"measured on this host, which lacks the target's {', '.join(missing)}: not representative "
                           "of the target and not used for the choice")
        latency["decision"] = "profile order"
        return pick, (f"{pick.name}: the first of the profile's precisions ({', '.join(wanted)}) that meets {what} "
                      f"({pick.metric['value']:.4f}); this host lacks {', '.join(missing)}, so its timing cannot "  # type: ignore[index]
                      "rank candidates for the target" + _refusals(cands, what, fp32))
    latency["note"] = ("measured on this host, which has the target's ISA features (best of 3 runs per round, median "
                       f"of rounds; {threads} intra-op threads, spinning off, an A/A control of {control})")
    latency["decision"] = "timing"
    fastest = min(passing, key=lambda c: p50(rounds[c.name]))
    # integer candidates (whatever their bit width) are never shipped slower than a float one
    floats = [c for c in passing if not registry.is_integer(c.precision)]
    inside = ""
    if registry.is_integer(pick.precision) and floats:
        best_float = min(floats, key=lambda c: p50(rounds[c.name]))
        if clearly_faster(rounds[best_float.name], rounds[pick.name], max(INT8_VS_FLOAT_MARGIN, floor)):
            return best_float, (f"{best_float.name}: {pick.name} met {what} but ran slower here ({pick.p50_ms} vs "
                                f"{best_float.p50_ms} ms, beyond the A/A noise floor of {floor:.1%}), and int8 "
                                "slower than float is never shipped" + _refusals(cands, what, fp32))
        if clearly_faster(rounds[best_float.name], rounds[pick.name], INT8_VS_FLOAT_MARGIN):
            inside = (f"{best_float.name} ran faster ({best_float.p50_ms} vs {pick.p50_ms} ms) but within the A/A "
                      f"noise floor of {floor:.1%}")
    if fastest is not pick:
        if clearly_faster(rounds[fastest.name], rounds[pick.name], max(LATENCY_MARGIN, floor)):
            return fastest, (f"{fastest.name}: meets {what} ({fastest.metric['value']:.4f}) and ran faster than "  # type: ignore[index]
                             f"{pick.name} here by more than {int(LATENCY_MARGIN * 100)}% and beyond the A/A noise "
                             f"floor of {floor:.1%} ({fastest.p50_ms} vs {pick.p50_ms} ms)" + _refusals(cands, what, fp32))
        if not inside and clearly_faster(rounds[fastest.name], rounds[pick.name], LATENCY_MARGIN):
            inside = (f"{fastest.name} ran more than {int(LATENCY_MARGIN * 100)}% faster ({fastest.p50_ms} vs "
                      f"{pick.p50_ms} ms) but within the A/A noise floor of {floor:.1%}")
    speed = ""
    if fp32 is not None and pick is not fp32 and pick.p50_ms:
        speed = f", {fp32.p50_ms / pick.p50_ms:.2f}x FP32 speed here"  # type: ignore[operator]
    if inside:
        latency["decision"] = "profile order (inside the noise floor)"
        return pick, (f"{pick.name}: the profile's first choice that meets {what} ({pick.metric['value']:.4f}{speed}); "  # type: ignore[index]
                      f"{inside}, so the difference is noise and the profile order holds" + _refusals(cands, what, fp32))
    return pick, (f"{pick.name}: the profile's first choice that meets {what} ({pick.metric['value']:.4f}{speed}); "  # type: ignore[index]
                  "no other candidate was clearly faster on this host" + _refusals(cands, what, fp32))


_MEASURED = (
    (re.compile(r"; measured [0-9.]+x FP32 speed here \([0-9.]+ vs [0-9.]+ ms\)"), ""),
    (re.compile(r"; measured [0-9.]+ ms here"), ""),
    (re.compile(r", [0-9.]+x FP32 speed here"), ""),
    (re.compile(r" \([0-9.]+ vs [0-9.]+ ms(, beyond the A/A noise floor of [0-9.]+%)?\)"), ""),
    (re.compile(r"noise floor of [0-9.]+%"), "noise floor"),
)


def without_measurements(reason: str) -> str:
    """``reason`` without the host's timings (the ms, speed ratios and noise floors this module
    writes into it): what the manifest records. Timings vary from build to build, and the manifest
    is hashed into the release id, so two builds that choose the same files must not differ there;
    the full text goes to the terminal and the build record."""
    for pattern, replacement in _MEASURED:
        reason = pattern.sub(replacement, reason)
    return reason


def _record_control(latency: Dict[str, object], rounds: Dict[str, List[float]], control: str, threads: int) -> float:
    """The A/A control's noise floor, recorded in ``latency``; 0 when the measurement has none."""
    twin = rounds.get(control + AA_SUFFIX)
    latency["threads"] = threads
    latency["allow_spinning"] = False
    if not twin:
        latency["noise_floor"] = None
        return 0.0
    floor = noise_floor(rounds[control], twin)
    latency["noise_floor"] = round(floor, 4)
    latency["aa_control"] = (f"{control} against itself, interleaved: {p50(rounds[control]):.4f} vs {p50(twin):.4f} ms "
                             f"(spread {floor:.1%})")
    return floor


GUARD_PREFIX = "guard: "
"""How a refusal by the built-in guards begins (Candidate.refused and note), so it can be named as such."""


def guard_refusal(c: Candidate) -> str:
    """Why the guards refused candidate ``c``: its findings in one line (empty when they did not)."""
    if c.metric is None:
        return ""
    if c.refused.startswith(GUARD_PREFIX):  # includes a guard fallback that left too little int8
        return c.refused[len(GUARD_PREFIX):]
    if c.guard and not c.guard.get("passed", True):
        return describe(c.guard, 2)
    note = next((p for p in c.note.split("; " + GUARD_PREFIX)[1:2]), None)  # missed the metric, guards failed too
    if note is None and c.note.startswith(GUARD_PREFIX):
        note = c.note[len(GUARD_PREFIX):]
    return note or ""


def _refusals(cands: List[Candidate], what: str, fp32: Optional[Candidate]) -> str:
    """'; X met ... but was refused: why (its measured speed)' for each candidate that met the
    threshold yet may not ship, so the reason never hides a candidate that was good enough."""
    parts = []
    for c in cands:
        if not (c.passed and c.refused):
            continue
        speed = ""
        if c.p50_ms and fp32 is not None and fp32.p50_ms:
            speed = f"; measured {fp32.p50_ms / c.p50_ms:.2f}x FP32 speed here ({c.p50_ms} vs {fp32.p50_ms} ms)"
        elif c.p50_ms:
            speed = f"; measured {c.p50_ms} ms here"
        why = (f"the guards refused it: {c.refused[len(GUARD_PREFIX):]}" if c.refused.startswith(GUARD_PREFIX)
               else f"was refused: {c.refused}")
        parts.append(f"; {c.name} met {what} ({c.metric['value']:.4f}) but {why}{speed}")  # type: ignore[index]
    return "".join(parts)


def _nothing_passes(cands: List[Candidate], metric: MetricSpec, precision: str) -> Exception:
    scored = [c for c in cands if c.metric is not None]
    if not scored:
        return AccuracyError(f"no candidate could be scored on this host for {metric.name}")
    best = scored[0]
    for c in scored[1:]:
        if metric.better(c.metric["value"], best.metric["value"]):  # type: ignore[index]
            best = c
    refused = [c for c in scored if c.passed and c.refused]
    if refused:  # good enough by the metric, refused for another stated reason: say that, not "misses"
        c = refused[0]
        return QuantizationError(
            f"{c.name} meets {metric.name} {'>=' if metric.higher_is_better else '<='} {metric.threshold} "
            f"({c.metric['value']:.4f}) but was refused: {c.refused}",  # type: ignore[index]
            hint="allow the float precisions (--precision auto), or fp32/fp16 directly")
    what = f"the forced precision {precision}" if precision != "auto" else "every allowed precision"
    notes = "; ".join(f"{c.name}: {c.note}" for c in cands if c.note and ("unreachable" in c.note or "guard" in c.note))
    return AccuracyError(
        f"{metric.name} misses its threshold with {what}: best {best.metric['value']:.4f} ({best.name}), "  # type: ignore[index]
        f"threshold {metric.threshold}" + (f" ({notes})" if notes else ""),
        hint="relax the threshold in edgekit.toml, or choose another precision",
        metric=metric.name, best=best.metric["value"], threshold=metric.threshold)  # type: ignore[index]
