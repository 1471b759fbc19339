"""The release layout of a device directory, as edgekit/device/release.py works on it: names,
history, the lock, and the file operations (on the device: PosixFs; on the host: a transport's).

Standard library only, Python >= 3.8. Shipped and sent beside release.py (the SSH transport sends
both inline); everything here treats names and files from the device or the request as hostile.
"""
import hashlib
import json
import os
import re
import shutil
import stat
import threading
import time

ID_LEN = 16
PARTIAL = ".partial"
LOCK = "releases/.lock"
NEW_PREFIX = ".lock-new-"
STALE_PREFIX = ".lock-stale-"
DAMAGED = ".damaged-"
PARTIAL_OWNER = ".edgekit-owner"
OWNER_LIMIT = 1 << 16
MANIFEST = "manifest.json"
MANIFEST_LIMIT = 16 << 20
HISTORY_LINES = 1000
HISTORY_TMP = ".history.tmp"
HISTORY_LIMIT = 1 << 20
CURRENT_TMP = ".current-"
REQUEST_LIMIT = 64 << 20
NAME_LIMIT = 1024
FILES_LIMIT = 100000
CHUNK = 1 << 20
_ID = "[0-9a-f]{%d}" % ID_LEN
_HISTORY_LINE = re.compile("[0-9]{1,12} (?:deploy %s|rollback (?:%s|-) (?:%s|-))\\Z" % (_ID, _ID, _ID))


class Refused(Exception):
    """One line for the caller, with its kind; extra fields go into the answer."""

    def __init__(self, kind, error, **extra):
        Exception.__init__(self, error)
        self.kind, self.error, self.extra = kind, error, extra


# -- names ----------------------------------------------------------------------------------------
def is_release_id(value):
    return isinstance(value, str) and len(value) == ID_LEN and all(c in "0123456789abcdef" for c in value)


def plain_name(name):
    """A file name a release may hold: relative, no '..', no backslash or control characters."""
    if not isinstance(name, str) or not name or len(name) > NAME_LIMIT or name.startswith(("/", "~")):
        return False
    if "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") for p in parts)


def _check_files(files):
    if not isinstance(files, dict) or len(files) > FILES_LIMIT:
        raise Refused("bad_request", "files: expected an object of at most %d names" % FILES_LIMIT)
    for n, h in files.items():
        if not plain_name(n) or not (isinstance(h, str) and re.match("[0-9a-f]{64}\\Z", h)):
            raise Refused("bad_request", "files: %r is not a plain file name with a sha256" % (str(n)[:80],))
    return files


def _rid(req, key="release_id"):
    rid = req.get(key)
    if not is_release_id(rid):
        raise Refused("bad_request", "%s: expected %d lowercase hex digits" % (key, ID_LEN))
    return rid


def release_of(link):
    """The release id a ``current`` link names, or None (no link, or not one edgekit made)."""
    if not link or not link.startswith("releases/"):
        return None
    rid = link[len("releases/"):].rstrip("/")
    return rid if is_release_id(rid) else None


# -- history --------------------------------------------------------------------------------------
def release_stack(history, current):
    """Replay the history into the stack of activations (oldest first); its top is current."""
    stack = []
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


def _replayed_top(history):
    stack = release_stack(history, None)
    return stack[-1] if stack else None


def reconcile(history, current):
    """History as it really happened: a last line whose switch never took place (the line is
    written first; see switch) is dropped."""
    if history and _replayed_top(history) != current and _replayed_top(history[:-1]) == current:
        return history[:-1]
    return history


def previous_release(history, current, existing):
    """What a rollback returns to: the latest activation before current still on the device."""
    for rid in reversed(release_stack(history, current)):
        if rid != current and rid in existing:
            return rid
    return None


def recency(history, releases):
    """Releases, most recently made current first; never-activated ones last."""
    last = {}
    for i, line in enumerate(history):
        parts = line.split()
        if len(parts) >= 3:
            last[parts[-1]] = i
    return sorted(releases, key=lambda r: -last.get(r, -1))


