"""The SSH connection against a real OpenSSH server on loopback: quoting, host keys, ~/.ssh/config,
ProxyJump, password policy, file transfer and the file operations deploy uses."""
from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import paramiko
import pytest
from sshd_fixtures import SshdFleet, SshdServer
from tcp_proxy import TcpProxy

from edgekit.errors import DeviceError
from edgekit.transport.ssh import SSHTransport


def transport(server: SshdServer, fleet: SshdFleet, path: str = "/tmp", **kw: Any) -> SSHTransport:
    kw.setdefault("identity_file", str(fleet.user_key))
    return SSHTransport("dev", server.host, path, port=server.port, user="root", **kw)


def fingerprint(server: SshdServer) -> str:
    return paramiko.Ed25519Key(filename=str(server.host_key)).fingerprint


def test_run_quotes_every_argument(sshd: SshdServer, sshd_fleet: SshdFleet, trust_hosts: Callable, tmp_path: Path) -> None:
    trust_hosts(sshd)
    marker = tmp_path / "pwned"
    nasty = ["a b", f"$(touch {marker})", "`id`", "'q'", '"dq"', ";rm -rf x", "&&", "*", "~", "\\n"]
    with transport(sshd, sshd_fleet) as t:
        res = t.run(["printf", "%s|", *nasty])
        assert res.ok and res.stdout == "".join(f"{a}|" for a in nasty)
        weird_dir = tmp_path / "dir with $(x) and 'q'"
        weird_dir.mkdir()
        assert t.run(["pwd"], cwd=str(weird_dir)).stdout.strip() == str(weird_dir)
        both = t.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (both.returncode, both.stdout, both.stderr) == (3, "out\n", "err\n")
        with pytest.raises(DeviceError, match="did not finish within"):
            t.run(["sleep", "5"], timeout=0.3)
    assert not marker.exists()


def test_unknown_host_key_is_refused_with_how_to_trust_it(sshd: SshdServer, sshd_fleet: SshdFleet,
                                                         no_user_ssh_config: Path) -> None:
    with pytest.raises(DeviceError) as err, transport(sshd, sshd_fleet) as t:
        t.run(["true"])
    e = err.value
    assert e.details["kind"] == "host_key_unknown"
    assert fingerprint(sshd) in e.message
    assert f"ssh-keyscan -p {sshd.port} {sshd.host} >> {no_user_ssh_config}/.ssh/known_hosts" in (e.hint or "")
    assert "--accept-new-host-key" in (e.hint or "")
    assert not (no_user_ssh_config / ".ssh" / "known_hosts").exists()  # nothing recorded silently


def test_accept_new_host_key_records_it(sshd: SshdServer, sshd_fleet: SshdFleet, no_user_ssh_config: Path) -> None:
    with transport(sshd, sshd_fleet, accept_new_host_key=True) as t:
        assert t.run(["true"]).ok
    known = (no_user_ssh_config / ".ssh" / "known_hosts").read_text()
    assert known == sshd.known_hosts_line()
    with transport(sshd, sshd_fleet) as t:  # trusted from now on, without the flag
        assert t.run(["true"]).ok


@pytest.mark.parametrize("accept_new", [False, True])
def test_changed_host_key_is_always_refused(sshd: SshdServer, sshd_fleet: SshdFleet, no_user_ssh_config: Path,
                                            accept_new: bool) -> None:
    other = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") else None
    if other is None:  # paramiko cannot generate ed25519: use another server's real key
        line = sshd_fleet.servers[1].known_hosts_line(sshd.host, sshd.port)
    else:
        line = f"[{sshd.host}]:{sshd.port} {other.get_name()} {other.get_base64()}\n"
    kh = no_user_ssh_config / ".ssh" / "known_hosts"
    kh.write_text(line)
    with pytest.raises(DeviceError) as err, transport(sshd, sshd_fleet, accept_new_host_key=accept_new) as t:
        t.run(["true"])
    assert err.value.details["kind"] == "host_key_changed"
    assert "HOST KEY CHANGED" in err.value.message and "ssh-keygen -R" in (err.value.hint or "")
    assert kh.read_text() == line  # never overwritten


