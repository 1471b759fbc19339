#!/usr/bin/python
# Copyright: edgekit contributors
# Apache License 2.0 (see edgekit's LICENSE). Runs on the device, standard library only.
"""edgekit's atomic release, on the device, through edgekit's own device release script."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: release
short_description: Make an edgekit bundle the current release on the device, atomically
description:
  - "The device side of C(edgekit deploy): take the device's lock C(releases/.lock), upload into
    C(releases/<id>.partial/) (files unchanged since the current release are copied on the device
    instead), verify every file's sha256 on the device, rename the upload to C(releases/<id>),
    write the history line, switch C(current) (a new link renamed over the old one), prune to
    O(keep_releases), unlock."
  - The work is done by edgekit's device release script (C(module_utils/edgekit_release.py), the very
    file C(edgekit/device/release.py) that edgekit's built-in engine runs), so both engines leave the
    same layout and history lines.
  - Use it through the action plugin of the same name (C(bundle) is a directory on the controller);
    the module itself receives the files the action plugin staged.
  - O(state=rolled_back) switches back to the previous release (or O(to)); O(state=status) reads.
  - Check mode reports whether the release would change anything, and changes nothing.
options:
  path: {description: The device directory (holds releases/ and current)., type: str, required: true}
  state: {description: What to do., type: str, choices: [present, rolled_back, status], default: present}
  bundle: {description: "The bundle directory on the controller (action plugin: dist/<model>/<target>).", type: path}
  keep_releases: {description: Releases kept (current and previous always are)., type: int, default: 3}
  lock_timeout: {description: Seconds to wait for another deploy to the same device., type: float, default: 60}
  lock_stale_s: {description: Seconds a lock's owner and heartbeat must stay unchanged before it is broken., type: float, default: 45}
  lock_heartbeat_s: {description: Seconds between the holder's heartbeats., type: float, default: 5}
  to: {description: "O(state=rolled_back): the release to switch to (default: the previous one).", type: str}
  allow_none: {description: "O(state=rolled_back): with no previous release, remove current.", type: bool, default: false}
  name: {description: The device's name in messages (default the inventory name)., type: str}
  release_id: {description: Set by the action plugin., type: str}
  files: {description: "Set by the action plugin: {name: sha256}.", type: dict}
  sizes: {description: "Set by the action plugin: {name: bytes}.", type: dict}
  target: {description: Set by the action plugin., type: str}
  staged: {description: "Set by the action plugin: [{path, files: [[name, size], ...]}], files concatenated.", type: list, elements: dict}
  plan: {description: Set by the action plugin (a read-only look)., type: bool, default: false}
author: edgekit contributors
"""

EXAMPLES = r"""
- name: deploy the Raspberry Pi 5 build
  edgekit.fleet.release:
    bundle: dist/digits/raspberry-pi-5
    path: ~/edgekit
    keep_releases: 3
- name: roll back
  edgekit.fleet.release:
    path: ~/edgekit
    state: rolled_back
"""

RETURN = r"""
release: {description: "What the deploy did: release_id, target, previous, switched, skipped, uploaded_files, reused_files, pruned, seconds.", type: dict, returned: state=present}
rollback: {description: "from and to.", type: dict, returned: state=rolled_back}
status: {description: "current, previous, releases, lock, partial.", type: dict, returned: state=status}
kind: {description: "On failure: locked, lock_failed, lock_lost, no_space, write_failed, checksum_mismatch, release_conflict, failed.", type: str, returned: failure}
"""

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.edgekit.fleet.plugins.module_utils import edgekit_release as R
from ansible_collections.edgekit.fleet.plugins.module_utils import lock_owner as O

POLL_S = 0.2


class Failed(Exception):
    def __init__(self, kind, message, hint=None, **extra):
        Exception.__init__(self, message)
        self.kind, self.message, self.hint, self.extra = kind, message, hint, extra


