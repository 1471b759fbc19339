"""The release logic that runs ON the device: lock, inspect, hash, upload, verify, switch, prune.

Standard library only, Python >= 3.8. The host sends this file's source with each session
(``python3 -c <source> session --root DIR``), so nothing needs installing on the device; the Ansible
engine runs the same file as a module. Both engines leave identical device state.

Layout of the device directory (ROOT)::

    releases/<id>/          one immutable directory per release (<id>: 16 lowercase hex digits)
    releases/<id>.partial/  an upload in progress (holds .edgekit-owner from the moment it appears)
    releases/.lock/         owner + heartbeat of the deploy holding the lock
    current -> releases/<id>
    history                 "<time> deploy <id>" / "<time> rollback <from|-> <to|->" lines

Invocation::

    python3 release.py OP --root DIR      < one JSON object     > one JSON object
    python3 release.py session --root DIR [--requests JSON-LIST]
                            < JSON lines (+ raw bytes after "upload") > one JSON line each

Every answer is one JSON object with ``"ok"``; on failure ``"ok": false``, ``"kind"`` (lock_failed,
locked, not_locked, lock_lost, no_space, write_failed, checksum_mismatch, release_conflict,
bad_request, failed), ``"error"`` (one line) and, where it was read back, ``"current"``.
Exit status: 0 when ok, 1 otherwise, 2 for a malformed request.

Operations (request fields -> answer fields):

``status`` {} -> current, previous, releases [{id, current, previous, target, model, precision,
    files}] (most recently activated first), lock (owner text or null), partial [names].
``lock`` {owner (text, <= 64 KiB; JSON with "token"), break (optional: the owner text judged dead)}
    -> locked (bool); when false: held (owner text), beat (heartbeat text). Tries once; the caller
    judges whether a held lock is dead (only it can tell whether its own host's process lives) and
    asks again with ``break``. In a session a thread rewrites ``heartbeat`` every heartbeat_s.
``prepare`` {owner, release_id, files {name: sha256}, sizes {name: bytes}} (lock held) -> root,
    current, intact (the release is complete and matches), conflict (sha256 of the manifest.json a
    complete release with this id holds, when it is another one), need [names to send], reused,
    copied [names copied from current], free, candidates {name: owner text} (.partial and
    .lock-new-* entries the caller may judge abandoned). Creates releases/<id>.partial with the owner
    mark, keeps its matching files, copies unchanged files from the current release.
``upload`` {owner, release_id, files [[name, size], ...]}, then exactly sum(size) raw bytes (session
    only) -> written (bytes). A write failure removes the .partial (a full disk needs the space
    back): kind write_failed, no_space (bool), free.
``commit`` {owner, release_id, files, keep, remove [names the caller judged abandoned], retry [names
    copied by prepare: on a mismatch of only those, the .partial is kept for re-sending them],
    history_line (optional)} -> switched, previous, pruned, current; on a mismatch: kind
    checksum_mismatch, files, got, resend. Verifies every file's sha256 in the .partial (or the
    complete release), renames it into place, logs the history line, then points ``current`` at it
    (a new link renamed over the old one), prunes, removes what a killed switch left. A failure
    after the switch was requested carries ``switch_requested``; ``current`` is read back.
``rollback`` {owner, to (optional release id), allow_none (bool)} -> from, to. Checks the target's
    files against its manifest before switching; writes the "rollback" history line itself.
``unlock`` {owner} -> released (bool).
``ping`` (session only, no answer): the host is still there. A session beats the lock only while
    the host was heard within three beats (or a request is being worked on): send pings when idle.

Typical sequences. A session: lock+prepare, upload, commit+unlock. One process per operation (the
Ansible module): lock, prepare, copy the ``need`` files into releases/<id>.partial/, commit, unlock
(no heartbeat runs between processes: keep the stale time above the copy time).

Everything read from the request or the device is hostile: names are checked (no absolute paths,
no '..', no control characters), reads are bounded, links are never followed into, sizes are
bounded by the request.
"""
import errno
import json
import os
import sys
import time

try:  # on the host: edgekit.device.release
    from .release_layout import *  # noqa: F401,F403
except ImportError:  # on the device: run as a script beside release_layout.py, or sent inline with it
    from release_layout import *  # type: ignore[no-redef]  # noqa: F401,F403


