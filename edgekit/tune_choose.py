"""Choosing from the device's numbers: the objective among the candidates that passed on the host and on
the device, the host's own choice kept where the difference is inside the A/A noise floor."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .errors import AccuracyError, DeviceError
from .quantize.evaluate import clearly_faster, noise_floor

TAIL_MARGIN = 0.05
"""p99 and energy have no per-round pairs to agree on: another candidate must beat the default by
more than this and the A/A floor."""
KEY = {"latency": ("p50_ms", "p50"), "p99": ("p99_ms", "p99"), "energy": ("energy_mj", "mJ/inference above idle")}


def host_choice(q: Any) -> Optional[str]:
    for name, path in q.candidate_files.items():
        if Path(path) == Path(q.model_path):
            return str(name)
    return None


def _why_not(c: Any, d: Dict[str, Any]) -> str:
    if not (c.passed and not c.refused):
        return "the A/A control (FP32 did not meet the metric on the host)" if not c.passed else f"refused on the host: {c.refused}"
    if d.get("error"):
        return f"failed on the device: {d['error']['message']}"
    if not d["metric"]["passed"]:
        return f"missed the metric on the device ({d['metric']['value']:.4f})"
    if d.get("guard") and not d["guard"]["passed"]:
        return "the guards refused it on the device: " + "; ".join(d["guard"]["findings"][:2])
    return ""


def table(cands: List[Any], result: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    for c in cands:
        d = result["candidates"][c.name]
        energy = d.get("energy") or {}
        row: Dict[str, Any] = {
            "name": c.name, "precision": c.precision, "method": c.method,
            "host_metric": (c.metric or {}).get("value"), "provider": d.get("provider") or None,
            "metric": (d.get("metric") or {}).get("value"), "metric_passed": (d.get("metric") or {}).get("passed"),
            "guard": None if d.get("guard") is None else ("pass" if d["guard"]["passed"] else "fail"),
            "guard_findings": (d.get("guard") or {}).get("findings", [])[:3],
            "p50_ms": _r(d.get("p50_ms")), "p99_ms": _r(d.get("p99_ms")), "runs": d.get("runs"),
            "energy_mj": _r(energy.get("energy_per_inference_above_idle_mj")) if energy.get("measured") else None,
            "energy_note": ("" if energy.get("measured") else energy.get("reason") or "no power sensor sampled"),
        }
        row["refused"] = _why_not(c, d)
        row["eligible"] = not row["refused"]
        rows.append(row)
    return rows


def _r(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(float(x), 4)


def choose(q: Any, cands: List[Any], result: Dict[str, Any], opts: Any) -> Tuple[str, str, List[Dict[str, Any]]]:
    """(chosen name, one-sentence reason, the table for the manifest)."""
    rows = table(cands, result)
    by = {r["name"]: r for r in rows}
    dev = opts.device
    ok = [r for r in rows if r["eligible"]]
    if not ok:
        raise AccuracyError(f"no candidate passed on device '{dev}': "
                            + "; ".join(f"{r['name']}: {r['refused']}" for r in rows),
                            hint="validate the host's choice there (edgekit deploy + validate) to see the device's outputs")
    key, label = KEY[opts.objective]
    if opts.objective == "energy":
        if any(r["energy_mj"] is None for r in ok):
            raise DeviceError(f"device '{dev}' measured no energy ({ok[0]['energy_note'] or 'no sensor'}): "
                              "--objective energy needs a power sensor", hint="use --objective latency or p99")
    limit, lkey = ((opts.max_p99_ms, "p99_ms") if opts.max_p99_ms is not None else
                   (opts.max_p50_ms, "p50_ms") if opts.max_p50_ms is not None else (None, ""))
    if limit is not None:
        within = [r for r in ok if r[lkey] is not None and r[lkey] <= limit]
        if not within:
            best = min(ok, key=lambda r: r[lkey])
            raise AccuracyError(f"no candidate that passed on device '{dev}' has {lkey[:3]} <= {limit:g} ms: the lowest "
                                f"was {best[lkey]} ms ({best['name']})", hint=f"relax --max-{lkey[:3]}-ms")
        ok = within
    ctrl = result["timing"]["control"]
    floor = noise_floor(result["candidates"][ctrl].get("rounds_ms") or [], result["aa_rounds_ms"])
    result["timing"]["noise_floor"] = round(floor, 4)
    best = min(ok, key=lambda r: r[key])
    host = host_choice(q)
    default = by[host] if host in by and by[host] in ok else ok[0]
    what = f"{label} on '{dev}'"
    bound = f" among those with {lkey[:3]} <= {limit:g} ms" if limit is not None else ""
    passed = f"met the metric ({best['metric']:.4f}) and the guards there"
    if best is default:
        return best["name"], (f"{best['name']}: the lowest {what}{bound} ({best[key]}); it {passed}"
                              + _host_note(host, best["name"])), rows
    if opts.objective == "latency":
        beyond = clearly_faster(result["candidates"][best["name"]]["rounds_ms"],
                                result["candidates"][default["name"]]["rounds_ms"], floor)
    else:
        beyond = default[key] - best[key] > max(TAIL_MARGIN, floor) * abs(default[key])
    if not beyond:
        return default["name"], (f"{default['name']}: {best['name']} had a lower {what} ({best[key]} vs "
                                 f"{default[key]}) but within the A/A noise floor of {floor:.1%}, so "
                                 f"{'the host' if default['name'] == host else 'the profile'}'s choice holds"), rows
    return best["name"], (f"{best['name']}: the lowest {what}{bound} ({best[key]} vs {default[key]} for "
                          f"{default['name']}, beyond the A/A noise floor of {floor:.1%}); it {passed}"
                          + _host_note(host, best["name"])), rows


def _host_note(host: Optional[str], chosen: str) -> str:
    if host is None or host == chosen:
        return "; the host chose it too" if host == chosen else ""
    return f"; the host had chosen {host}"
