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
from edgekit.errors import ConfigError
from edgekit.report import build_report, load_runs
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


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """Runs from a real local validation plus two synthetic boards (one with a power trace, one failed)."""
    make_tiny_bundle(tmp_path / "dist")
    cfg = write_project(tmp_path / "proj", [{"name": "x86-box", "target": "x86-avx2", "path": "dev", "python": sys.executable}])
    lay_out_release(tmp_path / "dist", cfg.parent / "dev")
    validate_device(load(cfg), "x86-box", duration=0.05)
    runs = cfg.parent / "runs"
    trace = [[-0.5 + 0.05 * i, 3.0 + (1.5 if i >= 10 else 0.0)] for i in range(40)]
    power = {"available": True, "sampler": "rpi5-pmic", "energy_j": 2.5, "mean_power_w": 4.5,
             "energy_per_inference_mj": 5.0, "trace": trace, "window": [0.0, 1.45], "rails_mean_w": {"EXT5V_V": 4.5}}
    (runs / "20250101T000000Z-pi5.json").write_text(json.dumps(_synthetic("pi5", "2025-01-01T00:00:00Z", power=power)))
    bad = _synthetic("nano", "2025-01-01T00:01:00Z", ok=False, metric={}, metrics={}, latency={},
                     error={"kind": "runtime", "message": "onnxruntime cannot be imported by /usr/bin/python3"})
    (runs / "20250101T000100Z-nano.json").write_text(json.dumps(bad))
    return runs


def _pngs(html: str) -> list:
    return re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)


def test_report_html_markdown_json(runs_dir: Path, tmp_path: Path) -> None:
    runs = load_runs(runs_dir=runs_dir)
    assert [r.device for r in runs][:2] == ["pi5", "nano"]  # time order (synthetic runs are older)
    res = build_report(runs, tmp_path / "reports")
    html = res.html.read_text()
    pngs = _pngs(html)
    # latency histogram, p50/p99 per device, metric per device, one power trace
    assert res.plots == ["Latency distribution", "Latency per device", "Metric per device",
                         "Power trace: pi5 (20250101T000000Z-pi5.json)"]
    assert len(pngs) == 4 and all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained
    for text in ("x86-box", "pi5", "nano", "CPUExecutionProvider", "onnxruntime cannot be imported", "psnr_db",
                 "energy_per_inference_mj", "Fleet (latest run per device)"):
        assert text in html
    md = res.markdown.read_text()
    assert md.startswith("## edgekit validation: 2/3 device(s) passed")
    assert "| device | target | provider |" in md and "❌" in md and "✅" in md and "onnxruntime cannot be imported" in md
    data = json.loads(res.json_path.read_text())
    assert data["passed"] == 2 and sorted(data["devices"]) == ["nano", "pi5", "x86-box"]
    assert res.summary[0]["device"] == "nano"


def test_latest_run_per_device_wins(runs_dir: Path, tmp_path: Path) -> None:
    newer = _synthetic("pi5", "2025-02-01T00:00:00Z", metric={"name": "top1", "value": 0.5, "threshold": 0.95,
                                                              "passed": False}, ok=False)
    (runs_dir / "20250201T000000Z-pi5.json").write_text(json.dumps(newer))
    res = build_report(load_runs(runs_dir=runs_dir), tmp_path / "r")
    pi5 = [row for row in res.summary if row["device"] == "pi5"][0]
    assert pi5["value"] == 0.5 and pi5["passed"] is False and res.runs == 4


def test_cli_report(runs_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(main, ["report", "--runs-dir", str(runs_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "report.html").exists() and (out / "report.md").exists() and "2/3 device(s) passed" in res.output
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
