"""The release layout of one device, over a transport: reading it, hashing on the device,
switching ``current`` and the history that explains it.

Kept apart from the deploy flow (deploy.py) as the small set of operations that define what a
device directory may contain; every name read from the device is filtered here before it becomes
a path anything removes.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

from . import artifact
from .errors import DeployError, DeviceError
from .transport import Transport

PARTIAL = ".partial"
HISTORY_LINES = 1000
HISTORY_TMP = ".history.tmp"
HISTORY_LIMIT = 1 << 20
"""Bytes of ``history`` read: edgekit keeps it to HISTORY_LINES short lines (~40 KB)."""
_ID = f"[0-9a-f]{{{artifact.ID_LEN}}}"
_HISTORY_LINE = re.compile(rf"[0-9]{{1,12}} (?:deploy {_ID}|rollback (?:{_ID}|-) (?:{_ID}|-))")
CURRENT_TMP = ".current-"


# One remote shell does the on-device work: copy files within the device, report free space, hash.
# Arguments arrive as $1.. (quoted by the transport); the script is a constant. Hashing prefers the
# device's Python (hashlib is OpenSSL's, with the CPU's SHA instructions: 2-5x coreutils' sha256sum
# on x86 and ARMv8 boards, which makes an unchanged redeploy of a big model fast); sha256sum is the
# fallback where that interpreter is missing.
SH_COPY_DF_HASH = (
    'py=$1; code=$2; dir=$3; n=$4; shift 4; '
    'while [ "$n" -gt 0 ]; do cp -- "$1" "$2" || exit 1; shift 2; n=$((n-2)); done; '
    'df -Pk "$dir" 2>/dev/null | tail -n 1; echo "@@sha256"; '
    '[ $# -eq 0 ] && exit 0; '
    '"$py" -I -S -c "$code" "$@" 2>/dev/null || sha256sum -- "$@" 2>/dev/null; true')
PY_SHA256 = ("import hashlib,sys\nfor n in sys.argv[1:]:\n try:\n  h=hashlib.sha256()\n"
             "  with open(n,'rb') as f:\n   for b in iter(lambda:f.read(1<<20),b''):h.update(b)\n"
             "  e=n.replace('\\\\','\\\\\\\\').replace('\\n','\\\\n')\n"  # sha256sum's escaping
             "  print(('\\\\' if e!=n else '')+h.hexdigest()+'  '+e)\n except OSError:pass\n")


class Device:
    """The release layout of one device, over a transport."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport
        self.fs = transport
        self.name = transport.name
        self.python = transport.python
        self.other: List[str] = []
        """Dot-entries of releases/ (locks, leftovers), as the last inspect() saw them."""
        self.raw_history: List[str] = []

    # -- reading the layout ---------------------------------------------------------------------
    def _read(self, path: str, limit: int) -> str:
        """A device file's text, at most ``limit`` bytes of it ("" when unreadable)."""
        try:
            return self.fs.read_head(path, limit).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def inspect(self) -> Tuple[Optional[str], List[str], List[str]]:
        """(current id, release and .partial entries of releases/, history reconciled with current).

        Only names edgekit makes are returned: a device can list anything, and these names become
        paths that deploy removes."""
        current = release_of(self.fs.readlink("current"))
        try:
            entries = self.fs.listdir("releases")
        except FileNotFoundError:
            entries = []
        self.other = [d for d in entries if d.startswith(".")]
        dirs = [d for d in entries if artifact.is_release_id(d[:-len(PARTIAL)] if d.endswith(PARTIAL) else d)]
        self.raw_history = self._read("history", HISTORY_LIMIT).splitlines()
        # Only lines edgekit writes: anything else (a device's own edits, a torn or bloated file) is
        # dropped here, and from the file by the next deploy.
        history = [line for line in self.raw_history if _HISTORY_LINE.fullmatch(line)]
        return current, dirs, reconcile(history, current)

    def switch_leftovers(self) -> List[str]:
        """Entries of the device directory a killed switch left (``.history.tmp``, a ``.current-*``
        link never renamed into place). Only a lock holder switches, so under the lock they are
        nobody's and can go."""
        try:
            entries = self.fs.listdir("")
        except OSError:
            return []
        return [e for e in entries
                if e == HISTORY_TMP or (e.startswith(CURRENT_TMP) and len(e) == len(CURRENT_TMP) + 8)]

    def manifest(self, release: str) -> Dict[str, object]:
        """The release's manifest as the device holds it ({} when unreadable): data, never trusted."""
        try:
            m = json.loads(self._read(f"releases/{release}/{artifact.MANIFEST}", artifact.MANIFEST_LIMIT) or "{}")
        except (ValueError, RecursionError):
            return {}
        return m if isinstance(m, dict) else {}

    def on_device(self, paths: Sequence[str], copies: Sequence[Tuple[str, str]] = ()) -> Tuple[Optional[int], Dict[str, str]]:
        """In one remote shell: copy ``copies`` (src, dst) on the device, then return (free bytes in
        releases/, {path: sha256} of the ``paths`` that exist)."""
        flat = [p for pair in copies for p in pair]
        res = self.t.run(["sh", "-c", SH_COPY_DF_HASH, "edgekit", self.python, PY_SHA256, "releases",
                          str(len(flat)), *flat, *paths], timeout=900)
        if not res.ok:
            raise DeployError(f"device '{self.name}': copying/hashing files failed: {res.stderr.strip()[-300:]}")
        df, _, sums = res.stdout.partition("@@sha256\n")
        try:
            free: Optional[int] = int(df.split()[3]) * 1024
        except (IndexError, ValueError):
            free = None
        found: Dict[str, str] = {}
        for line in sums.splitlines():
            if line.startswith("\\"):  # sha256sum escapes names holding '\' or newlines
                found[re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), line[67:])] = line[1:65]
            elif len(line) > 66:
                found[line[66:]] = line[:64]
        return free, found

    def free_bytes(self) -> Optional[int]:
        """Free space in releases/ without a remote shell, where the transport can tell."""
        return self.t.free_bytes("releases")

    def switch(self, release: Optional[str], history: List[str], line: str) -> None:
        """Log ``line``, then point ``current`` at ``release`` (a new link renamed over the old one:
        atomic), or drop it when None. The line goes first: should the switch then fail or the
        deployer die, :func:`reconcile` drops the line, whereas a switch without its line would
        leave a history that cannot tell what the previous release was."""
        self.write_history(history + [line])
        if release is None:
            self.fs.rmtree("current")
        else:
            self.point(f"releases/{release}")

    def write_history(self, lines: List[str]) -> None:
        """Rewrite history via a rename, so it is never torn; no .history.tmp is left on failure."""
        text = "\n".join(lines[-HISTORY_LINES:]) + "\n"
        try:
            self.fs.write_bytes(HISTORY_TMP, text.encode())
            self.fs.rename(HISTORY_TMP, "history")
        except BaseException:
            try:
                self.fs.rmtree(HISTORY_TMP)
            except (DeviceError, OSError):
                pass  # the link is gone too: the next deploy overwrites it
            raise

    def point(self, target: str) -> None:
        tmp = f"{CURRENT_TMP}{uuid.uuid4().hex[:8]}"
        self.fs.symlink(target, tmp)
        try:
            self.fs.rename(tmp, "current")
        except BaseException:
            self.fs.rmtree(tmp)
            raise

    def remove(self, paths: Sequence[str]) -> None:
        for p in paths:
            self.fs.rmtree(p)


