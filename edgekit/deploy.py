"""Releases on a device: upload, verify, switch atomically, roll back, show status.

The device directory holds::

    releases/<id>/          one immutable directory per release (id = the bundle's content address)
    releases/<id>.partial/  an upload in progress (or left by a killed deploy; the next one resumes it)
    releases/.lock/owner    who is deploying right now (mkdir is atomic, so the directory is the lock)
    current -> releases/<id>
    history                 "<time> deploy <id>" and "<time> rollback <from> <to>" lines

A deploy never touches ``current`` until the new release is complete and every file's sha256 matches
the manifest *on the device*; the switch is a new symlink renamed over the old one (rename(2) is
atomic), so a cut connection, a full disk, a corrupted upload or a killed process all leave the
previous release current and intact.

Written once over the transport: ``run`` (every argument quoted by the transport), ``put`` and the
small set of file operations of the Transport interface (SFTP requests over SSH, so
a deploy spawns at most two remote shells: one to hash and measure, one to verify).
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple, cast

from . import artifact
from .errors import DeployError, DeviceError
from .transport import Transport

LOCK = "releases/.lock"
PARTIAL = ".partial"
HISTORY_LINES = 1000
LOCK_POLL_S = 0.2
DEFAULT_LOCK_TIMEOUT_S = 60.0
STALE_LOCK_S = 3600.0
"""A lock older than this is broken even when its owner cannot be checked (taken from another host)."""
ORPHAN_LOCK_S = 5.0
"""A lock directory without an owner file for this long was left between mkdir and the write."""

_held_owners: Set[str] = set()  # locks this process holds right now (see _is_stale)
_held_guard = threading.Lock()


@dataclass
class DeployResult:
    device: str
    release_id: str
    target: str
    previous: Optional[str]
    """The release current before this deploy; for an unchanged redeploy, the one before it."""
    uploaded_bytes: int
    uploaded_files: int
    reused_files: int
    """Files not sent: copied on the device from the current release, or resumed from a .partial."""
    skipped: bool
    """The release was already current and intact: nothing was changed."""
    switched: bool
    pruned: List[str] = field(default_factory=list)
    seconds: float = 0.0
    transport: str = ""


@dataclass
class RollbackResult:
    device: str
    from_release: Optional[str]
    to_release: Optional[str]
    seconds: float = 0.0


@dataclass
class ReleaseInfo:
    id: str
    current: bool
    previous: bool
    target: Optional[str]
    model: Optional[str]
    precision: Optional[str]
    files: int


@dataclass
class DeviceStatus:
    device: str
    transport: str
    current: Optional[str]
    previous: Optional[str]
    releases: List[ReleaseInfo]
    """Most recently activated first."""
    lock: Optional[Dict[str, object]] = None
    partial: List[str] = field(default_factory=list)


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

    # -- lock -----------------------------------------------------------------------------------
    def lock(self, timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> str:
        owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                            "time": round(time.time(), 3)}, sort_keys=True)
        self.fs.makedirs("releases")
        deadline = time.monotonic() + timeout
        orphan_since: Optional[float] = None
        while True:
            try:
                self.fs.mkdir(LOCK)
                with _held_guard:
                    _held_owners.add(owner)
                self.fs.write_bytes(f"{LOCK}/owner", owner.encode())
                return owner
            except FileExistsError:
                pass
            held = self._read(f"{LOCK}/owner")
            # No owner yet: its deploy is between mkdir and the write, or died right there.
            orphan_since = (orphan_since or time.monotonic()) if not held else None
            stale = _is_stale(held) if held else time.monotonic() - (orphan_since or 0) > ORPHAN_LOCK_S
            if stale and self._break(held):
                continue
            if time.monotonic() >= deadline:
                raise DeployError(
                    f"device '{self.name}': another deploy holds the lock {self.t.path(LOCK)} ({_describe_owner(held)})",
                    hint="wait for it to finish (--lock-timeout), or remove that directory if no deploy is running",
                    kind="locked")
            time.sleep(LOCK_POLL_S)

    def _break(self, held: str) -> bool:
        """Break a stale lock. The rename makes sure only one of several waiting deploys breaks it;
        the owner check after it catches the case where the lock changed hands meanwhile."""
        aside = f"releases/.lock-stale-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.rename(LOCK, aside)
        except OSError:
            return False
        if self._read(f"{aside}/owner") not in (held, ""):
            # Someone else's fresh lock: put it back (left aside, untouched, if yet another deploy
            # locked meanwhile; that needs three deploys racing over a stale lock).
            try:
                if not self.fs.exists(LOCK):
                    self.fs.rename(aside, LOCK)
            except OSError:
                pass
            return False
        self.fs.rmtree(aside)
        return True

    def unlock(self, owner: str) -> None:
        with _held_guard:
            _held_owners.discard(owner)
        if self._read(f"{LOCK}/owner") == owner:
            self.fs.rmtree(LOCK)

    # -- reading the layout ---------------------------------------------------------------------
    def _read(self, path: str) -> str:
        try:
            return self.fs.read_bytes(path).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def inspect(self) -> Tuple[Optional[str], List[str], List[str]]:
        """(current id, entries of releases/ without dot-names, history lines)."""
        link = self.fs.readlink("current") or ""
        current = link.rsplit("/", 1)[-1] if link.startswith("releases/") else None
        try:
            dirs = [d for d in self.fs.listdir("releases") if not d.startswith(".")]
        except FileNotFoundError:
            dirs = []
        return current, dirs, self._read("history").splitlines()

    def manifest(self, release: str) -> Dict[str, object]:
        try:
            return dict(json.loads(self._read(f"releases/{release}/{artifact.MANIFEST}") or "{}"))
        except ValueError:
            return {}

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
        """Point ``current`` at ``release`` (a new link renamed over the old one: atomic), or drop
        it when None; then log ``line`` (history is rewritten via rename, so it is never torn)."""
        if release is None:
            self.fs.rmtree("current")
        else:
            self.point(f"releases/{release}")
        text = "\n".join((history + [line])[-HISTORY_LINES:]) + "\n"
        self.fs.write_bytes(".history.tmp", text.encode())
        self.fs.rename(".history.tmp", "history")

    def point(self, target: str) -> None:
        tmp = f".current-{uuid.uuid4().hex[:8]}"
        self.fs.symlink(target, tmp)
        try:
            self.fs.rename(tmp, "current")
        except BaseException:
            self.fs.rmtree(tmp)
            raise

    def remove(self, paths: Sequence[str]) -> None:
        for p in paths:
            self.fs.rmtree(p)


def _describe_owner(owner: str) -> str:
    try:
        o = json.loads(owner)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(o["time"])))
        return f"held by pid {o['pid']} on {o['host']} since {since}"
    except (ValueError, KeyError, TypeError):
        return "owner unknown"


def _is_stale(owner: str) -> bool:
    """Stale when its deploy is gone: checked directly for a lock taken from this host (a dead pid,
    or this very process no longer holding it after a lost connection); by age otherwise."""
    try:
        o = json.loads(owner)
        host, pid, started = o["host"], int(o["pid"]), float(o["time"])
    except (ValueError, KeyError, TypeError):
        return False
    if host == socket.gethostname():
        if pid == os.getpid():
            with _held_guard:
                return owner not in _held_owners
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return time.time() - started > STALE_LOCK_S


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


def _describe(transport: Transport) -> str:
    return transport.describe()


def _line(action: str, *ids: Optional[str]) -> str:
    return " ".join([str(int(time.time())), action, *[i or "-" for i in ids]])


# ----------------------------------------------------------------------------------------------
# deploy / rollback / status over a transport
# ----------------------------------------------------------------------------------------------
def verified_files(bundle: Path) -> Tuple[Dict[str, object], Dict[str, str]]:
    """(manifest, {file: sha256} of everything to upload, manifest.json included), after checking
    the local bundle against its manifest (refusing '..' and absolute file names)."""
    manifest = artifact.verify_bundle(bundle)
    expected = {str(n): str(h) for n, h in manifest["files"].items()}
    expected[artifact.MANIFEST] = artifact.sha256_file(bundle / artifact.MANIFEST)
    return manifest, expected


def deploy(transport: Transport, bundle: Path, *, keep_releases: int = 3, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
           verified: Optional[Tuple[Dict[str, object], Dict[str, str]]] = None) -> DeployResult:
    """Make ``bundle`` the current release on the device behind ``transport``.

    ``verified`` is :func:`verified_files`' answer when the caller already checked the bundle (a
    fleet checks it once, not once per device)."""
    t0 = time.perf_counter()
    manifest, expected = verified or verified_files(bundle)
    rid = str(manifest["release_id"])
    dev = Device(transport)
    sent_before = transport.bytes_sent
    owner = dev.lock(lock_timeout)
    try:
        current, dirs, history = dev.inspect()
        final, partial = f"releases/{rid}", f"releases/{rid}{PARTIAL}"
        probe = [f"{d}/{n}" for d in (final, partial) if os.path.basename(d) in dirs for n in sorted(expected)]
        free, sums = dev.free_bytes(), {}  # spares a remote shell when there is nothing to hash
        if probe or free is None:
            free, sums = dev.on_device(probe)
        intact = rid in dirs and all(sums.get(f"{final}/{n}") == h for n, h in expected.items())
        uploaded = reused = 0
        if not intact:
            have = {n for n, h in expected.items() if sums.get(f"{partial}/{n}") == h}
            uploaded, reused = _upload(dev, bundle, expected, partial, have, current, free)
            if rid in dirs:  # a release dir failing its checksums is replaced, never trusted
                if current == rid:  # keep current on a complete release while the dirs swap
                    dev.point(partial)
                aside = f"releases/.damaged-{rid}-{uuid.uuid4().hex[:6]}"
                dev.fs.rename(final, aside)
                dev.fs.rename(partial, final)
                if current == rid:
                    dev.point(final)
                dev.remove([aside])
            else:
                dev.fs.rename(partial, final)
        switched = current != rid
        if switched:
            history = history + [_line("deploy", rid)]
            dev.switch(rid, history[:-1], history[-1])
        releases = sorted({d for d in dirs if not d.endswith(PARTIAL)} | {rid})
        previous = current if switched else previous_release(history, rid, releases)
        stale = [d for d in dirs if d.endswith(PARTIAL) and d != f"{rid}{PARTIAL}"]
        pruned = _prune(dev, keep_releases, history, releases, stale, rid, previous)
    except (DeviceError, OSError) as exc:
        msg = exc.message if isinstance(exc, DeviceError) else str(exc)
        details = dict(exc.details) if isinstance(exc, DeviceError) else {}
        raise DeployError(f"deploy of release {rid} to '{transport.name}' failed: {msg}; the previous release "
                          "stays current", hint=getattr(exc, "hint", None), **details) from None
    finally:
        try:
            dev.unlock(owner)
        except (DeviceError, OSError):
            pass  # connection gone: the next deploy finds the lock stale (this process holds no such lock)
    return DeployResult(
        device=transport.name, release_id=rid, target=str(manifest["target"]), previous=previous,
        uploaded_bytes=transport.bytes_sent - sent_before, uploaded_files=uploaded,
        reused_files=reused, skipped=intact and not switched, switched=switched, pruned=pruned,
        seconds=round(time.perf_counter() - t0, 3), transport=_describe(transport))


def _upload(dev: Device, bundle: Path, expected: Dict[str, str], partial: str, have: Set[str],
            current: Optional[str], free: Optional[int]) -> Tuple[int, int]:
    """Fill ``partial`` until every file matches ``expected``; returns (files sent, files reused)."""
    names = sorted(expected)
    copies: List[Tuple[str, str]] = []  # unchanged since the current release: copied on the device
    if current:
        by_hash = {str(h): str(n) for n, h in dict(dev.manifest(current).get("files") or {}).items()}
        copies = [(f"releases/{current}/{by_hash[expected[n]]}", f"{partial}/{n}") for n in names
                  if n not in have and n != artifact.MANIFEST and expected[n] in by_hash]
    copied = {dst for _, dst in copies}
    to_send = [n for n in names if n not in have and f"{partial}/{n}" not in copied]
    need = sum((bundle / n).stat().st_size for n in names if n not in have)  # sent or copied: space either way
    if free is not None and need > free:
        raise DeployError(f"device '{dev.name}': not enough space in {dev.t.path('releases')}: the release needs "
                          f"{need / 1e6:.1f} MB, {free / 1e6:.1f} MB free; the previous release stays current",
                          hint="free space on the device, or lower deploy.keep_releases", kind="no_space")
    for d in sorted({os.path.dirname(f"{partial}/{n}") for n in names}):
        dev.fs.makedirs(d)
    try:
        _put(dev, [(bundle / n, dev.t.path(partial, n)) for n in to_send])
        _, got = dev.on_device([f"{partial}/{n}" for n in names], copies)
    except DeviceError as exc:
        if exc.details.get("kind") != "write_failed":
            raise  # connection lost: keep the .partial, the next deploy resumes it
        dev.remove([partial])  # a full disk needs the space back more than a resumable upload
        left = dev.on_device([])[0]
        if exc.details.get("no_space") or (left is not None and left < max(need, 1 << 20)):
            raise DeployError(f"device '{dev.name}': no space left on the device while uploading ({exc.message}); "
                              f"the previous release stays current", hint="free space on the device, or lower "
                              "deploy.keep_releases", kind="no_space") from None
        raise
    bad = [n for n in names if got.get(f"{partial}/{n}") != expected[n]]
    resend = [n for n in bad if f"{partial}/{n}" in copied]
    if resend:  # the current release's copy was damaged on the device: send those files after all
        _put(dev, [(bundle / n, dev.t.path(partial, n)) for n in resend])
        to_send += resend
        got.update(dev.on_device([f"{partial}/{n}" for n in resend])[1])
        bad = [n for n in names if got.get(f"{partial}/{n}") != expected[n]]
    if bad:
        dev.remove([partial])
        detail = ", ".join(f"{n} (expected {expected[n][:12]}, got {(got.get(f'{partial}/{n}') or 'missing')[:12]})"
                           for n in bad)
        raise DeployError(f"device '{dev.name}': checksum mismatch on the device after upload: {detail}; the "
                          "previous release stays current", kind="checksum_mismatch", files=bad,
                          hint="retry the deploy; if it repeats, check the device's storage and the network")
    return len(to_send), len(names) - len(to_send)


def _put(dev: Device, pairs: List[Tuple[Path, str]]) -> None:
    dev.t.put_many(pairs)


def _prune(dev: Device, keep: int, history: List[str], releases: List[str], stale: List[str], current: str,
           previous: Optional[str]) -> List[str]:
    """Keep the ``keep`` most recently activated releases, and current and previous always; drop
    stale .partial dirs, which nobody is writing: we hold the lock."""
    ordered = recency(history, releases)
    keep_set = set(ordered[:keep]) | {current} | ({previous} if previous else set())
    doomed = [d for d in ordered if d not in keep_set]
    dev.remove([f"releases/{d}" for d in doomed + stale])
    return doomed


def rollback(transport: Transport, *, to: Optional[str] = None, allow_none: bool = False,
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> RollbackResult:
    """Switch ``current`` back to the previous release (or to ``to``), after checking its files.

    ``allow_none`` (a failed canary's first deploy) removes ``current`` when there is no previous
    release, restoring the device to how it was before.
    """
    t0 = time.perf_counter()
    dev = Device(transport)
    owner = dev.lock(lock_timeout)
    try:
        current, dirs, history = dev.inspect()
        existing = [d for d in dirs if not d.endswith(PARTIAL)]
        target = to if to is not None else previous_release(history, current, existing)
        if target is None and not allow_none:
            raise DeployError(f"device '{dev.name}': no previous release to roll back to (current: {current or 'none'})")
        if target is not None:
            if target not in existing:
                raise DeployError(f"device '{dev.name}': release {target} is not on the device")
            files = dict(dev.manifest(target).get("files") or {})
            _, sums = dev.on_device([f"releases/{target}/{n}" for n in sorted(files)])
            if not files or any(sums.get(f"releases/{target}/{n}") != h for n, h in files.items()):
                raise DeployError(f"device '{dev.name}': release {target} fails its checksums; not switching to it")
        if target != current:
            dev.switch(target, history, _line("rollback", current, target))
    finally:
        try:
            dev.unlock(owner)
        except (DeviceError, OSError):
            pass
    return RollbackResult(dev.name, current, target, round(time.perf_counter() - t0, 3))


def status(transport: Transport) -> DeviceStatus:
    dev = Device(transport)
    if not dev.fs.exists(""):
        return DeviceStatus(dev.name, _describe(transport), None, None, [])
    current, dirs, history = dev.inspect()
    existing = [d for d in dirs if not d.endswith(PARTIAL)]
    previous = previous_release(history, current, existing)
    infos = []
    for rid in recency(history, existing):
        m = dev.manifest(rid)
        quant = m.get("quantization")
        infos.append(ReleaseInfo(rid, rid == current, rid == previous, cast(Optional[str], m.get("target")),
                                 cast(Optional[str], m.get("model")),
                                 quant.get("precision") if isinstance(quant, dict) else None,
                                 len(cast(dict, m.get("files") or {}))))
    held = dev._read(f"{LOCK}/owner")
    lock: Optional[Dict[str, object]] = None
    if held or dev.fs.exists(LOCK):
        try:
            lock = dict(json.loads(held))
        except ValueError:
            lock = {"raw": held}
    return DeviceStatus(dev.name, _describe(transport), current, previous, infos, lock,
                        [d for d in dirs if d.endswith(PARTIAL)])
