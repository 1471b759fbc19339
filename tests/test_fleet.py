"""Fleets: a group deploy over several real sshd servers (127.0.0.x) plus a local device, canary
rollouts validated on the device with edgekit.validate, rollback of failed canaries, batches,
partial failures, and the deploy/rollback/status commands through click's CliRunner."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, List

import pytest
from click.testing import CliRunner
from sshd_fixtures import SshdFleet, free_port, write_project

from bundles import make_tiny_bundle
from edgekit.config import ProjectConfig, load
from edgekit.errors import ConfigError, DeployError, FleetError
from edgekit.fleet import deploy_fleet, select_devices


@pytest.fixture
def fleet_project(tmp_path: Path, sshd_fleet: SshdFleet, ssh_device: Callable, trust_hosts: Callable) -> Path:
    """edgekit.toml with three ssh devices and one local device, all in group "edge"; a good bundle."""
    trust_hosts(*sshd_fleet.servers)
    devices = [ssh_device(s, f"board-{i}", groups=["edge"]) for i, s in enumerate(sshd_fleet.servers)]
    devices.append({"name": "bench-pc", "target": "x86-avx2", "transport": "local", "path": str(tmp_path / "local-dev"),
                    "python": devices[0]["python"], "groups": ["edge"]})
    return write_project(tmp_path / "proj", devices, deploy={"max_parallel": 4})


def rebuild(cfg: ProjectConfig, seed: int, **kw: Any) -> str:
    """Replace the project's bundle with another release (``corrupt_reference`` makes validation fail)."""
    bundle = cfg.root / "dist" / "tiny" / "x86-avx2"
    shutil.rmtree(bundle)
    return str(make_tiny_bundle(bundle, seed=seed, **kw)["release_id"])


def current(cfg: ProjectConfig, name: str) -> str:
    link = Path(next(d.path for d in cfg.devices if d.name == name)) / "current"
    return os.readlink(link).rsplit("/", 1)[-1] if os.path.lexists(link) else ""


def test_group_deploy_fans_out_and_redeploy_is_a_no_op(fleet_project: Path) -> None:
    cfg = load(fleet_project)
    devices = select_devices(cfg, group="edge")
    res = deploy_fleet(cfg, devices)
    rid = res.release_ids["board-0"]
    assert res.ok and set(res.results) == {"board-0", "board-1", "board-2", "bench-pc"}
    assert all(o.outcome == "switched" and o.phase is None and o.changed for o in res.results.values())
    assert all(current(cfg, n) == rid for n in res.results)
    assert res.recap.line() == "ok=4 changed=4 unchanged=0 failed=0 rolled_back=0 not_attempted=0"
    again = deploy_fleet(cfg, devices)
    assert all(o.deploy is not None and o.deploy.skipped and o.deploy.uploaded_bytes == 0 for o in again.results.values())
    assert [o.outcome for o in again.results.values()] == ["unchanged"] * 4 and again.recap.changed == 0


def test_failed_canary_is_rolled_back_and_stops_the_rollout(fleet_project: Path) -> None:
    cfg = load(fleet_project)
    devices = select_devices(cfg, group="edge")
    good = deploy_fleet(cfg, devices).release_ids["board-0"]
    bad = rebuild(cfg, seed=5, corrupt_reference=True)  # outputs cannot match: on-device validation fails

    with pytest.raises(FleetError, match=r"canary failed on board-0") as err:
        deploy_fleet(cfg, devices, canary=1, duration=0.1)  # the real edgekit.validate.validate_device
    res = err.value.results
    canary = res.results["board-0"]
    assert res.canary == ["board-0"] and canary.validation is not None and canary.validation.ok is False
    assert canary.outcome == "rolled back" and canary.release == good and not canary.ok
    assert canary.deploy is not None and canary.deploy.release_id == bad
    assert canary.error is not None and canary.error.kind == "metric"
    assert "on-device validation failed" in canary.error.message
    assert Path(canary.validation.result_path).is_file()  # the run file is kept
    for name in ("board-1", "board-2", "bench-pc"):
        assert res.results[name].outcome == "not attempted"
    assert res.recap.rolled_back == 1 and res.recap.failed == 0 and res.recap.not_attempted == 3
    assert all(current(cfg, n) == good for n in res.results)  # the whole fleet still runs the good release


def test_failed_first_canary_leaves_no_current(fleet_project: Path) -> None:
    cfg = load(fleet_project)
    rebuild(cfg, seed=6, corrupt_reference=True)
    with pytest.raises(FleetError):
        deploy_fleet(cfg, select_devices(cfg, group="edge"), canary=2, duration=0.1)
    assert current(cfg, "board-0") == "" and current(cfg, "board-1") == ""  # as before the rollout


def test_canary_then_batches(fleet_project: Path) -> None:
    cfg = load(fleet_project)
    res = deploy_fleet(cfg, select_devices(cfg, group="edge"), canary="board-2", max_parallel=2, duration=0.1)
    phases = {n: (o.phase, o.outcome) for n, o in res.results.items()}
    assert phases == {"board-2": ("canary", "switched"), "board-0": ("batch 1", "switched"),
                      "board-1": ("batch 1", "switched"), "bench-pc": ("batch 2", "switched")}
    assert res.canary == ["board-2"] and res.results["board-2"].validation.ok
    assert res.results["board-0"].validation is None  # only canaries are validated
    with pytest.raises(ConfigError, match="--canary nope: not among the selected devices"):
        deploy_fleet(cfg, select_devices(cfg, group="edge"), canary="board-2,nope")


