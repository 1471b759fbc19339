"""Reading run files (``runs/<UTC time>-<device>.json``) into values the renderers share."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from ..validate import RunFields


def power_unavailable(power: Dict[str, Any]) -> bool:
    """True for ``{"available": false, "reason": ...}``: no sampler ran, so there are no figures."""
    return not power.get("sampler")


def power_is_estimate(power: Dict[str, Any]) -> bool:
    """The CPU-time estimate, however it is flagged: it must never pass for a measurement."""
    return bool(power.get("is_estimate")) or power.get("sampler") == "estimate" or power.get("method") == "estimate"


class RunRecord(RunFields):
    """One validation run, as the runner wrote it plus the host's ``host`` block."""

    model_config = ConfigDict(extra="ignore")

    path: Path
    started: Optional[str] = None

    @property
    def has_trace(self) -> bool:
        return bool(self.power and isinstance(self.power.get("trace"), list) and self.power["trace"])

    def summary(self) -> Dict[str, Any]:
        """The flat row every table, the Markdown and the JSON show."""
        lat, m = self.latency, self.metric
        return {"device": self.device, "target": self.target, "release_id": self.release_id,
                "started": self.started, "ok": self.ok, "provider": self.runtime.get("provider"),
                "runtime": self.runtime.get("name"), "metric": m.get("name"), "value": m.get("value"),
                "threshold": m.get("threshold"),
                "passed": (m.get("passed") and all(c.get("passed") for c in m.get("also") or [])
                           and bool((self.guard or {}).get("passed", True))),
                "guards": None if self.guard is None else bool(self.guard.get("passed")),
                "p50_ms": lat.get("p50_ms"),
                "p90_ms": lat.get("p90_ms"), "p99_ms": lat.get("p99_ms"), "mean_ms": lat.get("mean_ms"),
                "first_load_ms": lat.get("first_load_ms"), "iterations": lat.get("iterations"),
                "peak_rss_mb": self.memory.get("peak_rss_mb"),
                "error": (self.error or {}).get("message"), "path": str(self.path), **self.power_summary()}

    def power_summary(self) -> Dict[str, Any]:
        """Flat power and carbon fields (None when the run has no such figure)."""
        pw = self.power or {}
        c = pw.get("carbon") if isinstance(pw.get("carbon"), dict) else {}
        return {"power_sampler": pw.get("sampler"),
                "power_is_estimate": None if power_unavailable(pw) else power_is_estimate(pw),
                "energy_per_inference_mj": pw.get("energy_per_inference_mj"),
                "energy_per_inference_above_idle_mj": pw.get("energy_per_inference_above_idle_mj"),
                "mean_power_w": pw.get("mean_power_w"), "carbon_g_per_1000_inferences": c.get("g_per_1000_inferences"),
                "carbon_g_per_day": c.get("g_per_day_at_rps"), "requests_per_s": c.get("requests_per_s"),
                "grid_g_per_kwh": c.get("grid_g_per_kwh")}


def read_run(path: Path) -> RunRecord:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read run file: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not a run file (invalid JSON: {exc})") from None
    if not isinstance(data, dict) or "schema" not in data:
        raise ConfigError(f"{path}: not a run file written by edgekit validate")
    host = data.get("host") or {}
    device = host.get("device") or (data.get("device") or {}).get("hostname") or Path(path).stem
    return RunRecord(path=Path(path), device=device, device_facts=data.get("device") or {},
                     **{k: v for k, v in data.items() if k in RunRecord.model_fields and k not in ("device", "path")})


def find_runs(paths: Sequence[Path] = (), runs_dir: Optional[Path] = None) -> List[Path]:
    """The named run files (a folder stands for its *.json), else every run in ``runs_dir``."""
    found: List[Path] = []
    for p in paths:
        p = Path(p)
        found.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    if not paths:
        folder = Path(runs_dir or "runs")
        found = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if not found:
            raise ConfigError(f"no runs in {folder}/", hint="run edgekit validate --device NAME first, or name run files")
    return found


def load_runs(paths: Sequence[Path] = (), runs_dir: Optional[Path] = None) -> List[RunRecord]:
    runs = [read_run(p) for p in find_runs(paths, runs_dir)]
    return sorted(runs, key=lambda r: (r.started or "", r.path.name))


def latest_per_device(runs: Sequence[RunRecord]) -> List[RunRecord]:
    latest: Dict[str, RunRecord] = {}
    for r in runs:  # runs are in time order, so the last one seen wins
        latest[r.device] = r
    return [latest[d] for d in sorted(latest)]


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers for tables: 3 significant decimals, '-' for missing, strings ('inf') as they are."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)
