"""edgekit report: HTML with inline plots, Markdown and JSON, from real and synthetic run files."""
from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict

import pytest
from click.testing import CliRunner

from bundles import make_tiny_bundle
from edgekit.cli import main
from edgekit.config import load
from edgekit.device import power as device_power
from edgekit.errors import ConfigError
from edgekit.report import build_report, load_runs
from edgekit.report.plots import power_trace_figure
from edgekit.report.render import to_html
from edgekit.report.runs import RunRecord
from edgekit.validate import validate_device
from test_runner_support import lay_out_release, write_project


def _synthetic(device: str, started: str, **over: Any) -> Dict[str, Any]:
    run: Dict[str, Any] = {
        "schema": 2, "started": started, "ok": True, "release_id": "abc123", "target": "raspberry-pi-5",
        "host": {"device": device}, "device": {"hostname": device},
        "runtime": {"name": "onnxruntime", "provider": "CPUExecutionProvider"},
        "metric": {"name": "top1", "value": 0.98, "threshold": 0.95, "passed": True},
        "metrics": {"top1": 0.98, "top5": 1.0, "cosine": 0.999, "psnr_db": 41.2, "max_abs": 0.01, "max_rel": 0.2},
        "latency": {"p50_ms": 4.0, "p90_ms": 4.6, "p99_ms": 6.1, "mean_ms": 4.2, "min_ms": 3.8,
                    "first_load_ms": 120.0, "iterations": 500, "samples_ms": [4.0 + 0.01 * (i % 50) for i in range(500)]},
        "memory": {"peak_rss_mb": 80.0}, "power": None,
    }
    run.update(over)
    return run


def _measured_power() -> Dict[str, Any]:
    """What measure() writes for a Raspberry Pi 5 PMIC run: 290 inferences in 1.45 s, 5 req/s at 481 g/kWh."""
    trace = [[-0.5 + 0.05 * i, 3.0 + (1.5 if i >= 10 else 0.0)] for i in range(40)]
    return {"sampler": "rpi5-pmic", "requested": "rpi5-pmic", "scope": "soc+dram",
            "scope_note": "sum of V x I over 12 PMIC rails", "method": "power-rails", "is_estimate": False,
            "available": True, "energy_j": 6.525, "mean_power_w": 4.5, "idle_power_w": 3.0,
            "energy_per_inference_mj": 22.5, "energy_per_inference_above_idle_mj": 7.5, "iterations": 290,
            "samples": 15, "window_s": 1.45, "rate_hz": 10.0, "trace": trace, "window": [0.0, 1.45],
            "rails_mean_w": {"EXT5V_V": 4.5}, "carbon": device_power.carbon(0.0225, 3.0, 0.0075, 481.0, 5.0),
            "warnings": ["the board reported throttled during the run", "fan at full speed"]}


def _estimate_power() -> Dict[str, Any]:
    """The CPU-time estimate standing in for a missing PMIC sampler: 8 mJ per inference, 1 req/s at 300 g/kWh."""
    return {"sampler": "estimate", "requested": "rpi5-pmic", "scope": "cpu package",
            "scope_note": "ESTIMATE, not a measurement: this process's CPU seconds x 2.00 W per core",
            "method": "estimate", "is_estimate": True, "available": False, "reason": "vcgencmd is not on PATH",
            "energy_j": 1.6, "mean_power_w": 2.0, "idle_power_w": 0.1, "energy_per_inference_mj": 8.0,
            "energy_per_inference_above_idle_mj": 7.6, "iterations": 200, "samples": 8, "window_s": 0.8,
            "rate_hz": 10.0, "trace": [[-0.2, 0.1], [0.0, 0.1], [0.4, 2.0], [0.8, 2.0]], "window": [0.0, 0.8],
            "carbon": device_power.carbon(0.008, 0.1, 0.0076, 300.0, 1.0),
            "warnings": ["power sampler 'rpi5-pmic' is unavailable; using the CPU-time estimate instead"]}