def test_project_known_hosts_is_used_and_receives_new_keys(sshd: SshdServer, sshd_fleet: SshdFleet,
                                                           tmp_path: Path) -> None:
    project_kh = tmp_path / "known_hosts"
    project_kh.write_text(sshd.known_hosts_line())
    with transport(sshd, sshd_fleet, known_hosts=[project_kh]) as t:
        assert t.run(["true"]).ok
    second = sshd_fleet.servers[1]
    with transport(second, sshd_fleet, known_hosts=[project_kh], accept_new_host_key=True) as t:
        assert t.run(["true"]).ok
    assert project_kh.read_text() == sshd.known_hosts_line() + second.known_hosts_line()


def test_ssh_config_alias_supplies_host_port_user_and_key(sshd: SshdServer, sshd_fleet: SshdFleet,
                                                          no_user_ssh_config: Path, trust_hosts: Callable) -> None:
    trust_hosts(sshd)
    (no_user_ssh_config / ".ssh" / "config").write_text(
        f"Host board\n  HostName {sshd.host}\n  Port {sshd.port}\n  User root\n  IdentityFile {sshd_fleet.user_key}\n")
    with SSHTransport("board", "board", "/tmp") as t:
        assert (t.endpoint.hostname, t.endpoint.port, t.endpoint.user) == (sshd.host, sshd.port, "root")
        assert t.run(["true"]).ok


def test_proxy_jump_tunnels_through_the_jump_host(sshd_fleet: SshdFleet, no_user_ssh_config: Path,
                                                   trust_hosts: Callable) -> None:
    jump, target = sshd_fleet.servers[0], sshd_fleet.servers[1]
    # The jump host is reached through a counting proxy: traffic there proves the tunnel was used.
    with TcpProxy((jump.host, jump.port)) as proxy:
        kh = no_user_ssh_config / ".ssh" / "known_hosts"
        kh.write_text(jump.known_hosts_line("127.0.0.1", proxy.port) + target.known_hosts_line())
        (no_user_ssh_config / ".ssh" / "config").write_text(
            f"Host target\n  HostName {target.host}\n  Port {target.port}\n  ProxyJump root@jumpbox\n\n"
            f"Host jumpbox\n  HostName 127.0.0.1\n  Port {proxy.port}\n\n"
            f"Host *\n  IdentityFile {sshd_fleet.user_key}\n  User root\n")
        with SSHTransport("target", "target", str(target.device_root)) as t:
            res = t.run(["sh", "-c", 'echo "$SSH_CONNECTION"'])
            assert res.ok and res.stdout.split()[2] == target.host  # the server side is the target
            assert "via root@jumpbox" in t.describe()
            t.write_bytes("jumped.txt", b"hello")
        assert proxy.upstream_bytes > 1000
    assert (target.device_root / "jumped.txt").read_bytes() == b"hello"


def test_password_is_only_asked_interactively_after_keys_fail(sshd: SshdServer, trust_hosts: Callable) -> None:
    trust_hosts(sshd)
    prompts: List[str] = []

    def prompt(text: str) -> Optional[str]:
        prompts.append(text)
        return None  # the person declined

    with pytest.raises(DeviceError) as err, \
            SSHTransport("dev", sshd.host, "/tmp", port=sshd.port, user="root", password_prompt=prompt) as t:
        t.run(["true"])
    assert err.value.details["kind"] == "auth" and "authorized_keys" in (err.value.hint or "")
    assert prompts == [f"root@{sshd.host}'s password: "]
    # Without a terminal (as here, under pytest) the default prompt asks nobody and returns None.
    from edgekit.transport.ssh_hosts import tty_password_prompt

    assert tty_password_prompt("pw: ") is None


def test_unreachable_device_is_a_clear_error(sshd: SshdServer) -> None:
    from sshd_fixtures import free_port

    with pytest.raises(DeviceError, match="cannot connect to 127.0.0.9:"), \
            SSHTransport("dev", "127.0.0.9", "/tmp", port=free_port("127.0.0.9"), connect_timeout=3) as t:
        t.run(["true"])


