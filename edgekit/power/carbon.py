"""Formatting and comparison of the ``power`` dict in a result JSON (see ``measure()``)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

from edgekit.device.power import DEFAULT_GRID_G_PER_KWH
from edgekit.errors import ConfigError

MAX_PLAUSIBLE_G_PER_KWH = 2000.0
"""Lignite plants emit about 1100-1200 g/kWh; no grid average comes near 2000."""


def check_grid_intensity(value: Optional[float]) -> float:
    """The grid intensity to use (gCO2/kWh): the default when None, else a checked number."""
    if value is None:
        return DEFAULT_GRID_G_PER_KWH
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"grid intensity {value!r} is not a number",
                          hint="give grams of CO2 per kWh, e.g. 481 (world average, 2023)") from None
    if not math.isfinite(v) or v < 0 or v > MAX_PLAUSIBLE_G_PER_KWH:
        raise ConfigError(f"grid intensity {v:g} gCO2/kWh is outside 0..{MAX_PLAUSIBLE_G_PER_KWH:g}",
                          hint="give grams of CO2 per kWh (not kg, not per MWh)")
    return v


def format_grams(g: Optional[float]) -> str:
    if g is None:
        return "n/a"
    a = abs(g)
    if a >= 1000:
        return f"{g / 1000:.3g} kg"
    if a >= 1 or a == 0:
        return f"{g:.3g} g"
    if a >= 1e-3:
        return f"{g * 1e3:.3g} mg"
    return f"{g * 1e6:.3g} µg"


def format_energy_mj(mj: Optional[float]) -> str:
    if mj is None:
        return "n/a"
    if abs(mj) >= 1000:
        return f"{mj / 1000:.3g} J"
    if abs(mj) >= 0.1 or mj == 0:
        return f"{mj:.3g} mJ"
    return f"{mj * 1000:.3g} µJ"


def _label(power: Mapping[str, Any]) -> str:
    return " (ESTIMATE)" if power.get("is_estimate") else ""


def format_carbon(power: Mapping[str, Any]) -> str:
    """One line: grams of CO2 per 1000 inferences and per day at the configured request rate."""
    from ..report.energy import carbon_per_day  # the report's rule, so the terminal and the report agree

    c = power.get("carbon") or {}
    if c.get("g_per_1000_inferences") is None:
        return "carbon: n/a (no energy per inference)"
    # An estimate's idle figure is the sampler's own CPU use, which swings 10-100x between runs:
    # per day counts what the report counts (requests x energy above idle), and says so.
    day, note = carbon_per_day(power)
    return (f"{format_grams(c['g_per_1000_inferences'])} CO2 per 1000 inferences, "
            f"{format_grams(day)}/day at {c.get('requests_per_s', 1):g} req/s "
            f"(grid {c.get('grid_g_per_kwh', DEFAULT_GRID_G_PER_KWH):g} g/kWh){_label(power)}"
            + (f"; {note}" if note else ""))


def summary_rows(power: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """(label, value) rows for a report table."""

    def w(x: Optional[float]) -> str:
        return "n/a" if x is None else f"{x:.3g} W"

    sampler = str(power.get("sampler"))
    if power.get("requested") and power.get("requested") != power.get("sampler"):
        sampler += f" (requested {power['requested']}: unavailable)"
    rows = [
        ("Sampler", sampler),
        ("Scope", f"{power.get('scope')} - {power.get('scope_note') or ''}".rstrip(" -")),
        ("Method", str(power.get("method")) + _label(power)),
        ("Mean power", w(power.get("mean_power_w"))),
        ("Idle power", w(power.get("idle_power_w"))),
        ("Energy per inference", format_energy_mj(power.get("energy_per_inference_mj")) + _label(power)),
        ("  above idle", format_energy_mj(power.get("energy_per_inference_above_idle_mj")) + _label(power)),
        ("Carbon", format_carbon(power)),
        ("Samples", f"{power.get('samples')} over {power.get('window_s')} s at {power.get('rate_hz')} Hz"),
    ]
    for warning in power.get("warnings") or []:
        rows.append(("Warning", str(warning)))
    return rows


def compare_energy(baseline: Mapping[str, Any], candidate: Mapping[str, Any]) -> Dict[str, Any]:
    """How much energy per inference ``candidate`` (e.g. int8) saves against ``baseline`` (fp32).

    Figures are compared only when they are alike: the same sampler and scope, both measured or
    both estimates (an estimate is never set against a measurement).
    """
    out: Dict[str, Any] = {"comparable": False, "ratio": None, "saving_pct": None,
                           "is_estimate": bool(baseline.get("is_estimate") or candidate.get("is_estimate"))}
    if bool(baseline.get("is_estimate")) != bool(candidate.get("is_estimate")):
        out["reason"] = "one figure is an estimate and the other a measurement"
        return out
    if (baseline.get("sampler"), baseline.get("scope")) != (candidate.get("sampler"), candidate.get("scope")):
        out["reason"] = (f"different sensors: {baseline.get('sampler')} ({baseline.get('scope')}) vs "
                         f"{candidate.get('sampler')} ({candidate.get('scope')})")
        return out
    b, c = baseline.get("energy_per_inference_mj"), candidate.get("energy_per_inference_mj")
    if not b or c is None:
        out["reason"] = "energy per inference is missing"
        return out
    out.update(comparable=True, ratio=c / b, saving_pct=(1.0 - c / b) * 100.0)
    bc, cc = (baseline.get("carbon") or {}), (candidate.get("carbon") or {})
    if bc.get("g_per_day_at_rps") is not None and cc.get("g_per_day_at_rps") is not None:
        out["g_per_day_saved"] = bc["g_per_day_at_rps"] - cc["g_per_day_at_rps"]
    return out