# Expected carbon, worked out here from the energies above (g = J x grid / 3.6e6), not read from the code.
MEASURED_G_1000 = 22.5e-3 * 1000 * 481.0 / 3.6e6          # 3.0e-3 g
MEASURED_G_DAY = 86400 * (3.0 + 5.0 * 7.5e-3) * 481.0 / 3.6e6  # idle all day + 5 req/s above idle
ESTIMATE_G_1000 = 8e-3 * 1000 * 300.0 / 3.6e6             # 6.7e-4 g
ESTIMATE_G_DAY = 86400 * (1.0 * 7.6e-3) * 300.0 / 3.6e6  # an estimate's idle (the sampler's own CPU) is left out
ESTIMATE_G_DAY_DEVICE = 86400 * (0.1 + 1.0 * 7.6e-3) * 300.0 / 3.6e6  # what the run file says
MEASURED_TEXT = (f"{MEASURED_G_1000 * 1e3:.3g} mg CO2 per 1000 inferences", f"{MEASURED_G_DAY:.3g} g/day at 5 req/s")
ESTIMATE_TEXT = (f"{ESTIMATE_G_1000 * 1e6:.3g} µg CO2 per 1000 inferences", f"{ESTIMATE_G_DAY * 1e3:.3g} mg/day at 1 req/s")
MEASURED_CELLS = (f"<td>{MEASURED_G_1000 * 1e3:.3g} mg</td>", f"<td>{MEASURED_G_DAY:.3g} g/day at 5 req/s</td>")
ESTIMATE_CELLS = (f"<td>{ESTIMATE_G_1000 * 1e6:.3g} µg</td>", f"<td>{ESTIMATE_G_DAY * 1e3:.3g} mg/day at 1 req/s</td>")


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """Runs from a real local validation plus three synthetic boards: measured power with a trace,
    a failed run whose power module was missing, and a run with only the CPU-time estimate."""
    make_tiny_bundle(tmp_path / "dist")
    cfg = write_project(tmp_path / "proj", [{"name": "x86-box", "target": "x86-avx2", "path": "dev", "python": sys.executable}])
    lay_out_release(tmp_path / "dist", cfg.parent / "dev")
    validate_device(load(cfg), "x86-box", duration=0.05)
    runs = cfg.parent / "runs"
    pi5 = _synthetic("pi5", "2025-01-01T00:00:00Z", power=_measured_power())
    (runs / "20250101T000000Z-pi5.json").write_text(json.dumps(pi5))
    bad = _synthetic("nano", "2025-01-01T00:01:00Z", ok=False, metric={}, metrics={}, latency={},
                     error={"kind": "runtime", "message": "onnxruntime cannot be imported by /usr/bin/python3"},
                     power={"available": False, "reason": "power.py is missing beside runner.py"})
    (runs / "20250101T000100Z-nano.json").write_text(json.dumps(bad))
    rock = _synthetic("rock5", "2025-01-01T00:02:00Z", target="rock-5b", power=_estimate_power())
    (runs / "20250101T000200Z-rock5.json").write_text(json.dumps(rock))
    return runs


def _devices(section: str) -> set:
    """The first cell of each body row of the tables in ``section``."""
    return set(re.findall(r"<tr><td[^>]*>([^<]*)</td>", section))


def _sections(html: str) -> Dict[str, str]:
    """HTML split at each <h2>: heading -> what follows up to the next heading."""
    return {m.group(1): m.group(2) for m in re.finditer(r"<h2>(.*?)</h2>(.*?)(?=<h2>|</body>)", html, re.S)}


def _pngs(html: str) -> list:
    return re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)


def test_report_html_markdown_json(runs_dir: Path, tmp_path: Path) -> None:
    runs = load_runs(runs_dir=runs_dir)
    assert [r.device for r in runs][:3] == ["pi5", "nano", "rock5"]  # time order (synthetic runs are older)
    res = build_report(runs, tmp_path / "reports")
    html = res.html.read_text(encoding="utf-8")
    pngs = _pngs(html)
    # latency histogram, p50/p99 per device, metric per device, the history, then the power traces of
    # each device's current release (estimates labelled); the local x86-box run may bring its own
    # trace (RAPL or the estimate, whatever this host has)
    assert res.plots[:6] == ["Latency distribution", "Latency per device", "Metric per device", "History",
                             "Power trace: pi5 (20250101T000000Z-pi5.json)",
                             "Power trace: rock5 (20250101T000200Z-rock5.json) (ESTIMATE)"]
    assert all(t.startswith("Power trace: x86-box") for t in res.plots[6:])
    assert len(pngs) == len(res.plots) and all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained
    for text in ("x86-box", "pi5", "nano", 'title="CPUExecutionProvider">CPU</td>', "onnxruntime cannot be imported", "psnr_db",
                 "per inference", "Fleet (current release per device)", "History (per device, newest first)"):
        assert text in html
    md = res.markdown.read_text(encoding="utf-8")
    assert md.startswith("## edgekit validation: 3/4 device(s) passed (1 failed)")
    assert "| device | target | release | status |" in md and "| ❌ failed |" in md and "❌" in md and "✅" in md and "onnxruntime cannot be imported" in md
    data = json.loads(res.json_path.read_text(encoding="utf-8"))
    assert data["passed"] == 3 and sorted(data["devices"]) == ["nano", "pi5", "rock5", "x86-box"]
    assert data["failed"] == ["nano"] and data["rolled_back"] == [] and set(data["history"]) == set(data["devices"])
    assert res.summary[0]["device"] == "nano"


