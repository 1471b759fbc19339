"""edgekit validate: host side, against a local device and a real sshd on loopback."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
from click.testing import CliRunner

from bundles import make_tiny_bundle
from edgekit.cli import main
from edgekit.config import load
from edgekit.errors import AccuracyError, DeviceError
from edgekit.validate import ValidationResult, validate_device
from test_runner_support import lay_out_release, shim_env, write_project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with a deployed local device 'board' and an empty one 'fresh'."""
    make_tiny_bundle(tmp_path / "dist")
    cfg = write_project(tmp_path / "proj", [
        {"name": "board", "target": "x86-avx2", "path": "devices/board", "python": sys.executable},
        {"name": "fresh", "target": "x86-avx2", "path": "devices/fresh", "python": sys.executable},
    ])
    lay_out_release(tmp_path / "dist", cfg.parent / "devices" / "board")
    return cfg


def test_validate_local_device(project: Path) -> None:
    res = validate_device(load(project), "board", duration=0.05, repeat=2)
    assert isinstance(res, ValidationResult) and res.ok and res.error is None
    assert res.device == "board" and res.target == "x86-avx2" and res.release_id
    assert res.metric["passed"] and res.metric["value"] == 1.0
    assert res.latency["p50_ms"] > 0 and res.latency["repeat"] == 2
    assert res.runtime["provider"] == "CPUExecutionProvider"
    # runs/<UTC time>-<device>.json beside edgekit.toml, holding the runner JSON plus the host block
    assert res.result_path.parent == project.parent / "runs"
    assert re.fullmatch(r"\d{8}T\d{6}Z-board(-\d+)?\.json", res.result_path.name)
    stored = json.loads(res.result_path.read_text())
    assert stored["host"]["device"] == "board" and stored["host"]["runner_exit"] == 0
    assert stored["latency"]["samples_ms"]
    # the temporary result file on the device was removed
    assert not list((project.parent / "devices" / "board" / ".edgekit").glob("*.json"))


def test_two_runs_in_one_second_keep_both(project: Path) -> None:
    cfg = load(project)
    a = validate_device(cfg, "board", duration=0.02)
    b = validate_device(cfg, "board", duration=0.02)
    assert a.result_path != b.result_path and a.result_path.exists() and b.result_path.exists()


def test_runs_dir_is_relative_to_the_config(project: Path) -> None:
    res = validate_device(load(project), "board", duration=0.02, runs_dir="out/runs")
    assert res.result_path.parent == project.parent / "out" / "runs"


def test_validate_before_deploy_is_a_clear_error(project: Path) -> None:
    with pytest.raises(DeviceError) as err:
        validate_device(load(project), "fresh", duration=0.05)
    assert err.value.message == "no release deployed on device fresh; run edgekit deploy --device fresh first"


def test_cli_before_deploy_exit_code(project: Path) -> None:
    res = CliRunner().invoke(main, ["validate", "--device", "fresh", "--config", str(project)])
    assert res.exit_code == DeviceError.exit_code
    assert "no release deployed on device fresh; run edgekit deploy --device fresh first" in res.output


