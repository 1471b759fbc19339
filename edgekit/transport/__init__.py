"""How edgekit reaches a device: one registry of transports, each a :class:`Transport` subclass.

A transport provides four primitives (``path``, ``run``, ``put``, ``get``: what validate and doctor
need) and the named release operations deploy needs, as a :class:`ReleaseSession`
(``release_session()``): ``lock``, ``prepare``, ``upload``, ``commit``, ``rollback``, ``status``,
``unlock`` (their requests and answers are documented in edgekit/device/release.py, which
implements them). SSH runs that script on the device, one exec per deploy; a transport that can
reach the device's files (local, or SSH without Python on the device) runs the same functions on
the host over its file operations (:class:`FilesSession`). A new transport (adb, serial, ...) is one
file: subclass Transport with ``kind="name"``, give it ``from_device`` and a ``release_session``,
and import it from :data:`BUILTIN` or register it at run time (tests/toy_transport.py does).

Connector-specific settings belong to the connector: a Transport subclass may declare a
``Settings`` class built from the device's table (SSH: ``SSHSettings`` in ssh.py), so nothing
SSH-only is threaded through deploy, fleet or validate.
"""
from __future__ import annotations

import abc
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import (TYPE_CHECKING, Any, ClassVar, Dict, Iterable, List, Optional, Sequence, Tuple, Type)

if TYPE_CHECKING:  # pragma: no cover
    from ..config import DeviceSpec, ProjectConfig

REGISTRY: Dict[str, Type["Transport"]] = {}
"""Transport name (the ``transport`` key of a [[devices]] table) -> class."""
BUILTIN = {"local": "edgekit.transport.local", "ssh": "edgekit.transport.ssh"}
"""Built-in transports, imported on first use (paramiko loads only when an SSH device is used)."""


@dataclass(frozen=True)
class RunResult:
    argv: List[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class ReleaseSession(abc.ABC):
    """The named release operations on one device (edgekit/device/release.py documents each).

    ``send`` may pipeline: every request goes out before the first answer is read, so a batch costs
    one round trip on a link that allows it. A session holds the device's deploy lock from a
    successful ``lock`` to ``unlock`` or ``close``."""

    @abc.abstractmethod
    def send(self, requests: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """One answer per request, in order."""

    def call(self, request: Dict[str, Any]) -> Dict[str, Any]:
        return self.send([request])[0]

    @abc.abstractmethod
    def upload(self, release_id: str, owner: str, files: Sequence[Tuple[Path, str]]) -> int:
        """Send (local file, name in the release) into ``releases/<id>.partial``; returns bytes sent.
        Raises DeviceError(kind="write_failed", no_space=...) when the device cannot write them (the
        .partial is then gone), or DeviceError(kind="connection_lost")."""

    def keepalive(self, every: float) -> None:
        """Tell the device every ``every`` seconds that we are still here (while the lock is held);
        sessions whose device side beats the lock on its own need this, others do not."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "ReleaseSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Transport(abc.ABC):
    """A connection to one device. Subclasses register themselves by ``kind``:
    ``class AdbTransport(Transport, kind="adb")``."""

    kind: ClassVar[str] = ""
    Settings: ClassVar[Optional[type]] = None
    """Connector-specific settings, built by ``from_device`` (SSH: host, port, user, host keys)."""

    name: str
    python: str = "python3"
    bytes_sent: int = 0
    """File bytes this transport has uploaded (deploy reports the difference)."""

    def __init_subclass__(cls, kind: str = "", **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if kind:
            cls.kind = kind
            REGISTRY[kind] = cls

    @classmethod
    @abc.abstractmethod
    def from_device(cls, device: "DeviceSpec", config: Optional["ProjectConfig"] = None,
                    **options: Any) -> "Transport":
        """The transport for a [[devices]] table; ``options`` are the connector's own run-time
        settings (SSH: accept_new_host_key), ignored by connectors that have none."""

    @property
    @abc.abstractmethod
    def root(self) -> str:
        """Absolute device directory (holds releases/ and current)."""

    @abc.abstractmethod
    def path(self, *parts: str) -> str:
        """A path under the device directory."""

    @abc.abstractmethod
    def run(self, argv: Sequence[str], timeout: Optional[float] = None, cwd: Optional[str] = None) -> RunResult:
        """Run argv on the device (each argument quoted where a shell is involved)."""

    @abc.abstractmethod
    def put(self, local: Path, remote: str) -> None: ...

    @abc.abstractmethod
    def get(self, remote: str, local: Path) -> None: ...

    def put_many(self, pairs: Iterable[Tuple[Path, str]]) -> int:
        """Upload several files; returns the BYTES sent (every transport: deploy reports them)."""
        total = 0
        for local, remote in pairs:
            self.put(local, remote)
            total += Path(local).stat().st_size
        return total

    @abc.abstractmethod
    def release_session(self) -> ReleaseSession:
        """The named release operations on this device (see :class:`ReleaseSession`)."""

    def describe(self) -> str:
        return f"{self.kind}:{self.name}"

    def close(self) -> None:
        pass

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FilesSession(ReleaseSession):
    """The release operations run on the host, over a transport's file operations (the methods of
    edgekit.device.release.PosixFs, paths relative to the device directory): for a local directory,
    and for an SSH device without Python. Uploads go through ``transport.put_many``."""

    def __init__(self, transport: Any) -> None:
        from ..device import release as R

        self.t = transport
        self._answer = R.answer
        self.dev = R.Device(transport)

    def send(self, requests: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        # A JSON round trip, as over a link: the logic sees the same plain data either way.
        return [json.loads(json.dumps(self._answer(self.dev, json.loads(json.dumps(r))))) for r in requests]

    def upload(self, release_id: str, owner: str, files: Sequence[Tuple[Path, str]]) -> int:
        from ..device.release import PARTIAL

        partial = f"releases/{release_id}{PARTIAL}"
        return self.t.put_many([(local, self.t.path(partial, name)) for local, name in files])

    def close(self) -> None:
        if self.dev._stop is not None:
            self.dev._stop.set()


def names() -> List[str]:
    """Every transport name a [[devices]] table may give (config derives its check from this)."""
    return sorted(set(BUILTIN) | set(REGISTRY))


def transport_class(kind: str) -> Type[Transport]:
    if kind not in REGISTRY and kind in BUILTIN:
        importlib.import_module(BUILTIN[kind])
    try:
        return REGISTRY[kind]
    except KeyError:
        from ..errors import ConfigError

        raise ConfigError(f"unknown transport '{kind}', expected one of: {', '.join(names())}") from None


OPTIONS: Dict[str, Dict[str, Any]] = {}
"""Run-time settings per transport name, set once by the CLI (``configure("ssh",
accept_new_host_key=True)``), so no module between the CLI and connect() has to pass them on."""


def configure(kind: str, **options: Any) -> None:
    OPTIONS.setdefault(kind, {}).update(options)


def connect(device: "DeviceSpec", config: Optional["ProjectConfig"] = None, **options: Any) -> Transport:
    """The transport for a [[devices]] table, by its ``transport`` name (see :data:`REGISTRY`).
    ``options`` are that connector's run-time settings; a falsy one never overrides ``configure``'s."""
    merged = dict(OPTIONS.get(device.transport, {}))
    merged.update({k: v for k, v in options.items() if v or k not in merged})
    return transport_class(device.transport).from_device(device, config, **merged)
