"""The Ansible engine and the edgekit.fleet collection, against real sshd servers on loopback.

- Both engines leave identical device state: the same release directories and files, the same
  ``current``, the same history lines (times aside) and no leftovers, step by step through a first
  deploy, a redeploy, new releases with pruning, a repaired release and a failed canary rolled back.
- The built-in engine's known_hosts policy holds under Ansible: an unknown host key is refused with
  the same ssh-keyscan hint (even when the environment tells Ansible not to check host keys), and
  --accept-new-host-key records the key where the built-in engine records it.
- ``edgekit validate --engine ansible`` stores run files like the built-in engine.
- Both engines write the report's release log alike (deploys: switched, unchanged, repaired; the
  failed canary's rollback), so ``edgekit report`` reads a canary Ansible rolled back as "rolled back".
- The collection works without edgekit's CLI: plain ``ansible-playbook``, check mode included, and
  ``ansible-galaxy collection build`` ships the device release script as a regular file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
from ansible_support import require_ansible
from click.testing import CliRunner
from sshd_fixtures import SshdFleet, SshdServer, write_project

from bundles import make_tiny_bundle
from edgekit.config import ProjectConfig, load
from edgekit.errors import FleetError
from edgekit.fleet import deploy_fleet, select_devices

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = ROOT / "ansible_collections" / "edgekit" / "fleet"


@pytest.fixture(autouse=True)
def _ansible() -> None:
    require_ansible()


def _engine(name: str) -> Any:
    from edgekit.engine_ansible_fleet import AnsibleEngine

    return AnsibleEngine() if name == "ansible" else None


@pytest.fixture
def twin_project(tmp_path: Path, sshd_fleet: SshdFleet, ssh_device: Callable, trust_hosts: Callable) -> Path:
    """Two twin fleets on the same servers: group "builtin" (b-0..b-2 over ssh, b-local) and group
    "ansible" (a-0..a-2, a-local), each device in its own fresh directory."""
    trust_hosts(*sshd_fleet.servers)
    devices: List[Dict[str, object]] = []
    for engine in ("builtin", "ansible"):
        p = engine[0]
        devices += [ssh_device(s, f"{p}-{i}", groups=[engine]) for i, s in enumerate(sshd_fleet.servers)]
        devices.append({"name": f"{p}-local", "target": "x86-avx2", "transport": "local",
                        "path": str(tmp_path / f"{p}-local-dev"), "python": devices[0]["python"], "groups": [engine]})
    return write_project(tmp_path / "proj", devices, deploy={"max_parallel": 4, "keep_releases": 2})


def snapshot(root: Path) -> Dict[str, str]:
    """Everything under a device directory: files by sha256, links by target, directories, with the
    history's times left out (the two engines ran seconds apart)."""
    out: Dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        # Python's bytecode cache, which the runner's imports leave beside runner.py whichever engine
        # started it, records its source's mtime: the same code uploaded at another second differs.
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif rel == "history":
                out[rel] = "\n".join(line.split(" ", 1)[1] for line in p.read_text().splitlines())
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def rebuild(cfg: ProjectConfig, seed: int, **kw: Any) -> str:
    bundle = cfg.root / "dist" / "tiny" / "x86-avx2"
    shutil.rmtree(bundle)
    return str(make_tiny_bundle(bundle, seed=seed, **kw)["release_id"])


def both(cfg: ProjectConfig, **kw: Any) -> Dict[str, Tuple[str, Any]]:
    """Deploy with each engine to its own group; {device suffix: (outcome, release) per engine}."""
    outcomes: Dict[str, Any] = {}
    for engine in ("builtin", "ansible"):
        try:
            run = deploy_fleet(cfg, select_devices(cfg, group=engine), engine=_engine(engine), **kw)
        except FleetError as exc:
            run = exc.results
        assert run.engine == engine
        for name, r in run.results.items():
            outcomes.setdefault(name[2:], []).append((r.outcome, r.release, r.phase, r.ok))
    return outcomes


