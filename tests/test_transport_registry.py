"""The transport registry: every [[devices]] transport name comes from it, and a transport added
from one file (tests/toy_transport.py: no shell, no file operations of its own) deploys, rolls back
and reports status end to end."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sshd_fixtures import make_bundle, write_project

from edgekit import deploy as D
from edgekit.config import load
from edgekit.errors import ConfigError
from edgekit.transport import REGISTRY, Transport, connect, names, transport_class

ROOT = Path(__file__).resolve().parent.parent


def test_every_builtin_transport_is_registered_and_the_config_accepts_only_those(tmp_path: Path) -> None:
    assert {"local", "ssh"} <= set(names())
    for kind in ("local", "ssh"):
        cls = transport_class(kind)
        assert issubclass(cls, Transport) and cls.kind == kind and REGISTRY[kind] is cls
        assert not getattr(cls, "__abstractmethods__", None), f"{kind}: abstract methods left"
    with pytest.raises(ConfigError, match="unknown transport 'carrier-pigeon'"):
        transport_class("carrier-pigeon")
    cfg = write_project(tmp_path / "p", [{"name": "dev", "target": "x86-avx2", "transport": "adb",
                                         "path": str(tmp_path / "d")}], bundles={})
    with pytest.raises(ConfigError, match="unknown transport 'adb', expected one of: local, ssh"):
        load(cfg)


def test_ssh_settings_live_on_the_ssh_transport(tmp_path: Path) -> None:
    from edgekit.transport.ssh import SSHSettings, SSHTransport

    cfg = load(write_project(tmp_path / "p", [{"name": "dev", "target": "x86-avx2", "transport": "ssh",
                                               "host": "192.0.2.1", "port": 2222, "user": "pi",
                                               "path": "/srv/edgekit"}], bundles={}))
    t = connect(cfg.device("dev"), cfg, accept_new_host_key=True)
    assert isinstance(t, SSHTransport) and SSHTransport.Settings is SSHSettings
    assert (t.settings.host, t.settings.port, t.settings.user, t.settings.accept_new_host_key) == \
        ("192.0.2.1", 2222, "pi", True)
    from edgekit import transport

    transport.configure("ssh", accept_new_host_key=True)  # once, by the CLI: nothing in between passes it on
    try:
        assert connect(cfg.device("dev"), cfg).settings.accept_new_host_key is True  # type: ignore[attr-defined]
        assert connect(cfg.device("dev"), cfg, accept_new_host_key=False).settings.accept_new_host_key is True  # type: ignore[attr-defined]
    finally:
        transport.OPTIONS.pop("ssh", None)
    assert connect(cfg.device("dev"), cfg).settings.accept_new_host_key is False  # type: ignore[attr-defined]
    local = load(write_project(tmp_path / "q", [{"name": "dev", "target": "x86-avx2", "transport": "local",
                                                 "path": str(tmp_path / "d")}], bundles={}))
    connect(local.device("dev"), local, accept_new_host_key=True).close()  # a local device has no such setting


def test_a_toy_transport_from_one_file_deploys_rolls_back_and_reports_status(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import toy_transport  # registers "toy"

    assert "toy" in names() and REGISTRY["toy"] is toy_transport.ToyTransport
    device_dir = tmp_path / "toy device"
    cfg = load(write_project(tmp_path / "proj", [{"name": "toy1", "target": "x86-avx2", "transport": "toy",
                                                  "path": str(device_dir), "python": sys.executable}], bundles={}))
    b1, b2 = make_bundle(tmp_path, 1), make_bundle(tmp_path, 2)
    with connect(cfg.device("toy1"), cfg) as t:
        assert isinstance(t, toy_transport.ToyTransport)
        r1 = D.deploy(t, b1)
        assert r1.switched and r1.uploaded_bytes == sum(p.stat().st_size for p in b1.rglob("*") if p.is_file())
        again = D.deploy(t, b1)
        assert again.skipped and again.uploaded_bytes == 0
        r2 = D.deploy(t, b2)
        assert r2.switched and r2.previous == r1.release_id and r2.reused_files >= 1  # copied on the device
        st = D.status(t)
        assert st.current == r2.release_id and st.previous == r1.release_id and st.lock is None
        assert [r.id for r in st.releases] == [r2.release_id, r1.release_id]
        back = D.rollback(t)
        assert (back.from_release, back.to_release) == (r2.release_id, r1.release_id)
        assert D.status(t).current == r1.release_id
        assert t.sessions == 6  # every operation went through the toy's own release sessions
    assert os.readlink(device_dir / "current") == f"releases/{r1.release_id}"
    for p in (p for p in b1.rglob("*") if p.is_file()):  # the bundle's files, its device package included
        assert (device_dir / "current" / p.relative_to(b1)).read_bytes() == p.read_bytes()
    assert sorted(os.listdir(device_dir / "releases")) == sorted([r1.release_id, r2.release_id])


def test_the_release_script_parses_under_python_3_8() -> None:
    vermin = Path(sys.executable).parent / "vermin"
    script = ROOT / "edgekit" / "device" / "release.py"
    proc = subprocess.run([str(vermin), "-t=3.8-", "--no-tips", "--violations", str(script)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