# -- who holds the lock: edgekit/deploy_lock.py's owner record and judgement (module_utils/lock_owner.py)
def owner_dead(owner, mine):
    """Provably gone (O.owner_dead); an owner in this process is ours only under our own token."""
    return O.owner_dead(owner, lambda token: token == mine)


def ask(dev, req, stream=None):
    ans = R.answer(dev, req, stream)
    if not ans.get("ok"):
        raise Failed(ans.get("kind") or "failed", str(ans.get("error") or "failed")[:1000], ans.get("hint"),
                     answer=ans)
    return ans


def acquire(dev, p, owner_text, owner):
    """Take the lock, waiting for a live holder and breaking a dead or silent one."""
    deadline = time.time() + p["lock_timeout"]
    seen, since, brk = None, time.time(), None
    while True:
        ans = ask(dev, {"op": "lock", "owner": owner_text, "break": brk, "heartbeat_s": p["lock_heartbeat_s"]})
        brk = None
        if ans.get("locked"):
            return
        held, beat = str(ans.get("held") or ""), str(ans.get("beat") or "")
        o = O.parse_owner(held)
        if not (o is not None and beat.endswith(" " + str(o.get("token", ""))[:8])):
            beat = ""  # not the owner's own beat: a deposed holder still beating keeps nobody's lock alive
        now = time.time()
        if (held, beat) != seen:
            seen, since = (held, beat), now
        if (o is not None and owner_dead(o, owner["token"])) or now - since >= p["lock_stale_s"]:
            brk, seen = held, None
            continue
        if now >= deadline:
            raise Failed("locked", "another deploy holds the lock %s (%s)" % (dev.p(R.LOCK), R._owner_line(held)),
                         "wait for it to finish (lock_timeout); a lock whose owner is gone is broken once its "
                         "heartbeat has not moved for %.0f s" % p["lock_stale_s"])
        time.sleep(POLL_S)


def abandoned(name, raw, token):
    """A .partial or lock leftover nobody will finish or use (edgekit/deploy_lock.py's
    DeviceLock.abandoned): a lock set aside or a damaged release moved aside; a .partial unmarked (an
    older edgekit), ours, or marked by a provably dead owner. An unmarked candidate lock is being made."""
    if name.startswith((R.STALE_PREFIX, R.DAMAGED)):
        return True
    if not raw:
        return not name.startswith(R.NEW_PREFIX)
    o = O.parse_owner(raw)
    return o is not None and (o.get("token") == token or owner_dead(o, token))


class Staged(object):
    """The staged files, read one after another as the upload op's byte stream."""

    def __init__(self, paths):
        self.paths, self.f = list(paths), None

    def read(self, n):
        while True:
            if self.f is None:
                if not self.paths:
                    return b""
                self.f = open(self.paths.pop(0), "rb")
            block = self.f.read(n)
            if block:
                return block
            self.f.close()
            self.f = None


# -- the states -----------------------------------------------------------------------------------
def plan(dev, rid, files):
    """Read-only: is the release already current and intact, and which files would have to be sent
    (the locked prepare decides for real; this only spares transfers)."""
    current, dirs, _, _ = dev.inspect()
    final, partial = "releases/" + rid, "releases/" + rid + R.PARTIAL
    names = sorted(files)
    sums = dev.fs.sha256_many([d + "/" + n for d in (final, partial) if d.split("/")[1] in dirs for n in names])
    intact = rid in dirs and all(sums.get(final + "/" + n) == h for n, h in files.items())
    by_hash = dict((h, n) for n, h in dev.manifest_files(current)[1].items()) if current else {}
    need = [] if intact else [n for n in names if sums.get(partial + "/" + n) != files[n]
                              and not (n != R.MANIFEST and files[n] in by_hash)]
    return {"current": current, "intact": intact, "need": need,
            "unchanged": intact and current == rid}


