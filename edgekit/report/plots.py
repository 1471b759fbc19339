"""Plots for the HTML report, as base64 PNG strings (matplotlib's Agg backend, no display).

matplotlib loads only here, inside the functions, so ``edgekit --help`` never imports it.
Every function takes run records and returns ``None`` when there is nothing to draw.
"""
from __future__ import annotations

import base64
import io
import logging
from typing import Any, List, Optional, Sequence, Tuple

from .runs import RunRecord, power_is_estimate

log = logging.getLogger(__name__)


def _figure(width: float = 7.0, height: float = 3.6) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # a private canvas: no pyplot global state, thread-safe
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _label(text: Any) -> str:
    """Device-provided text for a plot: no control characters, and ``$`` taken literally (matplotlib
    reads ``$...$`` as mathtext, where a malformed formula raises)."""
    from ..cli.render import clean

    return clean(text, newlines=False).replace("$", r"\$")


def _plain_log_ticks(axis: Any) -> None:
    """Tick labels on a log axis as plain numbers (0.1, 2, 40), not 4x10^0."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _num(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def latency_histogram(runs: Sequence[RunRecord]) -> Optional[str]:
    """One histogram of the raw latency samples per run (own x axis: boards differ 1000x), p50/p99
    marked. The x axis is logarithmic with log-spaced bins: a tail 30x the median stays on the
    plot without squashing the body into one bar."""
    import numpy as np

    drawn = [r for r in runs if any(_num(s) and s > 0 for s in r.latency.get("samples_ms") or [])]
    if not drawn:
        return None
    cols = min(2, len(drawn))  # two across: each stays readable when a phone scales the image down
    rows = (len(drawn) + cols - 1) // cols
    fig = _figure(3.8 * cols + 0.6, 2.8 * rows)
    for i, r in enumerate(drawn):
        ax = fig.add_subplot(rows, cols, i + 1)
        samples = sorted(s for s in r.latency["samples_ms"] if isinstance(s, (int, float)) and s > 0)
        # A few scheduler hiccups 1000x slower would still stretch the axis: clip at the 99.5th percentile.
        hi = max(samples[int(0.995 * (len(samples) - 1))], _num(r.latency.get("p99_ms")) or 0.0) * 1.05
        lo = min(samples[0], _num(r.latency.get("p50_ms")) or samples[0]) / 1.05
        shown = [s for s in samples if s <= hi]
        clipped = len(samples) - len(shown)
        ax.hist(shown, bins=np.geomspace(lo, hi, 40), color="#4c72b0")
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
        if clipped:
            ax.text(0.98, 0.5, f"{clipped} slower samples\nnot shown", transform=ax.transAxes, ha="right", fontsize=7)
        for key, style in (("p50_ms", "--"), ("p99_ms", ":")):
            if (_num(r.latency.get(key)) or 0) > 0:
                ax.axvline(r.latency[key], color="black", linestyle=style, linewidth=0.9,
                           label=f"{key[:3]} {r.latency[key]:.3g} ms")
        ax.set_title(_label(r.device) + (" (emulated, not representative)" if r.emulated else ""), fontsize=10 if not r.emulated else 8)
        ax.set_xlabel("ms per inference (log scale)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle("Latency distribution (raw samples, current release per device)", fontsize=10)
    return _png(fig)


def _per_device_axes(rows: Sequence[RunRecord]) -> Tuple[Any, Any, List[int]]:
    """A figure sized for one bar group per device, the devices labelling the x axis."""
    fig = _figure(max(5.0, 1.2 * len(rows) + 3), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(rows)))
    ax.set_xticks(xs)
    ax.set_xticklabels([_label(r.device) for r in rows], rotation=20, ha="right")
    return fig, ax, xs


def latency_per_device(runs: Sequence[RunRecord]) -> Optional[str]:
    """p50 and p99 per device across the fleet, side by side on a log axis (a p50 of 0.1 ms stays
    visible beside a p99 of 5 ms, and a 50 ms board beside a 0.05 ms one), each bar labelled."""
    rows = [r for r in runs if (_num(r.latency.get("p50_ms")) or 0) > 0]
    if not rows:
        return None
    fig, ax, xs = _per_device_axes(rows)
    if any(r.emulated for r in rows):
        ax.set_xticklabels([_label(r.device) + ("\n(emulated, not representative)" if r.emulated else "") for r in rows],
                           rotation=20, ha="right")
    p50 = [float(r.latency["p50_ms"]) for r in rows]
    p99 = [(_num(r.latency.get("p99_ms")) or 0.0) for r in rows]
    floor = min(v for v in p50 + p99 if v > 0) / 3  # bars start here: a log axis has no zero
    top = max(p50 + p99) * 3
    for offset, values, label in ((-0.2, p50, "p50"), (0.2, p99, "p99")):
        shown = [(x + offset, v) for x, v in zip(xs, values) if v > 0]
        bars = ax.bar([x for x, _ in shown], [v - floor for _, v in shown], width=0.4, bottom=floor, label=label)
        ax.bar_label(bars, labels=[f"{v:.3g}" for _, v in shown], fontsize=7, padding=1)
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_ylim(floor, top)
    ax.set_ylabel("ms (log scale)")
    ax.set_title("Latency per device (p50, p99; current release)")
    ax.legend(fontsize=8)
    return _png(fig)


def metric_per_device(runs: Sequence[RunRecord]) -> Optional[str]:
    """The gating metric per device, its threshold as a line; red bars missed it."""
    rows = [r for r in runs if _num(r.metric.get("value")) is not None]
    if not rows:
        return None
    fig, ax, xs = _per_device_axes(rows)
    colors = ["#2e7d32" if r.metric.get("passed") else "#c62828" for r in rows]
    ax.bar(xs, [r.metric["value"] for r in rows], color=colors)
    for x, r in zip(xs, rows):
        if _num(r.metric.get("threshold")) is not None:
            ax.hlines(r.metric["threshold"], x - 0.45, x + 0.45, colors="black", linestyles="--")
    names = sorted({str(r.metric.get("name")) for r in rows})
    ax.set_ylabel(_label(" / ".join(names)))
    ax.set_title("Metric per device (dashed: threshold)")
    return _png(fig)


def power_trace_title(run: RunRecord) -> str:
    """The trace's title; an estimate says so (it is CPU time x nominal watts, not a measurement)."""
    power = run.power or {}
    title = _label(f"Power: {run.device} ({power.get('sampler', 'sampler ?')})")
    if power_is_estimate(power):
        title += " - ESTIMATE (CPU time x nominal watts), not a measurement"
    return title


