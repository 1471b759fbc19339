"""The report on a fleet: which release is current on each device (runs + the release log), a
rolled-back canary shown as "rolled back" on its passing release, the history per device,
``report --fail-on-failure``, and release.mk's REPORTS path.

The end-to-end test runs the real thing on local-transport devices: edgekit.fleet deploys, the
real runner validates (a canary with a corrupted reference fails for real), the fleet rolls it
back, and the CLI writes the report from runs/ and runs/releases.jsonl.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundles import make_tiny_bundle
from edgekit.cli import main
from edgekit.config import ProjectConfig, load
from edgekit.errors import AccuracyError, DeviceError, FleetError
from edgekit.fleet import deploy_device, deploy_fleet, select_devices
from edgekit.report import build_report, load_events, load_runs
from edgekit.report.releases import RELEASE_LOG, read_log, record
from edgekit.report.runs import RunRecord
from edgekit.report.state import fleet_state
from edgekit.validate import validate_device
from test_runner_support import ROOT, write_project

A, B, C = "a" * 16, "b" * 16, "c" * 16


def _run(device: str, release: str, ok: bool, name: str, p50: float = 2.0, error: Any = None) -> RunRecord:
    metric = {"name": "top1", "value": 0.99 if ok else 0.5, "threshold": 0.95, "passed": ok}
    return RunRecord(path=Path(f"/runs/{name}-{device}.json"), device=device, release_id=release, ok=ok,
                     metric=metric, latency={"p50_ms": p50}, error=error)


def _at(stamp: str, micro: int = 0) -> datetime:
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc, microsecond=micro)


# ------------------------------------------------------------------------------------------------
# The state: runs and events merged
# ------------------------------------------------------------------------------------------------
def test_rolled_back_canary_is_judged_on_the_release_it_went_back_to(tmp_path: Path) -> None:
    record(tmp_path, "pi", "deploy", "switched", A, A, when=_at("20250101T000000Z"))
    record(tmp_path, "pi", "deploy", "switched", B, B, when=_at("20250102T000000Z"))
    # the rollback in the same second as the failed run, half a second after it was stored
    record(tmp_path, "pi", "rollback", "rolled back", B, A, when=_at("20250102T000010Z", 500000))
    runs = [_run("pi", A, True, "20250101T000001Z"), _run("pi", B, False, "20250102T000010Z")]
    (state,) = fleet_state(runs, read_log(tmp_path / RELEASE_LOG))
    assert (state.current, state.status, state.rolled_back_from) == (A, "rolled back", B)
    assert state.passing and not state.failing and state.run is runs[0] and state.abandoned is runs[1]
    row = state.row()
    assert row["release_id"] == A and row["value"] == 0.99 and "top1 0.5 below threshold 0.95" in row["rolled_back_error"]
    assert [(h["event"], h["release_id"], h["result"]) for h in state.history] == [
        ("deploy", A, "switched"), ("validate", A, "pass"), ("deploy", B, "switched"),
        ("validate", B, "failed"), ("rollback", B, "rolled back")]


def test_a_later_run_decides_and_failed_events_do_not_move_current(tmp_path: Path) -> None:
    record(tmp_path, "pi", "rollback", "rolled back", B, A, when=_at("20250102T000000Z"))
    record(tmp_path, "pi", "deploy", "failed", C, None, when=_at("20250103T000000Z"))  # current unknown after it
    events = read_log(tmp_path / RELEASE_LOG)
    # validated again on A after the rollback: plain "pass"; then A fails: "failed"
    good = [_run("pi", B, False, "20250101T000000Z"), _run("pi", A, True, "20250102T000005Z")]
    assert fleet_state(good, events)[0].status == "pass"
    bad = good + [_run("pi", A, False, "20250104T000000Z", error={"message": "out of memory"})]
    (state,) = fleet_state(bad, events)
    assert (state.current, state.status, state.failing) == (A, "failed", True)
    # rolled back onto a release whose last run failed: that is a failure, not a rollback to safety
    record(tmp_path, "pi", "rollback", "rolled back", C, A, when=_at("20250105T000000Z"))
    assert fleet_state(bad, read_log(tmp_path / RELEASE_LOG))[0].status == "failed"


def test_devices_only_in_the_log_and_rollback_to_nothing(tmp_path: Path) -> None:
    record(tmp_path, "fresh", "deploy", "switched", A, A, when=_at("20250101T000000Z"))
    record(tmp_path, "first", "deploy", "switched", B, B, when=_at("20250101T000000Z"))
    record(tmp_path, "first", "rollback", "rolled back", B, None, when=_at("20250101T000020Z"))
    runs = [_run("first", B, False, "20250101T000010Z")]
    first, fresh = fleet_state(runs, read_log(tmp_path / RELEASE_LOG))  # by name
    assert (fresh.device, fresh.current, fresh.status, fresh.passing, fresh.failing) == ("fresh", A, "not validated", False, False)
    assert (first.current, first.status, first.failing, first.run) == (None, "rolled back", False, None)


def test_release_log_lines_are_checked_one_by_one(tmp_path: Path) -> None:
    log = tmp_path / RELEASE_LOG
    good = {"time": "2025-01-01T00:00:00.000000Z", "device": "pi", "action": "deploy", "outcome": "switched",
            "release": A, "current": A}
    lines = [json.dumps(good), "{not json", json.dumps(dict(good, outcome="exploded")),
             json.dumps(dict(good, current="../../etc")), json.dumps(dict(good, time="yesterday")),
             json.dumps([1, 2]), "[" * 100000, json.dumps(dict(good, device="pi2", time="2025-01-02T00:00:00Z"))]
    log.write_text("\n".join(lines) + "\n")
    warnings: List[str] = []
    events = read_log(log, warnings.append)
    assert [e.device for e in events] == ["pi", "pi2"]
    assert len(warnings) == 6 and all(w.startswith(f"{log}: line ") for w in warnings)
    assert "line 3 skipped (field outcome" in warnings[1] and "not a release id" in warnings[2]
    assert "field time" in warnings[3] and "line 7 skipped (not a JSON object)" in warnings[5]
    assert read_log(tmp_path / "missing.jsonl") == []


def test_history_plot_and_table_bounded(tmp_path: Path) -> None:
    runs = [_run("pi", A, i % 7 != 3, f"202501{1 + i // 24:02d}T{i % 24:02d}0000Z", p50=1.0 + i) for i in range(45)]
    res = build_report(runs, tmp_path / "out")
    html = res.html.read_text(encoding="utf-8")
    history = html[html.index("<h2>History (per device, newest first)</h2>"):]
    assert history.count("<tr>") == 1 + 30  # header + the newest 30 entries
    assert "15 older entries not shown" in history and "History" in res.plots
    data = json.loads(res.json_path.read_text())
    assert len(data["history"]["pi"]) == 45 and data["history"]["pi"][0]["p50_ms"] == 45.0  # newest first


# ------------------------------------------------------------------------------------------------
# End to end: a real fleet, a real failed canary, the CLI report
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def fleet(tmp_path: Path) -> ProjectConfig:
    """Three local devices in group "edge" and a good bundle (release A) in dist/."""
    devices = [{"name": f"dev-{i}", "target": "x86-avx2", "transport": "local", "path": str(tmp_path / f"dev-{i}"),
                "python": sys.executable, "groups": ["edge"]} for i in range(3)]
    cfg = write_project(tmp_path / "proj", devices)
    make_tiny_bundle(tmp_path / "proj" / "dist" / "tiny" / "x86-avx2")
    return load(cfg)


def _rebuild_failing(cfg: ProjectConfig) -> str:
    import shutil

    bundle = cfg.root / "dist" / "tiny" / "x86-avx2"
    shutil.rmtree(bundle)
    return str(make_tiny_bundle(bundle, seed=5, corrupt_reference=True)["release_id"])


def _report(cfg: ProjectConfig, out: Path, *extra: str) -> Any:
    return CliRunner().invoke(main, ["report", "--runs-dir", str(cfg.root / "runs"), "--out", str(out), *extra])


def _rows(html: str, heading: str) -> Dict[str, str]:
    section = html[html.index(f"<h2>{heading}</h2>"):]
    section = section[:section.index("</table>")]
    return {m.group(1): m.group(0) for m in re.finditer(r"<tr><td[^>]*>([^<]*)</td>.*?</tr>", section)}


def test_failed_canary_rolled_back_then_a_failing_device(fleet: ProjectConfig, tmp_path: Path) -> None:
    cfg = fleet
    devices = select_devices(cfg, group="edge")
    good = deploy_fleet(cfg, devices).release_ids["dev-0"]
    for d in devices:
        assert validate_device(cfg, d, duration=0.05).ok
    bad = _rebuild_failing(cfg)
    with pytest.raises(FleetError, match="canary failed on dev-0"):
        deploy_fleet(cfg, devices, canary=1, duration=0.1)  # the real validation fails; dev-0 goes back to A

    events = read_log(cfg.root / "runs" / RELEASE_LOG)
    assert [(e.device, e.action, e.outcome, e.current) for e in events][-2:] == [
        ("dev-0", "deploy", "switched", bad), ("dev-0", "rollback", "rolled back", good)]
    res = _report(cfg, tmp_path / "r1", "--fail-on-failure", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["rolled_back"] == ["dev-0"] and data["failed"] == [] and data["passed"] == 3
    row = {r["device"]: r for r in data["summary"]}["dev-0"]
    assert (row["release_id"], row["status"], row["rolled_back_from"]) == (good, "rolled back", bad)
    html = (tmp_path / "r1" / "report.html").read_text(encoding="utf-8")
    fleet_rows = _rows(html, "Fleet (current release per device)")
    assert "rolled back" in fleet_rows["dev-0"] and good in fleet_rows["dev-0"] and "failed" not in fleet_rows["dev-0"]
    assert all(good in fleet_rows[d] and ">pass<" in fleet_rows[d] for d in ("dev-1", "dev-2"))
    problem = _rows(html, "Failures and rollbacks")["dev-0"]
    assert f"release {bad} failed (top1" in problem and f"rolled back to {good}" in problem
    md = (tmp_path / "r1" / "report.md").read_text(encoding="utf-8")
    assert md.startswith("## edgekit validation: 3/3 device(s) passed (1 rolled back)")
    assert re.search(rf"\| dev-0 \| x86-avx2 \| {good} \| ↩️ rolled back \|", md)
    history = html[html.index("<h3>dev-0</h3>"):]
    history = history[:history.index("</table>")]
    assert re.findall(r"<td class=\"l\">(deploy|validate|rollback)</td>", history) == [
        "rollback", "validate", "deploy", "validate", "deploy"]  # newest first

    # A release deployed but not validated is no failure; validated and failing, it is.
    deploy_device(cfg, devices[2])
    res = _report(cfg, tmp_path / "r2", "--fail-on-failure")
    assert res.exit_code == 0, res.output
    assert re.search(rf"^dev-2 +x86-avx2 +{bad} +not validated ", res.output, re.M), res.output  # plain when piped
    assert not validate_device(cfg, devices[2], duration=0.05).ok
    res = _report(cfg, tmp_path / "r3")
    assert res.exit_code == 0  # without the flag the report only reports
    res = _report(cfg, tmp_path / "r3", "--fail-on-failure")
    assert res.exit_code == AccuracyError.exit_code, res.output
    error = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert error == [f"error: 1 of 3 device(s) fail on their current release: dev-2 (release {bad})"]
    assert (tmp_path / "r3" / "report.html").is_file()  # written before it fails

    # Rolled back by hand (edgekit rollback): back on A, no longer failing.
    out = CliRunner().invoke(main, ["rollback", "-d", "dev-2", "--config", str(cfg.path)])
    assert out.exit_code == 0, out.output
    res = _report(cfg, tmp_path / "r4", "--fail-on-failure", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rolled_back"] == ["dev-0", "dev-2"]


def test_fail_on_failure_with_a_runner_error_uses_device_error(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    run = {"schema": 2, "ok": False, "release_id": A, "host": {"device": "nano"},
           "error": {"kind": "runtime", "message": "onnxruntime cannot be imported\nby /usr/bin/python3"}}
    (runs / "20250101T000000Z-nano.json").write_text(json.dumps(run))
    res = CliRunner().invoke(main, ["report", "--runs-dir", str(runs), "--out", str(tmp_path / "o"), "--fail-on-failure"])
    assert res.exit_code == DeviceError.exit_code, res.output
    assert "error: 1 of 1 device(s) fail on their current release: nano (release aaaaaaaaaaaaaaaa: " \
           "onnxruntime cannot be imported by /usr/bin/python3)" in res.output


def test_named_run_files_find_the_log_beside_them(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    record(runs, "pi", "rollback", "rolled back", B, A, when=_at("20250101T000100Z"))
    for name, rel, ok in (("20250101T000000Z-pi.json", A, True), ("20250101T000050Z-pi.json", B, False)):
        (runs / name).write_text(json.dumps({"schema": 2, "ok": ok, "release_id": rel, "host": {"device": "pi"},
                                             "metric": {"name": "top1", "value": 1.0 if ok else 0.1, "passed": ok}}))
    events = load_events([runs / "20250101T000000Z-pi.json", runs / "20250101T000050Z-pi.json"])
    assert len(events) == 1  # one folder, read once
    res = build_report(load_runs([runs]), tmp_path / "o", events=load_events([runs]))
    assert res.rolled_back == ["pi"] and res.summary[0]["release_id"] == A


# ------------------------------------------------------------------------------------------------
# release.mk
# ------------------------------------------------------------------------------------------------
def test_release_mk_reports_land_beside_the_config_from_any_directory(tmp_path: Path) -> None:
    cfg = tmp_path / "proj" / "edgekit.toml"
    lines = []
    for cwd in (tmp_path, ROOT):
        out = subprocess.run(["make", "-s", "-n", "-f", str(ROOT / "release.mk"), "release-report", "EDGEKIT=edgekit",
                              f"CONFIG={cfg}"], capture_output=True, text=True, cwd=cwd, check=True).stdout
        lines.append([ln for ln in out.splitlines() if ln.startswith("edgekit report")])
    assert lines[0] == lines[1] == [f"edgekit report --runs-dir {cfg.parent}/runs --out {cfg.parent}/reports --fail-on-failure"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(st.binary(max_size=80), st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
    st.sampled_from(["time", "device", "action", "outcome", "release", "current", "target", "x"]),
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.sampled_from([A, "deploy", "switched",
                                                                                               "2025-01-01T00:00:00Z"]))))),
    max_size=8))
def test_fuzz_release_log_never_raises(tmp_path: Path, lines: List[bytes]) -> None:
    """Whatever the log holds, reading it gives events or one warning per bad line, never an exception."""
    log = tmp_path / RELEASE_LOG
    log.write_bytes(b"\n".join(lines))
    warnings: List[str] = []
    events = read_log(log, warnings.append)
    assert len(events) + len(warnings) <= sum(1 for ln in b"\n".join(lines).split(b"\n") if ln.strip())
    assert all("\n" not in w for w in warnings)
    fleet_state([], events)  # and the state is computed from whatever was accepted
