"""Power in the report: one compact table for measurements, one for estimates (the ESTIMATE note
stated once, above it), the runs without power, and the Markdown lines.

Carbon per day is recomputed here from the run's own figures, because the device's figure adds
"idle power all day" and that term is only as good as the idle baseline:
- an ESTIMATE's idle baseline is this process's CPU time while it sleeps (the sampler's own
  overhead, microwatts that swing 10-100x between runs), not the board's idle draw, so the term is
  left out and the day counts the energy above idle per request;
- a measured idle below ``IDLE_NOISE_W`` is sensor noise and counts as 0.
The table says which rule applied; the run file keeps the device's figure unchanged.
"""
from __future__ import annotations

import html
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..power.carbon import format_energy_mj, format_grams
from .runs import RunRecord, power_is_estimate, power_unavailable

IDLE_NOISE_W = 1e-3
"""No board idles below a milliwatt: a lower idle reading is noise, and counts as 0 W."""
ESTIMATE_HEADING = "Power (ESTIMATE: CPU time x nominal watts, not a measurement)"
ESTIMATE_NOTE = ("ESTIMATE: these figures are this process's CPU seconds times the target's nominal watts per "
                 "core, not a measurement. Idle and static power, memory and accelerators are not counted; "
                 "carbon per day counts only the energy above idle per request.")
NOISE_NOTE = f"idle below {IDLE_NOISE_W * 1e3:g} mW is sensor noise: counted as 0 W in carbon per day"


def format_watts(w: Optional[float]) -> str:
    """Watts for people: 4.5 W, 37.9 mW; below a milliwatt only '< 1 mW' (no 3.79e-05 W)."""
    if w is None:
        return "-"
    if w == 0:
        return "0 W"
    a = abs(w)
    if a >= 1:
        return f"{w:.3g} W"
    if a >= IDLE_NOISE_W:
        return f"{w * 1e3:.3g} mW"
    return "< 1 mW"


