"""Releases on a device: upload, verify, switch atomically, roll back, show status.

The device directory holds::

    releases/<id>/          one immutable directory per release (id = the bundle's content address)
    releases/<id>.partial/  an upload in progress (or left by a killed deploy; the next one resumes it)
    releases/.lock/         who is deploying right now (see deploy_lock.py)
    current -> releases/<id>
    history                 "<time> deploy <id>" and "<time> rollback <from> <to>" lines

A deploy never touches ``current`` until the new release is complete and every file's sha256 matches
the manifest *on the device*; the switch is a new symlink renamed over the old one (rename(2) is
atomic), so a cut connection, a full disk, a corrupted upload or a killed process all leave the
previous release current and intact. The history line is written *before* the switch: a crash
between the two leaves a line for a switch that never happened, which every reader drops
(:func:`reconcile`) and the next deploy rewrites. A complete release directory is never changed: a
bundle with the same id but another manifest is refused. After any failure, deploy reads ``current``
back and says which release the device really runs.

Written once over the transport: ``run`` (every argument quoted by the transport), ``put`` and the
small set of file operations of the Transport interface (SFTP requests over SSH, so
a deploy spawns at most two remote shells: one to hash and measure, one to verify).
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple, cast

from . import artifact
from .deploy_lock import LOCK, OWNER_LIMIT, PARTIAL_OWNER, DeviceLock, os_text, parse_owner
from .device_layout import (PARTIAL, Device, describe, history_line, plain_name, previous_release,  # noqa: F401
                            recency, reconcile, release_of, release_stack)
from .errors import DeployError, DeviceError, EdgekitError
from .transport import Transport

DAMAGED = ".damaged-"
DEFAULT_LOCK_TIMEOUT_S = 60.0


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


@dataclass
class _Progress:
    before: Optional[str] = None
    """``current`` when the deploy looked (under the lock)."""
    inspected: bool = False
    switch_requested: bool = False


def deploy(transport: Transport, bundle: Path, *, keep_releases: int = 3, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
           verified: Optional[Tuple[Dict[str, object], Dict[str, str]]] = None,
           lock_stale_s: Optional[float] = None) -> DeployResult:
    """Make ``bundle`` the current release on the device behind ``transport``.

    ``verified`` is :func:`verified_files`' answer when the caller already checked the bundle (a
    fleet checks it once, not once per device). A failure raises DeployError saying which release
    is current on the device (read back), with a DeployResult in ``details["result"]`` whose
    ``switched`` is True when the switch happened, or may have (then the caller rolls back)."""
    t0 = time.perf_counter()
    manifest, expected = verified or verified_files(bundle)
    # Checked again even when the caller verified the bundle: the id becomes a path on the device.
    rid = artifact.check_release_id(manifest.get("release_id"), f"{bundle}: field 'release_id'")
    dev = Device(transport)
    sent_before = transport.bytes_sent
    progress = _Progress()
    lock = DeviceLock(transport, lock_timeout, stale_s=lock_stale_s)
    held = False
    try:
        lock.acquire()
        held = True
        current, dirs, history = dev.inspect()
        progress.before, progress.inspected = current, True
        final, partial = f"releases/{rid}", f"releases/{rid}{PARTIAL}"
        probe = [f"{d}/{n}" for d in (final, partial) if os.path.basename(d) in dirs for n in sorted(expected)]
        free, sums = dev.free_bytes(), {}  # spares a remote shell when there is nothing to hash
        if probe or free is None:
            free, sums = dev.on_device(probe)
        intact = rid in dirs and all(sums.get(f"{final}/{n}") == h for n, h in expected.items())
        if rid in dirs and not intact:
            _same_release_or_refuse(dev, rid, sums, expected)
        uploaded = reused = 0
        if not intact:
            have = {n for n, h in expected.items() if sums.get(f"{partial}/{n}") == h}
            uploaded, reused = _upload(dev, lock, bundle, expected, partial, have, current, free)
            lock.check()
            # The owner mark stays until the rename: a .partial is never without it (see
            # DeviceLock.claim); then the release keeps the bundle's files only.
            if rid in dirs:  # our release with a damaged file: swapped for the fresh, verified copy
                if current == rid:  # keep current on a complete release while the dirs swap
                    dev.point(partial)
                aside = f"releases/{DAMAGED}{rid}-{uuid.uuid4().hex[:6]}"
                dev.fs.rename(final, aside)
                dev.fs.rename(partial, final)
                if current == rid:
                    dev.point(final)
                dev.remove([aside])
            else:
                dev.fs.rename(partial, final)
            dev.fs.rmtree(f"{final}/{PARTIAL_OWNER}")
        switched = current != rid
        if switched:
            lock.check()
            progress.switch_requested = True
            line = history_line("deploy", rid)
            dev.switch(rid, history, line)
            history = history + [line]
        elif history != dev.raw_history:
            _try(lambda: dev.write_history(history))  # a switch that never happened: drop its line
        releases = sorted({d for d in dirs if not d.endswith(PARTIAL)} | {rid})
        previous = current if switched else previous_release(history, rid, releases)
        stale = [d for d in dirs if d.endswith(PARTIAL) and d != f"{rid}{PARTIAL}" and lock.abandoned(f"releases/{d}")]
        leftovers = [d for d in dev.other if d.startswith(DAMAGED) or lock.leftover(d)]
        pruned = _prune(dev, keep_releases, history, releases, stale + leftovers, rid, previous)
        dev.remove(dev.switch_leftovers())
    except (EdgekitError, OSError) as exc:
        raise _failed(dev, rid, str(manifest["target"]), exc, progress, t0, sent_before) from None
    finally:
        if held:
            _try(lock.release)  # connection gone: this process no longer holds it, so the next deploy breaks it
    return DeployResult(
        device=transport.name, release_id=rid, target=str(manifest["target"]), previous=previous,
        uploaded_bytes=transport.bytes_sent - sent_before, uploaded_files=uploaded,
        reused_files=reused, skipped=intact and not switched, switched=switched, pruned=pruned,
        seconds=round(time.perf_counter() - t0, 3), transport=describe(transport))


def _try(action: Callable[[], object]) -> None:
    """Best-effort cleanup after the real outcome is decided (a lost link must not hide it)."""
    try:
        action()
    except (DeviceError, OSError):
        pass


def _same_release_or_refuse(dev: Device, rid: str, sums: Dict[str, str], expected: Dict[str, str]) -> None:
    """A complete release is immutable. With our manifest.json it is our release and a damaged file
    is restored (through a fresh copy swapped in, never in place); with another one, it is refused:
    the id covers the files the manifest lists, so the same id can hide other manifest fields."""
    there = sums.get(f"releases/{rid}/{artifact.MANIFEST}")
    if there != expected[artifact.MANIFEST]:
        raise DeployError(
            f"device '{dev.name}': release {rid} on the device holds another manifest.json (sha256 "
            f"{(there or 'missing')[:12]} there, {expected[artifact.MANIFEST][:12]} in the bundle): a complete "
            "release is never changed in place", kind="release_conflict",
            hint="deploy the bundle that release came from; if that release is damaged and not current, remove "
                 f"{dev.t.path('releases', rid)} on the device first")


def _failed(dev: Device, rid: str, target: str, exc: BaseException, progress: _Progress, t0: float,
            sent_before: int) -> DeployError:
    """The DeployError for a failed deploy, saying what the device really runs now (read back)."""
    msg = exc.message if isinstance(exc, EdgekitError) else os_text(cast(OSError, exc))
    details = dict(exc.details) if isinstance(exc, EdgekitError) else {}
    try:
        link = dev.fs.readlink("current")
        now, why = release_of(link), ""
        shown = now or (f"'{_printable(link)}'" if link else "")
    except (EdgekitError, OSError) as err:
        link = now = None
        why = err.message if isinstance(err, EdgekitError) else os_text(err)
        shown = ""
    before = progress.before
    if why and progress.switch_requested:
        state = f"current could not be read back ({why}): it is {before or 'no release'} or {rid}"
        switched = True  # maybe: whoever rolls back must
    elif why or not progress.switch_requested or (now == before and link is not None or not link and not before):
        state = "the previous release stays current" + (f" ({shown})" if shown else ": none, as before")
        switched = False
    elif now == rid:
        state = f"release {rid} is current: the switch took place before the failure"
        switched = True
    else:
        state = f"current is {shown or 'none'}"
        switched = True
    result = DeployResult(device=dev.name, release_id=rid, target=target, previous=before,
                          uploaded_bytes=dev.t.bytes_sent - sent_before, uploaded_files=0, reused_files=0,
                          skipped=False, switched=switched, seconds=round(time.perf_counter() - t0, 3),
                          transport=describe(dev.t))
    details.update(result=result, current=now, previous=before)
    return DeployError(f"deploy of release {rid} to '{dev.name}' failed: {msg}; {state}",
                       hint=exc.hint if isinstance(exc, EdgekitError) else None, **details)


def _printable(value: str, limit: int = 120) -> str:
    return "".join(c for c in value[:limit] if c.isprintable())


def _upload(dev: Device, lock: DeviceLock, bundle: Path, expected: Dict[str, str], partial: str, have: Set[str],
            current: Optional[str], free: Optional[int]) -> Tuple[int, int]:
    """Fill ``partial`` until every file matches ``expected``; returns (files sent, files reused)."""
    names = sorted(expected)
    copies: List[Tuple[str, str]] = []  # unchanged since the current release: copied on the device
    if current:
        listed = dev.manifest(current).get("files")
        by_hash = {str(h): str(n) for n, h in (listed.items() if isinstance(listed, dict) else ())
                   if plain_name(n)}  # the device's manifest names paths too: only plain ones
        copies = [(f"releases/{current}/{by_hash[expected[n]]}", f"{partial}/{n}") for n in names
                  if n not in have and n != artifact.MANIFEST and expected[n] in by_hash]
    copied = {dst for _, dst in copies}
    to_send = [n for n in names if n not in have and f"{partial}/{n}" not in copied]
    need = sum((bundle / n).stat().st_size for n in names if n not in have)  # sent or copied: space either way
    if free is not None and need > free:
        raise DeployError(f"device '{dev.name}': not enough space in {dev.t.path('releases')}: the release needs "
                          f"{need / 1e6:.1f} MB, {free / 1e6:.1f} MB free",
                          hint="free space on the device, or lower deploy.keep_releases", kind="no_space")
    lock.claim(partial)
    for d in sorted({os.path.dirname(f"{partial}/{n}") for n in names} - {partial}):
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
            raise DeployError(f"device '{dev.name}': no space left on the device while uploading ({exc.message})",
                              hint="free space on the device, or lower "
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
        raise DeployError(f"device '{dev.name}': checksum mismatch on the device after upload: {detail}",
                          kind="checksum_mismatch", files=bad,
                          hint="retry the deploy; if it repeats, check the device's storage and the network")
    return len(to_send), len(names) - len(to_send)


def _put(dev: Device, pairs: List[Tuple[Path, str]]) -> None:
    dev.t.put_many(pairs)


def _prune(dev: Device, keep: int, history: List[str], releases: List[str], stale: List[str], current: str,
           previous: Optional[str]) -> List[str]:
    """Keep the ``keep`` most recently activated releases, and current and previous always; drop
    ``stale`` entries (abandoned .partial dirs and lock leftovers, chosen by the caller)."""
    ordered = recency(history, releases)
    keep_set = set(ordered[:keep]) | {current} | ({previous} if previous else set())
    doomed = [d for d in ordered if d not in keep_set]
    dev.remove([f"releases/{d}" for d in doomed + stale])
    return doomed


def rollback(transport: Transport, *, to: Optional[str] = None, allow_none: bool = False,
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S, lock_stale_s: Optional[float] = None) -> RollbackResult:
    """Switch ``current`` back to the previous release (or to ``to``), after checking its files.

    ``allow_none`` (a failed canary's first deploy) removes ``current`` when there is no previous
    release, restoring the device to how it was before.
    """
    t0 = time.perf_counter()
    if to is not None:
        artifact.check_release_id(to, "rollback target")
    dev = Device(transport)
    lock = DeviceLock(transport, lock_timeout, stale_s=lock_stale_s)
    held = False
    current: Optional[str] = None
    try:
        lock.acquire()
        held = True
        current, dirs, history = dev.inspect()
        existing = [d for d in dirs if not d.endswith(PARTIAL)]
        target = to if to is not None else previous_release(history, current, existing)
        if target is None and not allow_none:
            raise DeployError(f"device '{dev.name}': no previous release to roll back to (current: {current or 'none'})")
        if target is not None:
            if target not in existing:
                raise DeployError(f"device '{dev.name}': release {target} is not on the device")
            listed = dev.manifest(target).get("files")
            files = {str(n): h for n, h in (listed.items() if isinstance(listed, dict) else ()) if plain_name(n)}
            _, sums = dev.on_device([f"releases/{target}/{n}" for n in sorted(files)])
            if not files or len(files) != len(listed or ()) or \
                    any(sums.get(f"releases/{target}/{n}") != h for n, h in files.items()):
                raise DeployError(f"device '{dev.name}': release {target} fails its checksums; not switching to it")
        if target != current:
            lock.check()
            dev.switch(target, history, history_line("rollback", current, target))
    except OSError as exc:
        try:
            now = release_of(dev.fs.readlink("current")) or "none"
        except (EdgekitError, OSError):
            now = "unknown (cannot read it back)"
        raise DeployError(f"rollback on '{dev.name}' failed: {os_text(exc)}; current is {now}") from None
    finally:
        if held:
            _try(lock.release)
    return RollbackResult(dev.name, current, target, round(time.perf_counter() - t0, 3))


def _text(value: object) -> Optional[str]:
    return None if value is None else str(value)


def status(transport: Transport) -> DeviceStatus:
    """What the device runs; read-only (a history line for a switch that never happened is
    dropped from what it shows; the next deploy drops it from the file)."""
    dev = Device(transport)
    if not dev.fs.exists(""):
        return DeviceStatus(dev.name, describe(transport), None, None, [])
    current, dirs, history = dev.inspect()
    existing = [d for d in dirs if not d.endswith(PARTIAL)]
    previous = previous_release(history, current, existing)
    infos = []
    for rid in recency(history, existing):
        m = dev.manifest(rid)
        quant, files = m.get("quantization"), m.get("files")
        infos.append(ReleaseInfo(rid, rid == current, rid == previous, _text(m.get("target")), _text(m.get("model")),
                                 _text(quant.get("precision")) if isinstance(quant, dict) else None,
                                 len(files) if isinstance(files, dict) else 0))
    held = dev._read(f"{LOCK}/owner", OWNER_LIMIT)
    lock: Optional[Dict[str, object]] = None
    if held or dev.fs.exists(LOCK):
        lock = parse_owner(held) or {"raw": held}
    return DeviceStatus(dev.name, describe(transport), current, previous, infos, lock,
                        [d for d in dirs if d.endswith(PARTIAL)])
