"""Where an SSH device is and whether to trust it: ~/.ssh/config resolution (HostName, User, Port,
IdentityFile, UserKnownHostsFile, ProxyJump, ProxyCommand) and the host-key policies.

Kept apart from ssh.py (the connection and its file operations) so each stays small.
"""
from __future__ import annotations

import base64
import getpass
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Tuple

import paramiko

from ..errors import ConfigError, DeviceError

log = logging.getLogger(__name__)

PasswordPrompt = Callable[[str], Optional[str]]


def tty_password_prompt(prompt: str) -> Optional[str]:
    """Ask for a password only when a person is at a terminal; scripts and CI never block on it."""
    if not (sys.stdin and sys.stdin.isatty()):
        return None
    return getpass.getpass(prompt)


@dataclass
class Endpoint:
    """One hop, after ~/.ssh/config has been applied."""

    alias: str
    hostname: str
    port: int = 22
    user: str = ""
    identity_files: List[str] = field(default_factory=list)
    proxy_jump: List[str] = field(default_factory=list)
    proxy_command: Optional[str] = None
    known_hosts_files: List[str] = field(default_factory=list)
    connect_timeout: Optional[float] = None
    """``ConnectTimeout`` from ~/.ssh/config (seconds), if set."""
    keepalive_s: Optional[float] = None
    """``ServerAliveInterval`` from ~/.ssh/config (seconds), if set."""

    @property
    def host_key_name(self) -> str:
        """The name known_hosts stores this host under (OpenSSH's ``[host]:port`` form off port 22)."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def load_ssh_config(path: Optional[Path] = None) -> paramiko.SSHConfig:
    path = path or Path("~/.ssh/config").expanduser()
    if not path.is_file():
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except Exception as exc:  # paramiko raises bare ConfigParseError/ValueError on odd lines
        raise ConfigError(f"{path}: cannot parse ssh config: {exc}") from None


def split_jump(spec: str) -> Tuple[Optional[str], str, Optional[int]]:
    """``[user@]host[:port]`` (an entry of ProxyJump) -> (user, host, port)."""
    user, _, hostport = spec.rpartition("@")
    host, port = hostport, None
    if hostport.startswith("["):  # [ipv6]:port
        host, _, rest = hostport[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
    elif hostport.count(":") == 1:
        host, p = hostport.split(":")
        port = _port(p, f"ProxyJump '{spec}'")
    return user or None, host, port


def _port(value: object, where: str) -> int:
    """A TCP port from ~/.ssh/config or a ProxyJump spec: 1..65535, or one clear line (never a port
    that wraps around, as 70000 did to 4464)."""
    try:
        port = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{where}: port '{value}' is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port {port} is outside 1..65535")
    return port


def resolve_endpoint(ssh_config: paramiko.SSHConfig, host: str, *, port: Optional[int] = None,
                     user: Optional[str] = None, identity_file: Optional[str] = None,
                     proxy_jump: Optional[List[str]] = None) -> Endpoint:
    """Apply ~/.ssh/config to ``host``; explicit arguments win over it."""
    opts = ssh_config.lookup(host)
    jumps: List[str] = []
    if proxy_jump is not None:
        jumps = proxy_jump
    elif opts.get("proxyjump", "none").lower() != "none":
        jumps = [j.strip() for j in opts["proxyjump"].split(",") if j.strip()]
    command = opts.get("proxycommand")
    if command and command.lower() == "none":
        command = None
    identities = [identity_file] if identity_file else []
    identities += [os.path.expanduser(p) for p in opts.get("identityfile", [])]
    known = [os.path.expanduser(p) for p in opts.get("userknownhostsfile", "").split()]
    return Endpoint(
        alias=host,
        hostname=opts.get("hostname", host),
        port=_port(port or opts.get("port", 22), f"ssh config for host '{host}'"),
        user=user or opts.get("user") or getpass.getuser(),
        identity_files=identities,
        proxy_jump=jumps,
        proxy_command=command if not jumps else None,  # as in OpenSSH, ProxyJump wins
        known_hosts_files=known,
        connect_timeout=_seconds(opts.get("connecttimeout"), "ConnectTimeout", host),
        keepalive_s=_seconds(opts.get("serveraliveinterval"), "ServerAliveInterval", host),
    )


DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to reach a device when neither --connect-timeout, the device's connect_timeout nor
~/.ssh/config's ConnectTimeout says otherwise (OpenSSH itself waits for the TCP stack: minutes)."""
DEFAULT_KEEPALIVE_S = 15.0
"""An SSH keepalive every this many seconds while a connection is open (a long validate is silent on
the wire for minutes; NAT boxes and stateful firewalls drop idle flows)."""