# -- operations -----------------------------------------------------------------------------------
def op_status(dev, req):
    current, dirs, _, history = dev.inspect()
    existing = [d for d in dirs if not d.endswith(PARTIAL)]
    previous = previous_release(history, current, existing)
    infos = []
    for rid in recency(history, existing):
        m, _ = dev.manifest_files(rid)
        q, files = m.get("quantization"), m.get("files")
        text = lambda v: None if v is None else str(v)[:200]  # noqa: E731
        infos.append({"id": rid, "current": rid == current, "previous": rid == previous,
                      "target": text(m.get("target")), "model": text(m.get("model")),
                      "precision": text(q.get("precision")) if isinstance(q, dict) else None,
                      "files": len(files) if isinstance(files, dict) else 0})
    held = dev.read(LOCK + "/owner", OWNER_LIMIT)
    lock = held if (held or dev.fs.exists(LOCK)) else None
    return {"current": current, "previous": previous, "releases": infos, "lock": lock,
            "partial": [d for d in dirs if d.endswith(PARTIAL)]}


def op_lock(dev, req):
    owner = req.get("owner")
    if not isinstance(owner, str) or not owner or len(owner) > OWNER_LIMIT:
        raise Refused("bad_request", "owner: expected the lock owner text (at most 64 KiB)")
    brk = req.get("break")
    return dev.lock(owner, brk if isinstance(brk, str) else None, req.get("heartbeat_s"))


def op_prepare(dev, req):
    dev.require(req.get("owner"))
    rid, files = _rid(req), _check_files(req.get("files"))
    sizes = req.get("sizes") or {}
    current, dirs, other, history = dev.inspect()
    final, partial = "releases/" + rid, "releases/" + rid + PARTIAL
    names = sorted(files)
    sums = dev.fs.sha256_many([d + "/" + n for d in (final, partial) if d.split("/")[1] in dirs for n in names])
    out = {"root": dev.root, "current": current, "history": history, "dirs": dirs,
           "history_clean": history == dev.raw_history, "free": dev.free(),
           "candidates": dict((d, dev.read("releases/%s/%s" % (d, PARTIAL_OWNER), OWNER_LIMIT))
                              for d in dirs if d.endswith(PARTIAL) and d != rid + PARTIAL)}
    for d in other:
        if d.startswith(NEW_PREFIX):
            inside = PARTIAL_OWNER if d.endswith("-partial") else "owner"
            out["candidates"][d] = dev.read("releases/%s/%s" % (d, inside), OWNER_LIMIT)
        elif d.startswith(STALE_PREFIX) or d.startswith(DAMAGED):
            out["candidates"][d] = ""
    intact = rid in dirs and all(sums.get(final + "/" + n) == h for n, h in files.items())
    out.update(intact=intact, need=[], copied=[], reused=0, conflict=None)
    if rid in dirs and not intact and sums.get(final + "/" + MANIFEST) != files.get(MANIFEST):
        out["conflict"] = sums.get(final + "/" + MANIFEST) or "missing"
        return out
    if intact:
        return out
    have = set(n for n in names if sums.get(partial + "/" + n) == files[n])
    by_hash = {}
    if current:
        by_hash = dict((h, n) for n, h in dev.manifest_files(current)[1].items())
    copies = [n for n in names if n not in have and n != MANIFEST and files[n] in by_hash]
    need_bytes = sum(int(sizes.get(n, 0)) for n in names if n not in have)
    free = out["free"]
    if free is not None and need_bytes > free:
        raise Refused("no_space", "not enough space in %s: the release needs %.1f MB, %.1f MB free"
                      % (dev.p("releases"), need_bytes / 1e6, free / 1e6), need=need_bytes)
    dev.claim(partial)
    for n in names:
        if "/" in n:
            dev.ensure_dirs(partial, n)
    dev.fs.copy_many([("releases/%s/%s" % (current, by_hash[files[n]]), partial + "/" + n) for n in copies])
    out["copied"] = copies
    out["need"] = [n for n in names if n not in have and n not in copies]
    out["reused"] = len(names) - len(out["need"])
    return out


