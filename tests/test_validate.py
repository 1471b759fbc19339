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
    deploy_mod = pytest.importorskip("edgekit.deploy")
    from edgekit.transport import connect

    make_tiny_bundle(tmp_path / "dist")
    cfg = write_project(tmp_path / "proj", [{"name": "board", "target": "x86-avx2", "path": "dev", "python": sys.executable}])
    config = load(cfg)
    with connect(config.device("board"), config) as conn:
        deployed = deploy_mod.deploy(conn, tmp_path / "dist")
        res = validate_device(config, "board", duration=0.02, transport=conn)
    assert res.ok and res.release_id == json.loads((tmp_path / "dist" / "manifest.json").read_text())["release_id"]
    assert getattr(deployed, "release_id", res.release_id) == res.release_id


def test_local_device_without_python_uses_this_interpreter(tmp_path: Path) -> None:
    """A bare `python3` on PATH may lack onnxruntime; a local device that names no interpreter runs edgekit's own."""
    make_tiny_bundle(tmp_path / "dist")
    cfg = write_project(tmp_path / "proj", [{"name": "board", "target": "x86-avx2", "path": "dev"}])
    lay_out_release(tmp_path / "dist", cfg.parent / "dev")
    res = validate_device(load(cfg), "board", duration=0.02)
    assert res.ok and json.loads(res.result_path.read_text())["host"]["python"] == sys.executable