def _blobs(raw):
    """The action plugin's staged uploads: [{path, files: [[name, size], ...]}], each file holding
    exactly its files' bytes one after another (checked: a short file would shift every later one)."""
    blobs = []
    for b in raw or []:
        if not (isinstance(b, dict) and isinstance(b.get("path"), str) and isinstance(b.get("files"), list)):
            raise Failed("bad_request", "staged: expected [{path, files: [[name, size], ...]}]")
        listed = [[str(n), int(size)] for n, size in b["files"]]
        if os.path.getsize(b["path"]) != sum(size for _, size in listed):
            raise Failed("failed", "the staged upload %s does not hold the bytes of its files (%d, expected %d)"
                         % (b["path"], os.path.getsize(b["path"]), sum(size for _, size in listed)))
        blobs.append({"path": b["path"], "files": listed})
    return blobs


def deploy(dev, p, files, rid):
    t0 = time.time()
    owner = O.new_owner(engine="ansible")
    owner_text = json.dumps(owner, sort_keys=True)
    blobs = _blobs(p["staged"])
    staged = set(n for b in blobs for n, _ in b["files"])
    sizes = dict((n, int(s)) for n, s in (p["sizes"] or {}).items())
    before, held = None, False
    try:
        acquire(dev, p, owner_text, owner)
        held = True
        prep = ask(dev, {"op": "prepare", "owner": owner_text, "release_id": rid, "files": files, "sizes": sizes})
        before = prep.get("current")
        if prep.get("conflict"):
            raise Failed("release_conflict", "release %s on the device holds another manifest.json (sha256 %s "
                         "there, %s in the bundle): a complete release is never changed in place"
                         % (rid, str(prep["conflict"])[:12], files[R.MANIFEST][:12]),
                         "deploy the bundle that release came from; if that release is damaged and not current, "
                         "remove %s on the device first" % dev.p("releases/" + rid))
        need, copied = list(prep.get("need") or []), list(prep.get("copied") or [])
        missing = [n for n in need if n not in staged]
        if missing:
            return {"need_more": missing}
        # Every staged file is written, in the order the controller concatenated them (one it staged
        # that the .partial meanwhile holds is written again, identical; a resent one last wins).
        send = [[n, size] for b in blobs for n, size in b["files"]]
        if send:
            ask(dev, {"op": "upload", "owner": owner_text, "release_id": rid, "files": send},
                Staged([b["path"] for b in blobs]))
        remove = [d for d, raw in (prep.get("candidates") or {}).items() if abandoned(d, raw, owner["token"])]
        try:
            done = ask(dev, {"op": "commit", "owner": owner_text, "release_id": rid, "files": files,
                             "keep": p["keep_releases"], "remove": remove, "retry": copied})
        except Failed as exc:
            bad = (exc.extra.get("answer") or {}).get("files") or []
            if exc.kind == "checksum_mismatch" and (exc.extra.get("answer") or {}).get("resend"):
                # the current release's copy of these was damaged on the device: send them after all
                return {"need_more": [n for n in bad if n not in staged] or bad, "resend": True}
            if exc.kind == "checksum_mismatch":
                exc.message = "checksum mismatch on the device after upload: %s" % ", ".join(str(n)[:200] for n in bad)
                exc.hint = "retry the deploy; if it repeats, check the device's storage and the network"
            raise
        return {"release": {
            "release_id": rid, "target": p["target"], "previous": done.get("previous"),
            "uploaded_files": len(staged), "reused_files": len(files) - len(staged),
            "skipped": bool(prep.get("intact")) and not done.get("switched"), "switched": bool(done.get("switched")),
            "repaired": bool(prep.get("intact")) is False and before == rid,
            "pruned": list(done.get("pruned") or []), "seconds": round(time.time() - t0, 3)}}
    finally:
        if held and dev.still_held():
            try:
                dev.unlock()
            except OSError:
                pass  # a later deploy judges the lock by its (stopped) heartbeat