def history_line(action, *ids):
    return " ".join([str(int(time.time())), action] + [i or "-" for i in ids])


# -- the device directory -------------------------------------------------------------------------
class PosixFs(object):
    """The file operations the release logic needs, on this machine's files under ``root`` (paths
    are relative to it). A host-side transport offers the same methods over its own link."""

    def __init__(self, root):
        self.root = os.path.abspath(os.path.expanduser(root))

    def path(self, *parts):
        return os.path.join(self.root, *[p for p in parts if p])

    def exists(self, rel):
        return os.path.lexists(self.path(rel))

    def is_dir(self, rel):
        return os.path.isdir(self.path(rel)) and not os.path.islink(self.path(rel))

    def listdir(self, rel):
        return sorted(os.listdir(self.path(rel)))

    def readlink(self, rel):
        try:
            return os.readlink(self.path(rel))
        except OSError:
            return None

    def read_head(self, rel, limit):
        fd = os.open(self.path(rel), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            return f.read(limit)

    def write_bytes(self, rel, data):
        with open(self.path(rel), "wb") as f:
            f.write(data)

    def mkdir(self, rel):
        os.mkdir(self.path(rel))

    def makedirs(self, rel):
        os.makedirs(self.path(rel), exist_ok=True)

    def rename(self, src, dst):
        os.rename(self.path(src), self.path(dst))

    def symlink(self, target, rel):
        os.symlink(target, self.path(rel))

    def rmtree(self, rel):
        path = self.path(rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)  # a file or a link, never followed

    def free_bytes(self, rel):
        try:
            st = os.statvfs(self.path(rel))
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def sha256_many(self, rels):
        """{rel: sha256} of the regular files among ``rels`` (links are not followed)."""
        return dict((r, h) for r, h in ((r, sha256_file(self.path(r))) for r in rels) if h)

    def copy_many(self, pairs):
        """Copy regular files (src, dst) within the device; a link or a missing source is skipped."""
        for src, dst in pairs:
            s = self.path(src)
            if os.path.islink(s) or not os.path.isfile(s):
                continue
            self.rmtree(dst)
            shutil.copyfile(s, self.path(dst))


def sha256_file(path):
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


class Device(object):
    """The release layout of one device directory, over ``fs`` (PosixFs here, a transport's file
    operations when the host drives it)."""

    def __init__(self, fs):
        self.fs = fs
        self.root = fs.path()
        self.owner = None  # our owner text, once the lock is ours
        self._stop = None
        self.switch_requested = False
        self.heard = None  # monotonic time the host last sent something (sessions only)
        self.working = False
        self.raw_history = []

    def p(self, rel):
        return self.fs.path(rel)

    def read(self, rel, limit):
        try:
            return self.fs.read_head(rel, limit).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def free(self):
        return self.fs.free_bytes("releases")

    def current(self):
        return release_of(self.fs.readlink("current"))

    def inspect(self):
        """(current, release and .partial names of releases/, other dot-names, reconciled history)."""
        current = self.current()
        try:
            entries = self.fs.listdir("releases")
        except OSError:
            entries = []
        other = [d for d in entries if d.startswith(".")]
        dirs = [d for d in entries if is_release_id(d[:-len(PARTIAL)] if d.endswith(PARTIAL) else d)]
        self.raw_history = self.read("history", HISTORY_LIMIT).splitlines()
        history = [line for line in self.raw_history if _HISTORY_LINE.match(line)]
        return current, dirs, other, reconcile(history, current)

    def manifest_files(self, release):
        """(manifest, {name: sha256} of its plain names) as the device holds it: data, never trusted."""
        try:
            m = json.loads(self.read("releases/%s/%s" % (release, MANIFEST), MANIFEST_LIMIT) or "{}")
        except (ValueError, RecursionError):
            return {}, {}
        m = m if isinstance(m, dict) else {}
        listed = m.get("files")
        files = dict((n, h) for n, h in (listed.items() if isinstance(listed, dict) else ()) if plain_name(n))
        return m, files

    # -- the lock -------------------------------------------------------------------------------
    def lock(self, owner, brk=None, heartbeat_s=None):
        try:
            self.fs.makedirs("releases")
        except OSError as exc:
            raise Refused("lock_failed", "cannot create %s: %s" % (self.p("releases"), _os_text(exc)))
        if brk:
            self._break(brk)
        if not self._present():
            token = _token(owner)
            cand = "releases/%s%s" % (NEW_PREFIX, token[:16])
            try:
                self.fs.mkdir(cand)
                self.fs.write_bytes(cand + "/owner", owner.encode())
                self.fs.write_bytes(cand + "/heartbeat", b"0")
                self.fs.rename(cand, LOCK)
            except OSError as exc:
                try:
                    self.fs.rmtree(cand)
                except OSError:
                    pass
                if self.fs.is_dir(LOCK):
                    return self._held()
                if self.fs.exists(LOCK):
                    self._not_a_directory()
                raise Refused("lock_failed", "cannot take the deploy lock %s: %s" % (self.p(LOCK), _os_text(exc)))
            self.owner = owner
            if heartbeat_s:
                self._stop = threading.Event()
                t = threading.Thread(target=self._beat, args=(token, float(heartbeat_s), self._stop))
                t.daemon = True
                t.start()
            return {"locked": True}
        return self._held()

    def _held(self):
        return {"locked": False, "held": self.read(LOCK + "/owner", OWNER_LIMIT),
                "beat": self.read(LOCK + "/heartbeat", OWNER_LIMIT)}

    def _present(self):
        if self.fs.is_dir(LOCK):
            return True
        if self.fs.exists(LOCK):
            self._not_a_directory()
        return False

    def _not_a_directory(self):
        raise Refused("lock_failed", "%s exists but is not a directory: not a lock edgekit made, so it is left "
                      "alone" % self.p(LOCK), hint="remove %s on the device if nothing uses it" % self.p(LOCK))

    def _break(self, held):
        """Set a lock judged dead aside and remove it; give it back if it changed hands meanwhile."""
        aside = "releases/%s%s" % (STALE_PREFIX, os.urandom(8).hex()[:12])
        try:
            self.fs.rename(LOCK, aside)
        except OSError:
            return
        try:
            if self.read(aside + "/owner", OWNER_LIMIT) != held.strip() and not self.fs.exists(LOCK):
                self.fs.rename(aside, LOCK)
                return
            self.fs.rmtree(aside)
        except OSError:
            pass  # a later deploy removes what is left aside

    def _beat(self, token, every, stop):
        # Tagged with our token: a beat into a lock someone else took (ours broken) keeps nothing alive.
        write = getattr(self.fs, "write_bytes_aside", self.fs.write_bytes)  # a host fs: its own channel
        n = 0
        while not stop.wait(every):
            if not self.host_alive(every):
                continue  # the host went silent (a link partitioned without a FIN): let the lock go stale
            n += 1
            try:
                write(LOCK + "/heartbeat", ("%d %s" % (n, token[:8])).encode())
            except Exception:  # noqa: BLE001 - a lost link fails the deploy's own next request
                pass

    def host_alive(self, every):
        """In a session on the device: the host spoke within the last three beats, or a request is
        being worked on (hashing a large release). Elsewhere (the host runs this logic itself) the
        beating process is the host."""
        if self.heard is None:
            return True
        return self.working or time.monotonic() - self.heard < 3 * every

    def still_held(self):
        return self.owner is not None and self.read(LOCK + "/owner", OWNER_LIMIT) == self.owner.strip()

    def require(self, owner):
        """Operations that change releases run only under the caller's own lock."""
        if not isinstance(owner, str) or not owner:
            raise Refused("bad_request", "owner: expected the lock owner text")
        if self.owner is None:
            self.owner = owner  # a one-shot invocation: the lock was taken by an earlier one
        if self.owner != owner or not self.still_held():
            raise Refused("lock_lost", "the deploy lock was taken over by another deploy (%s); stopping before "
                          "the switch" % _owner_line(self.read(LOCK + "/owner", OWNER_LIMIT)))

    def unlock(self):
        if self._stop is not None:
            self._stop.set()
        released = False
        if self.still_held():
            aside = "releases/%s%s" % (STALE_PREFIX, _token(self.owner)[:12])
            self.fs.rename(LOCK, aside)  # released atomically: never a lock without its owner
            self.fs.rmtree(aside)
            released = True
        self.owner = None
        return released

    # -- a release ------------------------------------------------------------------------------
    def claim(self, partial):
        """Make ``partial`` ours; a new one appears with our mark already inside."""
        mark = partial + "/" + PARTIAL_OWNER
        if self.fs.is_dir(partial):
            self.fs.write_bytes(mark, self.owner.encode())
            return
        self.fs.rmtree(partial)  # a file or a planted link: unlinked, never followed
        cand = "releases/%s%s-partial" % (NEW_PREFIX, _token(self.owner)[:16])
        try:
            self.fs.mkdir(cand)
            self.fs.write_bytes(cand + "/" + PARTIAL_OWNER, self.owner.encode())
            self.fs.rename(cand, partial)
        except BaseException:
            try:
                self.fs.rmtree(cand)
            except OSError:
                pass
            raise

    def ensure_dirs(self, base, name):
        """Parent directories of ``name`` under ``base``, each a real directory (links refused)."""
        parts = name.split("/")[:-1]
        here = base
        for part in parts:
            here = here + "/" + part
            if not self.fs.is_dir(here):
                if self.fs.exists(here):
                    self.fs.rmtree(here)
                self.fs.mkdir(here)

    def point(self, target):
        tmp = "%s%s" % (CURRENT_TMP, os.urandom(8).hex()[:8])
        self.fs.symlink(target, tmp)
        try:
            self.fs.rename(tmp, "current")
        except BaseException:
            self.fs.rmtree(tmp)
            raise

    def write_history(self, lines):
        text = "\n".join(lines[-HISTORY_LINES:]) + "\n"
        try:
            self.fs.write_bytes(HISTORY_TMP, text.encode())
            self.fs.rename(HISTORY_TMP, "history")
        except BaseException:
            try:
                self.fs.rmtree(HISTORY_TMP)
            except OSError:
                pass
            raise

    def switch(self, release, history, line):
        """Log ``line``, then point ``current`` at ``release`` (or drop it when None)."""
        self.write_history(history + [line])
        if release is None:
            self.fs.rmtree("current")
        else:
            self.point("releases/" + release)

    def switch_leftovers(self):
        try:
            entries = self.fs.listdir("")
        except OSError:
            return []
        return [e for e in entries
                if e == HISTORY_TMP or (e.startswith(CURRENT_TMP) and len(e) == len(CURRENT_TMP) + 8)]


def _token(owner):
    try:
        o = json.loads(owner)
        tok = str(o.get("token", "")) if isinstance(o, dict) else ""
    except (ValueError, RecursionError):
        tok = ""
    tok = "".join(c for c in tok if c.isalnum())
    return tok or hashlib.sha256(owner.encode()).hexdigest()


def _owner_line(raw):
    try:
        o = json.loads(raw)
    except (ValueError, RecursionError):
        o = None
    if not isinstance(o, dict):
        return "owner unknown"
    clean = lambda v: "".join(c for c in str(v)[:64] if c.isprintable())  # noqa: E731
    return "held by pid %s on %s" % (clean(o.get("pid", "?")), clean(o.get("host", "?")))


def _os_text(exc):
    text = exc.strerror or str(exc) or type(exc).__name__
    return "%s (%s)" % (text, exc.filename) if getattr(exc, "filename", None) else text


# release.py takes everything (``from release_layout import *``), helpers and imported modules too.
__all__ = [_n for _n in dir() if not _n.startswith("__")]
