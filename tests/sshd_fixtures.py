"""Real OpenSSH servers on loopback for the SSH transport, deploy and fleet tests (a pytest plugin).

Each server is a separate ``/usr/sbin/sshd -D -e -f <generated sshd_config>`` listening on its own
127.0.0.x address and port, with a generated ed25519 host key, accepting one generated ed25519 user
key. They are session-scoped: starting sshd takes ~50 ms, but the key generation and port probing
add up, and the servers hold no per-test state (every test deploys into its own device directory).

When sshd is missing the tests skip with a reason, except under CI (env ``CI`` set), where they fail:
the end-to-end tier is never optional there.

The helpers are plain functions too, so ``bench/deploy.py`` starts its fleet with the same code.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

SSHD = os.environ.get("EDGEKIT_TEST_SSHD", "/usr/sbin/sshd")
SFTP_SERVER_CANDIDATES = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                          "/usr/libexec/sftp-server")


def sshd_missing_reason() -> Optional[str]:
    if not os.path.isfile(SSHD) or not os.access(SSHD, os.X_OK):
        return f"OpenSSH server not found at {SSHD} (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen not found (apt-get install openssh-client)"
    return None


def skip_or_fail_in_ci(reason: Optional[str], ci_note: str) -> None:
    """``reason`` (what is missing, or None): skip on a developer machine, fail under CI (``ci_note``
    says what CI must run), where a test needing a service must never be skipped."""
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; {ci_note}", pytrace=False)
    pytest.skip(reason)


def require_sshd() -> None:
    """Skip without sshd on a developer machine; fail under CI, where the e2e tier must run."""
    skip_or_fail_in_ci(sshd_missing_reason(), "CI must run the SSH end-to-end tests")


def generate_key(path: Path, comment: str = "edgekit-tests") -> Path:
    """An ed25519 key pair (``path`` and ``path.pub``), no passphrase."""
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                       check=True, capture_output=True)
    return path


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def sftp_server_path() -> str:
    for p in SFTP_SERVER_CANDIDATES:
        if os.path.exists(p):
            return p
    return "internal-sftp"


@dataclass
class SshdServer:
    host: str
    port: int
    host_key: Path
    workdir: Path
    device_root: Path
    """A directory on the "device" under which tests create their device directories."""
    proc: Optional[subprocess.Popen] = None
    log: Optional[Path] = None

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def public_key_line(self) -> str:
        """``<type> <base64>`` of this server's host key."""
        return " ".join(Path(str(self.host_key) + ".pub").read_text().split()[:2])

    def known_hosts_line(self, host: Optional[str] = None, port: Optional[int] = None) -> str:
        host, port = host or self.host, port or self.port
        name = host if port == 22 else f"[{host}]:{port}"
        return f"{name} {self.public_key_line()}\n"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def write_sshd_config(server: SshdServer, authorized_keys: Path, sftp_subsystem: str, extra: str = "") -> Path:
    cfg = server.workdir / "sshd_config"
    cfg.write_text("\n".join([
        f"ListenAddress {server.host}:{server.port}",
        f"HostKey {server.host_key}",
        f"AuthorizedKeysFile {authorized_keys}",
        f"PidFile {server.workdir / 'sshd.pid'}",
        "StrictModes no",  # the test tree is not root-owned 0755 all the way up
        "UsePAM no",
        "PermitRootLogin yes",  # the tests run as root in the sandbox
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "AllowTcpForwarding yes",  # ProxyJump tests open direct-tcpip channels through one server
        "MaxStartups 64:30:128",  # bench: 16 parallel deploys may land on one server
        "MaxSessions 64",
        "PrintMotd no",
        "LogLevel ERROR",
        # The "device" user's shell must not read the developer's ~/.bashrc (here it runs pyenv init,
        # 0.4 s per command); sshd applies SetEnv after setting HOME from the password database.
        f"SetEnv HOME={server.workdir / 'home'}",
        f"Subsystem sftp {sftp_subsystem}",
        extra,
        "",
    ]))
    return cfg


def start_sshd(workdir: Path, host: str, authorized_keys: Path, *, sftp_subsystem: Optional[str] = None,
               extra_config: str = "", timeout: float = 10.0) -> SshdServer:
    """Start one sshd on ``host`` (a 127.0.0.x address) and wait until it greets."""
    workdir.mkdir(parents=True, exist_ok=True)
    # sshd refuses to start without its privilege-separation directory.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    host_key = generate_key(workdir / "ssh_host_ed25519_key", comment=f"host-{host}")
    device_root = workdir / "devices"
    device_root.mkdir(exist_ok=True)
    (workdir / "home").mkdir(exist_ok=True)
    server = SshdServer(host, free_port(host), host_key, workdir, device_root)
    cfg = write_sshd_config(server, authorized_keys, sftp_subsystem or sftp_server_path(), extra_config)
    server.log = workdir / "sshd.log"
    with open(server.log, "wb") as log:
        server.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"sshd on {host}:{server.port} exited: {server.log.read_text()[-2000:]}")
        try:
            with socket.create_connection((host, server.port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"sshd on {host}:{server.port} did not answer within {timeout:.0f} s")
        time.sleep(0.02)


@dataclass
class SshdFleet:
    """Several sshd servers sharing one authorized user key."""

    workdir: Path
    user_key: Path
    servers: List[SshdServer] = field(default_factory=list)

    def add(self, host: str, **kw: object) -> SshdServer:
        server = start_sshd(self.workdir / host, host, Path(str(self.user_key) + ".pub"), **kw)  # type: ignore[arg-type]
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def start_fleet(workdir: Path, n: int, first_host: int = 2) -> SshdFleet:
    workdir.mkdir(parents=True, exist_ok=True)
    fleet = SshdFleet(workdir, generate_key(workdir / "id_ed25519", comment="edgekit-user"))
    try:
        for i in range(n):
            fleet.add(f"127.0.0.{first_host + i}")
    except BaseException:
        fleet.stop()
        raise
    return fleet


def trust(home: Path, *lines: str) -> Path:
    """Append known_hosts lines to ``home/.ssh/known_hosts`` (the tests' HOME)."""
    kh = home / ".ssh" / "known_hosts"
    kh.parent.mkdir(mode=0o700, exist_ok=True)
    with open(kh, "a") as f:
        for line in lines:
            f.write(line if line.endswith("\n") else line + "\n")
    return kh


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sshd_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdFleet]:
    """Three sshd servers (127.0.0.2-4) standing in for a fleet of edge boards."""
    require_sshd()
    fleet = start_fleet(tmp_path_factory.mktemp("sshd"), 3)
    yield fleet
    fleet.stop()