def _num(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def carbon_per_day(power: Mapping[str, Any]) -> Tuple[Optional[float], Optional[str]]:
    """Grams of CO2 a day at the run's request rate, and the note saying how idle was counted
    (None when the idle baseline was used as measured). See the module docstring."""
    c = power.get("carbon") if isinstance(power.get("carbon"), dict) else {}
    grid, rps = _num(c.get("grid_g_per_kwh")), _num(c.get("requests_per_s"))
    above, per_inf = _num(power.get("energy_per_inference_above_idle_mj")), _num(power.get("energy_per_inference_mj"))
    idle = _num(power.get("idle_power_w"))
    if grid is None or rps is None or (above is None and per_inf is None):
        return _num(c.get("g_per_day_at_rps")), None
    note = None
    if above is None:  # no idle baseline at all: every request at its full energy
        assert per_inf is not None
        idle_w, request_j, note = 0.0, per_inf / 1e3, "no idle baseline: requests x energy per inference"
    else:
        idle_w, request_j = (idle or 0.0), max(above, 0.0) / 1e3
        if power_is_estimate(power):
            idle_w, note = 0.0, "ESTIMATE: energy above idle per request only"
        elif idle is not None and abs(idle) < IDLE_NOISE_W:
            idle_w, note = 0.0, NOISE_NOTE
    return 86400.0 * (idle_w + rps * request_j) * grid / 3.6e6, note


def carbon_text(power: Mapping[str, Any]) -> Tuple[str, str]:
    """(per 1000 inferences, per day at the rate) as text, e.g. ('3 mg', '5.5 g/day at 5 req/s')."""
    c = power.get("carbon") if isinstance(power.get("carbon"), dict) else {}
    day, _ = carbon_per_day(power)
    rps = _num(c.get("requests_per_s"))
    per_1000 = format_grams(_num(c.get("g_per_1000_inferences"))) if c.get("g_per_1000_inferences") is not None else "-"
    per_day = "-" if day is None else format_grams(day) + "/day" + (f" at {rps:g} req/s" if rps is not None else "")
    return per_1000, per_day


def _notes(power: Mapping[str, Any], estimate: bool) -> List[str]:
    """What a row needs said beyond its numbers: a stand-in sampler, its scope, warnings, the idle rule."""
    notes = []
    if power.get("requested") and power.get("requested") not in (power.get("sampler"), "auto"):
        notes.append(f"requested {power['requested']}: unavailable")
    if power.get("scope") and not estimate:
        notes.append(f"scope: {power['scope']}" + (f" ({power['scope_note']})" if power.get("scope_note") else ""))
    notes += [str(w) for w in power.get("warnings") or []]
    _, idle_note = carbon_per_day(power)
    if idle_note and not estimate:
        notes.append(idle_note)
    return [" ".join(n.split())[:300] for n in notes]


POWER_COLUMNS = [("device", "device"), ("per_inference", "energy per inference"), ("above_idle", "above idle"),
                 ("co2_day", "CO2 per day"), ("co2_1000", "CO2 per 1000 inferences"), ("mean", "mean power"),
                 ("idle", "idle power"), ("sampler", "sampler"), ("release_id", "release"), ("notes", "notes")]


def power_row(r: RunRecord, estimate: bool, footnotes: Dict[str, int]) -> Dict[str, Any]:
    """One compact row; long notes become numbered footnotes shared by the rows that have them."""
    power = r.power or {}
    per_1000, per_day = carbon_text(power)
    refs = []
    for note in _notes(power, estimate):
        refs.append(footnotes.setdefault(note, len(footnotes) + 1))
    return {"device": r.device, "release_id": r.release_id, "sampler": power.get("sampler"),
            "mean": format_watts(_num(power.get("mean_power_w"))), "idle": format_watts(_num(power.get("idle_power_w"))),
            "per_inference": format_energy_mj(_num(power.get("energy_per_inference_mj"))),
            "above_idle": format_energy_mj(_num(power.get("energy_per_inference_above_idle_mj"))),
            "co2_1000": per_1000, "co2_day": per_day, "notes": ", ".join(f"[{n}]" for n in refs) or "-"}


def power_sections(runs: Sequence[RunRecord], table: Any) -> List[str]:
    """HTML: measured and estimated figures in separate tables (never side by side), each with its
    footnotes; then the runs whose power measurement did not happen. ``table(columns, rows)``
    renders a table (render.py's, so cells are escaped the same way)."""
    with_power = [r for r in runs if r.power]
    parts: List[str] = []
    for heading, estimate in (("Power (measured)", False), (ESTIMATE_HEADING, True)):
        chosen = [r for r in with_power
                  if not power_unavailable(r.power or {}) and power_is_estimate(r.power or {}) == estimate]
        if not chosen:
            continue
        footnotes: Dict[str, int] = {}
        rows = [power_row(r, estimate, footnotes) for r in chosen]
        parts += [f"<h2>{html.escape(heading)}</h2>"]
        if estimate:
            parts.append(f"<p class='note'>{html.escape(ESTIMATE_NOTE)}</p>")
        parts.append(table(POWER_COLUMNS, rows))
        if footnotes:
            parts.append("<ol class='notes'>" + "".join(f"<li value='{n}'>{html.escape(text)}</li>"
                                                        for text, n in footnotes.items()) + "</ol>")
    missing = [{"device": r.device, "release_id": r.release_id, "status": "unavailable",
                "reason": " ".join(str((r.power or {}).get("reason") or "no reason given").split())[:300]}
               for r in with_power if power_unavailable(r.power or {})]
    if missing:
        parts += ["<h2>Power (not measured)</h2>",
                  table([("device", "device"), ("release_id", "release"), ("status", "status"), ("reason", "reason")],
                        missing)]
    return parts


def power_markdown(runs: Sequence[RunRecord], md_code: Any, md_text: Any) -> List[str]:
    """One line per device with power: energy and carbon, an estimate labelled once in its line."""
    lines = []
    for r in runs:
        power = r.power or {}
        if not power:
            continue
        if power_unavailable(power):
            lines.append(f"- {md_code(r.device)}: power unavailable ({md_text(power.get('reason') or 'no reason given')})")
            continue
        kind = "**ESTIMATE**: CPU time x nominal watts, not a measurement" if power_is_estimate(power) else "measured"
        per_1000, per_day = carbon_text(power)
        _, idle_note = carbon_per_day(power)
        lines.append(f"- {md_code(r.device)} ({md_text(power.get('sampler'))}, {kind}): "
                     f"{format_energy_mj(_num(power.get('energy_per_inference_mj')))} per inference; "
                     f"{per_1000} CO2 per 1000 inferences, {per_day}"
                     + (f" ({md_text(idle_note)})" if idle_note else ""))
    return ["", "**Power** (current release per device)", ""] + lines if lines else []
