"""Where an unexpected failure's traceback goes: a private per-user file, never a fixed name in a
shared directory.

The old ``$TMPDIR/edgekit-debug.log`` was a fixed name in a world-writable directory, written with
a plain open: another user could plant a symlink there and have edgekit overwrite any file the
victim can write. Now the log lives in a directory only this user can enter (created 0700, and
refused when it is a symlink, someone else's, or open to others), and the file is opened with
O_NOFOLLOW, so a symlink planted at the file's own name is refused too.
"""
from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import List, Optional

LOG_NAME = "debug.log"


def candidate_dirs() -> List[Path]:
    """``$EDGEKIT_STATE_DIR``, else ``$XDG_STATE_HOME/edgekit`` (``~/.local/state/edgekit``), and
    ``$TMPDIR/edgekit-<uid>`` when the home directory is not writable (CI containers)."""
    explicit = os.environ.get("EDGEKIT_STATE_DIR")
    if explicit:
        return [Path(explicit)]
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return [Path(state) / "edgekit", Path(tempfile.gettempdir()) / f"edgekit-{os.getuid()}"]


def _private_dir(path: Path) -> bool:
    """True when ``path`` is (now) a real directory owned by us and closed to everyone else."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return False  # a symlink (lstat sees it as one) or another user's directory: not ours
    if st.st_mode & 0o077:
        try:
            os.chmod(path, 0o700)  # ours, but made with a loose umask by an older version
        except OSError:
            return False
    return True


def write_debug_log(text: str) -> Optional[Path]:
    """Write ``text`` to the private debug log; returns its path, or None where no safe place exists."""
    for directory in candidate_dirs():
        if not _private_dir(directory):
            continue
        path = directory / LOG_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:  # ELOOP: a symlink sits at the name; never follow it
            continue
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(text)
        return path
    return None


LIBRARY_LOG_NAME = "libraries.log"


class _PrivateFileHandler(logging.Handler):
    """Appends records to ``libraries.log`` in the private directory, opened on the first record
    (a run that logs nothing creates no file), O_NOFOLLOW like the debug log; nowhere safe: dropped."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._file = None  # type: Optional[object]
        self._failed = False
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s]: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self._failed:
            return
        try:
            if self._file is None:
                self._file = self._open()
                if self._file is None:
                    self._failed = True
                    return
            self._file.write(self.format(record) + "\n")  # type: ignore[attr-defined]
            self._file.flush()  # type: ignore[attr-defined]
        except Exception:  # logging must never break a command
            self._failed = True

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()  # type: ignore[attr-defined]
            except OSError:
                pass
            self._file = None
        super().close()

    @staticmethod
    def _open() -> Optional[object]:
        for directory in candidate_dirs():
            if not _private_dir(directory):
                continue
            try:
                fd = os.open(directory / LIBRARY_LOG_NAME,
                             os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError:
                continue
            return os.fdopen(fd, "a", encoding="utf-8", errors="replace")
        return None


def library_log_handler() -> logging.Handler:
    """Where third-party libraries' log records go (paramiko's): a private file, not the terminal."""
    return _PrivateFileHandler()
