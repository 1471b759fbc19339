"""Attacks and faults on the deploy side, each reproduced for a local device and a real sshd on
loopback: crafted release ids and forged bundles, a device whose files are bloated or garbage, a
disk that fills exactly at the history write or the switch (a real tmpfs), a failure after the
switch, a link lost at the switch. Locks and read-only filesystems: test_deploy_locks.py.

Root-only mechanisms (tmpfs) skip outside CI and FAIL under CI when unavailable (see
test_deploy_locks.test_missing_root_mechanisms_fail_under_ci)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from hostile_support import (assert_one_error_line, cli, current_of, dist_for, fill_blocks, fill_inodes, open_device,
                             releases_of, rewrite_manifest, tmpfs, tree_digest)
from sshd_fixtures import SshdServer, make_bundle, write_project

from edgekit import artifact
from edgekit import deploy as D
from edgekit.config import load
from edgekit.errors import DeployError, FleetError
from edgekit.transport import connect


# ----------------------------------------------------------------------------------------------
# case 1: release ids are plain hex content addresses, checked before any device is touched
# ----------------------------------------------------------------------------------------------
def test_release_id_path_traversal_is_refused_before_the_device_is_touched(tmp_path: Path,
                                                                          one_device: Dict[str, object]) -> None:
    evil = rewrite_manifest(make_bundle(tmp_path, 1), tmp_path / "evil" / "x86-avx2",
                            lambda m: m.update(release_id="../../../escaped_release"))
    config, t = open_device(tmp_path, one_device)
    with t, pytest.raises(DeployError, match=r"field 'release_id': '\.\./\.\./\.\./escaped_release' is not a "
                                             r"release id \(expected 16 lowercase hex digits\)"):
        D.deploy(t, evil)
    assert not Path(str(one_device["path"])).exists()
    assert not list(tmp_path.rglob("escaped_release")) and not list(Path("/tmp").glob("escaped_release"))
    r = cli(["deploy", "--device", "dev", "--config", str(config.path), "--dist", str(dist_for(evil, tmp_path / "d"))])
    assert r.exit_code == 7
    assert_one_error_line(r.output)


MUTATIONS: Dict[str, Any] = {
    "upper-case id": (lambda m: m.update(release_id=m["release_id"].upper()), "is not a release id"),
    "short id": (lambda m: m.update(release_id=m["release_id"][:-1]), "is not a release id"),
    "id with a newline": (lambda m: m.update(release_id=m["release_id"][:-1] + "\n"), r"is not a release id"),
    "id as a number": (lambda m: m.update(release_id=1234567890123456), "is not a release id"),
    "id of other files": (lambda m: m.update(release_id="0123456789abcdef"),
                          "the manifest was altered after the build"),
    "files as a list": (lambda m: m.update(files=list(m["files"])), "field 'files' must be a non-empty object"),
    "hash not hex": (lambda m: m["files"].update({"model.onnx": "zz" * 32}), r"field 'files' entry 'model.onnx'"),
    "manifest lists itself": (lambda m: m["files"].update({"manifest.json": "0" * 64}), "'manifest.json'"),
    "target with a slash": (lambda m: m.update(target="../x86"), "field 'target'"),
    "artifact not listed": (lambda m: m.update(artifact="other.onnx"), "field 'artifact'"),
    "a JSON array": (None, "expected a JSON object"),
}


def test_a_bloated_manifest_is_refused_after_a_bounded_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(make_bundle(tmp_path, 1), bad)
    with open(bad / "manifest.json", "ab") as f:
        f.truncate(64 << 20)  # sparse: no disk used
    with pytest.raises(DeployError, match=r"manifest\.json: larger than 16 MB; not a manifest edgekit wrote"):
        D.verified_files(bad)


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_manifest_fields_are_validated_with_one_line(tmp_path: Path, case: str) -> None:
    change, message = MUTATIONS[case]
    bundle = make_bundle(tmp_path, 1)
    if change is None:
        bad = tmp_path / "bad"
        shutil.copytree(bundle, bad)
        (bad / "manifest.json").write_text("[1, 2]")
    else:
        bad = rewrite_manifest(bundle, tmp_path / "bad", change)
    with pytest.raises(DeployError, match=message) as err:
        D.verified_files(bad)
    assert "\n" not in err.value.message and str(bad / "manifest.json") in err.value.message


# ----------------------------------------------------------------------------------------------
# case 2 and issue 9 item 6: forged ids; a complete release is never changed in place
# ----------------------------------------------------------------------------------------------
def test_forged_release_id_is_refused_before_connecting(tmp_path: Path) -> None:
    b1, b2 = make_bundle(tmp_path, 1), make_bundle(tmp_path, 2)

    def other_model(m: Dict[str, Any]) -> None:  # the files of b2 under b1's genuine id
        m["files"]["model.onnx"] = artifact.sha256_file(b2 / "model.onnx")

    forged = rewrite_manifest(b1, tmp_path / "forged", other_model)
    shutil.copyfile(b2 / "model.onnx", forged / "model.onnx")
    refused = r"field 'release_id' is [0-9a-f]{16} but the manifest's contents give [0-9a-f]{16}"
    with pytest.raises(DeployError, match=refused):
        D.verified_files(forged)
    # The id covers every field, not only the file hashes: a lowered validation threshold under the
    # genuine id is refused the same way.
    lax = rewrite_manifest(b1, tmp_path / "lax", lambda m: m["metric"].update(threshold=0.0))
    with pytest.raises(DeployError, match=refused):
        D.verified_files(lax)
    swapped = tmp_path / "swapped"  # manifest untouched, a file swapped
    shutil.copytree(b1, swapped)
    shutil.copyfile(b2 / "model.onnx", swapped / "model.onnx")
    with pytest.raises(DeployError, match="file 'model.onnx' does not match its sha256 in the manifest"):
        D.verified_files(swapped)
    nan = rewrite_manifest(b1, tmp_path / "nan", lambda m: m["metric"].update(threshold=float("nan")))
    with pytest.raises(DeployError, match="no canonical JSON form"):
        D.verified_files(nan)


def test_a_complete_release_is_never_changed_in_place(tmp_path: Path, one_device: Dict[str, object]) -> None:
    """Same id, other bytes: a manifest.json laid out differently hashes to the same id (the id is
    the hash of its canonical form) but is another file, so the device-side check refuses it rather
    than replace a file of the complete release."""
    b1 = make_bundle(tmp_path, 1)
    config, t = open_device(tmp_path, one_device)
    with t:
        r1 = D.deploy(t, b1)
        release = Path(t.root) / "releases" / r1.release_id
        before, history = tree_digest(release), (Path(t.root) / "history").read_text()
        other = tmp_path / "other" / "x86-avx2"
        shutil.copytree(b1, other)
        (other / "manifest.json").write_text(json.dumps(json.loads((b1 / "manifest.json").read_text()), indent=4))
        assert artifact.sha256_file(other / "manifest.json") != artifact.sha256_file(b1 / "manifest.json")
        assert artifact.read_manifest(other)["release_id"] == r1.release_id  # a genuine id
        with pytest.raises(DeployError, match=rf"release {r1.release_id} on the device holds another manifest.json "
                                              r".*never changed in place; the previous release stays current") as err:
            D.deploy(t, other)
        assert err.value.details["kind"] == "release_conflict" and err.value.details["result"].switched is False
        assert tree_digest(release) == before and (Path(t.root) / "history").read_text() == history
        assert releases_of(one_device) == [r1.release_id]  # no .partial, no .lock left
        assert D.deploy(t, b1).skipped  # the genuine bundle is still the same release
    r = cli(["deploy", "--device", "dev", "--config", str(config.path), "--dist", str(dist_for(other, tmp_path / "d"))])
    assert r.exit_code == 7
    assert_one_error_line(r.output)


def test_a_damaged_file_in_the_current_release_is_restored_by_a_swap_not_in_place(
        tmp_path: Path, one_device: Dict[str, object]) -> None:
    """A file of the current release altered on the device (same manifest.json): the redeploy builds a
    fresh verified copy beside it and swaps the directories; the damaged directory is never written
    to, and `current` always names a complete release."""
    b1 = make_bundle(tmp_path, 1)
    _, t = open_device(tmp_path, one_device)
    with t:
        r1 = D.deploy(t, b1)
        release = Path(t.root) / "releases" / r1.release_id
        os.chmod(release / "model.onnx", 0o644)
        (release / "model.onnx").write_bytes(b"tampered")
        inode = os.stat(release / "model.onnx").st_ino
        real_rename, seen = t.rename, []

        def watch(src: str, dst: str) -> None:
            seen.append(os.readlink(Path(t.root) / "current"))
            real_rename(src, dst)

        t.rename = watch  # type: ignore[method-assign]
        r = D.deploy(t, b1)
        assert not r.skipped and not r.switched and r.uploaded_files >= 1
        assert tree_digest(release) == tree_digest(b1)
        assert os.stat(release / "model.onnx").st_ino != inode  # a new file, not the old one rewritten
        assert all(link.startswith("releases/") and not link.endswith(".partial") or
                   link == f"releases/{r1.release_id}.partial" for link in seen)
        assert releases_of(one_device) == [r1.release_id] and D.deploy(t, b1).skipped


# ----------------------------------------------------------------------------------------------
# case 3: the disk fills exactly at the history write, or at the switch
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["history", "switch"])
def test_disk_full_at_the_history_write_or_the_switch(tmp_path: Path, one_device: Dict[str, object], stage: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """history: the blocks run out as .history.tmp is written; switch: the inodes run out as the new
    `current` symlink is made. Either way the device still runs r1, the error says so (read back),
    nothing is left behind, and the next deploy and status see the truth. Over SSH the faults are
    injected into the host-driven file operations (a device without Python); with Python the same
    release logic (edgekit/device/release.py) runs on the device, out of this process's reach."""
    with tmpfs(tmp_path / "disk", "size=6m,nr_inodes=400") as disk:
        spec = dict(one_device, path=str(disk / "device"))
        if spec["transport"] == "ssh":
            spec["python"] = "/nonexistent/python3"
        _, t = open_device(tmp_path, spec)
        b1, b2 = make_bundle(tmp_path, 1), make_bundle(tmp_path, 2)
        with t:
            r1 = D.deploy(t, b1)
            filled: List[Path] = []
            if stage == "history":
                real = t.write_bytes

                def fill_then_write(path: str, data: bytes) -> None:
                    if path == ".history.tmp" and not filled:
                        filled.append(fill_blocks(disk))
                    real(path, data)

                monkeypatch.setattr(t, "write_bytes", fill_then_write)
            else:
                real_link = t.symlink

                def fill_then_link(target: str, path: str) -> None:
                    if target.startswith("releases/") and not filled:
                        filled.append(fill_inodes(disk))
                    real_link(target, path)

                monkeypatch.setattr(t, "symlink", fill_then_link)
            with pytest.raises(DeployError, match=rf"; the previous release stays current \({r1.release_id}\)$") as err:
                D.deploy(t, b2)
            assert filled, f"the fault was never injected: {err.value.message}"
            assert err.value.details["result"].switched is False and err.value.details["current"] == r1.release_id
            assert current_of(spec) == f"releases/{r1.release_id}"
            root = Path(str(spec["path"]))
            assert not [p for p in os.listdir(root) if p.startswith((".history", ".current-"))]
            assert not [d for d in releases_of(spec) if d.startswith(".lock")]
            shutil.rmtree(filled[0]) if filled[0].is_dir() else filled[0].unlink()
            # (not undo(): that would restore HOME too)
            if stage == "history":
                monkeypatch.setattr(t, "write_bytes", real)
            else:
                monkeypatch.setattr(t, "symlink", real_link)
            st = D.status(t)
            assert st.current == r1.release_id and st.previous is None  # a line for a switch that never happened
            assert D.deploy(t, b1).skipped  # ... is dropped from the file by the next deploy
            r2_id = artifact.read_manifest(b2)["release_id"]
            assert f"deploy {r2_id}" not in (root / "history").read_text()
            r2 = D.deploy(t, b2)
            assert r2.switched and r2.previous == r1.release_id and D.status(t).previous == r1.release_id