def test_put_get_and_file_operations(sshd: SshdServer, sshd_fleet: SshdFleet, trust_hosts: Callable,
                                     tmp_path: Path) -> None:
    trust_hosts(sshd)
    data = os.urandom(3 << 20) + b"tail"
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    root = sshd.device_root / f"{tmp_path.name} files"
    with transport(sshd, sshd_fleet, str(root)) as t:
        t.makedirs("")
        t.put(src, "sub dir/blob $(x).bin")  # parents are created
        assert t.bytes_sent == len(data)
        assert (root / "sub dir" / "blob $(x).bin").read_bytes() == data
        back = tmp_path / "back.bin"
        t.get("sub dir/blob $(x).bin", back)
        assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
        with pytest.raises(DeviceError, match="does not exist"):
            t.get("nope", back)

        t.mkdir("lock")
        with pytest.raises(FileExistsError):
            t.mkdir("lock")
        t.write_bytes("lock/owner", b"me")
        assert t.read_bytes("lock/owner") == b"me" and t.exists("lock") and not t.exists("nolock")
        t.symlink("sub dir", "link.tmp")
        t.rename("link.tmp", "link")
        t.symlink("lock", "link.tmp")
        t.rename("link.tmp", "link")  # replaces the old link atomically
        assert t.readlink("link") == "lock" and t.readlink("lock") is None
        assert t.listdir("") == ["link", "lock", "sub dir"]
        t.rmtree("lock")
        t.rmtree("link")
        t.rmtree("missing")
        assert t.listdir("") == ["sub dir"]


def test_makedirs_tolerates_a_rival_creating_the_directory(sshd: SshdServer, sshd_fleet: SshdFleet,
                                                          trust_hosts: Callable, tmp_path: Path) -> None:
    """Two deploys to one device both make releases/: the loser's stat said "missing", the winner's
    mkdir landed before the loser's, and SFTP v3 answers that mkdir with a bare "Failure"."""
    trust_hosts(sshd)
    root = sshd.device_root / f"{tmp_path.name} race"
    with transport(sshd, sshd_fleet, str(root)) as t:
        t.makedirs("")
        real_stat = t.sftp.stat
        raced: List[str] = []

        def stat_then_rival_mkdir(p: str) -> Any:
            if p.endswith("/releases") and not raced:
                raced.append(p)
                os.mkdir(p)  # the rival wins the window between our stat and our mkdir
                raise FileNotFoundError(p)
            return real_stat(p)

        t.sftp.stat = stat_then_rival_mkdir  # type: ignore[method-assign]
        t.makedirs("releases/a")
        assert raced and (root / "releases" / "a").is_dir()
        (root / "releases" / "b").write_text("a file, not a directory")
        with pytest.raises(OSError):
            t.makedirs("releases/b/c")  # a real failure still surfaces


def test_mkdir_of_a_lock_released_meanwhile_takes_it(sshd: SshdServer, sshd_fleet: SshdFleet,
                                                    trust_hosts: Callable, tmp_path: Path) -> None:
    """A deploy's mkdir of the lock fails ("Failure": it exists), and the holder removes it before
    we look: that is a free lock, not an error."""
    trust_hosts(sshd)
    root = sshd.device_root / f"{tmp_path.name} lock"
    (root / "lock").mkdir(parents=True)
    with transport(sshd, sshd_fleet, str(root)) as t:
        real_mkdir = t.sftp.mkdir
        calls: List[str] = []

        def mkdir_then_holder_unlocks(p: str, mode: int = 0o777) -> None:
            calls.append(p)
            try:
                real_mkdir(p, mode)
            finally:
                if len(calls) == 1:
                    os.rmdir(p)  # the holder unlocks between our failed mkdir and our look

        t.sftp.mkdir = mkdir_then_holder_unlocks  # type: ignore[method-assign]
        t.mkdir("lock")
        assert len(calls) == 2 and (root / "lock").is_dir()
        with pytest.raises(FileExistsError):
            t.mkdir("lock")  # held for real: still the answer the lock loop waits on


def test_tilde_path_is_the_remote_home(sshd: SshdServer, sshd_fleet: SshdFleet, trust_hosts: Callable) -> None:
    trust_hosts(sshd)
    with transport(sshd, sshd_fleet, "~/edgekit-x") as t:
        assert t.root == pwd.getpwnam("root").pw_dir.rstrip("/") + "/edgekit-x"
        assert t.path("releases", "a") == t.root + "/releases/a"


