"""Energy from samples: pure functions over ``[(t, value)]`` (standard library only)."""
import bisect
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple


def cumulative_energy(samples, reading):
    # type: (Sequence[Tuple[float, float]], str) -> List[Tuple[float, float]]
    """[(t, value)] -> [(t, joules since the first sample)]: counters are differenced, power is
    integrated by the trapezoidal rule."""
    if not samples:
        return []
    if reading == "energy":
        e0 = samples[0][1]
        return [(t, v - e0) for t, v in samples]
    out = [(samples[0][0], 0.0)]
    acc = 0.0
    for (ta, wa), (tb, wb) in zip(samples, samples[1:]):
        acc += (tb - ta) * (wa + wb) / 2.0
        out.append((tb, acc))
    return out


def energy_over(cum, a, b):
    # type: (Sequence[Tuple[float, float]], float, float) -> Tuple[Optional[float], float]
    """Energy between times a and b, linearly interpolating the cumulative curve; the span is
    clipped to the samples. Returns (joules or None, seconds covered)."""
    if len(cum) < 2:
        return None, 0.0
    lo, hi = max(a, cum[0][0]), min(b, cum[-1][0])
    if hi <= lo:
        return None, 0.0
    return _interp(cum, hi) - _interp(cum, lo), hi - lo


def _interp(cum, t):
    # type: (Sequence[Tuple[float, float]], float) -> float
    times = [p[0] for p in cum]
    i = bisect.bisect_left(times, t)
    if i <= 0:
        return cum[0][1]
    if i >= len(cum):
        return cum[-1][1]
    (ta, ea), (tb, eb) = cum[i - 1], cum[i]
    if tb <= ta:
        return eb
    return ea + (eb - ea) * (t - ta) / (tb - ta)


def power_trace(samples, reading, min_dt):
    # type: (Sequence[Tuple[float, float]], str, float) -> List[Tuple[float, float]]
    """[(t, watts)]: power samples as they are; counters as the mean power between readings at
    least ``min_dt`` apart, placed at the middle of each interval."""
    if reading != "energy":
        return [(t, w) for t, w in samples]
    out = []
    anchor = samples[0] if samples else None
    for t, e in samples[1:]:
        if t - anchor[0] >= min_dt:
            out.append(((t + anchor[0]) / 2.0, (e - anchor[1]) / (t - anchor[0])))
            anchor = (t, e)
    return out


def carbon(energy_per_inference_j, idle_power_w, above_idle_per_inference_j, grid_g_per_kwh, requests_per_s):
    # type: (Optional[float], Optional[float], Optional[float], float, float) -> Dict[str, Any]
    """Grams of CO2 for 1000 inferences (at the measured, saturated throughput) and for a day
    of serving ``requests_per_s``: idle power all day plus the energy above idle per request."""
    g_per_j = grid_g_per_kwh / 3.6e6
    out = {"grid_g_per_kwh": grid_g_per_kwh, "requests_per_s": requests_per_s,
           "g_per_1000_inferences": None, "g_per_day_at_rps": None}  # type: Dict[str, Any]
    if energy_per_inference_j is None:
        return out
    out["g_per_1000_inferences"] = _r(energy_per_inference_j * 1000.0 * g_per_j)
    if idle_power_w is not None and above_idle_per_inference_j is not None:
        daily_j = 86400.0 * (idle_power_w + requests_per_s * max(above_idle_per_inference_j, 0.0))
        out["basis"] = "idle power all day + requests_per_s x energy above idle per inference"
    else:
        daily_j = 86400.0 * requests_per_s * energy_per_inference_j
        out["basis"] = "requests_per_s x energy per inference (no idle baseline)"
    out["g_per_day_at_rps"] = _r(daily_j * g_per_j)
    return out


def _r(x, digits=6):
    # type: (Optional[float], int) -> Optional[float]
    """Round to ``digits`` significant figures; None and non-finite values become None."""
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    if x == 0:
        return 0.0
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