def test_power_tables_keep_estimates_apart(runs_dir: Path, tmp_path: Path) -> None:
    html = build_report(load_runs(runs_dir=runs_dir), tmp_path / "r").html.read_text(encoding="utf-8")
    sections = _sections(html)
    estimate_heads = [h for h in sections if h.startswith("Power (ESTIMATE")]
    assert "Power (measured)" in sections and len(estimate_heads) == 1
    measured, estimate = sections["Power (measured)"], sections[estimate_heads[0]]
    pi5_row = re.search(r"<tr><td[^>]*>pi5</td>.*?</tr>", measured)
    assert pi5_row and "ESTIMATE" not in pi5_row.group(0) and "<td>3 W</td>" in pi5_row.group(0)  # idle
    assert "pi5" in _devices(measured) and not {"rock5", "nano"} & _devices(measured)
    assert all(t in measured for t in MEASURED_CELLS) and f"<td>{22.5:g} mJ</td>" in measured
    # warnings are numbered notes under the table, referenced from the row
    notes = re.findall(r"<li value='(\d+)'>([^<]*)</li>", measured)
    by_text = {text: n for n, text in notes}
    for warning in ("the board reported throttled during the run", "fan at full speed"):
        assert f"[{by_text[warning]}]" in pi5_row.group(0)
    assert "rock5" in _devices(estimate) and not {"pi5", "nano"} & _devices(estimate)
    assert all(t in estimate for t in ESTIMATE_CELLS)
    # the ESTIMATE note is said once, above the table, not in every row
    rock_row = re.search(r"<tr><td[^>]*>rock5</td>.*?</tr>", estimate)
    assert rock_row and "ESTIMATE" not in rock_row.group(0) and f"<td>{8.0:g} mJ</td>" in rock_row.group(0)
    assert estimate.count("<p class='note'>ESTIMATE: ") == 1 and "requested rpi5-pmic: unavailable" in estimate
    assert "&lt;td&gt;" not in html and estimate.count("<table>") == measured.count("<table>") == 1
    unavailable = sections["Power (not measured)"]
    assert _devices(unavailable) == {"nano"} and "<td class=\"l\">unavailable</td>" in unavailable
    assert "power.py is missing beside runner.py" in unavailable


def test_power_in_markdown_and_json(runs_dir: Path, tmp_path: Path) -> None:
    res = build_report(load_runs(runs_dir=runs_dir), tmp_path / "r")
    md = res.markdown.read_text(encoding="utf-8")
    power_md = md[md.index("**Power**"):]
    pi5 = next(line for line in power_md.splitlines() if "`pi5`" in line)
    rock = next(line for line in power_md.splitlines() if "`rock5`" in line)
    nano = next(line for line in power_md.splitlines() if "`nano`" in line)
    assert all(t in pi5 for t in MEASURED_TEXT) and f"{22.5:g} mJ per inference" in pi5 and "ESTIMATE" not in pi5
    assert all(t in rock for t in ESTIMATE_TEXT) and "ESTIMATE" in rock and "not a measurement" in rock
    assert "unavailable" in nano and "power.py is missing" in nano
    rows = {row["device"]: row for row in json.loads(res.json_path.read_text(encoding="utf-8"))["latest"]}
    p, e, n = rows["pi5"], rows["rock5"], rows["nano"]
    assert p["power_sampler"] == "rpi5-pmic" and p["power_is_estimate"] is False
    assert p["carbon_g_per_1000_inferences"] == pytest.approx(MEASURED_G_1000, rel=1e-5)
    assert p["carbon_g_per_day"] == pytest.approx(MEASURED_G_DAY, rel=1e-5)
    assert (p["energy_per_inference_mj"], p["energy_per_inference_above_idle_mj"], p["mean_power_w"]) == (22.5, 7.5, 4.5)
    assert (p["requests_per_s"], p["grid_g_per_kwh"]) == (5.0, 481.0)
    assert e["power_sampler"] == "estimate" and e["power_is_estimate"] is True and e["grid_g_per_kwh"] == 300.0
    assert e["carbon_g_per_1000_inferences"] == pytest.approx(ESTIMATE_G_1000, rel=1e-5)
    assert e["carbon_g_per_day"] == pytest.approx(ESTIMATE_G_DAY, rel=1e-5)
    assert e["carbon_g_per_day_device"] == pytest.approx(ESTIMATE_G_DAY_DEVICE, rel=1e-5)  # the run file's, kept
    assert "ESTIMATE" in e["carbon_g_per_day_note"] and p["carbon_g_per_day_note"] is None
    assert n["power_sampler"] is None and n["power_is_estimate"] is None and n["carbon_g_per_day"] is None
    assert rows["x86-box"]["release_id"] and "carbon_g_per_day" in rows["x86-box"]  # old keys kept, new ones present


