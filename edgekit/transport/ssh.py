"""A device reached over SSH: one ``paramiko.SSHClient`` per transport, opened on first use and
shared by everything a command does (deploy, then validate: one connection).

What it takes from the user's OpenSSH setup: ``~/.ssh/config`` (HostName, User, Port, IdentityFile,
UserKnownHostsFile, ProxyJump, ProxyCommand), the ssh-agent, key files, and ``~/.ssh/known_hosts``
plus the project's ``deploy.known_hosts``. Explicit values in edgekit.toml win over ~/.ssh/config,
the way command-line options win over it for ``ssh``. paramiko does not speak OpenSSH's multiplexing
protocol; where the config gives the host a ControlPath and a master is up there, deploy's release
session runs through ``ssh -S`` on it instead (see control_master), and everything else dials.

Host keys are never trusted silently: an unknown key is refused with the command that trusts it,
``accept_new_host_key=True`` (an SSHSettings field) is an explicit trust-on-first-use that records
the key, and a changed key is refused always (paramiko's AutoAddPolicy is never used). Passwords are
never stored; a password is asked for only interactively, on a TTY, after key authentication failed.

Deploy runs edgekit/device/release.py on the device in one exec (ssh_session.py); SFTP
(ssh_files.py) carries validate's files, and the whole deploy where the device has no Python.
"""
from __future__ import annotations

import logging
import os
import select
import shlex
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Sequence, Tuple

import paramiko

from ..device.bounded import HeadTail
from ..errors import DeviceError
from . import ReleaseSession, RunResult, Transport
from .ssh_files import SftpFiles
from .ssh_hosts import (DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEPALIVE_S, Endpoint, PasswordPrompt, RecordNewHostKey,
                        RefuseUnknownHostKey, connect_hint, connect_timeout_for, is_timeout, load_known_hosts,
                        load_ssh_config, resolve_endpoint, split_jump, tty_password_prompt)

if TYPE_CHECKING:  # pragma: no cover
    from ..config import DeviceSpec, ProjectConfig
    from .ssh_session import SshRelease

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = DEFAULT_CONNECT_TIMEOUT
MAX_JUMPS = 8
READ_CHUNK = 1 << 20
# What one command's stdout (and its stderr) may hold on the host: its first and last 8 MiB. Far
# above any output edgekit parses (deploy's checksum list, doctor's probes), far below a flood.
RUN_OUTPUT_LIMIT = 8 << 20
EXIT_GRACE = 2.0
# Our receive window: big enough that downloads (get) are not stalled on window updates.
WINDOW_SIZE = 16 << 20

PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


@dataclass
class SSHSettings:
    """What only SSH needs to reach a device: the [[devices]] keys host, port, user, identity_file
    (same TOML keys as always), the project's known_hosts, and the run-time trust decision."""

    host: str
    port: Optional[int] = None
    user: Optional[str] = None
    identity_file: Optional[str] = None
    known_hosts: List[Path] = field(default_factory=list)
    accept_new_host_key: bool = False
    connect_timeout: Optional[float] = None
    """None: ConnectTimeout from ~/.ssh/config, else the default (see ssh_hosts.connect_timeout_for)."""

    @classmethod
    def from_device(cls, device: "DeviceSpec", config: Optional["ProjectConfig"] = None,
                    accept_new_host_key: bool = False) -> "SSHSettings":
        known: List[Path] = []
        identity = device.identity_file
        if config is not None:
            if config.deploy.known_hosts is not None:
                known.append(config.resolve(config.deploy.known_hosts))  # type: ignore[arg-type]
            if identity:
                identity = str(config.resolve(identity))
        if not device.host:
            from ..errors import ConfigError

            raise ConfigError(f"device '{device.name}': transport 'ssh' needs host")
        return cls(device.host, device.port, device.user, identity, known, accept_new_host_key,
                   getattr(device, "connect_timeout", None))