def test_runner_failure_becomes_device_error_with_the_device_message(project: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    env = shim_env(tmp_path, "onnxruntime", "onnxruntime wheel for JetPack 4 not installed")
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    with pytest.raises(DeviceError) as err:
        validate_device(load(project), "board", duration=0.05)
    assert "onnxruntime cannot be imported" in err.value.message
    assert "onnxruntime wheel for JetPack 4 not installed" in err.value.message
    assert "Traceback" not in err.value.message and err.value.hint
    kept = err.value.details["result"]
    assert kept.error["kind"] == "runtime" and kept.result_path.exists()  # the failed run is kept in runs/


def test_missing_interpreter(project: Path, tmp_path: Path) -> None:
    cfg = load(project)
    spec = cfg.device("board").model_copy(update={"python": str(tmp_path / "no-such-python3")})
    with pytest.raises(DeviceError) as err:
        validate_device(cfg, spec, duration=0.05)
    assert "no-such-python3" in err.value.message


def test_metric_miss_cli_exits_with_accuracy_error(tmp_path: Path) -> None:
    make_tiny_bundle(tmp_path / "dist", corrupt_reference=True)
    cfg = write_project(tmp_path / "proj", [{"name": "board", "target": "x86-avx2", "path": "dev", "python": sys.executable}])
    lay_out_release(tmp_path / "dist", cfg.parent / "dev")
    res = validate_device(load(cfg), "board", duration=0.02)
    assert res.ok is False and res.error is None and res.metric["passed"] is False
    cli = CliRunner().invoke(main, ["validate", "--device", "board", "--config", str(cfg), "--duration", "0.02"])
    assert cli.exit_code == AccuracyError.exit_code
    assert "misses the threshold" in cli.output and "FAIL" in cli.output


def test_cli_table_and_json(project: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(main, ["validate", "--device", "board", "--config", str(project), "--duration", "0.02"])
    assert table.exit_code == 0, table.output
    assert "p50 / p90 / p99" in table.output and "CPUExecutionProvider" in table.output
    out = runner.invoke(main, ["validate", "--device", "board", "--config", str(project), "--duration", "0.02",
                               "--repeat", "2", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["ok"] is True and data["latency"]["repeat"] == 2 and Path(data["result_path"]).exists()


def test_power_flag_reaches_the_runner(project: Path) -> None:
    res = validate_device(load(project), "board", duration=0.02, power="estimate",
                          runner_args=["--idle", "0.05", "--power-rate", "20"])
    assert res.power is not None and res.power.get("sampler") == "estimate"


@pytest.mark.parametrize("also,ok", [({"top1": 0.5, "max_abs": 1e-3}, True), ({"top1": 0.5, "cosine": 1.5}, False)])
def test_further_thresholds_gate_the_run(tmp_path: Path, also: Dict[str, float], ok: bool) -> None:
    """validation.also in the manifest: every listed metric must meet its threshold too. The tiny
    release's outputs equal its references (top-1 1.0, max_abs 0), and no cosine reaches 1.5."""
    bundle = tmp_path / "dist"
    make_tiny_bundle(bundle, extra_fields={"metric": {"name": "top1", "threshold": 0.9, "k": 5, "output": None,
                                                      "pooling": "none", "mask_input": "attention_mask", "also": also}})
    cfg = write_project(tmp_path / "proj", [{"name": "board", "target": "x86-avx2", "path": "dev", "python": sys.executable}])
    lay_out_release(bundle, cfg.parent / "dev")
    res = validate_device(load(cfg), "board", duration=0.02, power="none")
    assert res.metric["passed"] is True  # the gating metric passes either way
    checks = {c["name"]: c for c in res.metric["also"]}
    assert set(checks) == set(also) and res.ok is ok
    assert checks["top1"]["passed"] and checks["top1"]["value"] == res.metrics["top1"]
    cli = CliRunner().invoke(main, ["validate", "--device", "board", "--config", str(cfg), "--duration", "0.02",
                                    "--power", "none"])
    if ok:
        assert cli.exit_code == 0, cli.output
    else:
        assert cli.exit_code == AccuracyError.exit_code
        assert "cosine" in cli.output and "misses the threshold 1.5" in cli.output and "top1 =" not in cli.output


def test_power_is_sampled_by_default_and_labelled(project: Path) -> None:
    """No --power: edgekit.toml's [power] (sampler auto). This host has no power sensor the x86
    profile names (no RAPL in the VM), so auto falls back to the estimate and says so."""
    res = validate_device(load(project), "board", duration=0.05)
    p = res.power
    assert p is not None and p["requested"] == "auto"
    if p["sampler"] == "estimate":
        assert p["is_estimate"] is True and any("estimate" in w for w in p["warnings"])
    assert p["idle_s"] == pytest.approx(0.2, abs=0.1)  # the project's [power] idle_s reached the runner
    assert p["energy_per_inference_mj"] > 0 and p["carbon"]["g_per_1000_inferences"] > 0
    off = validate_device(load(project), "board", duration=0.02, power="none")
    assert off.power is None


def test_power_options_reach_the_result_and_carbon(project: Path) -> None:
    out = CliRunner().invoke(main, ["validate", "--device", "board", "--config", str(project), "--duration", "0.05",
                                    "--power", "estimate", "--idle", "0.3", "--power-rate", "25",
                                    "--requests-per-s", "12", "--grid-intensity", "100", "--json"])
    assert out.exit_code == 0, out.output
    p = json.loads(out.output)["power"]
    assert p["sampler"] == "estimate" and p["rate_hz"] == 25 and p["idle_s"] == pytest.approx(0.3, abs=0.1)
    c = p["carbon"]
    assert c["requests_per_s"] == 12 and c["grid_g_per_kwh"] == 100
    g_per_j = 100 / 3.6e6  # 100 g/kWh
    assert c["g_per_1000_inferences"] == pytest.approx(p["energy_per_inference_mj"] / 1000 * 1000 * g_per_j, rel=1e-3)
    day_j = 86400 * (p["idle_power_w"] + 12 * max(p["energy_per_inference_above_idle_mj"] / 1000, 0))
    assert c["g_per_day_at_rps"] == pytest.approx(day_j * g_per_j, rel=1e-3)
    table = CliRunner().invoke(main, ["validate", "--device", "board", "--config", str(project), "--duration", "0.02",
                                      "--power", "estimate", "--requests-per-s", "12"])
    assert table.exit_code == 0, table.output
    assert "at 12 req/s" in table.output and "(ESTIMATE)" in table.output


def test_simulated_rapl_through_the_runner_into_the_report(project: Path, tmp_path: Path) -> None:
    """End to end with a sensor: the runner (a subprocess, as on a device) reads a simulated RAPL
    tree at a constant 4 W through --sysfs-root, and the figures reach runs/ and the report."""
    from sysfs_sim import PowerTrace, SimulatedBoard

    from edgekit.report import build_report, load_runs

    watts, root = 4.0, tmp_path / "sim"
    with SimulatedBoard(root, "rapl", trace=PowerTrace([(3600.0, watts, watts)]), tick_s=0.001):
        res = validate_device(load(project), "board", duration=0.5, power="rapl", runner_args=["--sysfs-root", str(root)])
    p = res.power
    assert p is not None and p["sampler"] == "rapl" and p["is_estimate"] is False and p["method"] == "energy counter"
    assert p["mean_power_w"] == pytest.approx(watts, rel=0.02)
    assert p["idle_power_w"] == pytest.approx(watts, rel=0.02)
    assert p["energy_j"] == pytest.approx(watts * p["window_s"], rel=0.02)
    assert p["iterations"] == res.latency["iterations"]
    epi_mj = p["energy_per_inference_mj"]
    assert epi_mj == pytest.approx(watts * p["window_s"] / p["iterations"] * 1000, rel=0.02)
    assert p["carbon"]["g_per_1000_inferences"] == pytest.approx(epi_mj / 1000 * 1000 * 481 / 3.6e6, rel=1e-3)

    rep = build_report(load_runs([res.result_path]), tmp_path / "reports")
    html = rep.html.read_text()
    assert "Power (measured)" in html and "Power (ESTIMATE" not in html
    assert any(t.startswith("Power trace: board") for t in rep.plots)
    row = json.loads(rep.json_path.read_text())["latest"][0]
    assert row["power_sampler"] == "rapl" and row["power_is_estimate"] is False
    assert row["energy_per_inference_mj"] == epi_mj and row["carbon_g_per_1000_inferences"] == p["carbon"]["g_per_1000_inferences"]


@pytest.mark.parametrize("args,needle", [
    (["--power-rate", "500"], "power option 'rate_hz'"),
    (["--power", "thermometer"], "unknown power sampler 'thermometer'"),
    (["--grid-intensity", "-5"], "power option 'grid_g_per_kwh'"),
])
def test_bad_power_options_are_one_line(project: Path, args: list, needle: str) -> None:
    out = CliRunner().invoke(main, ["validate", "--device", "board", "--config", str(project), *args])
    assert out.exit_code == 2 and needle in out.output and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) <= 2  # the line, and at most a hint


def test_power_section_in_edgekit_toml_is_checked(project: Path) -> None:
    text = project.read_text().replace("idle_s = 0.2", "idle_s = 0.2\nsampler = \"multimeter\"")
    project.write_text(text)
    out = CliRunner().invoke(main, ["validate", "--device", "board", "--config", str(project)])
    assert out.exit_code == 2 and str(project) in out.output and "power.sampler" in out.output
    project.write_text(text.replace('sampler = "multimeter"', "rate_hz = 0"))
    out = CliRunner().invoke(main, ["validate", "--device", "board", "--config", str(project)])
    assert out.exit_code == 2 and "power.rate_hz" in out.output


# ----------------------------------------------------------------------------------------------
# Over a real sshd on 127.0.0.x (tests/sshd_fixtures.py)
# ----------------------------------------------------------------------------------------------
def test_validate_over_ssh(tmp_path: Path, sshd: Any, trust_hosts: Callable[..., Path],
                          ssh_device: Callable[..., Dict[str, object]]) -> None:
    trust_hosts(sshd)
    board, fresh = ssh_device(sshd, "board"), ssh_device(sshd, "fresh")
    make_tiny_bundle(tmp_path / "dist")
    cfg = write_project(tmp_path / "proj", [board, fresh])
    lay_out_release(tmp_path / "dist", Path(str(board["path"])))  # sshd runs on this machine
    config = load(cfg)
    res = validate_device(config, "board", duration=0.05)
    assert res.ok and res.device == "board" and res.latency["iterations"] > 0
    assert json.loads(res.result_path.read_text())["host"]["transport"] == "ssh"
    with pytest.raises(DeviceError, match="no release deployed on device fresh"):
        validate_device(config, "fresh", duration=0.05)


def test_validate_after_a_real_deploy(tmp_path: Path) -> None:
    """The whole flow with edgekit.deploy (another stage) laying out releases/ and current."""
    from edgekit import deploy as deploy_mod
    from edgekit.transport import connect

    make_tiny_bundle(tmp_path / "dist")
    cfg = write_project(tmp_path / "proj", [{"name": "board", "target": "x86-avx2", "path": "dev", "python": sys.executable}])
    config = load(cfg)
    with connect(config.device("board"), config) as conn:
        deployed = deploy_mod.deploy(conn, tmp_path / "dist")
        res = validate_device(config, "board", duration=0.02, transport=conn)
    assert res.ok and res.release_id == json.loads((tmp_path / "dist" / "manifest.json").read_text())["release_id"]
    assert deployed.release_id == res.release_id and deployed.switched


def test_local_device_without_python_uses_this_interpreter(tmp_path: Path) -> None:
    """A bare `python3` on PATH may lack onnxruntime; a local device that names no interpreter runs edgekit's own."""
    make_tiny_bundle(tmp_path / "dist")
    cfg = write_project(tmp_path / "proj", [{"name": "board", "target": "x86-avx2", "path": "dev"}])
    lay_out_release(tmp_path / "dist", cfg.parent / "dev")
    res = validate_device(load(cfg), "board", duration=0.02)
    assert res.ok and json.loads(res.result_path.read_text())["host"]["python"] == sys.executable
