"""A device reached over SSH: a thin connection over one ``paramiko.SSHClient``, opened on first use.

What it takes from the user's OpenSSH setup: ``~/.ssh/config`` (HostName, User, Port, IdentityFile,
UserKnownHostsFile, ProxyJump, ProxyCommand), the ssh-agent, key files, and ``~/.ssh/known_hosts``
plus the project's ``deploy.known_hosts``. Explicit values in edgekit.toml win over ~/.ssh/config,
the way command-line options win over it for ``ssh``.

Host keys are never trusted silently: an unknown key is refused with the command that trusts it,
``accept_new_host_key=True`` is an explicit trust-on-first-use that records the key, and a changed
key is refused always (paramiko's AutoAddPolicy is never used). Passwords are never stored; a
password is asked for only interactively, on a TTY, after key authentication failed.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import shlex
import socket
import stat
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar

import paramiko

from ..device.bounded import HeadTail
from ..errors import DeviceError
from . import RunResult, Transport
from .ssh_hosts import (DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEPALIVE_S, Endpoint, PasswordPrompt, RecordNewHostKey,
                        RefuseUnknownHostKey, connect_hint, connect_timeout_for, is_timeout, load_known_hosts,
                        load_ssh_config, resolve_endpoint, split_jump, tty_password_prompt)

if TYPE_CHECKING:  # pragma: no cover
    from ..config import DeviceSpec, ProjectConfig

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = DEFAULT_CONNECT_TIMEOUT
MAX_JUMPS = 8
# OpenSSH's sftp-server accepts messages up to 256 KiB and advertises 256 KiB - 1 KiB as its write
# limit (limits@openssh.com). Writes that large cut paramiko's per-request overhead ~8x against its
# default 32 KiB, which is what brings it from ~66% to >=100% of scp on loopback (bench/deploy.py).
OPENSSH_WRITE_SIZE = 256 * 1024 - 1024
READ_CHUNK = 1 << 20
# What one command's stdout (and its stderr) may hold on the host: its first and last 8 MiB. Far
# above any output edgekit parses (deploy's checksum list, doctor's probes), far below a flood.
RUN_OUTPUT_LIMIT = 8 << 20
EXIT_GRACE = 2.0
# Our receive window: big enough that downloads (get) are not stalled on window updates.
WINDOW_SIZE = 16 << 20

PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
T = TypeVar("T")


class SSHTransport(Transport):
    """``run``/``put``/``get`` on a device over one SSH connection (plus its jump hosts)."""

    def __init__(self, name: str, host: str, path: str = "~/edgekit", *, port: Optional[int] = None,
                 user: Optional[str] = None, identity_file: Optional[str] = None, python: str = "python3",
                 known_hosts: Sequence[Path] = (), accept_new_host_key: bool = False,
                 ssh_config: Optional[paramiko.SSHConfig] = None,
                 password_prompt: Optional[PasswordPrompt] = tty_password_prompt,
                 connect_timeout: Optional[float] = None) -> None:
        self.name = name
        self.python = python
        self._path = path
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
        self.bytes_sent = 0
        """File bytes written by ``put`` over this connection (deploy reports them)."""

    @classmethod
    def from_device(cls, device: "DeviceSpec", config: Optional["ProjectConfig"] = None, *,
                    accept_new_host_key: bool = False) -> "SSHTransport":
        known: List[Path] = []
        identity = device.identity_file
        if config is not None:
            if config.deploy.known_hosts is not None:
                known.append(config.resolve(config.deploy.known_hosts))  # type: ignore[arg-type]
            if identity:
                identity = str(config.resolve(identity))
        assert device.host, "DeviceSpec validation guarantees a host for ssh devices"
        return cls(device.name, device.host, device.path, port=device.port, user=device.user,
                   identity_file=identity, python=device.python, known_hosts=known,
                   accept_new_host_key=accept_new_host_key, connect_timeout=getattr(device, "connect_timeout", None))

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

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise DeviceError(f"device '{self.name}': cannot open SFTP ({exc})",
                                  hint="the device's sshd needs the sftp subsystem") from None
        return self._sftp

    def _write_size(self) -> int:
        version = self.client.get_transport().remote_version or ""  # type: ignore[union-attr]
        return OPENSSH_WRITE_SIZE if "OpenSSH" in version else paramiko.SFTPFile.MAX_REQUEST_SIZE

    def put(self, local: Path, remote: str) -> None:
        with open(local, "rb") as f:
            self.putfo(f, remote)

    def putfo(self, f: IO[bytes], remote: str) -> int:
        """Stream a file object to ``remote`` with pipelined, large SFTP writes; returns bytes sent."""
        dst = self._abs(remote)
        sent = 0
        try:
            try:
                rf = self.sftp.open(dst, "wb")
            except FileNotFoundError:
                self._mkdirs(os.path.dirname(dst))
                rf = self.sftp.open(dst, "wb")
            with rf:
                rf.MAX_REQUEST_SIZE = self._write_size()  # instance attribute: this file only
                rf.set_pipelined(True)  # don't wait for each write's ack (they are read below)
                for chunk in iter(lambda: f.read(READ_CHUNK), b""):
                    rf.write(chunk)
                    sent += len(chunk)
                rf.flush()
                self._read_write_acks(rf)
        except DeviceError:
            raise
        except (IOError, paramiko.SSHException, EOFError) as exc:
            # The device answered with an error (disk full, permission) vs. the connection died.
            if isinstance(exc, IOError) and self.connected:
                raise DeviceError(f"device '{self.name}': writing {dst} failed: {exc}", kind="write_failed",
                                  path=dst) from None
            raise self._lost(exc) from None
        finally:
            self.bytes_sent += sent
        return sent

    def _read_write_acks(self, rf: paramiko.SFTPFile) -> None:
        """Raise the first error among a pipelined file's unread write acks.

        paramiko registers pipelined writes without their file, so SFTPFile.close() never reads
        the acks of the last (up to 100) writes: a write failing near the end of a file, on a full
        disk for one, would pass silently. This reads them (paramiko internals, checked below)."""
        reqs = getattr(rf, "_reqs", None)
        read_response = getattr(self.sftp, "_read_response", None)
        if reqs is None or read_response is None:  # another paramiko: the device-side sha256 still catches it
            return
        while reqs:
            read_response(reqs.popleft())  # raises IOError when the device answered with an error

    def _mkdirs(self, directory: str) -> None:
        parts: List[str] = []
        d = directory.rstrip("/")
        while d not in ("", "/"):
            try:
                self.sftp.stat(d)
                break
            except FileNotFoundError:
                parts.append(d)
                d = os.path.dirname(d)
        for p in reversed(parts):
            try:
                self.sftp.mkdir(p)
            except IOError:
                # Another deploy may have made it between our stat and mkdir (SFTP v3 says only
                # "Failure" for EEXIST): a directory there now is what we wanted.
                try:
                    if stat.S_ISDIR(self.sftp.stat(p).st_mode or 0):
                        continue
                except IOError:
                    pass
                raise

    def get(self, remote: str, local: Path) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        src = self._abs(remote)
        try:
            with open(local, "wb") as f:
                self.sftp.getfo(src, f, prefetch=True)
        except FileNotFoundError:
            raise DeviceError(f"device '{self.name}': {src} does not exist") from None
        except (IOError, paramiko.SSHException, EOFError) as exc:
            raise self._lost(exc) from None

    def put_many(self, pairs: Iterable[Tuple[Path, str]]) -> int:
        """Upload several files over the one SFTP channel; returns bytes sent."""
        total = 0
        for local, remote in pairs:
            with open(local, "rb") as f:
                total += self.putfo(f, remote)
        return total

    # ------------------------------------------------------------------------------------------
    # File operations over SFTP: one round trip each, no remote shell (see deploy.py)
    # ------------------------------------------------------------------------------------------
    def _sftp_call(self, fn: Callable[..., T], *args: object) -> T:
        """Run one SFTP request; OSErrors the device reports pass through, a dead link does not."""
        try:
            return fn(*args)
        except (IOError, paramiko.SSHException, EOFError) as exc:
            if isinstance(exc, IOError) and self.connected:
                raise
            raise self._lost(exc) from None

    def mkdir(self, path: str) -> None:
        """Create one directory; FileExistsError when it exists (the deploy lock relies on this)."""
        p = self._abs(path)
        for attempt in range(3):
            try:
                self._sftp_call(self.sftp.mkdir, p)
                return
            except OSError as exc:
                # SFTP v3 reports EEXIST as a bare "Failure": tell the cases apart by looking.
                if self.exists(p):
                    raise FileExistsError(errno.EEXIST, "File exists", p) from None
                if attempt == 2:
                    raise exc
                # Gone already: another client removed it between our mkdir and our look (a
                # deploy releasing the lock we wait for). Try again rather than fail the deploy.

    def makedirs(self, path: str) -> None:
        self._sftp_call(self._mkdirs, self._abs(path))

    def exists(self, path: str) -> bool:
        try:
            self._sftp_call(self.sftp.lstat, self._abs(path))
            return True
        except FileNotFoundError:
            return False

    def is_dir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(self._sftp_call(self.sftp.lstat, self._abs(path)).st_mode or 0)
        except FileNotFoundError:
            return False

    def listdir(self, path: str) -> List[str]:
        return sorted(self._sftp_call(self.sftp.listdir, self._abs(path)))

    def readlink(self, path: str) -> Optional[str]:
        try:
            return self._sftp_call(self.sftp.readlink, self._abs(path))
        except OSError:  # missing, or not a link
            return None

    def read_bytes(self, path: str) -> bytes:
        def _read(p: str) -> bytes:
            with self.sftp.open(p, "rb") as f:
                return f.read()
        return self._sftp_call(_read, self._abs(path))

    def read_head(self, path: str, limit: int) -> bytes:
        def _read(p: str) -> bytes:
            with self.sftp.open(p, "rb") as f:
                return f.read(limit)
        return self._sftp_call(_read, self._abs(path))

    def write_bytes(self, path: str, data: bytes) -> None:
        def _write(p: str) -> None:
            with self.sftp.open(p, "wb") as f:
                f.write(data)
        self._sftp_call(_write, self._abs(path))

    def write_bytes_aside(self, path: str, data: bytes) -> None:
        """On a second SFTP channel of the same connection: paramiko's SFTP client must not be shared
        between threads while putfo pipelines writes on it. Never dials: a lost link stays lost."""
        with self._aside_guard:
            if not self.connected:
                raise self._lost(EOFError("not connected"))
            if self._aside_sftp is None:
                self._aside_sftp = self.client.open_sftp()
            with self._aside_sftp.open(self._abs(path), "wb") as f:
                f.write(data)

    def symlink(self, target: str, path: str) -> None:
        self._sftp_call(self.sftp.symlink, target, self._abs(path))

    def rename(self, src: str, dst: str) -> None:
        """rename(2): atomic, and replaces ``dst`` (posix-rename@openssh.com; plain SFTP rename won't)."""
        try:
            self._sftp_call(self.sftp.posix_rename, self._abs(src), self._abs(dst))
        except OSError as exc:
            if "unsupported" not in str(exc).lower():
                raise
            res = self.run(["mv", "-f", "-T", "--", self._abs(src), self._abs(dst)])
            if not res.ok:
                raise OSError(f"mv {src} {dst}: {res.stderr.strip()}") from None

    def rmtree(self, path: str) -> None:
        def _rm(p: str) -> None:
            try:
                attrs = self.sftp.listdir_attr(p)
            except FileNotFoundError:
                return
            for a in attrs:
                child = f"{p}/{a.filename}"
                if stat.S_ISDIR(a.st_mode or 0):
                    _rm(child)
                else:
                    self.sftp.remove(child)
            self.sftp.rmdir(p)
        p = self._abs(path)
        try:
            if not stat.S_ISDIR(self._sftp_call(self.sftp.lstat, p).st_mode or 0):
                self._sftp_call(self.sftp.remove, p)  # a file or a link (never followed)
                return
        except FileNotFoundError:
            return
        self._sftp_call(_rm, p)

    def free_bytes(self, path: str) -> Optional[int]:
        """Space available to us under ``path``, via OpenSSH's statvfs@openssh.com SFTP extension
        (spares a remote shell); None where the server lacks it (paramiko has no public call)."""
        request = getattr(self.sftp, "_request", None)
        if request is None or "OpenSSH" not in (self.client.get_transport().remote_version or ""):  # type: ignore[union-attr]
            return None
        try:
            t, msg = request(paramiko.sftp.CMD_EXTENDED, "statvfs@openssh.com", self._abs(path))
        except (IOError, paramiko.SSHException, EOFError):
            return None
        if t != paramiko.sftp.CMD_EXTENDED_REPLY:
            return None
        _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
        return int(frsize * bavail)

    def describe(self) -> str:
        ep = self.endpoint
        via = f" via {','.join(ep.proxy_jump)}" if ep.proxy_jump else ""
        return f"ssh://{ep.user}@{ep.hostname}:{ep.port}{via}"
