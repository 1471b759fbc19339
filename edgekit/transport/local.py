"""A directory on this machine standing in for a device (``transport = "local"``).

Its release operations run in this process (:class:`FilesSession`: edgekit/device/release.py's
functions over the file operations below), so no shell is involved."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..device.release import sha256_file
from ..errors import DeviceError
from . import FilesSession, ReleaseSession, RunResult, Transport

if TYPE_CHECKING:  # pragma: no cover
    from ..config import DeviceSpec, ProjectConfig


class LocalTransport(Transport, kind="local"):
    def __init__(self, name: str, root: Path, python: str = "python3") -> None:
        self.name = name
        self._root = str(Path(root).resolve())
        self.python = python
        self.bytes_sent = 0
        """File bytes written by ``put`` (deploy reports them, as it does for SSH)."""

    @classmethod
    def from_device(cls, device: "DeviceSpec", config: Optional["ProjectConfig"] = None,
                    **options: Any) -> "LocalTransport":
        root = Path(device.path).expanduser()
        if config is not None and not root.is_absolute():
            root = config.root / root
        return cls(device.name, root, python=device.python)

    @property
    def root(self) -> str:
        return self._root

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def _abs(self, p: str) -> str:
        return p if os.path.isabs(p) else self.path(p)

    def release_session(self) -> ReleaseSession:
        return FilesSession(self)

    def run(self, argv: Sequence[str], timeout: Optional[float] = None, cwd: Optional[str] = None) -> RunResult:
        where = self._abs(cwd) if cwd else self.root
        if not os.path.isdir(where):  # say so, rather than "cannot run mkdir" from subprocess
            raise DeviceError(f"device '{self.name}': directory {where} does not exist")
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, cwd=where)
        except FileNotFoundError as exc:
            raise DeviceError(f"device '{self.name}': cannot run {argv[0]!r}: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise DeviceError(f"device '{self.name}': {argv[0]} did not finish within {timeout:.0f} s") from None
        return RunResult(list(argv), proc.returncode, proc.stdout, proc.stderr)

    def put(self, local: Path, remote: str) -> None:
        dst = self._abs(remote)
        try:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(local, dst)
        except OSError as exc:
            # Same shape as the SSH transport's error, so deploy handles both alike (ENOSPC included).
            raise DeviceError(f"device '{self.name}': writing {dst} failed: {exc.strerror}", kind="write_failed",
                              path=dst, errno=exc.errno, no_space=exc.errno == errno.ENOSPC) from None
        self.bytes_sent += os.path.getsize(local)

    def put_many(self, pairs: Iterable[Tuple[Path, str]]) -> int:
        before = self.bytes_sent
        for local, remote in pairs:
            self.put(local, remote)
        return self.bytes_sent - before

    def get(self, remote: str, local: Path) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(self._abs(remote), local)
        except FileNotFoundError:
            raise DeviceError(f"device '{self.name}': {self._abs(remote)} does not exist") from None

    # File operations (edgekit.device.release.PosixFs's set, which the release logic runs over)
    def mkdir(self, path: str) -> None:
        os.mkdir(self._abs(path))  # FileExistsError when it exists: the deploy lock relies on this

    def makedirs(self, path: str) -> None:
        os.makedirs(self._abs(path), exist_ok=True)

    def exists(self, path: str) -> bool:
        return os.path.lexists(self._abs(path))

    def is_dir(self, path: str) -> bool:
        p = self._abs(path)
        return os.path.isdir(p) and not os.path.islink(p)

    def listdir(self, path: str) -> List[str]:
        return sorted(os.listdir(self._abs(path)))

    def readlink(self, path: str) -> Optional[str]:
        try:
            return os.readlink(self._abs(path))
        except OSError:
            return None

    def read_bytes(self, path: str) -> bytes:
        return Path(self._abs(path)).read_bytes()

    def read_head(self, path: str, limit: int) -> bytes:
        with open(self._abs(path), "rb") as f:
            return f.read(limit)

    def write_bytes(self, path: str, data: bytes) -> None:
        Path(self._abs(path)).write_bytes(data)

    def symlink(self, target: str, path: str) -> None:
        os.symlink(target, self._abs(path))

    def rename(self, src: str, dst: str) -> None:
        os.replace(self._abs(src), self._abs(dst))

    def rmtree(self, path: str) -> None:
        p = self._abs(path)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)  # a file or a link (never followed)

    def free_bytes(self, path: str) -> Optional[int]:
        try:
            st = os.statvfs(self._abs(path))
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def sha256_many(self, paths: Sequence[str]) -> Dict[str, str]:
        return {p: h for p, h in ((p, sha256_file(self._abs(p))) for p in paths) if h}

    def copy_many(self, pairs: Sequence[Tuple[str, str]]) -> None:
        for src, dst in pairs:
            s = self._abs(src)
            if os.path.islink(s) or not os.path.isfile(s):
                continue
            self.rmtree(dst)
            shutil.copyfile(s, self._abs(dst))

    def describe(self) -> str:
        return f"local:{self.root}"