def op_upload(dev, req, stream):
    """Write the raw bytes that follow into the .partial; the whole declared length is always read,
    so the session stays in step even when a write fails."""
    listed = req.get("files")
    if not isinstance(listed, list) or len(listed) > FILES_LIMIT or not all(
            isinstance(i, list) and len(i) == 2 and isinstance(i[1], int) and 0 <= i[1] < 1 << 50 for i in listed):
        # Without sizes the bytes that follow cannot be skipped: the stream is lost, end the session.
        raise Refused("bad_request", "files: expected a list of [name, size]", fatal=True)
    failure = None
    try:
        for item in listed:
            if not plain_name(item[0]):
                raise Refused("bad_request", "files: %r is not a plain file name" % (str(item[0])[:80],))
        dev.require(req.get("owner"))
        partial = "releases/" + _rid(req) + PARTIAL
        if not dev.fs.is_dir(partial):
            raise Refused("bad_request", "no upload in progress (prepare first)")
    except Refused as exc:
        failure = exc
    written, where = 0, None
    for name, size in listed:
        f = None
        if failure is None:
            try:
                dev.ensure_dirs(partial, name)
                path = dev.p(partial + "/" + name)
                if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
                    dev.fs.rmtree(partial + "/" + name)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
                f = os.fdopen(fd, "wb")
            except OSError as exc:
                failure, where = exc, name
        left = size
        while left:
            dev.working = False  # waiting on the host now: only its bytes keep the lock beating
            block = stream.read(min(CHUNK, left))
            dev.heard = time.monotonic()
            if not block:
                raise EOFError("the upload stream ended early")
            left -= len(block)
            if f is not None:
                try:
                    f.write(block)
                    written += len(block)
                except OSError as exc:
                    failure, where, f = exc, name, _close(f)
        if f is not None:
            try:
                f.close()
            except OSError as exc:
                failure, where = exc, name
    if isinstance(failure, Refused):
        raise failure
    if failure is not None:
        try:
            dev.fs.rmtree(partial)  # a full disk needs the space back more than a resumable upload
        except OSError:
            pass
        raise Refused("write_failed", "writing %s failed: %s" % (dev.p(partial + "/" + where) if where else partial,
                                                                 failure.strerror or failure),
                      no_space=failure.errno in (errno.ENOSPC, errno.EDQUOT), free=dev.free())
    return {"written": written}


def _close(f):
    try:
        f.close()
    except OSError:
        pass
    return None


def op_commit(dev, req):
    dev.require(req.get("owner"))
    rid, files = _rid(req), _check_files(req.get("files"))
    keep = req.get("keep", 3)
    if not isinstance(keep, int) or keep < 1:
        raise Refused("bad_request", "keep: expected a whole number >= 1")
    current, dirs, other, history = dev.inspect()
    final, partial = "releases/" + rid, "releases/" + rid + PARTIAL
    names = sorted(files)
    sums = dev.fs.sha256_many([final + "/" + n for n in names] if rid in dirs else [])
    intact = rid in dirs and all(sums.get(final + "/" + n) == h for n, h in files.items())
    if not intact:
        sums = dev.fs.sha256_many([partial + "/" + n for n in names])
        got = dict((n, sums.get(partial + "/" + n)) for n in names)
        bad = [n for n in names if got[n] != files[n]]
        if bad:
            retry = req.get("retry") or []
            if not (bad and set(bad) <= set(retry)):
                dev.fs.rmtree(partial)
            raise Refused("checksum_mismatch", "checksum mismatch on the device after upload", files=bad,
                          got=dict((n, got[n]) for n in bad), resend=bool(bad and set(bad) <= set(retry)))
        dev.require(dev.owner)
        if rid in dirs:  # our release with a damaged file: swapped for the fresh, verified copy
            if current == rid:
                dev.point(partial)
            aside = "releases/%s%s-%s" % (DAMAGED, rid, os.urandom(8).hex()[:6])
            dev.fs.rename(final, aside)
            dev.fs.rename(partial, final)
            if current == rid:
                dev.point(final)
            dev.fs.rmtree(aside)
        else:
            dev.fs.rename(partial, final)
        dev.fs.rmtree(final + "/" + PARTIAL_OWNER)
    switched = current != rid
    out = {"switched": False, "current": current}
    if switched:
        dev.require(dev.owner)
        line = req.get("history_line") or history_line("deploy", rid)
        if not _HISTORY_LINE.match(line):
            raise Refused("bad_request", "history_line: not a line edgekit writes")
        out["switch_requested"] = dev.switch_requested = True
        dev.switch(rid, history, line)
        out.update(switched=True, current=rid)
        history = history + [line]
    elif history != dev.raw_history:
        try:
            dev.write_history(history)  # a switch that never happened: drop its line
        except OSError:
            pass
    releases = sorted(set(d for d in dirs if not d.endswith(PARTIAL)) | set([rid]))
    previous = current if switched else previous_release(history, rid, releases)
    ordered = recency(history, releases)
    keep_set = set(ordered[:keep]) | set([rid]) | (set([previous]) if previous else set())
    doomed = [d for d in ordered if d not in keep_set]
    remove = [d for d in (req.get("remove") or []) if isinstance(d, str) and d in dirs + other and d != rid + PARTIAL
              and (d.endswith(PARTIAL) or d.startswith((NEW_PREFIX, STALE_PREFIX, DAMAGED)))]
    out.update(previous=previous, pruned=doomed)
    for d in doomed + remove:
        dev.fs.rmtree("releases/" + d)
    for e in dev.switch_leftovers():
        dev.fs.rmtree(e)
    return out