def test_failure_after_the_switch_says_the_new_release_is_current(tmp_path: Path,
                                                                   one_device: Dict[str, object]) -> None:
    """A real fault after the switch: pruning hits a mount point inside an old release (EBUSY)."""
    b1, b2, b3 = (make_bundle(tmp_path, s) for s in (1, 2, 3))
    _, t = open_device(tmp_path, one_device)
    with t:
        r1, r2 = D.deploy(t, b1), D.deploy(t, b2)
        with tmpfs(Path(t.root) / "releases" / r1.release_id / "busy", "size=1m"):
            with pytest.raises(DeployError, match=r"release [0-9a-f]{16} is current: the switch took place before "
                                                  "the failure$") as err:
                D.deploy(t, b3, keep_releases=1)
            r3 = err.value.details["result"]
            assert r3.switched and r3.previous == r2.release_id and current_of(one_device).endswith(r3.release_id)
        assert D.deploy(t, b3, keep_releases=1).skipped
        assert releases_of(one_device) == sorted([r2.release_id, r3.release_id])


def test_a_canary_that_switched_and_then_failed_is_rolled_back(tmp_path: Path, sshd: SshdServer,
                                                                ssh_device: Callable, trust_hosts: Callable) -> None:
    from edgekit.fleet import deploy_fleet, select_devices

    trust_hosts(sshd)
    devices = [ssh_device(sshd, "canary", groups=["edge"]),
               {"name": "second", "target": "x86-avx2", "transport": "local", "path": str(tmp_path / "second"),
                "groups": ["edge"], "python": sys.executable}]
    cfg_path = write_project(tmp_path / "proj", devices, deploy={"keep_releases": 1}, bundles={})
    cfg = load(cfg_path)
    bundle = cfg.root / "dist" / "tiny" / "x86-avx2"
    from bundles import make_tiny_bundle

    ids = []
    for seed in (1, 2):
        shutil.rmtree(bundle, ignore_errors=True)
        ids.append(make_tiny_bundle(bundle, seed=seed)["release_id"])
        with connect(cfg.device("canary"), cfg) as t:
            D.deploy(t, bundle, keep_releases=1)
    shutil.rmtree(bundle)
    new = make_tiny_bundle(bundle, seed=3)["release_id"]
    canary_dir = Path(str(devices[0]["path"]))
    with tmpfs(canary_dir / "releases" / ids[0] / "busy", "size=1m"):
        with pytest.raises(FleetError, match="canary failed on canary") as err:
            deploy_fleet(cfg, select_devices(cfg, group="edge"), canary=1, validate=lambda *a, **k: None)
    out = err.value.results.results["canary"]
    assert out.deploy is not None and out.deploy.release_id == new and out.deploy.switched
    assert out.outcome == "rolled back" and out.release == ids[1]
    assert os.readlink(canary_dir / "current") == f"releases/{ids[1]}"
    assert err.value.results.results["second"].outcome == "not attempted"


