"""The deploy lock and the device filesystem under attack, for a local device and a real sshd on
loopback: a second deployer in another PID namespace (unshare -p), locks of other machines that
share our host name, partials of live deployers, a read-only filesystem, a file where the lock
belongs.

Root-only mechanisms (tmpfs, unshare) skip outside CI and FAIL under CI when unavailable
(EDGEKIT_TEST_NO_TMPFS / EDGEKIT_TEST_NO_UNSHARE simulate that; the last test checks it fails)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hostile_support import (ROOT, assert_one_error_line, cli, current_of, dist_for, open_device, releases_of,
                             tmpfs, tree_digest, unavailable)
from sshd_fixtures import make_bundle

from edgekit import artifact
from edgekit import deploy as D
from edgekit.deploy_lock import machine, new_owner
from edgekit.errors import DeployError


# case 4: locks across machines that share a host name, and PID namespaces
# ----------------------------------------------------------------------------------------------
HOLDER = """
import json, sys, time
from pathlib import Path
from edgekit import deploy as D
from edgekit.config import load
from edgekit.transport import connect
cfg = load(sys.argv[1])
with connect(cfg.device("dev"), cfg) as t:
    real = t.put_many
    def slow(pairs):
        Path(sys.argv[3]).write_text("uploading")
        time.sleep(float(sys.argv[4]))
        return real(pairs)
    t.put_many = slow
    r = D.deploy(t, Path(sys.argv[2]), lock_timeout=5)