@pytest.fixture
def sshd(sshd_fleet: SshdFleet) -> SshdServer:
    for s in sshd_fleet.servers:
        assert s.alive(), f"sshd on {s.host}:{s.port} died: {s.log.read_text() if s.log else ''}"
    return sshd_fleet.servers[0]


@pytest.fixture
def trust_hosts(no_user_ssh_config: Path) -> Callable[..., Path]:
    """``trust_hosts(server, ...)`` records the servers' host keys in the test HOME's known_hosts."""

    def _trust(*servers: SshdServer) -> Path:
        return trust(no_user_ssh_config, *[s.known_hosts_line() for s in servers])

    return _trust


@pytest.fixture
def ssh_device(sshd_fleet: SshdFleet, tmp_path: Path) -> Callable[..., Dict[str, object]]:
    """``ssh_device(server, name, **overrides)``: a [[devices]] table (dict) for an ssh device whose
    directory is fresh for this test."""
    counter = iter(range(1000))

    def _device(server: SshdServer, name: str = "dev", **overrides: object) -> Dict[str, object]:
        path = server.device_root / f"{tmp_path.name}-{name}-{next(counter)}"
        spec: Dict[str, object] = {
            "name": name, "target": "x86-avx2", "transport": "ssh", "host": server.host,
            "port": server.port, "user": "root", "identity_file": str(sshd_fleet.user_key),
            "path": str(path), "python": _device_python(),
        }
        spec.update(overrides)
        return spec

    return _device


def _device_python() -> str:
    """The "device" interpreter: this one, since it has numpy and onnxruntime for runner.py."""
    import sys

    return sys.executable


# ------------------------------------------------------------------------------------------------
# A project (edgekit.toml + dist/tiny/<target>/) around the servers
# ------------------------------------------------------------------------------------------------
def _toml_value(v: object) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # JSON string escapes are valid TOML basic-string escapes


def write_project(root: Path, devices: List[Dict[str, object]], *, deploy: Optional[Dict[str, object]] = None,
                  bundles: Dict[str, int] = {"x86-avx2": 0}, **bundle_kw: object) -> Path:  # noqa: B006
    """Write ``root/edgekit.toml`` for the tiny model with ``devices``, and build a tiny bundle per
    target in ``bundles`` (target -> seed) under ``root/dist/tiny/``. Returns the config path."""
    from bundles import make_tiny_bundle

    root.mkdir(parents=True, exist_ok=True)
    lines = ['[model]', 'name = "tiny"', 'source = "onnx"', 'path = "model.onnx"', '',
             '[[inputs]]', 'name = "x"', 'shape = [1, 16]', '',
             '[calibration]', 'data = "data.npz"', '',
             '[validation]', 'data = "data.npz"', 'threshold = 0.99', '',
             '[power]', 'idle_s = 0.2', '']  # sampling stays on (auto); a short baseline keeps tests quick
    lines.append("[deploy]")
    for k, v in (deploy or {}).items():
        lines.append(f"{k} = {_toml_value(v)}")
    lines.append("")
    for d in devices:
        lines.append("[[devices]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in d.items()]
        lines.append("")
    cfg = root / "edgekit.toml"
    cfg.write_text("\n".join(lines))
    for target, seed in bundles.items():
        make_tiny_bundle(root / "dist" / "tiny" / target, seed=seed, target=target, **bundle_kw)  # type: ignore[arg-type]
    return cfg


def make_bundle(base: Path, seed: int, extra_bytes: int = 0, target: str = "x86-avx2", **kw: object) -> Path:
    """A tiny bundle (distinct per seed) in ``base/b<seed>/<target>``, optionally carrying an extra
    ``blob.bin`` of random bytes so uploads last long enough to be interrupted."""
    from bundles import make_tiny_bundle

    bundle = base / f"b{seed}-{extra_bytes}" / target
    if not (bundle / "manifest.json").exists():
        bundle.mkdir(parents=True, exist_ok=True)
        if extra_bytes:
            (bundle / "blob.bin").write_bytes(os.urandom(extra_bytes))  # hashed into the manifest too
        make_tiny_bundle(bundle, seed=seed, target=target, **kw)  # type: ignore[arg-type]
    return bundle


@pytest.fixture(params=["local", "ssh"])
def device_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def one_device(device_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Dict[str, object]:
    """A [[devices]] table named "dev": a local directory, or a fresh directory behind a trusted sshd."""
    if device_kind == "local":
        return {"name": "dev", "target": "x86-avx2", "transport": "local", "path": str(tmp_path / "device"),
                "python": _device_python()}
    server = request.getfixturevalue("sshd")
    request.getfixturevalue("trust_hosts")(server)
    return request.getfixturevalue("ssh_device")(server, "dev")
