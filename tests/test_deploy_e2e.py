"""End to end: the real digits sample, built once per session (conftest's digits_bundle), deployed
with the CLI to a fleet of real sshd servers plus a local device, the canary validated on its
device by the runner, status and rollback read back; and the release flow's make target."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, List

from click.testing import CliRunner
from sshd_fixtures import SshdFleet, _toml_value

ROOT = Path(__file__).resolve().parent.parent


def cli(args: List[str]) -> Any:
    from edgekit.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_digits_sample_to_a_fleet(digits_project: Path, digits_bundle: Path, tmp_path: Path, sshd_fleet: SshdFleet,
                                  ssh_device: Callable, trust_hosts: Callable) -> None:
    trust_hosts(*sshd_fleet.servers[:2])
    text = (digits_project / "edgekit.toml").read_text()
    for i, s in enumerate(sshd_fleet.servers[:2]):
        spec = ssh_device(s, f"board-{i}", target="x86-avx512-vnni", groups=["fleet"])
        text += "\n[[devices]]\n" + "\n".join(f"{k} = {_toml_value(v)}" for k, v in spec.items()) + "\n"
    config = tmp_path / "edgekit.toml"
    config.write_text(text)
    base = ["--config", str(config), "--dist", str(digits_project / "dist")]

    r = cli(["deploy", "--group", "fleet", *base, "--canary", "1", "--duration", "0.2", "--json"])
    assert r.exit_code == 0, r.output
    fleet = json.loads(r.output)
    rid = json.loads((digits_bundle / "manifest.json").read_text())["release_id"]
    hosts = {h["host"]: h for h in fleet["hosts"]}
    assert {h["release"] for h in fleet["hosts"]} == {rid}
    canary = hosts["board-0"]
    assert canary["outcome"] == "switched" and canary["phase"] == "canary" and canary["validation"]["ok"] is True
    run = json.loads(Path(canary["validation"]["result_path"]).read_text())  # the runner's own result, kept in runs/
    assert run["ok"] and run["metric"]["name"] == "top1"
    m = run["metric"]  # 32 of the 400 samples ship: below 0.99 only where the host scored the same on them
    assert m["value"] >= 0.99 or ("subset_bar" in m and m["value"] >= m["subset_bar"])
    assert hosts["board-1"]["outcome"] == "switched" and hosts["board-1"]["phase"] == "batch 1"

    r = cli(["status", "--device", "board-1", "--config", str(config), "--json"])
    st = json.loads(r.output)
    assert st["current"] == rid and st["releases"][0]["target"] == "x86-avx512-vnni"
    assert st["releases"][0]["model"] == "digits"
    r = cli(["validate", "--device", "board-1", "--config", str(config), "--duration", "0.2", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["ok"] is True

    r = cli(["deploy", "--device", "board-1", *base, "--json"])  # unchanged: nothing sent
    again = json.loads(r.output)
    assert again["skipped"] and again["uploaded_bytes"] == 0


def test_release_flow_runs_one_edgekit_command_per_step() -> None:
    out = subprocess.run(["make", "-s", "-n", "-f", str(ROOT / "release.mk"), "release", "EDGEKIT=edgekit",
                          "CONFIG=proj/edgekit.toml", "TARGETS=x86-avx2 raspberry-pi-5", "GROUP=fleet", "CANARY=2",
                          "INVENTORY=hosts.ini"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    commands = [line for line in out.splitlines() if line.startswith("edgekit")]
    assert commands == [
        "edgekit build --config proj/edgekit.toml --target x86-avx2",
        "edgekit build --config proj/edgekit.toml --target raspberry-pi-5",
        "edgekit deploy --config proj/edgekit.toml --inventory hosts.ini --device local",
        "edgekit validate --config proj/edgekit.toml --device local --runs-dir proj/runs",
        "edgekit deploy --config proj/edgekit.toml --inventory hosts.ini --group fleet --canary 2 || \\",
        "edgekit report --runs-dir proj/runs --out proj/reports --fail-on-failure",
    ]
    # a failed rollout still writes the report (a rolled-back canary is on record), then fails
    assert "edgekit report --runs-dir proj/runs --out proj/reports --fail-on-failure; exit 1; }" in out
    # every flag the flow passes exists on the real commands
    from edgekit.cli import main

    for cmd in commands:
        name, *args = cmd.split()[1:]
        params = {o for p in main.commands[name].params for o in p.opts}
        assert {a for a in args if a.startswith("--")} <= params, cmd
    assert os.path.exists(ROOT / "Makefile") and "release.mk" in (ROOT / "Makefile").read_text()