def _seconds(value: Optional[str], option: str, host: str) -> Optional[float]:
    """A positive number of seconds from ~/.ssh/config; 0 or none means 'not set' (OpenSSH's meaning)."""
    if value is None or str(value).strip().lower() in ("", "none", "0"):
        return None
    try:
        seconds = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"ssh config for host '{host}': {option} '{value}' is not a number of seconds") from None
    if seconds <= 0:
        raise ConfigError(f"ssh config for host '{host}': {option} {value} must be positive")
    return seconds


def connect_timeout_for(explicit: Optional[float], ep: Endpoint) -> float:
    """The connect timeout: the device's (or --connect-timeout's) value, else ConnectTimeout, else 10 s."""
    return float(explicit or ep.connect_timeout or DEFAULT_CONNECT_TIMEOUT)


def is_timeout(exc: BaseException) -> bool:
    """A connection attempt that ran out of time (TCP connect, banner, key exchange or auth): the
    device did not answer in time. Retrying it only doubles the wait, so nobody does."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return True
    text = str(exc).lower()
    # "No existing session": paramiko's start_client gave up waiting for the key exchange (its
    # deadline passed without an error), and connect then found no session.
    return any(s in text for s in ("timed out", "timeout", "error reading ssh protocol banner", "no existing session"))


def connect_hint(ep: Endpoint) -> str:
    """The 'is sshd there?' hint with this device's own port, user and host filled in."""
    port = f"-p {ep.port} " if ep.port != 22 else ""
    return f"is the device on and its sshd running? try: ssh {port}{ep.user}@{ep.hostname} true"


def trust_hint(ep: Endpoint, record_to: Path) -> str:
    port = f"-p {ep.port} " if ep.port != 22 else ""
    return (f"check the fingerprint with the device's owner, then trust it with "
            f"'ssh-keyscan {port}{ep.hostname} >> {record_to}', or pass --accept-new-host-key")


class RefuseUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Refuses a host that no known_hosts file lists, saying how to trust it. Also where revoked
    keys and CA-only hosts are caught: ``KnownHosts.install`` leaves revoked keys out of the trusted
    set, so paramiko hands every such key to this policy, before any authentication."""

    def __init__(self, endpoint: Endpoint, record_to: Path, known: Optional["KnownHosts"] = None) -> None:
        self.endpoint, self.record_to, self.known = endpoint, record_to, known

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if self.known is not None:
            self.known.check_markers(hostname, key, self.endpoint, self.record_to)
        raise DeviceError(
            f"unknown host key for {hostname} ({key.get_name()} {key.fingerprint}); refusing to connect",
            hint=trust_hint(self.endpoint, self.record_to), kind="host_key_unknown", host=hostname,
            fingerprint=key.fingerprint)


class RecordNewHostKey(paramiko.MissingHostKeyPolicy):
    """Explicit trust on first use (``--accept-new-host-key``): accept a host seen for the first time
    and append its key to ``record_to``. Only ever consulted for unknown hosts: paramiko raises
    BadHostKeyException for a known host with a different key before any policy runs. A revoked key
    is refused even here."""

    def __init__(self, record_to: Path, known: Optional["KnownHosts"] = None, endpoint: Optional[Endpoint] = None) -> None:
        self.record_to, self.known, self.endpoint = record_to, known, endpoint

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if self.known is not None:
            self.known.check_revoked(hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)
        append_known_host(self.record_to, hostname, key)
        log.warning("recorded new host key for %s (%s) in %s", hostname, key.fingerprint, self.record_to)


@dataclass
class MarkedKey:
    """One ``@revoked`` or ``@cert-authority`` line of a known_hosts file."""

    patterns: List[str]
    key: paramiko.PKey
    where: str
    """``file:line``, for the error message."""

    def matches_host(self, name: str) -> bool:
        """OpenSSH's host pattern list: ``*``/``?`` wildcards, ``!`` negation, hashed ``|1|`` names."""
        name = name.lower()
        hit = False
        for pat in self.patterns:
            negate = pat.startswith("!")
            pat = pat[1:] if negate else pat
            if pat.startswith("|1|"):
                ok = paramiko.HostKeys.hash_host(name, pat) == pat
            else:  # only * and ? are special; fnmatch would read "[host]:port" as a character class
                ok = re.fullmatch(re.escape(pat.lower()).replace(r"\*", ".*").replace(r"\?", "."), name) is not None
            if ok and negate:
                return False
            hit = hit or ok
        return hit