def test_a_failed_batch_stops_later_batches_and_keeps_every_result(fleet_project: Path, tmp_path: Path) -> None:
    cfg = load(fleet_project)
    # board-1 becomes unreachable (nothing listens on its port any more)
    text = fleet_project.read_text()
    b1 = next(d for d in cfg.devices if d.name == "board-1")
    dead_port = free_port(str(b1.host))
    fleet_project.write_text(text.replace(f"port = {b1.port}", f"port = {dead_port}", 1))
    cfg = load(fleet_project)
    calls: List[str] = []

    def ok_validate(config: ProjectConfig, device: Any, **kw: Any) -> Any:  # the injectable validator
        calls.append(device.name)
        return type("V", (), {"ok": True, "result_path": None})()

    with pytest.raises(FleetError, match=r"1 of 4 device\(s\): board-1; 1 not attempted \(batch 1 failed\)") as err:
        deploy_fleet(cfg, select_devices(cfg, group="edge"), canary=1, batch_size=2, validate=ok_validate)
    res = err.value.results
    assert calls == ["board-0"]
    assert [res.results[n].outcome for n in ("board-0", "board-1", "board-2", "bench-pc")] == \
        ["switched", "failed", "switched", "not attempted"]
    err1 = res.results["board-1"].error
    assert err1 is not None and err1.kind == "unreachable" and "cannot connect" in err1.message
    # the hint names this device's own port, user and host (no PORT/USER/HOST placeholders)
    assert err1.hint is not None and f"ssh -p {dead_port} root@{b1.host} true" in err1.hint

    # without a canary every device is attempted; the failure is reported, the others succeed
    with pytest.raises(FleetError) as err:
        deploy_fleet(cfg, select_devices(cfg, group="edge"))
    assert [n for n, o in err.value.results.results.items() if o.ok] == ["board-0", "board-2", "bench-pc"]


def test_missing_bundle_fails_before_any_device_is_touched(fleet_project: Path) -> None:
    cfg = load(fleet_project)
    with pytest.raises(DeployError, match="no bundle at .*/dist/tiny/raspberry-pi-5 for device 'board-0'") as err:
        deploy_fleet(cfg, select_devices(cfg, group="edge"), target="raspberry-pi-5")
    assert err.value.hint == "run 'edgekit build --target raspberry-pi-5' first"
    assert all(current(cfg, d.name) == "" for d in cfg.devices)


def _cli(args: List[str]) -> Any:
    from edgekit.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_cli_deploy_status_rollback(fleet_project: Path) -> None:
    cfg_arg = ["--config", str(fleet_project)]
    r = _cli(["deploy", "--device", "board-1", *cfg_arg, "--json"])
    assert r.exit_code == 0, r.output
    first = json.loads(r.output)
    assert first["device"] == "board-1" and first["switched"] and first["uploaded_bytes"] > 0

    r = _cli(["deploy", "--device", "board-1", *cfg_arg])
    assert r.exit_code == 0 and "unchanged (already current)" in r.output

    second = rebuild(load(fleet_project), seed=9)
    r = _cli(["deploy", "--group", "edge", *cfg_arg, "--canary", "1", "--duration", "0.1", "--json"])
    assert r.exit_code == 0, r.output
    fleet = json.loads(r.output)
    hosts = {h["host"]: h for h in fleet["hosts"]}
    assert fleet["canary"] == ["board-0"] and hosts["board-0"]["validation"]["ok"] is True
    assert [h["outcome"] for h in fleet["hosts"]] == ["switched", "switched", "switched", "switched"]
    assert fleet["recap"] == {"ok": 4, "changed": 4, "unchanged": 0, "failed": 0, "rolled_back": 0, "not_attempted": 0}

    r = _cli(["status", "--device", "board-1", *cfg_arg, "--json"])
    st = json.loads(r.output)
    assert (st["current"], st["previous"]) == (second, first["release_id"])
    assert [x["target"] for x in st["releases"]] == ["x86-avx2", "x86-avx2"]
    r = _cli(["status", "--device", "board-1", *cfg_arg])
    assert r.exit_code == 0 and "current" in r.output and "previous" in r.output

    r = _cli(["rollback", "--device", "board-1", *cfg_arg, "--json"])
    assert json.loads(r.output)["to_release"] == first["release_id"]
    r = _cli(["rollback", "--device", "board-1", *cfg_arg])
    assert r.exit_code == 7 and "no previous release" in r.output


def test_cli_fleet_failure_prints_every_device_and_exits_nonzero(fleet_project: Path) -> None:
    rebuild(load(fleet_project), seed=7, corrupt_reference=True)
    r = _cli(["deploy", "--group", "edge", "--config", str(fleet_project), "--canary", "1", "--duration", "0.1", "--json"])
    assert r.exit_code == 7
    out = r.output[: r.output.rindex("}") + 1]
    data = json.loads(out)
    assert [h["host"] for h in data["hosts"]] == ["board-0", "board-1", "board-2", "bench-pc"]
    assert data["stopped"] == "canary failed on board-0"
    assert data["hosts"][0]["outcome"] == "rolled back" and data["hosts"][0]["error"]["kind"] == "metric"
    assert data["hosts"][1]["error"] == {"kind": "not_attempted", "message": "rollout stopped: canary failed on board-0",
                                         "hint": "fix the failure, then rerun with --retry-failed"}
    r = _cli(["deploy", "--group", "edge", "--config", str(fleet_project), "--canary", "1", "--duration", "0.1"])
    assert r.exit_code == 7 and "not attempted" in r.output and "error: deploy failed on 1 of 4 device(s): board-0; 3 not attempted" in r.output
    r = _cli(["deploy", "--group", "nope", "--config", str(fleet_project)])
    assert r.exit_code == 2 and "no device in group 'nope'" in r.output