def failed_state(dev, rid, before):
    """What the device runs now (read back), in the built-in engine's words."""
    now = dev.current()
    if now == rid and before != rid:
        return now, True, "release %s is current: the switch took place before the failure" % rid
    if now == before:
        return now, False, "the previous release stays current" + (" (%s)" % now if now else ": none, as before")
    return now, True, "current is %s" % (now or "none")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "rolled_back", "status"]),
            bundle=dict(type="path"),
            keep_releases=dict(type="int", default=3),
            lock_timeout=dict(type="float", default=60.0),
            lock_stale_s=dict(type="float", default=45.0),
            lock_heartbeat_s=dict(type="float", default=5.0),
            to=dict(type="str"),
            allow_none=dict(type="bool", default=False),
            name=dict(type="str"),
            release_id=dict(type="str"),
            files=dict(type="dict"),
            sizes=dict(type="dict", default={}),
            target=dict(type="str"),
            staged=dict(type="list", elements="dict", default=[]),
            plan=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    dev = R.Device(R.PosixFs(p["path"]))
    name = p["name"] or "device"
    if p["keep_releases"] < 1:
        module.fail_json(msg="keep_releases: expected a whole number >= 1", kind="bad_request")
    try:
        if p["state"] == "status":
            module.exit_json(changed=False, status=ask(dev, {"op": "status"}))
        if p["state"] == "rolled_back":
            rollback(module, dev, p, name)
        rid, files = p["release_id"], p["files"]
        if not R.is_release_id(rid) or not isinstance(files, dict) or R.MANIFEST not in files:
            module.fail_json(msg="release_id and files are set by the edgekit.fleet.release action plugin "
                                 "(give it bundle)", kind="bad_request")
        R._check_files(files)
        if p["plan"] or module.check_mode:
            seen = plan(dev, rid, files)
            module.exit_json(changed=not seen["unchanged"], plan=seen)
        before = dev.current()
        try:
            out = deploy(dev, p, files, rid)
        except (Failed, R.Refused, OSError) as exc:
            now, switched, state = failed_state(dev, rid, before)
            kind, msg, hint = _describe(exc)
            module.fail_json(msg="deploy of release %s to '%s' failed: %s; %s" % (rid, name, msg, state),
                             kind=kind, hint=hint, current=now,
                             release={"release_id": rid, "target": p["target"], "previous": before,
                                      "switched": switched, "skipped": False, "uploaded_files": 0,
                                      "reused_files": 0, "pruned": []})
        if "need_more" in out:
            module.exit_json(changed=False, **out)
        r = out["release"]
        module.exit_json(changed=r["switched"] or r["uploaded_files"] > 0 or r["repaired"], **out)
    except (Failed, R.Refused) as exc:
        kind, msg, hint = _describe(exc)
        module.fail_json(msg="device '%s': %s" % (name, msg), kind=kind, hint=hint)


def _describe(exc):
    if isinstance(exc, Failed):
        return exc.kind, exc.message, exc.hint
    if isinstance(exc, R.Refused):
        return exc.kind, exc.error, exc.extra.get("hint")
    return "failed", R._os_text(exc), None


def rollback(module, dev, p, name):
    to = p["to"] or None
    if to is not None and not R.is_release_id(to):
        module.fail_json(msg="to: expected a release id (%d lowercase hex digits)" % R.ID_LEN, kind="bad_request")
    if module.check_mode:
        st = ask(dev, {"op": "status"})
        target = to or st.get("previous")
        module.exit_json(changed=target != st.get("current"), rollback={"from": st.get("current"), "to": target})
    owner = O.new_owner(engine="ansible")
    owner_text = json.dumps(owner, sort_keys=True)
    acquire(dev, p, owner_text, owner)
    try:
        ans = ask(dev, {"op": "rollback", "owner": owner_text, "to": to, "allow_none": p["allow_none"]})
    except Failed as exc:
        now = dev.current()
        module.fail_json(msg="rollback on '%s' failed: %s; current is %s" % (name, exc.message, now or "none"),
                         kind=exc.kind, hint=exc.hint, current=now)
    finally:
        if dev.still_held():
            dev.unlock()
    module.exit_json(changed=ans.get("from") != ans.get("to"), rollback={"from": ans.get("from"), "to": ans.get("to")})


if __name__ == "__main__":
    main()
