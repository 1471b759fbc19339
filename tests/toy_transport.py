"""A toy transport in one file: a plain directory reached only through its own primitives.

It stands for a device with no shell (an adb- or serial-like link): files move by its own
``put``/``get`` (plain reads and writes), commands run from an argv without a shell, and the release
operations run edgekit/device/release.py as a child process that speaks the session protocol on
its stdin/stdout. Importing this module registers it as ``transport = "toy"``.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Optional, Sequence

from edgekit.errors import DeviceError
from edgekit.transport import ReleaseSession, RunResult, Transport
from edgekit.transport.script_session import Pipe, ScriptSession, script_argv


class ProcessPipe(Pipe):
    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def write(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError as exc:
            raise DeviceError(f"toy: connection lost ({exc})", kind="connection_lost") from None

    def readline(self, limit: int) -> bytes:
        return self.proc.stdout.readline(limit)  # type: ignore[union-attr]

    def ended(self) -> str:
        return f"exit {self.proc.wait(5)}"

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()  # end of input: the session ends
        self.proc.wait(30)
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


class ToyTransport(Transport, kind="toy"):
    def __init__(self, name: str, directory: str, python: str) -> None:
        self.name, self._root, self.python, self.bytes_sent = name, os.path.abspath(directory), python, 0
        self.sessions = 0

    @classmethod
    def from_device(cls, device: Any, config: Any = None, **options: Any) -> "ToyTransport":
        return cls(device.name, device.path, device.python)

    @property
    def root(self) -> str:
        return self._root

    def path(self, *parts: str) -> str:
        return os.path.join(self._root, *parts)

    def run(self, argv: Sequence[str], timeout: Optional[float] = None, cwd: Optional[str] = None) -> RunResult:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, cwd=cwd or self._root)
        return RunResult(list(argv), proc.returncode, proc.stdout, proc.stderr)

    def put(self, local: Path, remote: str) -> None:
        dst = remote if os.path.isabs(remote) else self.path(remote)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(local, "rb") as src, open(dst, "wb") as out:
            out.write(src.read())
        self.bytes_sent += os.path.getsize(local)

    def get(self, remote: str, local: Path) -> None:
        src = remote if os.path.isabs(remote) else self.path(remote)
        with open(src, "rb") as f, open(local, "wb") as out:
            out.write(f.read())

    def release_session(self) -> ReleaseSession:
        self.sessions += 1
        session = ScriptSession(self.name, ProcessPipe(script_argv(self.python, self._root)))
        real_upload = session.upload

        def upload(release_id: str, owner: str, files: Any) -> int:
            sent = real_upload(release_id, owner, files)
            self.bytes_sent += sent
            return sent

        session.upload = upload  # type: ignore[method-assign]
        return session

    def describe(self) -> str:
        return f"toy:{self._root}"
