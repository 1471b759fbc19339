"""SFTP file operations of the SSH transport: uploads with pipelined writes, and the file operations
the release logic runs over when the device has no Python (edgekit.device.release.PosixFs's set).

With Python on the device, deploy uses none of these: the release script does the work in one exec
(ssh_session.py), and only ``put``/``get`` (validate's result files) travel over SFTP.
"""
from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path
from typing import IO, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar

import paramiko

from ..errors import DeviceError

# OpenSSH's sftp-server accepts messages up to 256 KiB and advertises 256 KiB - 1 KiB as its write
# limit (limits@openssh.com). Writes that large cut paramiko's per-request overhead ~8x against its
# default 32 KiB, which is what brings it from ~66% to >=100% of scp on loopback (bench/deploy.py).
OPENSSH_WRITE_SIZE = 256 * 1024 - 1024
READ_CHUNK = 1 << 20
T = TypeVar("T")


class SftpFiles:
    """Mixed into SSHTransport (which provides client, connected, _lost, _abs, run, name)."""

    name: str
    bytes_sent: int
    _sftp: Optional[paramiko.SFTPClient]
    _aside_sftp: Optional[paramiko.SFTPClient]
    _aside_guard: threading.Lock
    client: paramiko.SSHClient
    connected: bool
    _lost: Callable[[BaseException], DeviceError]
    _abs: Callable[[str], str]

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


    def sha256_many(self, paths: Sequence[str]) -> Dict[str, str]:
        """Hashes of the device files ``paths`` (one remote shell; see device_layout.on_device)."""
        from ..device_layout import on_device

        return on_device(self, list(paths))[1]  # type: ignore[arg-type]

    def copy_many(self, pairs: Sequence[Tuple[str, str]]) -> None:
        from ..device_layout import on_device

        on_device(self, [], list(pairs))  # type: ignore[arg-type]

