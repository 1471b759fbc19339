"""Releases on a device, for both transports (a local directory and a real sshd on loopback):
deploy, unchanged redeploy, reuse, rollback, status, pruning, locking, hostile names and paths."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Dict

import pytest
from sshd_fixtures import make_bundle, write_project

from edgekit import deploy as D
from edgekit.config import ProjectConfig, load
from edgekit.errors import DeployError
from edgekit.transport import Transport, connect


def device_dir(t: Transport) -> Path:
    return Path(t.root)  # the "device" shares this machine's filesystem in both cases


def open_device(tmp_path: Path, spec: Dict[str, object], **deploy: object) -> "tuple[ProjectConfig, Transport]":
    config = load(write_project(tmp_path / "proj", [spec], deploy=deploy, bundles={}))
    return config, connect(config.device("dev"), config)


def test_deploy_and_unchanged_redeploy_uploads_nothing(tmp_path: Path, one_device: Dict[str, object],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    b1 = make_bundle(tmp_path, 1)
    _, t = open_device(tmp_path, one_device)
    with t:
        first = D.deploy(t, b1)
        manifest = json.loads((b1 / "manifest.json").read_text())
        assert first.switched and not first.skipped and first.previous is None
        assert first.release_id == manifest["release_id"]
        assert first.uploaded_files == len(manifest["files"]) + 1  # + manifest.json
        assert first.uploaded_bytes == sum(p.stat().st_size for p in b1.rglob("*") if p.is_file())
        root = device_dir(t)
        assert os.readlink(root / "current") == f"releases/{first.release_id}"
        for name in manifest["files"]:
            assert (root / "current" / name).read_bytes() == (b1 / name).read_bytes()
        assert sorted(os.listdir(root / "releases")) == [first.release_id]  # no .lock, no .partial left

        def no_upload(*a: object, **k: object) -> None:
            raise AssertionError("an unchanged redeploy must not upload")

        monkeypatch.setattr(t, "put", no_upload)
        monkeypatch.setattr(t, "put_many", no_upload)
        again = D.deploy(t, b1)
    assert again.skipped and not again.switched and again.uploaded_bytes == 0 and again.uploaded_files == 0
    assert again.seconds < 1.0


def test_new_release_reuses_unchanged_files_and_rollback_status(tmp_path: Path, one_device: Dict[str, object]) -> None:
    b1, b2, b3 = (make_bundle(tmp_path, s) for s in (1, 2, 3))
    _, t = open_device(tmp_path, one_device)
    with t:
        r1, r2 = D.deploy(t, b1), D.deploy(t, b2)
        assert r2.previous == r1.release_id
        assert r2.reused_files >= 1  # runner.py is unchanged: copied on the device, not sent again
        assert r2.uploaded_bytes < sum(p.stat().st_size for p in b2.rglob("*") if p.is_file())
        r3 = D.deploy(t, b3)

        st = D.status(t)
        assert (st.current, st.previous) == (r3.release_id, r2.release_id)
        assert [r.id for r in st.releases] == [r3.release_id, r2.release_id, r1.release_id]
        assert all(r.target == "x86-avx2" and r.model == "tiny" for r in st.releases)
        assert st.lock is None and st.partial == []

        rb = D.rollback(t)
        assert (rb.from_release, rb.to_release) == (r3.release_id, r2.release_id)
        assert os.readlink(device_dir(t) / "current") == f"releases/{r2.release_id}"
        assert D.rollback(t).to_release == r1.release_id  # walks back the deploy history
        with pytest.raises(DeployError, match="no previous release"):
            D.rollback(t)
        # Deploying the newest again switches without uploading: the release is still there.
        back = D.deploy(t, b3)
        assert back.switched and back.uploaded_bytes == 0 and back.previous == r1.release_id


def test_keep_releases_never_prunes_current_or_previous(tmp_path: Path, one_device: Dict[str, object]) -> None:
    bundles = [make_bundle(tmp_path, s) for s in (1, 2, 3, 4)]
    _, t = open_device(tmp_path, one_device)
    with t:
        ids = [D.deploy(t, b, keep_releases=1).release_id for b in bundles[:3]]
        # keep 1 still keeps the previous release, so a rollback always has somewhere to go
        assert sorted(os.listdir(device_dir(t) / "releases")) == sorted(ids[1:])
        D.rollback(t)
        r4 = D.deploy(t, bundles[3], keep_releases=1)
        assert r4.previous == ids[1] and ids[2] in r4.pruned
        assert sorted(os.listdir(device_dir(t) / "releases")) == sorted([ids[1], r4.release_id])


@pytest.mark.parametrize("evil", ["../evil.onnx", "/etc/passwd", "sub/../../x"])
def test_file_names_escaping_the_release_are_refused(tmp_path: Path, one_device: Dict[str, object], evil: str) -> None:
    bundle = make_bundle(tmp_path, 1)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][evil] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    _, t = open_device(tmp_path, one_device)
    with t, pytest.raises(DeployError, match="is not allowed"):
        D.deploy(t, bundle)
    assert not Path(str(one_device["path"])).exists()  # refused before the device was touched


def test_device_path_with_spaces_and_shell_metacharacters(tmp_path: Path, one_device: Dict[str, object]) -> None:
    from edgekit.validate import validate_device

    marker = tmp_path / "pwned"
    spec = dict(one_device, path=f"{one_device['path']}/dev dir/$(touch {marker});'x' \"y\" `id` & *")
    config, t = open_device(tmp_path, spec)
    b1, b2 = make_bundle(tmp_path, 1), make_bundle(tmp_path, 2)
    with t:
        D.deploy(t, b1)
        r2 = D.deploy(t, b2)
        assert D.status(t).current == r2.release_id
        res = validate_device(config, "dev", transport=t, duration=0.1, warmup=1)
        assert res.ok
        assert D.rollback(t).to_release != r2.release_id
    assert Path(str(spec["path"])).is_dir()
    assert not marker.exists() and not (Path.cwd() / "pwned").exists()


def test_a_held_lock_makes_a_second_deploy_wait_then_fail_clearly(tmp_path: Path, one_device: Dict[str, object]) -> None:
    from edgekit.deploy_lock import new_owner

    b1 = make_bundle(tmp_path, 1)
    _, t = open_device(tmp_path, one_device)
    with t:
        D.deploy(t, b1)
        lock = device_dir(t) / "releases" / ".lock"
        lock.mkdir()
        # a live process (pid 1) on this machine: never broken
        (lock / "owner").write_text(json.dumps(dict(new_owner(), pid=1, start=None)))
        start = time.monotonic()
        with pytest.raises(DeployError, match=r"another deploy holds the lock .*held by pid 1 on .*this machine") as err:
            D.deploy(t, make_bundle(tmp_path, 2), lock_timeout=0.5)
        assert 0.4 < time.monotonic() - start < 5 and "--lock-timeout" in (err.value.hint or "")
        assert D.status(t).lock["pid"] == 1  # type: ignore[index]

        # a dead pid on this machine (same machine-id, boot and PID namespace): broken at once
        (lock / "owner").write_text(json.dumps(dict(new_owner(), pid=2 ** 22 + 7)))
        assert D.deploy(t, make_bundle(tmp_path, 2), lock_timeout=0).switched
        # an old-style owner (host name and pid only) proves nothing: broken only once its heartbeat
        # has stood still for the stale time, however old its timestamp
        lock.mkdir()
        (lock / "owner").write_text(json.dumps({"host": socket.gethostname(), "pid": 2 ** 22 + 7, "token": "z",
                                                "time": time.time() - 7200}))
        with pytest.raises(DeployError, match="another deploy holds the lock"):
            D.deploy(t, b1, lock_timeout=0.3, lock_stale_s=30)
        assert D.deploy(t, b1, lock_timeout=5, lock_stale_s=0.5).switched
        assert not lock.exists() and not [d for d in os.listdir(lock.parent) if d.startswith(".lock")]


def test_concurrent_deploys_to_one_device_serialize(tmp_path: Path, one_device: Dict[str, object]) -> None:
    bundles = [make_bundle(tmp_path, s, extra_bytes=1 << 20) for s in (1, 2)]
    config = load(write_project(tmp_path / "proj", [one_device], bundles={}))
    results: Dict[int, D.DeployResult] = {}

    def run(i: int) -> None:
        with connect(config.device("dev"), config) as t:
            results[i] = D.deploy(t, bundles[i], lock_timeout=30)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sorted(results) == [0, 1]
    first, second = sorted(results.values(), key=lambda r: r.previous is not None)
    assert second.previous == first.release_id  # one after the other, never interleaved
    with connect(config.device("dev"), config) as t:
        st = D.status(t)
        assert st.current == second.release_id and st.lock is None and st.partial == []


def test_damaged_release_and_leftover_partial_are_repaired(tmp_path: Path, one_device: Dict[str, object]) -> None:
    b1, b2 = make_bundle(tmp_path, 1), make_bundle(tmp_path, 2)
    _, t = open_device(tmp_path, one_device)
    with t:
        r1 = D.deploy(t, b1)
        root = device_dir(t)
        (root / "current" / "model.onnx").write_bytes(b"bit rot")
        again = D.deploy(t, b1)  # not skipped: the release on the device fails its checksums
        assert not again.skipped and again.uploaded_files >= 1
        assert (root / "current" / "model.onnx").read_bytes() == (b1 / "model.onnx").read_bytes()

        # A .partial left by a cut-off deploy: its good files are kept, its bad ones re-sent.
        rid2 = json.loads((b2 / "manifest.json").read_text())["release_id"]
        partial = root / "releases" / f"{rid2}.partial"
        partial.mkdir()
        (partial / "reference.npz").write_bytes((b2 / "reference.npz").read_bytes())
        (partial / "model.onnx").write_bytes(b"truncat")
        r2 = D.deploy(t, b2)
        assert r2.previous == r1.release_id and r2.reused_files >= 2  # reference.npz resumed, runner.py copied
        assert sorted(os.listdir(root / "releases")) == sorted([r1.release_id, r2.release_id])


@pytest.mark.parametrize("python", ["device", "/nonexistent/python3"])
def test_hashing_on_the_device_with_python_or_sha256sum(tmp_path: Path, one_device: Dict[str, object],
                                                         python: str) -> None:
    spec = dict(one_device) if python == "device" else dict(one_device, python=python)  # else: sha256sum
    _, t = open_device(tmp_path, spec)
    b1 = make_bundle(tmp_path, 1)
    with t:
        assert D.deploy(t, b1).switched
        assert D.deploy(t, b1).skipped  # the release's hashes were read back and matched
        dev = D.Device(t)
        weird = "odd\nname.bin"
        (device_dir(t) / weird).write_bytes(b"x")
        _, sums = dev.on_device([weird, "missing.bin"])
        assert sums == {weird: "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"}
