"""The release layout of a device, as the host sees it.

The layout itself (what a device directory may hold, the history and how it is replayed) is
defined once, in edgekit/device/release.py, which runs on the device; this module re-exports what
the host uses, and keeps the one piece of the layout that needs a POSIX shell: hashing and copying
files in one remote shell, for a device that has no Python (SSH over SFTP, see ssh_files.py).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

from . import artifact
from .device.release import (CURRENT_TMP, HISTORY_LIMIT, HISTORY_LINES, HISTORY_TMP, PARTIAL,  # noqa: F401
                             history_line, previous_release, recency, reconcile, release_of, release_stack)
from .errors import DeployError
from .transport import Transport

# One remote shell does the on-device work: copy files within the device, report free space, hash.
# Arguments arrive as $1.. (quoted by the transport); the script is a constant. Hashing prefers the
# device's Python (hashlib is OpenSSL's, with the CPU's SHA instructions); sha256sum is the fallback
# where that interpreter is missing, which is the only case this runs in during a deploy.
SH_COPY_DF_HASH = (
    'py=$1; code=$2; dir=$3; n=$4; shift 4; '
    'while [ "$n" -gt 0 ]; do [ -f "$1" ] && [ ! -L "$1" ] && { rm -rf -- "$2"; cp -- "$1" "$2" || exit 1; }; '
    'shift 2; n=$((n-2)); done; '
    'df -Pk "$dir" 2>/dev/null | tail -n 1; echo "@@sha256"; '
    '[ $# -eq 0 ] && exit 0; '
    '"$py" -I -S -c "$code" "$@" 2>/dev/null || sha256sum -- "$@" 2>/dev/null; true')
PY_SHA256 = ("import hashlib,sys\nfor n in sys.argv[1:]:\n try:\n  h=hashlib.sha256()\n"
             "  with open(n,'rb') as f:\n   for b in iter(lambda:f.read(1<<20),b''):h.update(b)\n"
             "  e=n.replace('\\\\','\\\\\\\\').replace('\\n','\\\\n')\n"  # sha256sum's escaping
             "  print(('\\\\' if e!=n else '')+h.hexdigest()+'  '+e)\n except OSError:pass\n")


def on_device(t: Transport, paths: Sequence[str],
              copies: Sequence[Tuple[str, str]] = ()) -> Tuple[Optional[int], Dict[str, str]]:
    """In one remote shell: copy ``copies`` (src, dst) on the device, then return (free bytes in
    releases/, {path: sha256} of the ``paths`` that exist)."""
    flat = [p for pair in copies for p in pair]
    res = t.run(["sh", "-c", SH_COPY_DF_HASH, "edgekit", t.python, PY_SHA256, "releases",
                 str(len(flat)), *flat, *paths], timeout=900)
    if not res.ok:
        raise DeployError(f"device '{t.name}': copying/hashing files failed: {res.stderr.strip()[-300:]}")
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


class Device:
    """Shell-side file work on one device (kept for callers that hash device files directly)."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport
        self.name = transport.name

    def on_device(self, paths: Sequence[str], copies: Sequence[Tuple[str, str]] = ()) -> Tuple[Optional[int], Dict[str, str]]:
        return on_device(self.t, paths, copies)


def plain_name(name: object) -> bool:
    try:
        return isinstance(name, str) and bool(artifact.check_file_name(name))
    except DeployError:
        return False


def describe(transport: Transport) -> str:
    return transport.describe()


__all__: List[str] = ["Device", "on_device", "plain_name", "describe", "history_line", "previous_release", "recency",
                      "reconcile", "release_of", "release_stack", "PARTIAL"]