def test_keys_from_ssh_agent(sshd: SshdServer, sshd_fleet: SshdFleet, trust_hosts: Callable, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    trust_hosts(sshd)
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists():
            assert time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.02)
        subprocess.run(["ssh-add", "-q", str(sshd_fleet.user_key)], env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
                       check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        # no identity file anywhere (HOME's ~/.ssh is empty): only the agent holds the key
        with SSHTransport("dev", sshd.host, "/tmp", port=sshd.port, user="root", password_prompt=None) as t:
            assert t.run(["true"]).ok
    finally:
        agent.terminate()
        agent.wait(5)


def test_missing_identity_file_is_named(sshd: SshdServer, trust_hosts: Callable, tmp_path: Path) -> None:
    trust_hosts(sshd)
    with pytest.raises(DeviceError, match="identity file not found: .*nope_ed25519"), \
            SSHTransport("dev", sshd.host, "/tmp", port=sshd.port, user="root", password_prompt=None,
                         identity_file=str(tmp_path / "nope_ed25519")) as t:
        t.run(["true"])


def test_a_failed_key_exchange_is_retried_once(sshd: SshdServer, sshd_fleet: SshdFleet, trust_hosts: Callable,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A protocol hiccup during the handshake gets one fresh connection; a second one is reported."""
    trust_hosts(sshd)
    real = SSHTransport._handshake
    calls = {"n": 0}

    def flaky(self: SSHTransport, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] <= fails:
            raise DeviceError("device 'dev': SSH handshake with x failed: Invalid packet blocking", kind="handshake")
        real(self, *args)

    monkeypatch.setattr(SSHTransport, "_handshake", flaky)
    fails = 1
    with transport(sshd, sshd_fleet) as t:
        assert t.run(["true"]).ok
    assert calls["n"] == 2
    calls["n"], fails = 0, 2
    with pytest.raises(DeviceError, match="Invalid packet blocking"), transport(sshd, sshd_fleet) as t:
        t.run(["true"])
    assert calls["n"] == 2


def test_cli_accept_new_host_key_reaches_each_connection_for_that_command_only(
        tmp_path: Path, sshd_fleet: SshdFleet, ssh_device: Callable, no_user_ssh_config: Path) -> None:
    """The CLI puts --accept-new-host-key into the SSH settings once (nothing in between passes it
    on): a single-device command and a fleet's threads both honour it, and the next command without
    the flag refuses an unknown key again."""
    import json

    from click.testing import CliRunner
    from sshd_fixtures import write_project

    from edgekit.cli import main
    from edgekit.transport import OPTIONS

    one, two = sshd_fleet.servers[:2]
    cfg = write_project(tmp_path / "proj", [ssh_device(one, "one", groups=["g"]), ssh_device(two, "two", groups=["g"])])
    known = no_user_ssh_config / ".ssh" / "known_hosts"

    def cli(*args: str) -> Any:
        return CliRunner().invoke(main, [*args, "--config", str(cfg)], catch_exceptions=False)

    r = cli("deploy", "-d", "one")
    assert r.exit_code not in (0, 70) and "host key" in r.output and not known.exists(), r.output
    r = cli("deploy", "-d", "one", "--accept-new-host-key")
    assert r.exit_code == 0, r.output
    assert known.read_text() == one.known_hosts_line()
    assert not OPTIONS.get("ssh", {}).get("accept_new_host_key")  # reset when the command ended
    r = cli("status", "-g", "g", "--json")  # "two" is still unknown: refused, nothing recorded
    assert r.exit_code == 7, r.output
    hosts = {h["host"]: h for h in json.loads(r.output[: r.output.rindex("}") + 1])["hosts"]}
    assert hosts["one"]["ok"] and hosts["two"]["error"]["kind"] == "host_key_unknown"
    assert known.read_text() == one.known_hosts_line()
    r = cli("status", "-g", "g", "--accept-new-host-key")  # the fleet engine's threads see the setting
    assert r.exit_code == 0, r.output
    assert known.read_text() == one.known_hosts_line() + two.known_hosts_line()