class SSHTransport(SftpFiles, Transport, kind="ssh"):
    """A device over one SSH connection (plus its jump hosts)."""

    Settings = SSHSettings

    def __init__(self, name: str, host: str, path: str = "~/edgekit", *, port: Optional[int] = None,
                 user: Optional[str] = None, identity_file: Optional[str] = None, python: str = "python3",
                 known_hosts: Sequence[Path] = (), accept_new_host_key: bool = False,
                 ssh_config: Optional[paramiko.SSHConfig] = None,
                 password_prompt: Optional[PasswordPrompt] = tty_password_prompt,
                 connect_timeout: Optional[float] = None) -> None:
        self.name = name
        self.python = python
        self._path = path
        self.settings = SSHSettings(host, port, user, identity_file, [Path(p) for p in known_hosts],
                                    accept_new_host_key, connect_timeout)
        self._ssh_config = ssh_config if ssh_config is not None else load_ssh_config()
        self.endpoint = resolve_endpoint(self._ssh_config, host, port=port, user=user, identity_file=identity_file)
        self._project_known_hosts = [Path(p) for p in known_hosts]
        self.accept_new_host_key = accept_new_host_key
        self.password_prompt = password_prompt
        # --connect-timeout / the device's connect_timeout, else ConnectTimeout from ~/.ssh/config, else 10 s
        self.connect_timeout = connect_timeout_for(connect_timeout, self.endpoint)
        self._fatal: Optional[DeviceError] = None  # why connecting failed: every later call fails at once
        self._clients: List[paramiko.SSHClient] = []  # jump hosts first, the device last
        self._sftp: Optional[paramiko.SFTPClient] = None
        self._aside_sftp: Optional[paramiko.SFTPClient] = None  # the lock heartbeat's own channel
        self._aside_guard = threading.Lock()
        self._root: Optional[str] = None
        self._missing_keys: List[str] = []
        self._master: Optional[str] = None
        self._stream: Optional["SshRelease"] = None
        """The release session whose stream put_many uses while a deploy uploads."""
        self.bytes_sent = 0
        """File bytes written by ``put`` over this connection (deploy reports them)."""

    @classmethod
    def from_device(cls, device: "DeviceSpec", config: Optional["ProjectConfig"] = None,
                    **options: Any) -> "SSHTransport":
        s = SSHSettings.from_device(device, config, accept_new_host_key=bool(options.get("accept_new_host_key")))
        return cls(device.name, s.host, device.path, port=s.port, user=s.user, identity_file=s.identity_file,
                   python=device.python, known_hosts=s.known_hosts, accept_new_host_key=s.accept_new_host_key,
                   connect_timeout=s.connect_timeout)

    def release_session(self) -> ReleaseSession:
        from .ssh_session import SshRelease

        return SshRelease(self)

    def control_master(self) -> Optional[str]:
        """The socket of a live OpenSSH master for this device, where ~/.ssh/config gives the host a
        ControlPath (``ssh -O check`` says it is up); None otherwise. Release sessions then run
        through ``ssh -S`` on it (no handshake of our own); paramiko cannot use the socket itself."""
        if self._master is None:
            self._master = ""
            path = self._ssh_config.lookup(self.endpoint.alias).get("controlpath")
            if path and path.lower() != "none" and shutil.which("ssh") and os.path.exists(os.path.expanduser(path)):
                path = os.path.expanduser(path)
                ep = self.endpoint
                try:
                    check = subprocess.run(["ssh", "-S", path, "-O", "check", "-p", str(ep.port), "-l", ep.user, "--",
                                            ep.hostname], capture_output=True, timeout=10)
                    self._master = path if check.returncode == 0 else ""
                except (OSError, subprocess.TimeoutExpired):
                    pass
        return self._master or None

    def put_many(self, pairs: Iterable[Tuple[Path, str]]) -> int:
        """Upload several files; returns bytes sent. During a deploy they travel in the release
        script's stream (no per-file round trip); otherwise over SFTP, writes pipelined per file."""
        pairs = list(pairs)
        if self._stream is not None and self._stream.takes(pairs):
            return self._stream.stream(pairs)
        return SftpFiles.put_many(self, pairs)

    # ------------------------------------------------------------------------------------------
    # Connection
    # ------------------------------------------------------------------------------------------
    @property
    def client(self) -> paramiko.SSHClient:
        if self._fatal is not None:
            # A refused host key, a timeout or a dead port is the device's answer for this whole
            # command: asking again (doctor's next probe, validate's next step) would only wait again.
            raise self._fatal
        if not self._clients:
            try:
                try:
                    self._dial(self.endpoint, depth=0)
                except DeviceError as exc:
                    if exc.details.get("kind") != "handshake":
                        raise
                    # A protocol hiccup during key exchange (seen once in hundreds of loopback connects
                    # as paramiko's "Invalid packet blocking") is not the device's answer: one fresh try.
                    # Never after a timeout (kind "timeout"): that would double the wait.
                    log.debug("device %s: %s; retrying once", self.name, exc.message)
                    self.close()
                    time.sleep(0.2)
                    self._dial(self.endpoint, depth=0)
            except DeviceError as exc:
                self._fatal = exc
                self.close()
                raise
        return self._clients[-1]

    @property
    def connected(self) -> bool:
        return bool(self._clients) and bool(self._clients[-1].get_transport()) and \
            self._clients[-1].get_transport().is_active()  # type: ignore[union-attr]

    def _known_hosts_files(self, ep: Endpoint) -> List[Path]:
        user_files = [Path(p) for p in ep.known_hosts_files] or [Path("~/.ssh/known_hosts").expanduser()]
        return user_files + self._project_known_hosts

    def _record_file(self, ep: Endpoint) -> Path:
        # A project known_hosts, when configured, is the trust store the team shares: record there.
        return self._project_known_hosts[0] if self._project_known_hosts else self._known_hosts_files(ep)[0]

    def _dial(self, ep: Endpoint, depth: int) -> paramiko.SSHClient:
        if depth > MAX_JUMPS:
            raise DeviceError(f"device '{self.name}': more than {MAX_JUMPS} ProxyJump hops (a loop in ~/.ssh/config?)")
        sock: object
        where = f"{ep.hostname}:{ep.port}"
        if ep.proxy_jump:
            # The last jump reaches the target; the jumps before it are how the last one is reached.
            juser, jhost, jport = split_jump(ep.proxy_jump[-1])
            hop = resolve_endpoint(self._ssh_config, jhost, port=jport, user=juser,
                                   proxy_jump=ep.proxy_jump[:-1] or None)
            via = self._dial(hop, depth + 1)
            try:
                sock = via.get_transport().open_channel(  # type: ignore[union-attr]
                    "direct-tcpip", (ep.hostname, ep.port), ("127.0.0.1", 0), timeout=self.connect_timeout)
            except (paramiko.SSHException, OSError) as exc:
                raise DeviceError(f"device '{self.name}': jump host {hop.hostname} cannot reach {where}: {exc}") from None
            where += f" via {hop.hostname}"
        elif ep.proxy_command:
            sock = paramiko.ProxyCommand(ep.proxy_command)
        else:
            try:
                sock = socket.create_connection((ep.hostname, ep.port), timeout=self.connect_timeout)
                # SSH is request/response (channel opens, SFTP calls): without this, Nagle and the
                # peer's delayed ACK add ~40 ms to each exchange.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                timed_out = is_timeout(exc)
                raise DeviceError(f"device '{self.name}': cannot connect to {where}: "
                                  + (f"no answer within {self.connect_timeout:g} s" if timed_out else (exc.strerror or str(exc))),
                                  hint=connect_hint(ep) + (" (or raise --connect-timeout)" if timed_out else ""),
                                  kind="timeout" if timed_out else "unreachable") from None
        log.debug("device %s: connecting to %s as %s", self.name, where, ep.user)
        client = paramiko.SSHClient()
        self._clients.append(client)  # appended first, so close() also closes a half-open hop
        # Read by ssh_hosts (markers: @revoked, @cert-authority), never rewritten by paramiko.
        known = load_known_hosts(self._known_hosts_files(ep))
        known.install(client)
        record_to = self._record_file(ep)
        client.set_missing_host_key_policy(
            RecordNewHostKey(record_to, known, ep) if self.accept_new_host_key else RefuseUnknownHostKey(ep, record_to, known))
        self._handshake(client, ep, sock, where)
        return client

    def _handshake(self, client: paramiko.SSHClient, ep: Endpoint, sock: object, where: str) -> None:
        keys = [p for p in ep.identity_files if os.path.isfile(p)]
        self._missing_keys = [p for p in ep.identity_files if not os.path.isfile(p)]

        def transport_factory(s: object, **kw: object) -> paramiko.Transport:
            t = paramiko.Transport(s, default_window_size=WINDOW_SIZE, **kw)  # type: ignore[arg-type]
            # AES-GCM first: one AEAD pass instead of AES-CTR plus HMAC-SHA256, which halves the
            # device's per-byte crypto (it matters on a board's small CPU, and on loopback here).
            opts = t.get_security_options()
            opts.ciphers = [c for c in PREFERRED_CIPHERS if c in opts.ciphers] + \
                [c for c in opts.ciphers if c not in PREFERRED_CIPHERS]
            return t

        try:
            client.connect(ep.hostname, ep.port, username=ep.user, key_filename=keys or None,
                           # start_client's own deadline a little after the banner's, so a silent
                           # board fails on the banner wait with its real cause, once
                           timeout=self.connect_timeout + 1.0, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, sock=sock,  # type: ignore[arg-type]
                           allow_agent=True, look_for_keys=True, transport_factory=transport_factory)
        except paramiko.BadHostKeyException as exc:
            raise DeviceError(
                f"device '{self.name}': HOST KEY CHANGED for {ep.host_key_name}: the device offered "
                f"{exc.key.get_name()} {exc.key.fingerprint}, known_hosts has {exc.expected_key.fingerprint}; "
                "refusing to connect (this can be an attack)",
                hint=(f"if the device was reinstalled, remove the old key with "
                      f"\"ssh-keygen -R '{ep.host_key_name}'\" and trust the new one"),
                kind="host_key_changed", host=ep.host_key_name) from None
        except paramiko.AuthenticationException as exc:
            self._password_fallback(client, ep, exc)
        except DeviceError:
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if "No authentication methods available" in str(exc):  # no key, no agent: nothing was tried
                self._password_fallback(client, ep, exc)
                return
            if is_timeout(exc):  # accepted TCP, then silence (a hung board, a half-dead sshd)
                raise DeviceError(f"device '{self.name}': {where} accepted the connection but sent no SSH greeting "
                                  f"within {self.connect_timeout:g} s", kind="timeout",
                                  hint=connect_hint(ep) + " (sshd not answering; or raise --connect-timeout)") from None
            raise DeviceError(f"device '{self.name}': SSH handshake with {where} failed: {exc}",
                              kind="handshake") from None
        finally:
            self._keepalive(client, ep)

    @staticmethod
    def _keepalive(client: paramiko.SSHClient, ep: Endpoint) -> None:
        """Keepalives while the connection lives: a validate's runner is silent for minutes."""
        transport = client.get_transport()
        if transport is not None and transport.is_active():
            transport.set_keepalive(int(ep.keepalive_s or DEFAULT_KEEPALIVE_S))

    def _password_fallback(self, client: paramiko.SSHClient, ep: Endpoint, exc: Exception) -> None:
        """Key auth failed: ask for a password if a person is there to type one; never from config."""
        transport = client.get_transport()
        password = None
        if self.password_prompt is not None and transport is not None and transport.is_active():
            password = self.password_prompt(f"{ep.user}@{ep.hostname}'s password: ")
        if password:
            try:
                transport.auth_password(ep.user, password)  # type: ignore[union-attr]
                return
            except paramiko.SSHException as again:
                exc = again
        missing = getattr(self, "_missing_keys", [])
        raise DeviceError(
            f"device '{self.name}': authentication as {ep.user}@{ep.hostname}:{ep.port} failed: {exc}"
            + (f" (identity file not found: {', '.join(missing)})" if missing else ""),
            hint="add your public key to the device's ~/.ssh/authorized_keys (ssh-copy-id), load it into "
                 "ssh-agent, or set identity_file for the device", kind="auth") from None

    def close(self) -> None:
        with self._aside_guard:
            for client in (self._sftp, self._aside_sftp):
                if client is not None:
                    try:
                        client.close()
                    except Exception:  # closing a dead channel must not mask the error that killed it
                        pass
            self._sftp = self._aside_sftp = None
        for c in reversed(self._clients):
            c.close()
        self._clients = []

    # ------------------------------------------------------------------------------------------
    # Paths
    # ------------------------------------------------------------------------------------------
    @property
    def root(self) -> str:  # type: ignore[override]
        """Absolute device directory; ``~`` is the remote home, which only the device knows."""
        if self._root is None:
            p = self._path
            if p == "~" or p.startswith("~/") or not p.startswith("/"):
                # SFTP starts in the remote home; asking it avoids spawning a login shell.
                home = self._sftp_call(self.sftp.normalize, ".")
                rel = p[2:] if p.startswith("~/") else ("" if p == "~" else p)
                p = home.rstrip("/") + ("/" + rel if rel else "")
            self._root = os.path.normpath(p)
        return self._root

    def path(self, *parts: str) -> str:
        parts = tuple(p for p in parts if p)
        return "/".join([self.root.rstrip("/"), *parts]) if parts else self.root

    def _abs(self, p: str) -> str:
        return p if p.startswith("/") else self.path(p)

    # ------------------------------------------------------------------------------------------
    # run / put / get
    # ------------------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], timeout: Optional[float] = None, cwd: Optional[str] = None) -> RunResult:
        # Every argument is quoted: device paths may hold spaces, $() or quotes.
        command = f"cd -- {shlex.quote(self._abs(cwd) if cwd else self.root)} && {shlex.join(argv)}"
        res = self._exec(command, timeout)
        return RunResult(list(argv), res.returncode, res.stdout, res.stderr)

    def _exec(self, command: str, timeout: Optional[float]) -> RunResult:
        try:
            chan = self.client.get_transport().open_session(timeout=self.connect_timeout)  # type: ignore[union-attr]
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(exc) from None
        # Bounded: a hostile or broken device could send hundreds of megabytes; the middle is dropped.
        out, err = HeadTail(RUN_OUTPUT_LIMIT), HeadTail(RUN_OUTPUT_LIMIT)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            # Drain stdout and stderr together so neither fills its window and stalls the command.
            exited_at = None
            while True:
                got = False
                while chan.recv_ready():
                    out.feed(chan.recv(READ_CHUNK))
                    got = True
                while chan.recv_stderr_ready():
                    err.feed(chan.recv_stderr(READ_CHUNK))
                    got = True
                if chan.closed or (chan.exit_status_ready() and chan.eof_received):
                    break
                if chan.exit_status_ready():
                    # sshd sends exit-status when the command exits, outside flow control, so output
                    # still queued behind a full window arrives after it: drain until EOF. A background
                    # child holding the output open gets EXIT_GRACE s of silence, not forever.
                    exited_at = time.monotonic() if (exited_at is None or got) else exited_at
                    if time.monotonic() - exited_at > EXIT_GRACE:
                        break
                wait = 1.0 if deadline is None else deadline - time.monotonic()
                if wait <= 0:
                    raise DeviceError(f"device '{self.name}': {command!r} did not finish within {timeout:.0f} s")
                if chan.eof_received:  # output is over; only the exit status is still to come
                    chan.status_event.wait(min(wait, 1.0))
                else:
                    select.select([chan], [], [], min(wait, 1.0))
            while chan.recv_ready():
                out.feed(chan.recv(READ_CHUNK))
            while chan.recv_stderr_ready():
                err.feed(chan.recv_stderr(READ_CHUNK))
            code = chan.recv_exit_status() if chan.exit_status_ready() else -1
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(exc) from None
        finally:
            chan.close()
        if code == -1:
            raise self._lost(EOFError("the channel closed without an exit status"))
        return RunResult([command], code, out.getvalue().decode("utf-8", "replace"),
                         err.getvalue().decode("utf-8", "replace"))

    def _lost(self, exc: BaseException) -> DeviceError:
        return DeviceError(f"device '{self.name}': connection lost ({type(exc).__name__}: {exc})",
                           hint="check the network and the device",
                           kind="connection_lost")

    def describe(self) -> str:
        ep = self.endpoint
        via = f" via {','.join(ep.proxy_jump)}" if ep.proxy_jump else ""
        return f"ssh://{ep.user}@{ep.hostname}:{ep.port}{via}"