def release_of(link: Optional[str]) -> Optional[str]:
    """The release id a ``current`` link names, or None (no link, or not one edgekit made)."""
    if not link or not link.startswith("releases/"):
        return None
    rid = link[len("releases/"):].rstrip("/")
    return rid if artifact.is_release_id(rid) else None


def _replayed_top(history: Sequence[str]) -> Optional[str]:
    stack = release_stack(history, None)
    return stack[-1] if stack else None


def reconcile(history: List[str], current: Optional[str]) -> List[str]:
    """History as it really happened: a last line whose switch never took place (the line is
    written first; see Device.switch) is dropped."""
    if history and _replayed_top(history) != current and _replayed_top(history[:-1]) == current:
        return history[:-1]
    return history


def release_stack(history: Sequence[str], current: Optional[str]) -> List[str]:
    """Replay the history into the stack of activations (oldest first); its top is current."""
    stack: List[str] = []
    for line in history:
        parts = line.split()
        if len(parts) == 3 and parts[1] == "deploy":
            if not stack or stack[-1] != parts[2]:
                stack.append(parts[2])
        elif len(parts) == 4 and parts[1] == "rollback":
            if stack and stack[-1] == parts[2]:
                stack.pop()
            if parts[3] != "-" and (not stack or stack[-1] != parts[3]):
                stack.append(parts[3])
    if current and (not stack or stack[-1] != current):
        stack.append(current)  # trust the symlink: a crash may have fallen between switch and log
    return stack


def previous_release(history: Sequence[str], current: Optional[str], existing: Sequence[str]) -> Optional[str]:
    """What a rollback returns to: the latest activation before current that is still on the device."""
    for rid in reversed(release_stack(history, current)):
        if rid != current and rid in existing:
            return rid
    return None


def recency(history: Sequence[str], releases: Sequence[str]) -> List[str]:
    """Releases, most recently made current first; never-activated ones last."""
    last: Dict[str, int] = {}
    for i, line in enumerate(history):
        parts = line.split()
        if len(parts) >= 3:  # "deploy <id>" or "rollback <from> <to>": credit what became current
            last[parts[-1]] = i
    return sorted(releases, key=lambda r: -last.get(r, -1))


def plain_name(name: object) -> bool:
    try:
        return isinstance(name, str) and bool(artifact.check_file_name(name))
    except DeployError:
        return False


def describe(transport: Transport) -> str:
    return transport.describe()


def history_line(action: str, *ids: Optional[str]) -> str:
    return " ".join([str(int(time.time())), action, *[i or "-" for i in ids]])