def assert_twins(cfg: ProjectConfig) -> None:
    for d in cfg.devices:
        if d.name.startswith("b-"):
            twin = "a-" + d.name[2:]
            a = Path(next(x.path for x in cfg.devices if x.name == twin))
            assert snapshot(Path(d.path)) == snapshot(a), f"{d.name} and {twin} differ"


def test_both_engines_leave_identical_device_state(twin_project: Path) -> None:
    cfg = load(twin_project)
    first = str(json.loads((cfg.root / "dist/tiny/x86-avx2/manifest.json").read_text())["release_id"])
    steps = [("first deploy", {}, "switched"), ("redeploy", {}, "unchanged")]
    for what, kw, expected in steps:
        outcomes = both(cfg, **kw)
        for name, (b, a) in outcomes.items():
            assert b == a and b[0] == expected, (what, name, b, a)
        assert_twins(cfg)
    rids = [first]
    for seed in (2, 3):  # keep_releases = 2: the third release prunes the first
        rid = rebuild(cfg, seed)
        rids.append(rid)
        outcomes = both(cfg, canary=1, duration=0.1)
        assert {o for pair in outcomes.values() for o in pair} == {("switched", rid, "canary", True),
                                                                   ("switched", rid, "batch 1", True)}
        assert_twins(cfg)
    snap = snapshot(Path(next(d.path for d in cfg.devices if d.name == "a-0")))
    assert not any(first in k for k in snap) and snap["current"] == f"-> releases/{rid}"
    assert snap["history"].splitlines() == [f"deploy {r}" for r in rids]
    # a damaged file in the current release: restored through a fresh copy on both
    for d in cfg.devices:
        if d.name in ("b-1", "a-1"):
            (Path(d.path) / "releases" / rid / "model.onnx").write_bytes(b"damaged")
    outcomes = both(cfg)
    assert outcomes["1"] == [("repaired", rid, None, True)] * 2 and outcomes["0"][0][0] == "unchanged"
    assert_twins(cfg)
    # a canary that fails validation on the device is switched back; the rest are not attempted
    bad = rebuild(cfg, seed=7, corrupt_reference=True)
    outcomes = both(cfg, canary=1, duration=0.1)
    assert outcomes["0"] == [("rolled back", rid, "canary", False)] * 2
    assert outcomes["2"] == [("not attempted", None, "after canary", False)] * 2
    assert_twins(cfg)
    hist = snapshot(Path(next(d.path for d in cfg.devices if d.name == "a-0")))["history"].splitlines()
    assert hist[-2:] == [f"deploy {bad}", f"rollback {bad} {rid}"]


def _cli(args: List[str]) -> Any:
    from edgekit.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture
def one_board(tmp_path: Path, sshd: SshdServer, ssh_device: Callable) -> Path:
    """A project with one ssh device whose host key is NOT trusted yet, and one that is."""
    return write_project(tmp_path / "proj", [ssh_device(sshd, "board", groups=["edge"])])


