"""``edgekit report``: turn run files into one self-contained HTML page, a Markdown summary for
CI logs, and JSON. Plots are inline base64 PNGs (matplotlib Agg), so the HTML travels alone."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pydantic import BaseModel, ConfigDict

from .runs import RunRecord, latest_per_device, load_runs, read_run

__all__ = ["ReportResult", "RunRecord", "build_report", "latest_per_device", "load_runs", "read_run", "summarize"]


class ReportResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    html: Path
    markdown: Path
    json_path: Path
    runs: int
    devices: List[str]
    passed: int
    plots: List[str]
    summary: List[Dict[str, Any]]
    """One row per device (its latest run)."""


def summarize(runs: Sequence[RunRecord]) -> Dict[str, Any]:
    latest = latest_per_device(runs)
    return {"runs": [r.summary() for r in runs], "latest": [r.summary() for r in latest],
            "passed": sum(1 for r in latest if r.ok), "devices": [r.device for r in latest]}


def build_report(runs: Sequence[RunRecord], out_dir: Path, *, name: str = "report",
                 generated: Optional[str] = None) -> ReportResult:
    """Write ``<out_dir>/<name>.html``, ``.md`` and ``.json`` for ``runs`` (in time order)."""
    from .plots import all_plots
    from .render import to_html, to_markdown

    generated = generated or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    latest = latest_per_device(runs)
    plots = all_plots(latest, runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path, json_path = (out_dir / f"{name}.{ext}" for ext in ("html", "md", "json"))
    html_path.write_text(to_html(runs, latest, plots, generated), encoding="utf-8")
    md_path.write_text(to_markdown(runs, latest, generated), encoding="utf-8")
    summary = summarize(runs)
    summary["generated"] = generated
    json_path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return ReportResult(html=html_path, markdown=md_path, json_path=json_path, runs=len(runs),
                        devices=summary["devices"], passed=summary["passed"], plots=[t for t, _ in plots],
                        summary=summary["latest"])
