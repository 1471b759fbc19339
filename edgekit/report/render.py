"""HTML (one self-contained file) and Markdown (for CI logs) renderings of a set of runs."""
from __future__ import annotations

import html
import re
from typing import Any, Dict, List, Optional, Sequence

from ..cli.render import clean

from .energy import power_markdown, power_sections
from .runs import RunRecord, fmt_cell
from .state import NOT_VALIDATED, PASS, DeviceState, fleet_state, history_rows, run_problem

SUMMARY_COLUMNS = [("device", "device"), ("status", "status"), ("release_id", "release"), ("target", "target"),
                   ("metric", "metric"), ("value", "value"), ("threshold", "threshold"),
                   ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")]
"""The fleet at a glance: narrow enough for a laptop screen without scrolling; on a phone the
device and its status come first (the table scrolls, the device column stays)."""
PERFORMANCE_COLUMNS = [("device", "device"), ("release_id", "release"), ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"),
                       ("p99_ms", "p99 ms"), ("mean_ms", "mean ms"), ("iterations", "runs timed"),
                       ("first_load_ms", "first load ms"), ("peak_rss_mb", "peak RSS MB"),
                       ("provider", "execution provider"), ("runtime", "runtime")]
HISTORY_COLUMNS = [("time", "time (UTC)"), ("event", "event"), ("result", "result"), ("release_id", "release"),
                   ("metric", "metric"), ("value", "value"), ("p50_ms", "p50 ms"), ("note", "note")]
MAX_UNKNOWN_METRIC_COLUMNS = 8
"""Columns for metric keys no registered metric claims (a plugin the report's host did not load)."""
WRAP_KEYS = frozenset({"note", "reason", "finding", "error", "what"})
"""Free-text cells: they wrap (every other cell stays on one line, so 'raspberry-pi-5' never breaks)."""
TEXT_KEYS = WRAP_KEYS | {"device", "target", "release_id", "status", "metric", "provider", "sampler", "event",
                         "result", "time", "check", "output", "run", "notes", "passed", "runtime"}
"""Left-aligned columns (numbers align right)."""
STATUS_CLASS = {PASS: "pass", "failed": "fail", "rolled back": "back", NOT_VALIDATED: "muted"}

# Wide tables scroll inside their own box (.scroll), so the page never scrolls sideways at any
# width; long words in text break instead of widening the page.
CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;padding:1em 1.5em;color:#222;
max-width:1400px;overflow-wrap:anywhere}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd} h3{font-size:1em;margin:1em 0 .2em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.4em 0;font-size:.88em;overflow-wrap:normal}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom} .l{text-align:left}
td.wrap{white-space:normal;overflow-wrap:anywhere;min-width:14em;max-width:36em}
.scroll td:first-child{position:sticky;left:0;background:#fff} .scroll th:first-child{position:sticky;left:0}
.fail{color:#c62828;font-weight:600} .pass{color:#2e7d32} .back{color:#a15c00;font-weight:600}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0} .muted{color:#777;font-size:.85em}
.note{background:#fff8e1;border-left:4px solid #f9a825;padding:.4em .7em;font-size:.9em}
ol.notes{font-size:.82em;color:#444;margin:.2em 0 1em;padding-left:2em}
@media (max-width:640px){body{padding:.6em .7em} table{font-size:.8em}}
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
        return f'<td class="l {cls}">{"pass" if value else "FAIL"}</td>'
    if key in ("status", "result") and value in STATUS_CLASS:
        return f'<td class="l {STATUS_CLASS[value]}">{html.escape(value)}</td>'
    text, title = fmt_cell(key, row), ""
    if key == "provider" and text.endswith("ExecutionProvider") and len(text) > len("ExecutionProvider"):
        # CPU, CUDA, XNNPACK: the suffix only widens the table (the full name stays in the tooltip)
        text, title = text[:-len("ExecutionProvider")], f' title="{html.escape(text)}"'
    cls = " ".join(c for c, on in (("l", key in TEXT_KEYS), ("wrap", key in WRAP_KEYS)) if on)
    return f'<td class="{cls}"{title}>{html.escape(text)}</td>' if cls else f"<td>{html.escape(text)}</td>"


def _table(columns: Sequence[tuple], rows: Sequence[Dict[str, Any]]) -> str:
    head = "".join(f"<th class='l'>{html.escape(t)}</th>" if k in TEXT_KEYS else f"<th>{html.escape(t)}</th>"
                   for k, t in columns)
    body = "".join("<tr>" + "".join(_cell(k, r) for k, _ in columns) + "</tr>" for r in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _guard_rows(latest: Sequence[RunRecord]) -> List[Dict[str, Any]]:
    rows = []
    for r in latest:
        g = r.guard if isinstance(r.guard, dict) else None
        if g is None:
            continue
        found = [f for f in g.get("findings") or [] if isinstance(f, dict)]
        for f in found or [{}]:
            rows.append({"device": r.device, "release_id": r.release_id, "passed": bool(g.get("passed")),
                         "output": _line(f.get("output")), "slice": f.get("slice") if isinstance(f.get("slice"), int) else None,
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
    cols = [("device", "device"), ("release_id", "release"), ("passed", "guards"), ("output", "output"),
            ("slice", "slice"), ("check", "check"), ("finding", "finding")]
    return ["<h2>Guards (current release per device)</h2>", _table(cols, rows)]


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


def problems(states: Sequence[DeviceState]) -> List[Dict[str, Any]]:
    """Devices that failed or were rolled back: device, release, what happened (one line each)."""
    out = []
    for s in states:
        if s.failing and s.run is not None:
            out.append({"device": s.device, "release_id": s.current, "status": s.status,
                        "what": _line(s.row()["error"] or run_problem(s.run))})
        elif s.status == "rolled back" or s.rolled_back_from is not None:
            why = s.row()["rolled_back_error"]
            out.append({"device": s.device, "release_id": s.rolled_back_from, "status": s.status,
                        "what": _line(f"release {s.rolled_back_from or '-'} " + (f"failed ({why}); " if why else "")
                                      + f"rolled back to {s.current or 'no release'}")})
    return out


def _history_section(states: Sequence[DeviceState]) -> List[str]:
    parts = ["<h2>History (per device, newest first)</h2>"]
    for s in states:
        rows, older = history_rows(s)
        parts += [f"<h3>{html.escape(s.device)}</h3>", _table(HISTORY_COLUMNS, rows)]
        if older:
            parts.append(f"<p class='muted'>{older} older entr{'y' if older == 1 else 'ies'} not shown (see report.json)</p>")
    return parts


TRACE_PREFIX = "Power trace: "


def _img(title: str, png: str) -> str:
    return f"<img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"


def _counts(states: Sequence[DeviceState]) -> str:
    passed = sum(1 for s in states if s.passing)
    extra = [f"{n} {label}" for label, n in
             (("rolled back", sum(1 for s in states if s.status == "rolled back")),
              ("failed", sum(1 for s in states if s.failing)),
              (NOT_VALIDATED, sum(1 for s in states if s.status == NOT_VALIDATED))) if n]
    return f"{passed}/{len(states)} device(s) passed" + (f" ({', '.join(extra)})" if extra else "")


def to_html(runs: Sequence[RunRecord], latest: Sequence[RunRecord], plots: Sequence[tuple], generated: str,
            states: Optional[Sequence[DeviceState]] = None) -> str:
    """``latest``: the run of each device's current release (the agreement, guards and power
    sections); ``states``: each device's release and status (the fleet table, failures, history),
    worked out from ``runs`` when not given."""
    states = fleet_state(runs) if states is None else states
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>edgekit report</title><style>{CSS}</style></head><body>",
             "<h1>edgekit validation report</h1>",
             f"<p><b>{html.escape(_counts(states))}</b></p>",
             f"<p class='muted'>generated {html.escape(generated)} from {len(runs)} run(s) on {len(states)} device(s); "
             "each device is shown on the release current on it now (a rolled-back canary on the release it went back to)</p>",
             "<h2>Fleet (current release per device)</h2>", _table(SUMMARY_COLUMNS, [s.row() for s in states])]
    metric_cols = [("device", "device"), ("release_id", "release")] + [(k, k) for k in metric_columns(latest)]
    parts += ["<h2>Agreement with the reference (current release per device)</h2>",
              _table(metric_cols, [{**r.metrics, "device": r.device, "release_id": r.release_id} for r in latest])]
    parts += ["<h2>Latency and memory (current release per device)</h2>",
              _table(PERFORMANCE_COLUMNS, [r.summary() for r in latest])]
    parts += _guard_section(latest)
    bad = problems(states)
    if bad:
        parts += ["<h2>Failures and rollbacks</h2>",
                  _table([("device", "device"), ("release_id", "release"), ("status", "status"), ("what", "what happened")],
                         bad)]
    traces = [(t, p) for t, p in plots if t.startswith(TRACE_PREFIX)]
    for title, png in [(t, p) for t, p in plots if not t.startswith(TRACE_PREFIX)]:
        parts.append(f"<h2>{html.escape(title)}</h2>{_img(title, png)}")
    if traces:  # one heading for all: each trace is captioned by its device, run file and kind
        parts.append("<h2>Power traces (current release per device)</h2>")
        parts += [f"<h3>{html.escape(t[len(TRACE_PREFIX):])}</h3>{_img(t, p)}" for t, p in traces]
    parts += power_sections(latest, _table)
    parts += _history_section(states)
    parts.append("</body></html>")
    return "\n".join(parts)


MD_STATUS = {PASS: "✅ pass", "failed": "❌ failed", "rolled back": "↩️ rolled back", NOT_VALIDATED: "➖ not validated"}


def to_markdown(runs: Sequence[RunRecord], latest: Sequence[RunRecord], generated: str,
                states: Optional[Sequence[DeviceState]] = None) -> str:
    states = fleet_state(runs) if states is None else states
    cols = [("device", "device"), ("target", "target"), ("release_id", "release"), ("status", "status"),
            ("metric", "metric"), ("value", "value"), ("threshold", "threshold"), ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"), ("provider", "provider")]
    lines = [f"## edgekit validation: {_counts(states)}",
             "", f"_{len(runs)} run(s), generated {generated}; each device on its current release_", "",
             "| " + " | ".join(t for _, t in cols) + " |", "|" + "---|" * len(cols)]
    for s in states:
        row = s.row()
        cells = [MD_STATUS.get(s.status, md_text(s.status)) if k == "status" else md_text(fmt_cell(k, row)) for k, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    bad = problems(states)
    if bad:
        lines += ["", "**Failures and rollbacks**", ""]
        lines += [f"- {md_code(b['device'])}: {md_text(b['what'])}" for b in bad]
    guard_rows = _guard_rows(latest)
    if guard_rows:
        lines += ["", "**Guards** (current release per device)", ""]
        lines += [f"- {md_code(g['device'])}: " + ("pass" if g["passed"] else f"FAIL: {md_text(g['finding'])}")
                  for g in guard_rows]
    lines += power_markdown(latest, md_code, md_text)
    return "\n".join(lines) + "\n"