@dataclass
class KnownHosts:
    """The known_hosts files of one connection, read the way OpenSSH reads them.

    paramiko's own loader (``HostKeys.load``, paramiko 5.1) has no notion of markers: an
    ``@cert-authority`` or ``@revoked`` line splits into hostname ``@revoked``, key type = the host
    pattern and key = the key type, whose base64 decoding raises ``InvalidHostKey`` -- not an
    SSHException, so it escaped ``load`` and every SSH command exited 70. Here the markers are read
    apart: revoked keys are refused; CA lines are recognised, but paramiko does not check a host
    certificate's CA signature (its client compares the raw key with known_hosts entries only), so
    a host trusted only through a CA gets a clear error instead of a silent unknown-key refusal.
    """

    entries: List[Tuple[str, paramiko.PKey]] = field(default_factory=list)
    revoked: List[MarkedKey] = field(default_factory=list)
    authorities: List[MarkedKey] = field(default_factory=list)

    def is_revoked(self, key: paramiko.PKey) -> Optional[MarkedKey]:
        # OpenSSH: a revoked key "must not ever be accepted", whichever host pattern names it.
        blob = key.asbytes()
        return next((m for m in self.revoked if m.key.asbytes() == blob), None)

    def install(self, client: paramiko.SSHClient) -> None:
        """Trust the plain entries (revoked keys left out, so they reach the policy as unknown)."""
        keys = client.get_host_keys()
        for hostname, key in self.entries:
            if self.is_revoked(key) is None:
                keys.add(hostname, key.get_name(), key)

    def check_revoked(self, hostname: str, key: paramiko.PKey) -> None:
        m = self.is_revoked(key)
        if m is not None:
            raise DeviceError(
                f"host key for {hostname} ({key.get_name()} {key.fingerprint}) is REVOKED in {m.where}; refusing to connect",
                hint="the device needs a new host key; check with its owner, then trust the new key",
                kind="host_key_revoked", host=hostname, fingerprint=key.fingerprint)

    def check_markers(self, hostname: str, key: paramiko.PKey, endpoint: Endpoint, record_to: Path) -> None:
        self.check_revoked(hostname, key)
        ca = next((m for m in self.authorities if m.matches_host(hostname)), None)
        if ca is not None:
            raise DeviceError(
                f"{hostname} is trusted only through a certificate authority ({ca.where}: @cert-authority), "
                f"but edgekit's SSH library (paramiko) cannot verify host certificates; refusing to connect",
                hint=f"trust the host's own key instead: {trust_hint(endpoint, record_to)}",
                kind="host_key_ca_unsupported", host=hostname)


def _decode_key(key_type: str, b64: str) -> paramiko.PKey:
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(b64.encode("ascii"), validate=True))


def load_known_hosts(files: Iterable[Path]) -> KnownHosts:
    """Read known_hosts ``files`` (missing ones are skipped). Lines OpenSSH would skip (bad base64,
    key types paramiko lacks, unknown markers) are skipped with a debug note; an unreadable file is
    a ConfigError naming it."""
    known = KnownHosts()
    for path in files:
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read known_hosts: {exc.strerror or exc}") from None
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            marker = fields.pop(0) if fields[0].startswith("@") else None
            try:
                if len(fields) < 3:
                    raise ValueError("expected: host key-type base64-key")
                key = _decode_key(fields[1], fields[2])
            except Exception as exc:  # paramiko's key parsers raise assorted errors on malformed blobs
                log.debug("%s:%d: skipped (%s)", path, lineno, exc)
                continue
            patterns = fields[0].split(",")
            if marker == "@revoked":
                known.revoked.append(MarkedKey(patterns, key, f"{path}:{lineno}"))
            elif marker == "@cert-authority":
                known.authorities.append(MarkedKey(patterns, key, f"{path}:{lineno}"))
            elif marker is None:
                known.entries += [(h, key) for h in patterns]
            else:
                log.debug("%s:%d: skipped (unknown marker %s)", path, lineno, marker)
    return known


def append_known_host(path: Path, hostname: str, key: paramiko.PKey) -> None:
    """Append one line; paramiko's HostKeys.save would rewrite the file and drop markers/comments."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
