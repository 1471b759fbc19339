"""Faults during a deploy over real SSH: after each one the previous release is still current and
still validates on the device (runner.py run there through edgekit.validate), and the next deploy
succeeds, cleaning up what the failed one left."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from sshd_fixtures import SshdFleet, SshdServer, make_bundle, start_sshd, trust, write_project
from tcp_proxy import TcpProxy

from edgekit import deploy as D
from edgekit.config import ProjectConfig, load
from edgekit.errors import DeployError
from edgekit.transport import connect

ROOT = Path(__file__).resolve().parent.parent


def current_of(config: ProjectConfig, name: str = "dev") -> str:
    return os.readlink(Path(config.device(name).path) / "current").rsplit("/", 1)[-1]


def validates(config: ProjectConfig, name: str = "dev") -> bool:
    from edgekit.validate import validate_device

    return validate_device(config, name, duration=0.1, warmup=1).ok


def project(tmp_path: Path, devices: List[Dict[str, object]]) -> ProjectConfig:
    return load(write_project(tmp_path / "proj", devices, bundles={}))


def via_proxy(spec: Dict[str, object], proxy: TcpProxy, server: SshdServer, home: Path, name: str) -> Dict[str, object]:
    trust(home, server.known_hosts_line("127.0.0.1", proxy.port))
    return dict(spec, name=name, host="127.0.0.1", port=proxy.port)


def test_connection_cut_mid_upload(tmp_path: Path, sshd: SshdServer, ssh_device: Callable, trust_hosts: Callable,
                                   no_user_ssh_config: Path) -> None:
    trust_hosts(sshd)
    v1, v2 = make_bundle(tmp_path, 1), make_bundle(tmp_path, 2, extra_bytes=3 << 20)
    spec = ssh_device(sshd, "dev")
    with TcpProxy((sshd.host, sshd.port), cut_after=1 << 20) as proxy:
        config = project(tmp_path, [spec, via_proxy(spec, proxy, sshd, no_user_ssh_config, "flaky")])
        with connect(config.device("dev"), config) as t:
            r1 = D.deploy(t, v1)
        with pytest.raises(DeployError, match="connection lost.*previous release stays current") as err, \
                connect(config.device("flaky"), config) as t:
            D.deploy(t, v2)
        assert proxy.cuts == 1 and err.value.details.get("kind") == "connection_lost"
    assert current_of(config) == r1.release_id and validates(config)
    left = os.listdir(Path(spec["path"]) / "releases")  # type: ignore[arg-type]
    assert ".lock" in left and any(d.endswith(".partial") for d in left)  # the cut left both behind
    with connect(config.device("dev"), config) as t:
        r2 = D.deploy(t, v2, lock_timeout=2)  # this process holds no such lock: stale, broken at once
    assert r2.switched and current_of(config) == r2.release_id
    assert sorted(os.listdir(Path(spec["path"]) / "releases")) == sorted([r1.release_id, r2.release_id])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (we run as root; set EDGEKIT_TEST_NO_TMPFS=1 to test as if mounting failed)."""
    mnt = tmp_path / "small disk"
    mnt.mkdir()
    ok = not os.environ.get("EDGEKIT_TEST_NO_TMPFS") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode == 0
    if not ok:
        if os.environ.get("CI"):  # CI runs as root: a missing tmpfs is a broken runner, not a skip
            pytest.fail("cannot mount a tmpfs, and CI must run this test")
        pytest.skip("cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN); "
                    "test_device_write_failure_mid_upload covers a device-side write failure without it")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_device_disk_full(tmp_path: Path, small_disk: Path, sshd: SshdServer, ssh_device: Callable,
                          trust_hosts: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    trust_hosts(sshd)
    config = project(tmp_path, [ssh_device(sshd, "dev", path=str(small_disk / "device"))])
    with connect(config.device("dev"), config) as t:
        r1 = D.deploy(t, make_bundle(tmp_path, 1))

        # 1) a release bigger than the free space is refused before anything is sent
        with pytest.raises(DeployError, match=r"not enough space .* MB free; the previous release stays current") as err:
            D.deploy(t, make_bundle(tmp_path, 2, extra_bytes=3 << 20))
        assert err.value.details["kind"] == "no_space"

        # 2) the disk fills up *during* the upload (another process writing): ENOSPC mid-file
        filler = small_disk / "filler"
        real_put_many = t.put_many  # type: ignore[attr-defined]

        def fill_then_put(pairs: Any) -> int:
            free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
            filler.write_bytes(b"\0" * (free - (256 << 10)))
            return real_put_many(pairs)

        monkeypatch.setattr(t, "put_many", fill_then_put)
        v3 = make_bundle(tmp_path, 3, extra_bytes=1 << 20)
        with pytest.raises(DeployError, match="no space left on the device while uploading") as err:
            D.deploy(t, v3)
        assert err.value.details["kind"] == "no_space"
        assert not [d for d in os.listdir(small_disk / "device" / "releases") if d.endswith(".partial")]
        monkeypatch.setattr(t, "put_many", real_put_many)  # (not undo(): that would restore HOME too)
    assert current_of(config) == r1.release_id
    filler.unlink()  # the runner needs room for its result file
    assert validates(config)
    with connect(config.device("dev"), config) as t:
        assert D.deploy(t, v3).switched


def test_device_write_failure_mid_upload(tmp_path: Path, sshd_fleet: SshdFleet, ssh_device: Callable,
                                         no_user_ssh_config: Path) -> None:
    """ENOSPC without a mount: the device's sftp-server runs under ``ulimit -f`` (SIGXFSZ ignored),
    so its writes fail past 1 MB the way a full disk fails them (SFTP reports both as "Failure")."""
    wrapper = tmp_path / "limited-sftp-server"
    from sshd_fixtures import sftp_server_path

    wrapper.write_text(f"#!/bin/sh\ntrap '' XFSZ\nulimit -f 1024\nexec {sftp_server_path()}\n")
    wrapper.chmod(0o755)
    # The release script writes the upload itself (not sftp-server): its Python gets the same limit.
    python = tmp_path / "limited-python"
    python.write_text(f"#!/bin/sh\ntrap '' XFSZ\nulimit -f 1024\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    server = start_sshd(tmp_path / "limited", "127.0.0.9", Path(str(sshd_fleet.user_key) + ".pub"),
                        sftp_subsystem=str(wrapper))
    try:
        trust(no_user_ssh_config, server.known_hosts_line())
        config = project(tmp_path, [ssh_device(server, "dev", python=str(python))])
        with connect(config.device("dev"), config) as t:
            r1 = D.deploy(t, make_bundle(tmp_path, 1))
            with pytest.raises(DeployError, match="writing .*blob.bin failed.*the previous release stays current"):
                D.deploy(t, make_bundle(tmp_path, 2, extra_bytes=2 << 20))
            assert D.status(t).partial == []  # removed: the space matters more than resuming
        assert current_of(config) == r1.release_id and validates(config)
    finally:
        server.stop()


def test_checksum_mismatch_on_the_device(tmp_path: Path, one_device: Dict[str, object],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    config = project(tmp_path, [one_device])
    with connect(config.device("dev"), config) as t:
        r1 = D.deploy(t, make_bundle(tmp_path, 1))
        real_put_many = t.put_many  # type: ignore[attr-defined]

        def put_then_corrupt(pairs: List[Tuple[Path, str]]) -> int:
            sent = real_put_many(pairs)
            model = next(remote for local, remote in pairs if local.name == "model.onnx")
            t.write_bytes(model, b"flipped bits")  # type: ignore[attr-defined]
            return sent

        monkeypatch.setattr(t, "put_many", put_then_corrupt)
        with pytest.raises(DeployError, match=r"checksum mismatch on the device after upload: model.onnx") as err:
            D.deploy(t, make_bundle(tmp_path, 2))
        assert err.value.details["files"] == ["model.onnx"]
        monkeypatch.setattr(t, "put_many", real_put_many)
        st = D.status(t)
        assert st.current == r1.release_id and st.partial == [] and st.lock is None
    assert validates(config)


def test_deploy_process_killed_mid_upload(tmp_path: Path, sshd: SshdServer, ssh_device: Callable,
                                          trust_hosts: Callable, no_user_ssh_config: Path) -> None:
    trust_hosts(sshd)
    spec = ssh_device(sshd, "dev")
    v1, v2 = make_bundle(tmp_path, 1), make_bundle(tmp_path, 2, extra_bytes=4 << 20)
    with TcpProxy((sshd.host, sshd.port), rate=2e6) as proxy:  # ~2 s of upload: time to kill it half-way
        config = project(tmp_path, [spec, via_proxy(spec, proxy, sshd, no_user_ssh_config, "slow")])
        with connect(config.device("dev"), config) as t:
            r1 = D.deploy(t, v1)
        dist = v2.parent.parent  # <dist>/tiny/x86-avx2 needs a "tiny" level: the bundle's parent is b2-*
        (tmp_path / "dist2" / "tiny").mkdir(parents=True)
        os.symlink(v2, tmp_path / "dist2" / "tiny" / "x86-avx2")
        script = Path(sys.executable).parent / "edgekit"  # the console script, else its entry point
        edgekit = [str(script)] if script.exists() else [sys.executable, "-c", "from edgekit.cli import run; run()"]
        proc = subprocess.Popen([*edgekit, "deploy", "--device", "slow",
                                 "--config", str(config.path), "--dist", str(tmp_path / "dist2")],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        releases = Path(str(spec["path"])) / "releases"
        deadline = time.monotonic() + 30
        while True:
            partial = [releases / d / "blob.bin" for d in (os.listdir(releases) if releases.exists() else [])
                       if d.endswith(".partial")]
            if partial and partial[0].exists() and partial[0].stat().st_size > (256 << 10):
                break
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert dist.exists()
    left = os.listdir(releases)
    assert ".lock" in left and partial[0].parent.name in left  # what the killed deploy left behind
    assert current_of(config) == r1.release_id and validates(config)
    with connect(config.device("dev"), config) as t:
        r2 = D.deploy(t, v2, lock_timeout=2)  # the lock's pid is dead: broken at once; .partial resumed
    assert r2.switched and current_of(config) == r2.release_id
    assert sorted(os.listdir(releases)) == sorted([r1.release_id, r2.release_id])
