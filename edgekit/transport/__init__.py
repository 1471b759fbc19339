"""How edgekit reaches a device: a thin connection with ``run``/``put``/``get``.

``connect(device, config)`` returns a :class:`Transport`: :class:`LocalTransport` for a directory on
this machine (``transport = "local"``) or ``SSHTransport`` over paramiko (``transport = "ssh"``).
Every remote path is relative to the device directory unless absolute; every ``run`` takes an argv
list, which an SSH transport quotes with ``shlex.join`` before it reaches the remote shell.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from ..config import DeviceSpec, ProjectConfig


@dataclass(frozen=True)
class RunResult:
    argv: List[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Transport:
    """The interface every transport implements (see LocalTransport for the reference).

    Paths are relative to the device directory unless absolute. Besides run/put/get, deploy needs
    the file operations below (SFTP requests over SSH, so a deploy spawns few remote shells).
    """

    name: str
    root: str
    """Absolute device directory (holds releases/ and current); SSH resolves ``~`` lazily."""
    python: str = "python3"
    bytes_sent: int = 0
    """File bytes this transport has uploaded (deploy reports the difference)."""

    def path(self, *parts: str) -> str:
        """A path under the device directory."""
        raise NotImplementedError

    def run(self, argv: Sequence[str], timeout: Optional[float] = None, cwd: Optional[str] = None) -> RunResult:
        raise NotImplementedError

    def put(self, local: Path, remote: str) -> None:
        raise NotImplementedError

    def get(self, remote: str, local: Path) -> None:
        raise NotImplementedError

    def put_many(self, pairs: Iterable[Tuple[Path, str]]) -> int:
        """Upload several files; returns how many. Transports may pipeline this."""
        n = 0
        for local, remote in pairs:
            self.put(local, remote)
            n += 1
        return n

    def mkdir(self, path: str) -> None:
        """One level; FileExistsError if present (deploy's lock relies on this being atomic)."""
        raise NotImplementedError

    def makedirs(self, path: str) -> None:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def is_dir(self, path: str) -> bool:
        """A directory itself, not a symlink to one (the deploy lock refuses anything else)."""
        raise NotImplementedError

    def listdir(self, path: str) -> List[str]:
        raise NotImplementedError

    def readlink(self, path: str) -> Optional[str]:
        raise NotImplementedError

    def read_bytes(self, path: str) -> bytes:
        raise NotImplementedError

    def read_head(self, path: str, limit: int) -> bytes:
        """At most ``limit`` bytes from the start of a file: what deploy reads from a device (history,
        manifests, lock owners) is bounded, whatever size the device makes those files."""
        return self.read_bytes(path)[:limit]

    def write_bytes(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    def write_bytes_aside(self, path: str, data: bytes) -> None:
        """``write_bytes`` that may be called from another thread while this transport is in use (the
        deploy lock's heartbeat); SSH uses a second SFTP channel for it."""
        self.write_bytes(path, data)

    def symlink(self, target: str, path: str) -> None:
        raise NotImplementedError

    def rename(self, src: str, dst: str) -> None:
        """Atomic; replaces ``dst``."""
        raise NotImplementedError

    def rmtree(self, path: str) -> None:
        raise NotImplementedError

    def free_bytes(self, path: str) -> Optional[int]:
        """Free space where ``path`` lives, or None where the transport cannot tell."""
        return None

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        pass

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(device: "DeviceSpec", config: Optional["ProjectConfig"] = None, *,
            accept_new_host_key: bool = False) -> Transport:
    if device.transport == "local":
        from .local import LocalTransport

        root = Path(device.path).expanduser()
        if config is not None and not root.is_absolute():
            root = config.root / root
        return LocalTransport(device.name, root, python=device.python)
    from .ssh import SSHTransport  # paramiko loads only when an SSH device is used

    return SSHTransport.from_device(device, config, accept_new_host_key=accept_new_host_key)