def power_trace_figure(run: RunRecord) -> Any:
    """The trace as a matplotlib Figure: watts over time, the inference window shaded."""
    if not run.has_trace:
        return None
    assert run.power is not None
    points = [(float(p[0]), float(p[1])) for p in run.power["trace"] if isinstance(p, (list, tuple)) and len(p) >= 2]
    if not points:
        return None
    fig = _figure(7.0, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.0)
    window = run.power.get("window")
    if isinstance(window, (list, tuple)) and len(window) == 2:
        ax.axvspan(float(window[0]), float(window[1]), alpha=0.2, color="orange", label="inference window")
        ax.legend(fontsize=8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("W (estimated)" if power_is_estimate(run.power) else "W")
    ax.set_title(power_trace_title(run), fontsize=10)
    return fig


def power_trace(run: RunRecord) -> Optional[str]:
    """Watts over time with the inference window shaded (power["trace"], power["window"])."""
    fig = power_trace_figure(run)
    return None if fig is None else _png(fig)


def _drawn(plot: Any, *args: Any) -> Optional[str]:
    """One plot, or None when matplotlib cannot lay out the device's numbers (degenerate or
    extreme axes raise ValueError, OverflowError or LinAlgError deep inside it): the report then
    goes without that figure rather than failing for every run."""
    import numpy as np

    try:
        return plot(*args)
    except (ValueError, OverflowError, FloatingPointError, np.linalg.LinAlgError) as exc:
        log.warning("report: plot %s skipped: %s: %s", plot.__name__, type(exc).__name__, exc)
        return None


def history_plot(states: Sequence[Any]) -> Optional[str]:
    """p50 (log scale) and the gating metric over time, one line per device; failed runs as red x."""
    series = []
    for st in states:
        pts = [h for h in st.history if h["event"] == "validate" and h["time"].year > 1]
        if pts:
            series.append((st.device, pts))
    if sum(len(p) for _, p in series) < 2:
        return None
    fig = _figure(7.5, 5.0)
    lat, met = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2, sharex=None)
    for device, pts in series:
        for ax, key in ((lat, "p50_ms"), (met, "value")):
            xy = [(h["time"], h[key], h["result"]) for h in pts if _num(h.get(key)) is not None
                  and (key != "p50_ms" or h[key] > 0)]
            if not xy:
                continue
            line = ax.plot([p[0] for p in xy], [p[1] for p in xy], marker="o", markersize=3, linewidth=1,
                           label=_label(device))[0]
            bad = [p for p in xy if p[2] != "pass"]
            if bad:
                ax.plot([p[0] for p in bad], [p[1] for p in bad], "x", color="#c62828", markersize=7)
            line.set_zorder(2)
    if lat.lines:
        lat.set_yscale("log")
        _plain_log_ticks(lat.yaxis)
    lat.set_ylabel("p50 ms (log)", fontsize=8)
    met.set_ylabel("metric", fontsize=8)
    lat.set_title("History: p50 and metric per device (red x: failed run)", fontsize=10)
    for ax in (lat, met):
        ax.tick_params(labelsize=7)
    if len(series) <= 10 and lat.lines:
        lat.legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    return _png(fig)


def all_plots(latest: Sequence[RunRecord], runs: Sequence[RunRecord], states: Sequence[Any] = ()) -> List[tuple]:
    """(title, base64 PNG) pairs, in the order the report shows them. ``latest`` holds the run of
    each device's current release; power traces are drawn for those only (one per device, however
    long the history)."""
    plots = [("Latency distribution", _drawn(latency_histogram, latest)),
             ("Latency per device", _drawn(latency_per_device, latest)),
             ("Metric per device", _drawn(metric_per_device, latest)),
             ("History", _drawn(history_plot, states))]
    plots += [(f"Power trace: {r.device} ({r.path.name})" + (" (ESTIMATE)" if power_is_estimate(r.power or {}) else ""),
               _drawn(power_trace, r)) for r in latest if r.has_trace]
    return [(t, p) for t, p in plots if p]
