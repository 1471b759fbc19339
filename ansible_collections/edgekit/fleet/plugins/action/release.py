# Copyright: edgekit contributors
# GNU General Public License v3.0+ (it imports ansible-core's ActionBase)
"""The controller half of edgekit.fleet.release: check the bundle, send only what the device lacks.

1. The bundle directory is checked here, before any host is touched: every file the manifest lists
   must match its sha256, names must be plain relative paths, and the release id must be the hash
   of the manifest (edgekit.artifact.release_id), so a forged manifest cannot pass as a release.
2. A read-only look on the device (the module with ``plan``) says whether the release is already
   current and which files neither a resumable ``.partial`` nor the current release can supply.
3. Those files are transferred, concatenated into one file (one transfer per device), into
   Ansible's private temporary directory on the device.
4. The module then does the release under the device lock with edgekit's device release script:
   prepare (resume, copy unchanged files from current), upload the staged files into the
   ``.partial``, verify every sha256, rename, switch, prune. If the locked look needs a file the
   first one did not (another deploy ran in between, or a copy from current was damaged), it says
   so, the file is sent, and the module runs again.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import shutil
import tempfile

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

MODULE = "edgekit.fleet.release"
MANIFEST = "manifest.json"
MANIFEST_LIMIT = 16 << 20
ID_LEN = 16
ROUNDS = 3


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _plain(name):
    if not isinstance(name, str) or not name or name.startswith(("/", "~")) or "\\" in name:
        return False
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return False
    return all(p not in ("", ".", "..") for p in name.split("/"))


def check_bundle(bundle):
    """(manifest, {name: sha256} with manifest.json, {name: size}) of a bundle checked against itself."""
    path = os.path.join(bundle, MANIFEST)
    if not os.path.isfile(path):
        raise AnsibleActionFail("%s: no manifest.json: not an edgekit bundle (edgekit build writes them)" % bundle)
    if os.path.getsize(path) > MANIFEST_LIMIT:
        raise AnsibleActionFail("%s: over %d MB; not read" % (path, MANIFEST_LIMIT >> 20))
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AnsibleActionFail("%s: not JSON (%s)" % (path, exc))
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(listed, dict):
        raise AnsibleActionFail("%s: field 'files': expected an object of file names and sha256" % path)
    body = dict((k, v) for k, v in manifest.items() if k != "release_id")
    try:  # the id edgekit.artifact.release_id computes: canonical JSON of the manifest without it
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except ValueError:
        raise AnsibleActionFail("%s: holds NaN or Infinity, which canonical JSON refuses" % path)
    rid = manifest.get("release_id")
    if not (isinstance(rid, str) and len(rid) == ID_LEN and all(c in "0123456789abcdef" for c in rid)):
        raise AnsibleActionFail("%s: field 'release_id': expected %d lowercase hex digits" % (path, ID_LEN))
    if hashlib.sha256(canonical.encode()).hexdigest()[:ID_LEN] != rid:
        raise AnsibleActionFail("%s: release_id %s is not the hash of this manifest: refusing a forged or "
                                "edited manifest (rebuild with edgekit build)" % (path, rid))
    target = manifest.get("target")
    if not isinstance(target, str) or not _plain(target) or "/" in target:
        raise AnsibleActionFail("%s: field 'target': expected a plain name" % path)
    files, sizes = {}, {}
    for name, digest in sorted(listed.items()):
        if not _plain(name) or name == MANIFEST:
            raise AnsibleActionFail("%s: file name %r is not allowed (absolute path, '..' or a control character)"
                                    % (path, str(name)[:80]))
        local = os.path.join(bundle, name)
        if not os.path.isfile(local) or os.path.islink(local):
            raise AnsibleActionFail("%s: %s is listed in the manifest but missing" % (bundle, name))
        got = _sha256(local)
        if got != digest:
            raise AnsibleActionFail("%s: %s does not match its sha256 in the manifest (%s, expected %s)"
                                    % (bundle, name, got[:12], str(digest)[:12]))
        files[name], sizes[name] = got, os.path.getsize(local)
    files[MANIFEST], sizes[MANIFEST] = _sha256(path), os.path.getsize(path)
    return manifest, files, sizes


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        args.setdefault("name", task_vars.get("inventory_hostname"))
        if args.get("state", "present") != "present":
            result.update(self._execute_module(MODULE, module_args=args, task_vars=task_vars))
            return result
        if not args.get("bundle"):
            raise AnsibleActionFail("bundle: the bundle directory on the controller (dist/<model>/<target>) is required")
        bundle = self._loader.path_dwim(os.path.expanduser(to_text(args.pop("bundle"))))
        manifest, files, sizes = check_bundle(bundle)
        args.update(release_id=manifest["release_id"], files=files, sizes=sizes, target=manifest["target"])
        look = self._execute_module(MODULE, module_args=dict(args, plan=True), task_vars=task_vars)
        if look.get("failed") or self._play_context.check_mode:
            result.update(look)
            return result
        need = list(look["plan"]["need"])
        blobs, staged, sent, work = [], set(), 0, None
        try:
            for _ in range(ROUNDS):
                todo = [n for n in need if n in files and n not in staged]
                if todo:
                    # One transfer per round: the files concatenated, in the order the module's upload
                    # reads them back (name and size each), instead of a transfer per file.
                    work = work or self._make_tmp_path()
                    remote = self._connection._shell.join_path(work, "edgekit-%d" % len(blobs))
                    fd, local = tempfile.mkstemp(prefix="edgekit-upload-")
                    try:
                        with os.fdopen(fd, "wb") as blob:
                            for n in todo:
                                with open(os.path.join(bundle, n), "rb") as f:
                                    shutil.copyfileobj(f, blob, 1 << 20)
                        self._transfer_file(local, remote)
                    finally:
                        os.unlink(local)
                    self._fixup_perms2([remote], execute=False)
                    blobs.append({"path": remote, "files": [[n, sizes[n]] for n in todo]})
                    staged.update(todo)
                    sent += sum(sizes[n] for n in todo)
                out = self._execute_module(MODULE, module_args=dict(args, staged=blobs), task_vars=task_vars)
                if out.get("failed") or "need_more" not in out:
                    break
                need = [n for n in out["need_more"] if n in files]
                if out.get("resend"):  # the device's copy from current was damaged: send fresh ones
                    staged.difference_update(need)
            else:
                out = dict(failed=True, kind="failed", msg="the device kept asking for files (%s); another deploy "
                           "may be changing it: try again" % ", ".join(need[:5]))
        finally:
            if work is not None:
                self._remove_tmp_path(work)
        if isinstance(out.get("release"), dict):
            out["release"]["uploaded_bytes"] = sent if not out.get("failed") else 0
            out["release"]["sent_bytes"] = sent
        result.update(out)
        return result