def test_unknown_host_key_is_refused_even_when_ansible_is_told_not_to_check(one_board: Path, sshd: SshdServer,
                                                                          no_user_ssh_config: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # What a user's environment or ansible.cfg could say to Ansible: edgekit's host variables win.
    monkeypatch.setenv("ANSIBLE_HOST_KEY_CHECKING", "False")
    monkeypatch.setenv("ANSIBLE_SSH_ARGS", "-o StrictHostKeyChecking=no")
    monkeypatch.setenv("ANSIBLE_SSH_COMMON_ARGS", "-o StrictHostKeyChecking=no")
    known = no_user_ssh_config / ".ssh" / "known_hosts"
    r = _cli(["deploy", "-g", "edge", "--config", str(one_board), "--engine", "ansible", "--json"])
    assert r.exit_code == 7, r.output
    host = json.loads(r.output[: r.output.rindex("}") + 1])["hosts"][0]
    assert host["engine"] == "ansible" and host["outcome"] == "failed"
    assert host["error"]["kind"] == "host_key_unknown"
    # the built-in engine's hint, naming this host and port and the file edgekit reads
    assert f"ssh-keyscan -p {sshd.port} {sshd.host} >> {known}" in host["error"]["hint"]
    assert not known.exists() or sshd.host not in known.read_text()
    cfg = load(one_board)
    assert not Path(cfg.devices[0].path).exists()  # never reached

    r = _cli(["deploy", "-g", "edge", "--config", str(one_board), "--engine", "ansible", "--accept-new-host-key"])
    assert r.exit_code == 0, r.output
    assert f"[{sshd.host}]:{sshd.port} {sshd.public_key_line()}" in known.read_text()  # recorded as the built-in does
    from edgekit.transport import OPTIONS

    assert not OPTIONS.get("ssh", {}).get("accept_new_host_key")  # the flag held for that command only
    assert os.readlink(Path(cfg.devices[0].path) / "current").startswith("releases/")


def test_changed_host_key_is_refused(one_board: Path, sshd: SshdServer, trust_hosts: Callable,
                                     no_user_ssh_config: Path) -> None:
    from sshd_fixtures import generate_key

    other = generate_key(no_user_ssh_config / "other_host_key")
    line = " ".join(Path(str(other) + ".pub").read_text().split()[:2])
    (no_user_ssh_config / ".ssh" / "known_hosts").write_text(f"[{sshd.host}]:{sshd.port} {line}\n")
    cfg = load(one_board)
    from edgekit import transport

    transport.configure("ssh", accept_new_host_key=True)  # what --accept-new-host-key sets: a changed key still fails
    try:
        with pytest.raises(FleetError) as err:
            deploy_fleet(cfg, select_devices(cfg, group="edge"), engine=_engine("ansible"))
    finally:
        transport.OPTIONS.pop("ssh", None)
    res = err.value.results.results["board"]
    assert res.error is not None and res.error.kind == "host_key_changed", res.error
    assert not Path(cfg.devices[0].path).exists()


def test_the_ansible_engine_honours_the_builtin_engines_lock(one_board: Path, sshd: SshdServer,
                                                              trust_hosts: Callable) -> None:
    """One lock for both engines: a live built-in deploy's lock (its owner alive, its heartbeat
    beating) makes the Ansible engine wait and give up with the built-in engine's words."""
    from edgekit.deploy_lock import DeviceLock
    from edgekit.transport import connect

    trust_hosts(sshd)
    cfg = load(one_board)
    devices = select_devices(cfg, group="edge")
    with connect(cfg.devices[0], cfg) as t, t.release_session() as session:
        lock = DeviceLock(session, t, 5)
        lock.acquire()
        try:
            with pytest.raises(FleetError) as err:
                deploy_fleet(cfg, devices, engine=_engine("ansible"), lock_timeout=2)
        finally:
            lock.release()
    res = err.value.results.results["board"]
    assert res.error is not None and res.error.kind == "locked", res.error
    assert "another deploy holds the lock" in res.error.message and "held by pid" in res.error.message
    assert not os.path.lexists(Path(cfg.devices[0].path) / "current")
    assert deploy_fleet(cfg, devices, engine=_engine("ansible")).results["board"].outcome == "switched"


def test_validate_engine_ansible_stores_runs_like_the_builtin(twin_project: Path) -> None:
    cfg = load(twin_project)
    deploy_fleet(cfg, select_devices(cfg, group="ansible"), engine=_engine("ansible"))
    r = _cli(["validate", "-g", "ansible", "--config", str(twin_project), "--engine", "ansible", "--quick", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[: r.output.rindex("}") + 1])
    assert out["engine"] == "ansible" and out["recap"]["ok"] == 4
    for h in out["hosts"]:
        run = json.loads(Path(h["validation"]["result_path"]).read_text())
        assert run["ok"] is True and run["host"]["device"] == h["host"] and run["host"]["engine"] == "ansible"
        assert run["release_id"] == h["release"] and run["latency"]["iterations"] >= 1
    # a release that misses its metric: exit 6, like the built-in engine's validate
    rebuild(cfg, seed=8, corrupt_reference=True)
    deploy_fleet(cfg, select_devices(cfg, group="ansible"), engine=_engine("ansible"))
    r = _cli(["validate", "-d", "a-1", "--config", str(twin_project), "--engine", "ansible", "--quick", "--json"])
    assert r.exit_code == 6, r.output
    h = json.loads(r.output[: r.output.rindex("}") + 1])["hosts"][0]
    assert h["outcome"] == "failed" and h["error"]["kind"] == "metric"


def test_ansible_engine_writes_the_release_log_like_the_builtin(twin_project: Path, tmp_path: Path) -> None:
    """Same CLI steps with each engine on its twin group: every releases.jsonl line matches (times
    aside), and the report reads the canary Ansible rolled back as "rolled back", not "failed"."""
    from edgekit.report.releases import RELEASE_LOG, read_log

    cfg = load(twin_project)
    conf = ["--config", str(twin_project)]
    good = str(json.loads((cfg.root / "dist/tiny/x86-avx2/manifest.json").read_text())["release_id"])

    def both(*args: str, code: int = 0) -> None:
        for engine in ("builtin", "ansible"):
            r = _cli([*args, "-g", engine, *conf, "--engine", engine])
            assert r.exit_code == code, (engine, r.output)

    both("deploy")
    both("validate", "--quick")  # the good release passes: the rolled-back canary goes back onto it
    both("deploy")  # unchanged everywhere
    for d in cfg.devices:
        if d.name in ("b-1", "a-1"):
            (Path(d.path) / "releases" / good / "model.onnx").write_bytes(b"damaged")
    both("deploy")  # repaired on *-1, unchanged on the rest
    bad = rebuild(cfg, seed=9, corrupt_reference=True)
    both("deploy", "--canary", "1", "--duration", "0.1", code=7)  # the real validation fails on *-0

    lines: Dict[str, List[Tuple[Any, ...]]] = {}
    for e in read_log(cfg.root / "runs" / RELEASE_LOG):
        lines.setdefault(e.device, []).append((e.action, e.outcome, e.release, e.current, e.target))
    assert sorted(lines) == sorted(d.name for d in cfg.devices)
    for suffix in ("0", "1", "2", "local"):
        assert lines["a-" + suffix] == lines["b-" + suffix], suffix
    deployed = ("deploy", "switched", good, good, "x86-avx2")
    unchanged = ("deploy", "unchanged", good, good, "x86-avx2")
    assert lines["a-0"] == [deployed, unchanged, unchanged, ("deploy", "switched", bad, bad, "x86-avx2"),
                            ("rollback", "rolled back", bad, good, None)]
    assert lines["a-1"] == [deployed, unchanged, ("deploy", "repaired", good, good, "x86-avx2")]
    assert lines["a-2"] == [deployed, unchanged, unchanged]  # not attempted after the canary: no line

    r = _cli(["report", "--runs-dir", str(cfg.root / "runs"), "--out", str(tmp_path / "r"), "--fail-on-failure", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["rolled_back"] == ["a-0", "b-0"] and data["failed"] == [] and data["passed"] == 8
    rows = {row["device"]: row for row in data["summary"]}
    for name in ("a-0", "b-0"):
        assert (rows[name]["release_id"], rows[name]["status"], rows[name]["rolled_back_from"]) == (good, "rolled back", bad)


# ------------------------------------------------------------------------------------------------
# The collection without edgekit's CLI
# ------------------------------------------------------------------------------------------------
def _playbook(args: List[str], home: Path) -> "subprocess.CompletedProcess[str]":
    from edgekit.transport.inventory_ansible import ansible_executable

    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT), ANSIBLE_NOCOLOR="1", HOME=str(home))
    return subprocess.run([str(ansible_executable("ansible-playbook")), *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=home)


def test_plain_ansible_playbook_check_mode_then_rollout(tmp_path: Path, sshd_fleet: SshdFleet, trust_hosts: Callable,
                                                       no_user_ssh_config: Path, tiny_bundle: Path) -> None:
    trust_hosts(*sshd_fleet.servers)
    known = no_user_ssh_config / ".ssh" / "known_hosts"
    import sys

    lines = ["[fleet]"]
    for i, s in enumerate(sshd_fleet.servers):
        lines.append(f"pi-{i} ansible_host={s.host} ansible_port={s.port} edgekit_path={tmp_path / f'pi-{i}'}")
    lines += ["", "[fleet:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={sshd_fleet.user_key}",
              f"ansible_python_interpreter={sys.executable}",
              f"ansible_ssh_common_args='-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes'"]
    inv = tmp_path / "hosts.ini"
    inv.write_text("\n".join(lines) + "\n")
    rid = json.loads((tiny_bundle / "manifest.json").read_text())["release_id"]
    common = ["-i", str(inv), "edgekit.fleet.deploy", "-e", "edgekit_hosts=fleet", "-e", f"edgekit_bundle={tiny_bundle}",
              "-e", "edgekit_validate_duration=0.1"]
    dry = _playbook(common + ["--check"], no_user_ssh_config)
    assert dry.returncode == 0, dry.stdout[-3000:]
    assert re.search(r"changed: \[pi-0\]", dry.stdout) and not any((tmp_path / f"pi-{i}").exists() for i in range(3))
    real = _playbook(common, no_user_ssh_config)
    assert real.returncode == 0, real.stdout[-3000:]
    # serial [1, "10%", "100%"]: the canary alone (validated on the device), then one host, then the rest
    assert real.stdout.count("PLAY [Roll out an edgekit release") == 3
    assert "ok: [pi-0]" in real.stdout.split("Validate the canary")[1].split("TASK")[0]
    for i in range(3):
        dev = tmp_path / f"pi-{i}"
        assert os.readlink(dev / "current") == f"releases/{rid}"
        assert [ln.split()[1:] for ln in (dev / "history").read_text().splitlines()] == [["deploy", rid]]
    again = _playbook(common + ["--check"], no_user_ssh_config)
    assert again.returncode == 0 and "changed=0" in again.stdout and "changed: [" not in again.stdout
    back = _playbook(["-i", str(inv), "edgekit.fleet.rollback", "-e", "edgekit_hosts=fleet"], no_user_ssh_config)
    assert back.returncode != 0 and "no previous release to roll back to" in back.stdout  # one release only


def test_galaxy_build_ships_the_device_release_script_itself(tmp_path: Path) -> None:
    from edgekit.transport.inventory_ansible import ansible_executable

    proc = subprocess.run([str(ansible_executable("ansible-galaxy")), "collection", "build", str(COLLECTION),
                           "--output-path", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(next(tmp_path.glob("edgekit-fleet-*.tar.gz"))) as tar:
        member = tar.getmember("plugins/module_utils/edgekit_release.py")
        assert member.isfile()  # the link resolved: the artifact carries the file, not a dangling link
        shipped = tar.extractfile(member).read()  # type: ignore[union-attr]
        # ... with the layout module it imports (without it: "No module named 'release_layout'")
        layout = tar.getmember("plugins/module_utils/release_layout.py")
        assert layout.isfile()
        shipped_layout = tar.extractfile(layout).read()  # type: ignore[union-attr]
        owner = tar.getmember("plugins/module_utils/lock_owner.py")  # the lock judgement deploy_lock.py uses
        assert owner.isfile()
        shipped_owner = tar.extractfile(owner).read()  # type: ignore[union-attr]
        names = set(tar.getnames())
    assert shipped == (ROOT / "edgekit" / "device" / "release.py").read_bytes()
    assert shipped_layout == (ROOT / "edgekit" / "device" / "release_layout.py").read_bytes()
    assert shipped_owner == (ROOT / "edgekit" / "device" / "lock_owner.py").read_bytes()
    assert {"plugins/modules/release.py", "plugins/modules/validate.py", "plugins/action/release.py",
            "playbooks/deploy.yml", "playbooks/validate.yml", "playbooks/rollback.yml", "README.md"} <= names


def test_an_installed_collection_is_used_when_edgekit_has_no_source_tree(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A wheel-installed edgekit has no ansible_collections/ beside it: the collection installed with
    ansible-galaxy (as on an AWX controller) is used; without it, one error says how to install it."""
    from edgekit.transport.inventory_ansible import ansible_executable

    galaxy = str(ansible_executable("ansible-galaxy"))
    subprocess.run([galaxy, "collection", "build", str(COLLECTION), "--output-path", str(tmp_path)], check=True,
                   capture_output=True, timeout=120)
    cfg = load(write_project(tmp_path / "p", [{"name": "pc", "target": "x86-avx2", "path": str(tmp_path / "dev"),
                                                "groups": ["edge"]}]))
    monkeypatch.setattr("edgekit.engine_ansible.collections_root", lambda: None)
    empty = tmp_path / "nothing-installed"
    empty.mkdir()
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", str(empty))
    # PYTHONPATH holds this checkout, and Ansible also looks for collections along sys.path
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_SCAN_SYS_PATH", "False")
    with pytest.raises(FleetError) as err:
        deploy_fleet(cfg, cfg.devices, engine=_engine("ansible"))
    e = err.value.results.results["pc"].error
    assert e is not None and e.kind == "ansible" and "ansible-galaxy collection install" in (e.hint or ""), e

    installed = tmp_path / "installed"
    subprocess.run([galaxy, "collection", "install", str(next(tmp_path.glob("edgekit-fleet-*.tar.gz"))), "-p",
                    str(installed)], check=True, capture_output=True, timeout=120)
    monkeypatch.setenv("ANSIBLE_COLLECTIONS_PATH", str(installed))
    run = deploy_fleet(cfg, cfg.devices, engine=_engine("ansible"))
    assert run.results["pc"].outcome == "switched" and os.readlink(tmp_path / "dev" / "current").startswith("releases/")


def test_device_side_modules_parse_under_python_3_8() -> None:
    """The modules run on the device with its Python (3.8 on JetPack 5), like edgekit/device/."""
    import sys

    vermin = str(Path(sys.executable).parent / "vermin")
    files = [str(p) for p in (COLLECTION / "plugins" / "modules").glob("*.py")]
    proc = subprocess.run([vermin, "-t=3.8-", "--no-tips", "--violations", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_name_ansible_would_read_as_a_port_or_range_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from edgekit.config import DeviceSpec
    from edgekit.engine_ansible import inventory
    from edgekit.errors import ConfigError

    cfg = load(write_project(tmp_path / "p", [{"name": "ok", "target": "x86-avx2", "path": str(tmp_path / "d")}]))
    for name in ("pi:22", "pi[1:3]", "fe80::1"):
        with pytest.raises(ConfigError, match=r"cannot use this name as an inventory host"):
            inventory(cfg, [DeviceSpec(name=name, target="x86-avx2", path=str(tmp_path / "d"))], {})
    inv = inventory(cfg, cfg.devices, {})
    assert inv["all"]["children"]["edgekit"]["hosts"]["ok"]["ansible_connection"] == "local"


def _our_ansible_playbooks() -> List[int]:
    """Processes running ansible-playbook whose parent is this test process."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"ansible-playbook" in cmd:
            found.append(int(pid))
    return found


def test_a_caller_that_stops_early_stops_ansible_playbook(tmp_path: Path) -> None:
    from edgekit.engine_ansible import stream_playbook
    from edgekit.engine_ansible import inventory as make_inventory

    cfg = load(write_project(tmp_path / "p", [{"name": "pc", "target": "x86-avx2", "path": str(tmp_path / "dev")}]))
    events = stream_playbook("validate", make_inventory(cfg, cfg.devices, {}), {"edgekit_hosts": "edgekit"}, forks=1)
    first = next(events)  # ansible-playbook has started and spoken
    assert first.get("event") and _our_ansible_playbooks()
    events.close()
    assert _our_ansible_playbooks() == []
