"""How edgekit reaches a device: a thin connection with ``run``/``put``/``get``.

``connect(device, config)`` returns a :class:`Transport`: :class:`LocalTransport` for a directory on
this machine (``transport = "local"``) or ``SSHTransport`` over paramiko (``transport = "ssh"``).
Every remote path is relative to the device directory unless absolute; every ``run`` takes an argv
list, which an SSH transport quotes with ``shlex.join`` before it reaches the remote shell.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

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
    """The interface every transport implements (see LocalTransport for the reference)."""

    name: str
    root: str
    """Absolute device directory (holds releases/ and current)."""

    def path(self, *parts: str) -> str:
        """A path under the device directory."""
        raise NotImplementedError

    def run(self, argv: Sequence[str], timeout: Optional[float] = None, cwd: Optional[str] = None) -> RunResult:
        raise NotImplementedError

    def put(self, local: Path, remote: str) -> None:
        raise NotImplementedError

    def get(self, remote: str, local: Path) -> None:
        raise NotImplementedError

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
