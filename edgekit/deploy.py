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

Written once over the transport's named release operations (a ReleaseSession: lock, prepare,
upload, commit, rollback, status, unlock; edgekit/device/release.py implements them and documents
each). Over SSH the script runs on the device in one exec, so a deploy costs a few round trips
whatever the number of files; nothing here assumes a shell, cp, df or sha256sum on the device.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

from . import artifact
from .deploy_lock import DeviceLock, os_text, parse_owner
from .device_layout import (PARTIAL, Device, describe, history_line, previous_release,  # noqa: F401
                            recency, reconcile, release_of, release_stack)
from .errors import DeployError, DeviceError, EdgekitError
from .transport import ReleaseSession, Transport

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
# deploy / rollback / status over a transport's release session
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
    switch_requested: bool = False
    answer: Optional[Dict[str, Any]] = None
    """The device's last failure answer (it says what ``current`` is, read back there)."""


def _rid(value: object) -> Optional[str]:
    """A release id the device named, or None: its answers are data, never trusted."""
    return value if isinstance(value, str) and artifact.is_release_id(value) else None


def _line(value: object, limit: int = 500) -> str:
    """A device's text for one line of output: printable characters only, bounded."""
    return "".join(c for c in str(value)[:limit] if c.isprintable())


def _refused(name: str, answer: Dict[str, Any], progress: Optional[_Progress] = None) -> DeployError:
    """A device's failure answer as a DeployError (its kind and fields kept in details)."""
    if progress is not None:
        progress.answer = answer
        progress.switch_requested = progress.switch_requested and bool(answer.get("switch_requested", True))
    extra = {k: v for k, v in answer.items() if k in ("files", "no_space", "free", "need")}
    hint = answer.get("hint")
    return DeployError(f"device '{name}': {_line(answer.get('error') or 'the device refused')}",
                       kind=_line(answer.get("kind") or "failed", 40), hint=_line(hint) if hint else None, **extra)


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
    name = transport.name
    sent_before = transport.bytes_sent
    progress = _Progress()
    session = transport.release_session()
    lock = DeviceLock(session, transport, lock_timeout, stale_s=lock_stale_s)
    base = {"owner": lock.text, "release_id": rid, "files": expected}
    sizes = {n: (bundle / n).stat().st_size for n in expected}
    try:
        prep = lock.acquire([dict(base, op="prepare", sizes=sizes)])[0]
        if not prep.get("ok"):
            if prep.get("kind") == "no_space":
                prep = dict(prep, hint="free space on the device, or lower deploy.keep_releases")
            raise _refused(name, prep, progress)
        progress.before = _rid(prep.get("current"))
        if prep.get("conflict"):
            raise DeployError(
                f"device '{name}': release {rid} on the device holds another manifest.json (sha256 "
                f"{str(prep['conflict'])[:12]} there, {expected[artifact.MANIFEST][:12]} in the bundle): a complete "
                "release is never changed in place", kind="release_conflict",
                hint="deploy the bundle that release came from; if that release is damaged and not current, remove "
                     f"{transport.path('releases', rid)} on the device first")
        need: List[str] = [] if prep.get("intact") else [str(n) for n in prep.get("need", []) if n in expected]
        if not prep.get("intact"):
            _upload(session, lock, bundle, rid, need, sizes, name)
        remove = [str(d) for d, raw in dict(prep.get("candidates") or {}).items() if lock.abandoned(str(d), str(raw))]
        commit = dict(base, op="commit", keep=keep_releases, remove=remove, retry=list(prep.get("copied") or []),
                      history_line=history_line("deploy", rid))
        progress.switch_requested = progress.before != rid
        done = _commit(session, lock, commit, name, progress)
        if done.get("kind") == "checksum_mismatch" and done.get("resend"):
            # the current release's copy was damaged on the device: send those files after all
            resend = [str(n) for n in done.get("files", []) if n in expected]
            _upload(session, lock, bundle, rid, resend, sizes, name)
            need += resend
            done = _commit(session, lock, dict(commit, retry=[]), name, progress)
        if not done.get("ok"):
            if done.get("kind") == "checksum_mismatch":
                got = done.get("got") or {}
                detail = ", ".join(f"{n} (expected {expected.get(n, '')[:12]}, got {str(got.get(n) or 'missing')[:12]})"
                                   for n in done.get("files", []))
                done = dict(done, error=f"checksum mismatch on the device after upload: {detail}",
                            hint="retry the deploy; if it repeats, check the device's storage and the network")
            raise _refused(name, done, progress)
    except (EdgekitError, OSError) as exc:
        raise _failed(transport, session, rid, str(manifest["target"]), exc, progress, t0, sent_before) from None
    finally:
        _try(lock.release)  # connection gone: this process no longer holds it, so the next deploy breaks it
        session.close()
    switched = bool(done.get("switched"))
    return DeployResult(
        device=name, release_id=rid, target=str(manifest["target"]), previous=_rid(done.get("previous")),
        uploaded_bytes=transport.bytes_sent - sent_before, uploaded_files=len(need),
        reused_files=0 if prep.get("intact") else len(expected) - len(need), skipped=bool(prep.get("intact")) and not switched, switched=switched,
        pruned=[d for d in done.get("pruned") or [] if _rid(d)], seconds=round(time.perf_counter() - t0, 3),
        transport=describe(transport))


