"""``edgekit report``: turn run files (and the release log beside them) into one self-contained
HTML page, a Markdown summary for CI logs, and JSON. Plots are inline base64 PNGs (matplotlib
Agg), so the HTML travels alone. Each device is reported on the release current on it now (see
state.py): a canary rolled back after a failed validation is "rolled back", not "failed"."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pydantic import BaseModel, ConfigDict

from ..errors import AccuracyError, DeviceError, EdgekitError
from .releases import ReleaseEvent, load_events, record_deploy, record_rollback
from .runs import RunRecord, latest_per_device, load_runs, read_run
from .state import NOT_VALIDATED, ROLLED_BACK, DeviceState, fleet_state, history_rows

__all__ = ["ReportResult", "RunRecord", "build_report", "failure", "latest_per_device", "load_events", "load_runs",
           "read_run", "record_deploy", "record_rollback", "summarize"]


class ReportResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    html: Path
    markdown: Path
    json_path: Path
    runs: int
    devices: List[str]
    passed: int
    """Devices on a release whose latest run passed (a rolled-back canary included)."""
    failed: List[str] = []
    """Devices whose current release failed its latest run."""
    rolled_back: List[str] = []
    not_validated: List[str] = []
    plots: List[str]
    summary: List[Dict[str, Any]]
    """One row per device: its current release's latest run, with ``status`` and ``release_id``."""


def summarize(runs: Sequence[RunRecord], events: Sequence[ReleaseEvent] = (),
              states: Optional[Sequence[DeviceState]] = None) -> Dict[str, Any]:
    states = fleet_state(runs, events) if states is None else states
    history = {}
    for s in states:
        rows, _ = history_rows(s, limit=len(s.history))
        history[s.device] = rows
    return {"runs": [r.summary() for r in runs], "latest": [s.row() for s in states],
            "passed": sum(1 for s in states if s.passing), "devices": [s.device for s in states],
            "failed": [s.device for s in states if s.failing],
            "rolled_back": [s.device for s in states if s.status == ROLLED_BACK],
            "not_validated": [s.device for s in states if s.status == NOT_VALIDATED], "history": history}


def build_report(runs: Sequence[RunRecord], out_dir: Path, *, name: str = "report",
                 generated: Optional[str] = None, events: Sequence[ReleaseEvent] = ()) -> ReportResult:
    """Write ``<out_dir>/<name>.html``, ``.md`` and ``.json`` for ``runs`` (in time order) and the
    release log's ``events``."""
    from .plots import all_plots
    from .render import to_html, to_markdown

    generated = generated or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    states = fleet_state(runs, events)
    latest = [s.run for s in states if s.run is not None]
    plots = all_plots(latest, runs, states)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path, json_path = (out_dir / f"{name}.{ext}" for ext in ("html", "md", "json"))
    html_path.write_text(to_html(runs, latest, plots, generated, states), encoding="utf-8")
    md_path.write_text(to_markdown(runs, latest, generated, states), encoding="utf-8")
    summary = summarize(runs, events, states)
    summary["generated"] = generated
    json_path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return ReportResult(html=html_path, markdown=md_path, json_path=json_path, runs=len(runs),
                        devices=summary["devices"], passed=summary["passed"], failed=summary["failed"],
                        rolled_back=summary["rolled_back"], not_validated=summary["not_validated"],
                        plots=[t for t, _ in plots], summary=summary["latest"])


def failure(res: ReportResult) -> Optional[EdgekitError]:
    """For ``report --fail-on-failure``: the error when a device's current release fails (a runner
    error: DeviceError's exit code; a missed metric or guard: AccuracyError's), else None."""
    if not res.failed:
        return None
    rows = {r["device"]: r for r in res.summary}
    def one(d: str) -> str:
        error = rows[d].get("error")
        return f"{d} (release {rows[d].get('release_id') or '?'}" + (f": {' '.join(str(error).split())[:200]}" if error else "") + ")"

    what = "; ".join(one(d) for d in res.failed)
    cls = DeviceError if any(rows[d].get("error") for d in res.failed) else AccuracyError
    return cls(f"{len(res.failed)} of {len(res.devices)} device(s) fail on their current release: {what}",
               hint=f"details in {res.html}")
