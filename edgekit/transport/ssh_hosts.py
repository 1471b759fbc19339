"""Where an SSH device is and whether to trust it: ~/.ssh/config resolution (HostName, User, Port,
IdentityFile, UserKnownHostsFile, ProxyJump, ProxyCommand) and the host-key policies.

Kept apart from ssh.py (the connection and its file operations) so each stays small.
"""
from __future__ import annotations

import getpass
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

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
        port = int(p)
    return user or None, host, port


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
        port=int(port or opts.get("port", 22)),
        user=user or opts.get("user") or getpass.getuser(),
        identity_files=identities,
        proxy_jump=jumps,
        proxy_command=command if not jumps else None,  # as in OpenSSH, ProxyJump wins
        known_hosts_files=known,
    )


def trust_hint(ep: Endpoint, record_to: Path) -> str:
    port = f"-p {ep.port} " if ep.port != 22 else ""
    return (f"check the fingerprint with the device's owner, then trust it with "
            f"'ssh-keyscan {port}{ep.hostname} >> {record_to}', or pass --accept-new-host-key")


class RefuseUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Refuses a host that no known_hosts file lists, saying how to trust it."""

    def __init__(self, endpoint: Endpoint, record_to: Path) -> None:
        self.endpoint, self.record_to = endpoint, record_to

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise DeviceError(
            f"unknown host key for {hostname} ({key.get_name()} {key.fingerprint}); refusing to connect",
            hint=trust_hint(self.endpoint, self.record_to), kind="host_key_unknown", host=hostname,
            fingerprint=key.fingerprint)


class RecordNewHostKey(paramiko.MissingHostKeyPolicy):
    """Explicit trust on first use (``--accept-new-host-key``): accept a host seen for the first time
    and append its key to ``record_to``. Only ever consulted for unknown hosts: paramiko raises
    BadHostKeyException for a known host with a different key before any policy runs."""

    def __init__(self, record_to: Path) -> None:
        self.record_to = record_to

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        append_known_host(self.record_to, hostname, key)
        log.warning("recorded new host key for %s (%s) in %s", hostname, key.fingerprint, self.record_to)


def append_known_host(path: Path, hostname: str, key: paramiko.PKey) -> None:
    """Append one line; paramiko's HostKeys.save would rewrite the file and drop markers/comments."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