def _upload(session: ReleaseSession, lock: DeviceLock, bundle: Path, rid: str, names: List[str],
            sizes: Dict[str, int], name: str) -> None:
    if not names:
        return
    try:
        session.upload(rid, lock.text, [(bundle / n, n) for n in names])
    except DeviceError as exc:
        if exc.details.get("kind") != "write_failed":
            raise  # connection lost: the .partial stays, the next deploy resumes it
        free = exc.details.get("free")
        need = sum(sizes[n] for n in names)
        if exc.details.get("no_space") or (isinstance(free, int) and free < max(need, 1 << 20)):
            raise DeployError(f"device '{name}': no space left on the device while uploading ({exc.message})",
                              hint="free space on the device, or lower deploy.keep_releases", kind="no_space") from None
        raise


def _commit(session: ReleaseSession, lock: DeviceLock, commit: Dict[str, Any], name: str,
            progress: _Progress) -> Dict[str, Any]:
    """Commit, and unlock in the same round trip unless a damaged copy may need re-sending."""
    if commit.get("retry"):
        return session.call(commit)
    done, unlocked = session.send([commit, {"op": "unlock", "owner": lock.text}])
    if unlocked.get("ok"):
        lock.forget()
    return done


def _try(action: Callable[[], object]) -> None:
    """Best-effort cleanup after the real outcome is decided (a lost link must not hide it)."""
    try:
        action()
    except (DeviceError, OSError):
        pass


def _read_back(session: ReleaseSession, progress: _Progress) -> Tuple[Optional[str], str]:
    """(current, why it could not be read): from the device's own failure answer, else asked."""
    if progress.answer is not None and "current" in progress.answer:
        return _rid(progress.answer.get("current")), ""
    try:
        st = session.call({"op": "status"})
    except (EdgekitError, OSError) as err:
        return None, err.message if isinstance(err, EdgekitError) else os_text(err)
    return _rid(st.get("current")), ""


def _failed(t: Transport, session: ReleaseSession, rid: str, target: str, exc: BaseException, progress: _Progress,
            t0: float, sent_before: int) -> DeployError:
    """The DeployError for a failed deploy, saying what the device really runs now (read back)."""
    msg = exc.message if isinstance(exc, EdgekitError) else os_text(cast(OSError, exc))
    details = dict(exc.details) if isinstance(exc, EdgekitError) else {}
    lost = details.get("kind") == "connection_lost"
    now, why = (None, msg) if lost else _read_back(session, progress)
    before = progress.before
    if why and progress.switch_requested:
        state = f"current could not be read back ({why}): it is {before or 'no release'} or {rid}"
        switched = True  # maybe: whoever rolls back must
    elif why or not progress.switch_requested or now == before:
        state = "the previous release stays current" + (f" ({now})" if now and not why else
                                                        (": none, as before" if not why else ""))
        switched = False
    elif now == rid:
        state = f"release {rid} is current: the switch took place before the failure"
        switched = True
    else:
        state = f"current is {now or 'none'}"
        switched = True
    result = DeployResult(device=t.name, release_id=rid, target=target, previous=before,
                          uploaded_bytes=t.bytes_sent - sent_before, uploaded_files=0, reused_files=0,
                          skipped=False, switched=switched, seconds=round(time.perf_counter() - t0, 3),
                          transport=describe(t))
    details.update(result=result, current=now, previous=before)
    return DeployError(f"deploy of release {rid} to '{t.name}' failed: {msg}; {state}",
                       hint=exc.hint if isinstance(exc, EdgekitError) else None, **details)


def rollback(transport: Transport, *, to: Optional[str] = None, allow_none: bool = False,
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S, lock_stale_s: Optional[float] = None) -> RollbackResult:
    """Switch ``current`` back to the previous release (or to ``to``), after checking its files.

    ``allow_none`` (a failed canary's first deploy) removes ``current`` when there is no previous
    release, restoring the device to how it was before.
    """
    t0 = time.perf_counter()
    if to is not None:
        artifact.check_release_id(to, "rollback target")
    session = transport.release_session()
    lock = DeviceLock(session, transport, lock_timeout, stale_s=lock_stale_s)
    try:
        ans = lock.acquire([{"op": "rollback", "owner": lock.text, "to": to, "allow_none": allow_none}])[0]
    finally:
        _try(lock.release)
        session.close()
    if not ans.get("ok"):
        if ans.get("errno") is not None:  # the filesystem failed, not the request
            now = _rid(ans.get("current")) or "none"
            raise DeployError(f"rollback on '{transport.name}' failed: {_line(ans.get('error'))}; current is {now}")
        raise DeployError(f"device '{transport.name}': {_line(ans.get('error'))}")
    return RollbackResult(transport.name, _rid(ans.get("from")), _rid(ans.get("to")), round(time.perf_counter() - t0, 3))


def _text(value: object) -> Optional[str]:
    return None if value is None else str(value)


def status(transport: Transport) -> DeviceStatus:
    """What the device runs; read-only (a history line for a switch that never happened is
    dropped from what it shows; the next deploy drops it from the file)."""
    with transport.release_session() as session:
        st = session.call({"op": "status"})
    if not st.get("ok"):
        raise DeployError(f"device '{transport.name}': status failed: {_line(st.get('error'))}")
    ids = _rid
    infos = [ReleaseInfo(str(r["id"]), bool(r.get("current")), bool(r.get("previous")), _text(r.get("target")),
                         _text(r.get("model")), _text(r.get("precision")), int(r.get("files") or 0))
             for r in st.get("releases") or [] if isinstance(r, dict) and ids(r.get("id"))]
    held = st.get("lock")
    lock: Optional[Dict[str, object]] = None
    if held is not None:
        lock = parse_owner(str(held)) or {"raw": str(held)}
    return DeviceStatus(transport.name, describe(transport), ids(st.get("current")), ids(st.get("previous")), infos,
                        lock, [str(d) for d in st.get("partial") or []])
