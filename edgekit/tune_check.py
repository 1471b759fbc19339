"""The tuning result from a device, checked field by field before anything uses it.

Everything in it came from the device, so it is hostile until proven otherwise: numbers must be
finite and within bounds, names must be the plan's own, strings are cut short, lists are bounded.
Anything else is one line naming the field. What comes out is the compact, normalised form the
cache, the choice and the manifest use.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from .errors import DeviceError

MAX_ROUNDS = 1000
MAX_SAMPLES = 400
MAX_FINDINGS = 20


class _Bad(Exception):
    pass


def _num(value: Any, field: str, lo: float = -1e15, hi: float = 1e15, none: bool = False) -> Optional[float]:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise _Bad(f"field '{field}': expected a finite number in [{lo:g}, {hi:g}], got {_show(value)}")
    return float(value)


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"field '{field}': expected true or false, got {_show(value)}")
    return value


def _str(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else ""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


def _dict(value: Any, field: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"field '{field}': expected an object, got {_show(value)}")
    return value


def _list(value: Any, field: str, limit: int) -> List[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise _Bad(f"field '{field}': expected a list of at most {limit} items, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    return type(value).__name__ if isinstance(value, (dict, list)) else repr(value)[:60]


def _ms_list(value: Any, field: str, limit: int) -> List[float]:
    return [_num(v, f"{field}.{i}", 0.0, 1e7) for i, v in enumerate(_list(value, field, limit))]  # type: ignore[misc]


def _candidate(raw: Any, field: str) -> Dict[str, Any]:
    raw = _dict(raw, field)
    out: Dict[str, Any] = {"loaded": bool(raw.get("loaded") is True), "provider": _str(raw.get("provider"), 80)}
    if raw.get("error") is not None:
        err = _dict(raw["error"], f"{field}.error")
        out["error"] = {"kind": _str(err.get("kind"), 40), "message": _str(err.get("message"), 500)}
        return out
    m = _dict(raw.get("metric"), f"{field}.metric")
    out["metric"] = {"value": _num(m.get("value"), f"{field}.metric.value"),
                     "passed": _bool(m.get("passed"), f"{field}.metric.passed")}
    if m.get("subset_bar") is not None:
        out["metric"]["subset_bar"] = _num(m.get("subset_bar"), f"{field}.metric.subset_bar")
    g = raw.get("guard")
    if g is not None:
        g = _dict(g, f"{field}.guard")
        found = g.get("findings") if isinstance(g.get("findings"), list) else []
        out["guard"] = {"passed": _bool(g.get("passed"), f"{field}.guard.passed"),
                        "findings": [_str(f.get("message") if isinstance(f, dict) else f, 300)
                                     for f in found[:MAX_FINDINGS]]}
    else:
        out["guard"] = None
    if "latency" in raw:
        lat = _dict(raw["latency"], f"{field}.latency")
        for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms"):
            out[k] = _num(lat.get(k), f"{field}.latency.{k}", 0.0, 1e7)
        out["runs"] = int(_num(lat.get("runs"), f"{field}.latency.runs", 1, 1e9))  # type: ignore[arg-type]
        out["rounds_ms"] = _ms_list(raw.get("rounds_ms"), f"{field}.rounds_ms", MAX_ROUNDS)
        out["samples_ms"] = _ms_list(raw.get("samples_ms", []), f"{field}.samples_ms", MAX_SAMPLES)
    if raw.get("energy") is not None:
        e = _dict(raw["energy"], f"{field}.energy")
        measured = _bool(e.get("measured"), f"{field}.energy.measured")
        out["energy"] = {"measured": measured, "sampler": _str(e.get("sampler"), 40), "reason": _str(e.get("reason"))}
        if measured:
            for k in ("energy_per_inference_above_idle_mj", "energy_per_inference_mj", "idle_power_w", "mean_power_w"):
                out["energy"][k] = _num(e.get(k), f"{field}.energy.{k}", -1e9, 1e9, none=True)
            out["energy"]["warnings"] = [_str(w) for w in (e.get("warnings") or [])[:8]] \
                if isinstance(e.get("warnings"), list) else []
    return out


def checked_result(raw: Dict[str, Any], names: List[str], device: str) -> Dict[str, Any]:
    """The device's tuning result, checked; raises DeviceError naming the first bad field."""
    try:
        if raw.get("error") is not None:
            err = _dict(raw["error"], "error")
            raise DeviceError(f"device '{device}': tuning failed: {_str(err.get('message'), 500)}")
        if raw.get("ok") is not True:
            raise _Bad("field 'ok': the device did not report success")
        cands = _dict(raw.get("candidates"), "candidates")
        out: Dict[str, Any] = {"candidates": {}}
        for name in names:
            if name not in cands:
                raise _Bad(f"field 'candidates': '{_str(name, 80)}' is missing")
            out["candidates"][name] = _candidate(cands[name], f"candidates.{name}")
        t = _dict(raw.get("timing"), "timing")
        control = _str(t.get("control"), 80)
        if control not in names:
            raise _Bad(f"field 'timing.control': '{control}' is not a candidate of the plan")
        out["timing"] = {"rounds": int(_num(t.get("rounds"), "timing.rounds", 1, MAX_ROUNDS)),  # type: ignore[arg-type]
                         "stopped": _str(t.get("stopped"), 40), "control": control,
                         "allow_spinning": False, "threads": t.get("threads") if isinstance(t.get("threads"), int) else None,
                         "device_seconds": _num(raw.get("seconds"), "seconds", 0, 1e6)}
        out["aa_rounds_ms"] = _ms_list(t.get("aa_rounds_ms"), "timing.aa_rounds_ms", MAX_ROUNDS)
        return out
    except _Bad as exc:
        raise DeviceError(f"device '{device}': the tuning result is not valid: {exc}",
                          hint="the device's tune.py is not the one edgekit ships") from None


def _strs(value: Any, limit: int, each: int) -> List[str]:
    return [_str(v, each) for v in value[:limit] if isinstance(v, str)] if isinstance(value, list) else []


def checked_facts(raw: Dict[str, Any], device: str) -> Dict[str, Any]:
    """``tune.py facts`` from a device, reduced to bounded strings and lists (they reach the cache
    key, the manifest and the terminal)."""
    dev = raw.get("device") if isinstance(raw.get("device"), dict) else {}
    rt = raw.get("runtime") if isinstance(raw.get("runtime"), dict) else {}
    if rt.get("error") or not isinstance(rt.get("version"), str):
        raise DeviceError(f"device '{device}': onnxruntime cannot be imported there: {_str(rt.get('error'), 300)}",
                          hint=f"edgekit doctor --device {device}")
    emu = dev.get("emulated")
    out_dev: Dict[str, Any] = {
        "cpu_model": _str(dev.get("cpu_model"), 200) or None, "cpu_core": _str(dev.get("cpu_core"), 80) or None,
        "machine": _str(dev.get("machine"), 40), "cpu_features": _strs(dev.get("cpu_features"), 512, 40),
        "cpu_count": dev.get("cpu_count") if isinstance(dev.get("cpu_count"), int) else None}
    if emu:
        out_dev["emulated"] = {"qemu_cpu": _str(emu.get("qemu_cpu"), 64) if isinstance(emu, dict) else ""}
    return {"device": out_dev,
            "runtime": {"name": "onnxruntime", "version": _str(rt["version"], 40),
                        "providers": _strs(rt.get("providers"), 16, 64)},
            "power_sensors": _strs(raw.get("power_sensors"), 16, 40)}