print(json.dumps({"id": r.release_id, "switched": r.switched}))
"""


def _require_unshare() -> None:
    ok = not os.environ.get("EDGEKIT_TEST_NO_UNSHARE") and shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True).returncode == 0
    if not ok:
        unavailable("unshare -p (a PID namespace)")


def test_a_deployer_in_another_pid_namespace_waits_and_never_breaks_a_live_lock(
        tmp_path: Path, one_device: Dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    _require_unshare()
    config, t = open_device(tmp_path, one_device)
    b1, b2, b3 = (make_bundle(tmp_path, s) for s in (1, 2, 3))
    with t:
        r1 = D.deploy(t, b1)
    # A fast heartbeat for the holder and a short stale time for the waiters: were the heartbeat not
    # seen, or the holder's pid judged from the other namespace, the lock would be broken in 1.5 s.
    monkeypatch.setenv("EDGEKIT_LOCK_HEARTBEAT_S", "0.2")
    monkeypatch.setenv("EDGEKIT_LOCK_STALE_S", "1.5")
    started = tmp_path / "holder-started"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(config.path), str(b2), str(started), "6"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    edgekit = ["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c", "from edgekit.cli import run; run()",
               "deploy", "--device", "dev", "--config", str(config.path), "--dist", str(dist_for(b3, tmp_path / "d3"))]
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert holder.poll() is None and time.monotonic() < deadline, holder.communicate()
            time.sleep(0.05)
        lock_owner = json.loads((Path(str(one_device["path"])) / "releases" / ".lock" / "owner").read_text())
        assert lock_owner["pid"] == holder.pid and lock_owner["pid_ns"] == machine()["pid_ns"]
        partial = [d for d in releases_of(one_device) if d.endswith(".partial")]
        assert len(partial) == 1  # the holder's upload in progress

        waiter = subprocess.run([*edgekit, "--lock-timeout", "2.5"], capture_output=True, text=True, timeout=60)
        assert waiter.returncode == 7, waiter.stdout + waiter.stderr
        assert_one_error_line(waiter.stderr)
        assert f"another deploy holds the lock {one_device['path']}/releases/.lock (held by pid {holder.pid} on " \
               f"{socket.gethostname()}" in waiter.stderr
        assert json.loads((Path(str(one_device["path"])) / "releases" / ".lock" / "owner").read_text()) == lock_owner
        assert partial[0] in releases_of(one_device)  # the holder's .partial was never touched

        patient = subprocess.run([*edgekit, "--lock-timeout", "60"], capture_output=True, text=True, timeout=120)
        out, err = holder.communicate(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert holder.returncode == 0, err
    done = json.loads(out)
    assert done["switched"] and done["id"] == artifact.read_manifest(b2)["release_id"]
    assert patient.returncode == 0, patient.stdout + patient.stderr  # waited for the holder, then deployed
    r3 = artifact.read_manifest(b3)["release_id"]
    assert current_of(one_device) == f"releases/{r3}"
    assert releases_of(one_device) == sorted([r1.release_id, done["id"], r3])


def _foreign_owner(**kw: object) -> Dict[str, object]:
    """An owner taken on another machine that shares our host name (a cloned SD-card image)."""
    return dict(new_owner(), machine_id="0" * 32, boot_id="another-boot", pid=os.getpid() + 100000, **kw)


def test_a_lock_from_another_machine_is_broken_only_when_its_heartbeat_stops(
        tmp_path: Path, one_device: Dict[str, object]) -> None:
    b1, b2 = make_bundle(tmp_path, 1), make_bundle(tmp_path, 2)
    _, t = open_device(tmp_path, one_device)
    with t:
        D.deploy(t, b1)
        lock = Path(t.root) / "releases" / ".lock"
        lock.mkdir()
        owner = _foreign_owner(time=time.time() - 86400)  # old, yet alive
        (lock / "owner").write_text(json.dumps(owner))
        stop, tag = threading.Event(), [str(owner["token"])[:8]]

        def beat() -> None:  # what DeviceLock._beat writes: a count and the beating owner's token
            n = 0
            while not stop.wait(0.1):
                n += 1
                with contextlib.suppress(OSError):  # the lock is gone once broken and released
                    (lock / "heartbeat").write_text(f"{n} {tag[0]}")

        beater = threading.Thread(target=beat)
        beater.start()
        try:
            with pytest.raises(DeployError, match=r"another deploy holds the lock .*held by pid \d+ on "
                                                  r".*\(machine 000000000000\)"):
                D.deploy(t, b2, lock_timeout=2.0, lock_stale_s=0.8)
            # A deposed holder's beat (another token) still moving keeps nobody's lock alive.
            tag[0] = "deadbeef"
            start = time.monotonic()
            r2 = D.deploy(t, b2, lock_timeout=10, lock_stale_s=0.8)
            assert r2.switched and 0.7 < time.monotonic() - start
        finally:
            stop.set()
            beater.join()
        assert not [d for d in releases_of(one_device) if d.startswith(".lock")]


def test_pruning_keeps_a_live_deployers_partial(tmp_path: Path, one_device: Dict[str, object]) -> None:
    b1, b2 = make_bundle(tmp_path, 1), make_bundle(tmp_path, 2)
    _, t = open_device(tmp_path, one_device)
    with t:
        D.deploy(t, b1)
        releases = Path(t.root) / "releases"
        partials = {"live": "a" * 16 + ".partial", "dead": "b" * 16 + ".partial", "legacy": "c" * 16 + ".partial"}
        owners = {"live": _foreign_owner(), "dead": dict(new_owner(), pid=2 ** 22 + 9)}
        for kind, name in partials.items():
            (releases / name).mkdir()
            (releases / name / "model.onnx").write_bytes(b"half")
            if kind in owners:
                (releases / name / ".edgekit-owner").write_text(json.dumps(owners[kind]))
        D.deploy(t, b2)
        left = releases_of(one_device)
    assert partials["live"] in left and partials["dead"] not in left and partials["legacy"] not in left


def test_a_partial_is_never_seen_without_its_owner_mark(tmp_path: Path, one_device: Dict[str, object]) -> None:
    """Another deployer's prune keeps only marked partials it cannot prove dead; an unmarked one
    counts as an older edgekit's leftover. So a new .partial must never exist, even for a moment,
    without its owner: checked after every file operation of a deploy."""
    b1 = make_bundle(tmp_path, 1)
    # Over SSH the file operations are observable here only when the host drives them (no Python on
    # the device); with Python, the same Device.claim runs on the device.
    spec = dict(one_device, python="/nonexistent/python3") if one_device["transport"] == "ssh" else one_device
    _, t = open_device(tmp_path, spec)
    releases = Path(str(one_device["path"])) / "releases"
    seen: List[str] = []

    def check_after(name: str) -> None:
        real = getattr(t, name)

        def op(*args: Any, **kw: Any) -> Any:
            out = real(*args, **kw)
            for d in os.listdir(releases) if releases.is_dir() else ():
                if d.endswith(".partial"):
                    seen.append(d)
                    assert (releases / d / ".edgekit-owner").is_file() or not (releases / d).exists(), (name, args)
            return out

        setattr(t, name, op)

    with t:
        for name in ("mkdir", "makedirs", "rename", "write_bytes", "put_many", "rmtree", "symlink"):
            check_after(name)
        r1 = D.deploy(t, b1)
    assert seen == [f"{r1.release_id}.partial"] * len(seen) and len(seen) >= 2  # the checks ran during the upload
    assert releases_of(one_device) == [r1.release_id]
    assert ".edgekit-owner" not in os.listdir(releases / r1.release_id)  # the release holds the bundle's files only


def test_a_planted_link_at_the_partial_path_is_never_followed(tmp_path: Path, one_device: Dict[str, object]) -> None:
    """A device that links releases/<id>.partial elsewhere does not get the upload written there."""
    b1 = make_bundle(tmp_path, 1)
    rid = artifact.read_manifest(b1)["release_id"]
    outside = tmp_path / "outside"
    outside.mkdir()
    releases = Path(str(one_device["path"])) / "releases"
    releases.mkdir(parents=True)
    os.symlink(outside, releases / f"{rid}.partial")
    _, t = open_device(tmp_path, one_device)
    with t:
        r1 = D.deploy(t, b1)
    assert r1.switched and os.listdir(outside) == []
    assert tree_digest(releases / rid) == tree_digest(b1) and not (releases / rid).is_symlink()
    assert releases_of(one_device) == [rid]


# case 10: a read-only filesystem, a regular file where the lock belongs
# ----------------------------------------------------------------------------------------------
def test_read_only_device_filesystem_is_one_error_line(tmp_path: Path, one_device: Dict[str, object]) -> None:
    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        spec = dict(one_device, path=str(disk / "device"))
        config, t = open_device(tmp_path, spec)
        with t:
            r1 = D.deploy(t, make_bundle(tmp_path, 1))
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            with pytest.raises(DeployError, match=r"cannot take the deploy lock .*; the previous release stays "
                                                  rf"current \({r1.release_id}\)") as err:
                D.deploy(t, make_bundle(tmp_path, 2))
            assert err.value.details["kind"] == "lock_failed"
            assert D.status(t).current == r1.release_id  # reading still works
        r = cli(["deploy", "--device", "dev", "--config", str(config.path),
                 "--dist", str(dist_for(make_bundle(tmp_path, 2), tmp_path / "d"))])
        assert r.exit_code == 7
        assert_one_error_line(r.output)
        r = cli(["rollback", "--device", "dev", "--config", str(config.path)])
        assert r.exit_code == 7
        assert_one_error_line(r.output)
        assert releases_of(spec) == [r1.release_id]


def test_a_regular_file_at_the_lock_path_is_refused_and_left_alone(tmp_path: Path,
                                                                   one_device: Dict[str, object]) -> None:
    config, t = open_device(tmp_path, one_device)
    with t:
        r1 = D.deploy(t, make_bundle(tmp_path, 1))
        lock = Path(t.root) / "releases" / ".lock"
        lock.write_text("not a lock")
        start = time.monotonic()
        with pytest.raises(DeployError, match=r"releases/\.lock exists but is not a directory") as err:
            D.deploy(t, make_bundle(tmp_path, 2), lock_timeout=30)
        assert time.monotonic() - start < 10 and "previous release stays current" in err.value.message
    r = cli(["deploy", "--device", "dev", "--config", str(config.path),
             "--dist", str(dist_for(make_bundle(tmp_path, 2), tmp_path / "d"))])
    assert r.exit_code == 7
    assert_one_error_line(r.output)
    assert lock.read_text() == "not a lock" and releases_of(one_device) == [".lock", r1.release_id]


# ----------------------------------------------------------------------------------------------
# the root-only mechanisms fail, not skip, under CI
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env,test", [
    ("EDGEKIT_TEST_NO_TMPFS", "test_read_only_device_filesystem_is_one_error_line[local]"),
    ("EDGEKIT_TEST_NO_UNSHARE", "test_a_deployer_in_another_pid_namespace_waits_and_never_breaks_a_live_lock[local]"),
])
def test_missing_root_mechanisms_fail_under_ci(env: str, test: str) -> None:
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::{test}"],
                         capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, CI="1", **{env: "1"}),
                         timeout=300)
    assert res.returncode == 1 and "1 failed" in res.stdout and "CI must run this test" in res.stdout, res.stdout