def test_a_canary_whose_link_dropped_at_the_switch_is_rolled_back(
        tmp_path: Path, sshd: SshdServer, ssh_device: Callable, trust_hosts: Callable, no_user_ssh_config: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The link drops right after the device renamed `current`: the deployer cannot read it back, so
    it says current is either release and counts the canary as switched; the fleet reconnects and
    rolls it back. (A link that drops before the switch was requested is test_deploy_faults'.)"""
    from sshd_fixtures import trust
    from tcp_proxy import TcpProxy

    from edgekit.fleet import deploy_fleet, select_devices
    from edgekit.transport.ssh import SSHTransport

    trust_hosts(sshd)
    # No Python on the canary: the host drives the switch over SFTP, where the test can cut it.
    spec = ssh_device(sshd, "canary", groups=["edge"], python="/nonexistent/python3")
    with TcpProxy((sshd.host, sshd.port)) as proxy:
        trust(no_user_ssh_config, sshd.known_hosts_line("127.0.0.1", proxy.port))
        devices = [dict(spec, host="127.0.0.1", port=proxy.port),
                   {"name": "second", "target": "x86-avx2", "transport": "local", "path": str(tmp_path / "second"),
                    "groups": ["edge"], "python": sys.executable}]
        cfg = load(write_project(tmp_path / "proj", devices, bundles={}))
        bundle = cfg.root / "dist" / "tiny" / "x86-avx2"
        from bundles import make_tiny_bundle

        old = make_tiny_bundle(bundle, seed=1)["release_id"]
        with connect(cfg.device("canary"), cfg) as t:
            D.deploy(t, bundle)
        shutil.rmtree(bundle)
        new = make_tiny_bundle(bundle, seed=2)["release_id"]
        real_rename, dropped = SSHTransport.rename, []

        def rename_then_drop(self: SSHTransport, src: str, dst: str) -> None:
            real_rename(self, src, dst)
            if dst == "current" and not dropped:
                dropped.append(os.readlink(Path(str(spec["path"])) / "current"))
                for sock in list(proxy._socks):  # the link goes down, both ways
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        monkeypatch.setattr(SSHTransport, "rename", rename_then_drop)
        with pytest.raises(FleetError, match="canary failed on canary") as err:
            deploy_fleet(cfg, select_devices(cfg, group="edge"), canary=1, validate=lambda *a, **k: None)
    assert dropped == [f"releases/{new}"]  # the switch really happened before the link dropped
    out = err.value.results.results["canary"]
    assert out.error is not None and "current could not be read back" in out.error.message
    assert f"it is {old} or {new}" in out.error.message
    assert out.deploy is not None and out.deploy.switched
    assert out.outcome == "rolled back" and out.release == old
    assert os.readlink(Path(str(spec["path"])) / "current") == f"releases/{old}"
    assert err.value.results.results["second"].outcome == "not attempted"


def test_bloated_device_files_are_read_bounded_and_garbage_history_is_dropped(
        tmp_path: Path, one_device: Dict[str, object]) -> None:
    """A device whose history, release manifest and partial owner mark are 256 MB each (sparse: no
    disk used) costs the deployer a bounded read of each; history lines edgekit never writes are
    dropped from what status shows and from the file."""
    import tracemalloc

    b1, b2 = make_bundle(tmp_path, 1), make_bundle(tmp_path, 2)
    _, t = open_device(tmp_path, one_device)
    root = Path(str(one_device["path"]))
    with t:
        r1 = D.deploy(t, b1)
        old = root / "releases" / ("e" * 16)
        old.mkdir()
        stuck = root / "releases" / ("f" * 16 + ".partial")
        stuck.mkdir()
        with open(root / "history", "a") as f:
            f.write("1 deploy ../../etc\nrm -rf /\n1 rollback x y\n")
        for big in (root / "history", old / "manifest.json", stuck / ".edgekit-owner"):
            with open(big, "ab") as f:
                f.truncate(256 << 20)
        tracemalloc.start()
        try:
            st = D.status(t)
            r2 = D.deploy(t, b2)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 100 << 20, f"{peak >> 20} MB traced"
        assert st.current == r1.release_id and [r.id for r in st.releases][0] == r1.release_id
        assert r2.switched and r2.previous == r1.release_id
        history = (root / "history").read_text()
        assert len(history) < 4096 and history.splitlines()[-1].endswith(f" deploy {r2.release_id}")
        assert all(line.split()[1] in ("deploy", "rollback") for line in history.splitlines())
        assert "etc" not in history and "rm" not in history


# ----------------------------------------------------------------------------------------------


def test_what_a_killed_switch_left_is_cleared_by_the_next_deploy(tmp_path: Path, one_device: Dict[str, object]) -> None:
    """A deployer killed inside a switch leaves .history.tmp or a .current-* link; the next deploy
    (under the lock, where nobody else is switching) removes them, and status ignores them."""
    b1, b2 = make_bundle(tmp_path, 1), make_bundle(tmp_path, 2)
    _, t = open_device(tmp_path, one_device)
    root = Path(str(one_device["path"]))
    with t:
        r1 = D.deploy(t, b1)
        (root / ".history.tmp").write_text("123 deploy half-writ")
        os.symlink(f"releases/{r1.release_id}", root / ".current-0badc0de")
        (root / ".current-keep-me").write_text("not ours: another name")
        assert D.status(t).current == r1.release_id
        assert D.deploy(t, b1).skipped
        assert sorted(p for p in os.listdir(root) if p.startswith(".")) == [".current-keep-me"]
        r2 = D.deploy(t, b2)
        assert r2.previous == r1.release_id and (root / "history").read_text().count("deploy") == 2


# ----------------------------------------------------------------------------------------------
