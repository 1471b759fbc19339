"""OpenSSH ControlMaster reuse: where ~/.ssh/config gives the device a ControlPath and a master is up
there, deploy's release session runs through it (``ssh -S``: no SSH handshake of edgekit's own);
without a live master, edgekit dials as always."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import paramiko
import pytest
from sshd_fixtures import SshdFleet, SshdServer, make_bundle

from edgekit import deploy as D
from edgekit.transport.ssh import SSHTransport


def test_a_live_control_master_carries_the_deploy(tmp_path: Path, sshd: SshdServer, sshd_fleet: SshdFleet,
                                                  trust_hosts: Callable, no_user_ssh_config: Path) -> None:
    if shutil.which("ssh") is None:
        if os.environ.get("CI"):
            pytest.fail("no OpenSSH client, and CI must run this test")
        pytest.skip("no OpenSSH client (ssh) on this machine")
    trust_hosts(sshd)
    sockdir = tempfile.mkdtemp(prefix="edgekit-cm-", dir="/tmp")  # short: a socket path is <= 108 bytes
    sock = os.path.join(sockdir, "m")
    config = paramiko.SSHConfig.from_text(f"Host {sshd.host}\n  ControlPath {sock}\n")
    device = sshd.device_root / "via-master"
    key = str(sshd_fleet.user_key)

    def transport() -> SSHTransport:
        return SSHTransport("dev", sshd.host, str(device), port=sshd.port, user="root", identity_file=key,
                            ssh_config=config)

    b1 = make_bundle(tmp_path, 1)
    with transport() as t:  # no master yet: edgekit dials
        assert t.control_master() is None
        assert D.deploy(t, b1).switched and t.connected
    master = subprocess.run(["ssh", "-M", "-S", sock, "-fN", "-o", "ControlPersist=60", "-o", "BatchMode=yes",
                             "-o", f"UserKnownHostsFile={no_user_ssh_config / '.ssh' / 'known_hosts'}", "-i", key,
                             "-p", str(sshd.port), f"root@{sshd.host}"], capture_output=True, text=True, timeout=30)
    assert master.returncode == 0, master.stderr
    try:
        b2 = make_bundle(tmp_path, 2)
        with transport() as t:
            assert t.control_master() == sock
            r2 = D.deploy(t, b2)
            assert r2.switched and r2.uploaded_bytes > 0
            assert not t._clients, "edgekit dialled although the master carried the session"
            st = D.status(t)
            assert st.current == r2.release_id and st.previous is not None and not t._clients
        assert os.readlink(device / "current") == f"releases/{r2.release_id}"
    finally:
        subprocess.run(["ssh", "-S", sock, "-O", "exit", "-p", str(sshd.port), f"root@{sshd.host}"],
                       capture_output=True, timeout=30)
        shutil.rmtree(sockdir, ignore_errors=True)