def test_power_trace_title_labels_estimates(runs_dir: Path) -> None:
    runs = {r.device: r for r in load_runs(runs_dir=runs_dir)}
    est_title = power_trace_figure(runs["rock5"]).axes[0].get_title()
    measured_title = power_trace_figure(runs["pi5"]).axes[0].get_title()
    assert "rock5" in est_title and "ESTIMATE" in est_title
    assert "pi5" in measured_title and "rpi5-pmic" in measured_title and "ESTIMATE" not in measured_title


def test_estimate_without_flag_is_still_labelled(tmp_path: Path) -> None:
    """A sampler named 'estimate' whose dict lacks is_estimate must not land among measurements."""
    power = _estimate_power()
    del power["is_estimate"]
    run = RunRecord(path=tmp_path / "r.json", device="b", power=power)
    sections = _sections(to_html([run], [run], [], "now"))
    assert "Power (measured)" not in sections
    estimate = [v for h, v in sections.items() if h.startswith("Power (ESTIMATE")]
    assert estimate and "<p class='note'>ESTIMATE: " in estimate[0]
    assert "ESTIMATE" in power_trace_figure(run).axes[0].get_title()


def test_latest_run_per_device_wins(runs_dir: Path, tmp_path: Path) -> None:
    newer = _synthetic("pi5", "2025-02-01T00:00:00Z", metric={"name": "top1", "value": 0.5, "threshold": 0.95,
                                                              "passed": False}, ok=False)
    (runs_dir / "20250201T000000Z-pi5.json").write_text(json.dumps(newer))
    res = build_report(load_runs(runs_dir=runs_dir), tmp_path / "r")
    pi5 = [row for row in res.summary if row["device"] == "pi5"][0]
    assert pi5["value"] == 0.5 and pi5["passed"] is False and res.runs == 5


def test_cli_report(runs_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(main, ["report", "--runs-dir", str(runs_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "report.html").exists() and (out / "report.md").exists() and "3/4 device(s) passed" in res.output
    rows = {line.split()[0]: line for line in res.output.splitlines() if line.split()}  # plain rows when piped
    for device in ("pi5", "rock5"):  # energy per inference, labelled when it is an estimate
        power = json.loads(next(runs_dir.glob(f"*-{device}.json")).read_text())["power"]
        assert f"{power['energy_per_inference_mj']:.3g}" in rows[device]
        assert ("(ESTIMATE)" in rows[device]) == bool(power.get("is_estimate")), rows[device]
    one = sorted(runs_dir.glob("*pi5.json"))[0]
    res = runner.invoke(main, ["report", str(one), "--out", str(out), "--json"])
    data = json.loads(res.output)
    assert data["runs"] == 1 and data["devices"] == ["pi5"] and data["plots"][-1].startswith("Power trace")


def test_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no runs in"):
        load_runs(runs_dir=tmp_path / "empty")
    res = CliRunner().invoke(main, ["report", "--runs-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert res.exit_code == ConfigError.exit_code and "edgekit validate" in res.output


def test_not_a_run_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ConfigError, match="not a run file"):
        load_runs([bad])
