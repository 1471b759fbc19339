"""HTML (one self-contained file) and Markdown (for CI logs) renderings of a set of runs."""
from __future__ import annotations

import html
import re
from typing import Any, Dict, List, Sequence

from ..cli.render import clean

from ..power.carbon import format_carbon, format_energy_mj, summary_rows
from .runs import RunRecord, fmt, fmt_cell, power_is_estimate, power_unavailable

SUMMARY_COLUMNS = [("device", "device"), ("target", "target"), ("release_id", "release"), ("provider", "provider"),
                   ("metric", "metric"), ("value", "value"), ("threshold", "threshold"), ("passed", "passed"),
                   ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"),
                   ("first_load_ms", "first load ms"), ("peak_rss_mb", "peak RSS MB")]
MAX_UNKNOWN_METRIC_COLUMNS = 8
"""Columns for metric keys no registered metric claims (a plugin the report's host did not load)."""
ESTIMATE_HEADING = "Power (ESTIMATE: CPU time x nominal watts, not a measurement)"
POWER_LABELS = {"above idle": "Energy per inference above idle"}
"""carbon.summary_rows() labels that need more words as a column heading."""

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left} .fail{color:#c62828;font-weight:600} .pass{color:#2e7d32}
img{max-width:100%;border:1px solid #eee;margin:.4em 0} .muted{color:#777;font-size:.85em}
"""


_MD_ACTIVE = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def md_text(value: Any) -> str:
    """A device-provided string as inert Markdown text: HTML escaped (CI logs render Markdown with
    inline HTML: no <img onerror>, no <script>), Markdown punctuation backslashed (no links, no
    table breaks), one line, no control characters."""
    text = clean(value, newlines=False)
    return _MD_ACTIVE.sub(r"\\\1", html.escape(text, quote=False))


def md_code(value: Any) -> str:
    """A device name as a code span when it is a plain name; anything else as escaped text (a
    backtick would close the span, and not every renderer keeps HTML inert inside one)."""
    text = clean(value, newlines=False)
    return f"`{text}`" if re.fullmatch(r"[\w.@:+-]+", text) else md_text(text)


def _cell(key: str, row: Dict[str, Any]) -> str:
    value = row.get(key)
    if key == "passed":
        cls = "pass" if value else "fail"
        return f'<td class="{cls}">{"pass" if value else "FAIL"}</td>'
    return f"<td>{html.escape(fmt_cell(key, row))}</td>"


def _table(columns: Sequence[tuple], rows: Sequence[Dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = "".join("<tr>" + "".join(_cell(k, r) for k, _ in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _power_row(r: RunRecord) -> Dict[str, Any]:
    """carbon.summary_rows() as one table row: its labels become columns, warnings are joined."""
    power = dict(r.power or {})
    power["is_estimate"] = power_is_estimate(power)  # summary_rows labels on this key alone
    row: Dict[str, Any] = {"device": r.device, "run": r.path.name}
    warnings = []
    for label, value in summary_rows(power):
        if label == "Warning":
            warnings.append(value)
        else:
            row[POWER_LABELS.get(label.strip(), label.strip())] = value
    if warnings:
        row["Warnings"] = "; ".join(warnings)
    return row


def _power_tables(runs: Sequence[RunRecord]) -> List[str]:
    """Measured and estimated figures in separate tables (never one beside the other), then the
    runs whose power measurement did not happen."""
    with_power = [r for r in runs if r.power]
    parts: List[str] = []
    for heading, estimate in (("Power (measured)", False), (ESTIMATE_HEADING, True)):
        rows = [_power_row(r) for r in with_power
                if not power_unavailable(r.power or {}) and power_is_estimate(r.power or {}) == estimate]
        if rows:
            labels = list(dict.fromkeys(k for row in rows for k in row if k not in ("device", "run")))
            parts += [f"<h2>{html.escape(heading)}</h2>",
                      _table([("device", "device"), ("run", "run")] + [(k, k) for k in labels], rows)]
    missing = [{"device": r.device, "run": r.path.name, "status": "unavailable",
                "reason": (r.power or {}).get("reason") or "no reason given"}
               for r in with_power if power_unavailable(r.power or {})]
    if missing:
        parts += ["<h2>Power (not measured)</h2>",
                  _table([("device", "device"), ("run", "run"), ("status", "status"), ("reason", "reason")], missing)]
    return parts


def _power_markdown(latest: Sequence[RunRecord]) -> List[str]:
    """One line per device whose latest run has a power dict: energy and carbon, estimates labelled."""
    lines = []
    for r in latest:
        power = r.power or {}
        if not power:
            continue
        if power_unavailable(power):
            lines.append(f"- {md_code(r.device)}: power unavailable ({md_text(power.get('reason') or 'no reason given')})")
            continue
        est = power_is_estimate(power)
        power = dict(power, is_estimate=est)
        kind = "**ESTIMATE**: CPU time x nominal watts, not a measurement" if est else "measured"
        lines.append(f"- {md_code(r.device)} ({md_text(power.get('sampler'))}, {kind}): "
                     f"{format_energy_mj(power.get('energy_per_inference_mj'))} per inference; {format_carbon(power)}")
    return ["", "**Power** (latest run per device)", ""] + lines if lines else []


def _guard_rows(latest: Sequence[RunRecord]) -> List[Dict[str, Any]]:
    rows = []
    for r in latest:
        g = r.guard if isinstance(r.guard, dict) else None
        if g is None:
            continue
        found = [f for f in g.get("findings") or [] if isinstance(f, dict)]
        for f in found or [{}]:
            rows.append({"device": r.device, "passed": bool(g.get("passed")), "output": _line(f.get("output")),
                         "slice": f.get("slice") if isinstance(f.get("slice"), int) else None,
                         "check": _line(f.get("check")), "finding": _line(f.get("message"))})
    return rows


def _line(value: Any, limit: int = 300) -> Any:
    """Device text on one bounded line (it is escaped again where it is rendered)."""
    return None if value is None else " ".join(str(value).split())[:limit]


def _guard_section(latest: Sequence[RunRecord]) -> List[str]:
    """Built-in guards per device: one row per finding (escaped: the text comes from the device)."""
    rows = _guard_rows(latest)
    if not rows:
        return []
    cols = [("device", "device"), ("passed", "guards"), ("output", "output"), ("slice", "slice"), ("check", "check"),
            ("finding", "finding")]
    return ["<h2>Guards (latest run per device)</h2>", _table(cols, rows)]


def metric_columns(latest: Sequence[RunRecord]) -> List[str]:
    """The agreement table's columns, from the metric registry: each metric's keys the runs hold
    (``top3`` with k = 3), a task metric's only when a run computed it; then, escaped and bounded,
    keys no registered metric claims (a device's plugin metric)."""
    from ..device.metrics import REGISTRY

    present = {k for r in latest for k in r.metrics}
    cols: List[str] = []
    for metric in REGISTRY.values():
        for key in metric.columns(present):
            if key not in cols and (not metric.task or any(r.metrics.get(key) is not None for r in latest)):
                cols.append(key)
    claimed = set(cols) | {m.key() for m in REGISTRY.values()}
    return cols + sorted(present - claimed)[:MAX_UNKNOWN_METRIC_COLUMNS]


def to_html(runs: Sequence[RunRecord], latest: Sequence[RunRecord], plots: Sequence[tuple], generated: str) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgekit report</title><style>{CSS}</style></head><body>",
             "<h1>edgekit validation report</h1>",
             f"<p class='muted'>generated {html.escape(generated)} from {len(runs)} run(s) on {len(latest)} device(s)</p>",
             "<h2>Fleet (latest run per device)</h2>", _table(SUMMARY_COLUMNS, [r.summary() for r in latest])]
    metric_cols = [("device", "device")] + [(k, k) for k in metric_columns(latest)]
    parts += ["<h2>Agreement with the reference (latest run per device)</h2>",
              _table(metric_cols, [dict(device=r.device, **r.metrics) for r in latest])]
    parts += _guard_section(latest)
    failed = [r for r in runs if r.error]
    if failed:
        parts.append("<h2>Failures</h2><ul>")
        parts += [f"<li><b>{html.escape(r.device)}</b> ({html.escape(r.path.name)}): "
                  f"<span class='fail'>{html.escape(str(r.error.get('kind', 'error')))}</span> "
                  f"{html.escape(str(r.error.get('message', '')))}</li>" for r in failed if r.error]
        parts.append("</ul>")
    for title, png in plots:
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    parts += _power_tables(runs)
    parts += ["<h2>All runs</h2>", _table(SUMMARY_COLUMNS[:8] + [("p50_ms", "p50 ms"), ("started", "started"),
                                                                 ("error", "error")], [r.summary() for r in runs])]
    parts.append("</body></html>")
    return "\n".join(parts)


def to_markdown(runs: Sequence[RunRecord], latest: Sequence[RunRecord], generated: str) -> str:
    cols = [("device", "device"), ("target", "target"), ("provider", "provider"), ("metric", "metric"),
            ("value", "value"), ("threshold", "threshold"), ("passed", "pass"), ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms")]
    lines = [f"## edgekit validation: {sum(1 for r in latest if r.ok)}/{len(latest)} device(s) passed",
             "", f"_{len(runs)} run(s), generated {generated}_", "",
             "| " + " | ".join(t for _, t in cols) + " |", "|" + "---|" * len(cols)]
    for r in latest:
        row = r.summary()
        cells = [("✅" if row["passed"] else "❌") if k == "passed" else md_text(fmt_cell(k, row)) for k, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [r for r in latest if r.error]
    if errors:
        lines += ["", "**Failures**", ""]
        lines += [f"- {md_code(r.device)}: {md_text((r.error or {}).get('message'))}" for r in errors]
    guard_rows = _guard_rows(latest)
    if guard_rows:
        lines += ["", "**Guards** (latest run per device)", ""]
        lines += [f"- {md_code(g['device'])}: " + ("pass" if g["passed"] else f"FAIL: {md_text(g['finding'])}")
                  for g in guard_rows]
    lines += _power_markdown(latest)
    return "\n".join(lines) + "\n"