def op_rollback(dev, req):
    dev.require(req.get("owner"))
    to = req.get("to")
    if to is not None:
        to = _rid(req, "to")
    current, dirs, _, history = dev.inspect()
    existing = [d for d in dirs if not d.endswith(PARTIAL)]
    target = to if to is not None else previous_release(history, current, existing)
    if target is None and not req.get("allow_none"):
        raise Refused("failed", "no previous release to roll back to (current: %s)" % (current or "none"))
    if target is not None:
        if target not in existing:
            raise Refused("failed", "release %s is not on the device" % target)
        m, files = dev.manifest_files(target)
        listed = m.get("files")
        sums = dev.fs.sha256_many(["releases/%s/%s" % (target, n) for n in sorted(files)])
        if not files or len(files) != len(listed or ()) or \
                any(sums.get("releases/%s/%s" % (target, n)) != h for n, h in files.items()):
            raise Refused("failed", "release %s fails its checksums; not switching to it" % target)
    if target != current:
        dev.require(dev.owner)
        dev.switch(target, history, history_line("rollback", current, target))
    return {"from": current, "to": target}


def op_unlock(dev, req):
    dev.require(req.get("owner"))
    return {"released": dev.unlock()}


OPS = {"status": op_status, "lock": op_lock, "prepare": op_prepare, "commit": op_commit,
       "rollback": op_rollback, "unlock": op_unlock}


def answer(dev, req, stream=None):
    """One request -> one answer object (never raises for a device-side failure)."""
    if not isinstance(req, dict):
        return {"ok": False, "kind": "bad_request", "error": "expected a JSON object"}
    op = req.get("op")
    dev.switch_requested = False
    try:
        if op == "upload" and stream is not None:
            out = op_upload(dev, req, stream)
        elif op in OPS:
            out = OPS[op](dev, req)
        else:
            raise Refused("bad_request", "op: expected one of %s" % ", ".join(sorted(OPS)))
        out["ok"] = True
        return out
    except Refused as exc:
        out = dict(exc.extra, ok=False, kind=exc.kind, error=exc.error)
    except OSError as exc:
        out = {"ok": False, "kind": "failed", "error": _os_text(exc), "errno": exc.errno}
    out["current"] = dev.current()
    if op == "commit":
        out["switch_requested"] = dev.switch_requested
    return out


def _read_request(stream):
    line = stream.readline(REQUEST_LIMIT + 1)
    if not line:
        return None
    if len(line) > REQUEST_LIMIT:
        raise ValueError("request larger than %d bytes" % REQUEST_LIMIT)
    return json.loads(line.decode("utf-8"))


def session(dev, stream, out, first=()):
    """JSON lines in, one JSON line out per request. The lock stays held (and beating) until
    ``unlock`` or the end of input: a session cut off leaves its lock for the next deploy to judge.
    ``first``: requests given on the command line, answered before stdin is read (over SSH they
    travel with the exec request, sparing the wait for the channel's first window)."""
    pending = list(first)
    while True:
        try:
            req = pending.pop(0) if pending else _read_request(stream)
            dev.heard = time.monotonic()
        except (ValueError, RecursionError) as exc:
            out.write(json.dumps({"ok": False, "kind": "bad_request", "error": str(exc)[:200]}).encode() + b"\n")
            out.flush()
            return 2
        if req is None:
            break
        if isinstance(req, dict) and req.get("op") == "ping":
            continue  # the host is there (heard above); no answer
        try:
            dev.working = True
            try:
                reply = answer(dev, req, stream)
            finally:
                dev.working = False
        except EOFError:
            break
        out.write(json.dumps(reply, sort_keys=True).encode() + b"\n")
        out.flush()
        if reply.pop("fatal", False):
            return 2
    if dev._stop is not None:
        dev._stop.set()  # the connection is gone: stop beating, so the lock can be judged stale
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    first = []
    if len(argv) == 5 and argv[0] == "session" and argv[3] == "--requests":
        try:
            first = json.loads(argv.pop(4)[:REQUEST_LIMIT])
        except (ValueError, RecursionError):
            first = None
        argv.pop(3)
    if len(argv) != 3 or argv[1] != "--root" or argv[0] not in list(OPS) + ["session"] or not isinstance(first, list):
        sys.stderr.write("usage: release.py {%s|session [--requests JSON-LIST]} --root DIR < request.json\n"
                         % "|".join(sorted(OPS)))
        return 2
    dev = Device(PosixFs(argv[2]))
    if argv[0] == "session":
        return session(dev, sys.stdin.buffer, sys.stdout.buffer, first)
    try:
        req = json.loads(sys.stdin.buffer.read(REQUEST_LIMIT).decode("utf-8") or "{}")
    except (ValueError, RecursionError) as exc:
        print(json.dumps({"ok": False, "kind": "bad_request", "error": str(exc)[:200]}))
        return 2
    if isinstance(req, dict):
        req["op"] = argv[0]
    reply = answer(dev, req)
    print(json.dumps(reply, sort_keys=True))
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
