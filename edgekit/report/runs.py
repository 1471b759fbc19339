"""Reading run files (``runs/<UTC time>-<device>.json``) into values the renderers share."""
from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from pydantic import ConfigDict

from ..errors import ConfigError
from .releases import parse_time
from .schema import RunFields, RunFileError, max_result_bytes, read_result

HOST_BLOCK_ALLOWANCE = 64 * 1024
"""A stored run is the device's result plus the host's small ``host`` block."""


def power_unavailable(power: Dict[str, Any]) -> bool:
    """True for ``{"available": false, "reason": ...}``: no sampler ran, so there are no figures."""
    return not power.get("sampler")


def power_is_estimate(power: Dict[str, Any]) -> bool:
    """The CPU-time estimate, however it is flagged: it must never pass for a measurement."""
    return bool(power.get("is_estimate")) or power.get("sampler") == "estimate" or power.get("method") == "estimate"


_STAMP = re.compile(r"(\d{8}T\d{6}Z)-")


class RunRecord(RunFields):
    """One validation run, as the runner wrote it plus the host's ``host`` block."""

    model_config = ConfigDict(extra="ignore")

    path: Path
    started: Optional[str] = None
    mtime: Optional[float] = None
    """When the file was last written (the host's clock), to place the run within its file name's second."""

    @property
    def when(self) -> datetime:
        """When the host stored the run: the UTC second in its file name, refined by the file's
        mtime when that falls within the same second (a copied file's does not); else the device's
        ``started``; runs with neither sort first."""
        stamp = _STAMP.match(self.path.name)
        named = parse_time(stamp.group(1)) if stamp else None
        if named is None:
            return parse_time(self.started) or datetime.min.replace(tzinfo=timezone.utc)
        if self.mtime is not None and 0 <= self.mtime - named.timestamp() < 1:
            return datetime.fromtimestamp(self.mtime, timezone.utc)
        return named

    @property
    def emulated(self) -> bool:
        """Run on an emulated board (qemu-user): its latency is not the board's."""
        return bool(self.device_facts.get("emulated"))

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
                "peak_rss_mb": self.memory.get("peak_rss_mb"), "emulated": self.emulated,
                "error": (self.error or {}).get("message"), "path": str(self.path), **self.power_summary()}

    def power_summary(self) -> Dict[str, Any]:
        """Flat power and carbon fields (None when the run has no such figure). ``carbon_g_per_day``
        is the report's figure (idle noise and an estimate's idle left out, see energy.py; the note
        says which), ``carbon_g_per_day_device`` the one in the run file."""
        from .energy import carbon_per_day  # energy.py renders runs: imported here, not at the top

        pw = self.power or {}
        c = pw.get("carbon") if isinstance(pw.get("carbon"), dict) else {}
        day, note = carbon_per_day(pw) if pw and not power_unavailable(pw) else (None, None)
        return {"power_sampler": pw.get("sampler"),
                "power_is_estimate": None if power_unavailable(pw) else power_is_estimate(pw),
                "energy_per_inference_mj": pw.get("energy_per_inference_mj"),
                "energy_per_inference_above_idle_mj": pw.get("energy_per_inference_above_idle_mj"),
                "mean_power_w": pw.get("mean_power_w"), "idle_power_w": pw.get("idle_power_w"),
                "carbon_g_per_1000_inferences": c.get("g_per_1000_inferences"),
                "carbon_g_per_day": day, "carbon_g_per_day_note": note, "carbon_g_per_day_device": c.get("g_per_day_at_rps"),
                "requests_per_s": c.get("requests_per_s"), "grid_g_per_kwh": c.get("grid_g_per_kwh")}


def read_run(path: Path) -> RunRecord:
    """One run file, checked against the result schema (size, depth, field types) like a fresh result."""
    try:
        data = read_result(Path(path), max_result_bytes() + HOST_BLOCK_ALLOWANCE)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read run file: {exc.strerror or exc}") from None
    except RunFileError as exc:
        raise ConfigError(f"{path}: not a run file written by edgekit validate ({exc})") from None
    host = data.get("host") or {}
    facts = data.get("device") or {}
    device = host.get("device") or (facts.get("hostname") if isinstance(facts.get("hostname"), str) else None) \
        or Path(path).stem
    try:
        mtime: Optional[float] = os.stat(path).st_mtime
    except OSError:
        mtime = None
    return RunRecord(path=Path(path), device=device, device_facts=facts, mtime=mtime,
                     **{k: v for k, v in data.items() if k in RunRecord.model_fields
                        and k not in ("device", "path", "mtime")})


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


def load_runs(paths: Sequence[Path] = (), runs_dir: Optional[Path] = None,
              warn: Optional[Callable[[str], None]] = None) -> List[RunRecord]:
    """The run files, in time order. A bad file is skipped, and ``warn`` gets its one line (file and
    field), so one damaged or hostile run cannot hide every other; when no file is good, the first
    file's error is raised."""
    runs: List[RunRecord] = []
    errors: List[ConfigError] = []
    for p in find_runs(paths, runs_dir):
        try:
            runs.append(read_run(p))
        except ConfigError as exc:
            errors.append(exc)
            if warn is not None:
                warn(f"skipped {exc.message}")
    if errors and not runs:
        raise errors[0]
    return sorted(runs, key=lambda r: (r.started or "", r.path.name))


def latest_per_device(runs: Sequence[RunRecord]) -> List[RunRecord]:
    latest: Dict[str, RunRecord] = {}
    for r in runs:  # runs are in time order, so the last one seen wins
        latest[r.device] = r
    return [latest[d] for d in sorted(latest)]


EMULATED_NOTE = "emulated, not representative"
LATENCY_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "first_load_ms")


def fmt_cell(key: str, row: Dict[str, Any]) -> str:
    """``fmt`` of ``row[key]``, with an emulated board's latency labelled as such."""
    text = fmt(row.get(key))
    if row.get("emulated") and key in LATENCY_KEYS and row.get(key) is not None:
        text += f" ({EMULATED_NOTE})"
    return text


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers for tables: 3 significant decimals, '-' for missing, strings ('inf') as they are."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)
