"""The deploy lock of one device: ``releases/.lock``, a directory holding ``owner`` and ``heartbeat``.

Why it is built this way:

- **It appears whole.** The lock is prepared as ``releases/.lock-new-<token>`` (owner written) and
  renamed to ``releases/.lock``; rename(2) of a directory onto a non-empty one fails, so a lock is
  never seen without its owner, and two deployers can never both win.
- **The owner is an identity, not a host name.** A random token, plus this machine's machine-id,
  boot id and PID namespace, plus the pid and that process's start time. Containers and cloned
  SD-card images share host names (and often machine-ids); PID namespaces make a pid meaningless
  elsewhere. A lock is broken at once only when its owner is *provably* dead: same machine-id, same
  boot, same PID namespace, and its process gone (or a different process under the same pid).
- **Otherwise only a silent heartbeat breaks it.** The holder rewrites ``heartbeat`` every
  ``EDGEKIT_LOCK_HEARTBEAT_S`` seconds (5) over a side channel, each beat tagged with its token; a
  waiter breaks the lock only after watching the owner and the owner's own heartbeat stay unchanged for ``EDGEKIT_LOCK_STALE_S`` (45) seconds by its
  own monotonic clock, so clock skew between deployers (boards without an RTC) cannot make a live
  lock look old.
- **Breaking is a rename aside** (``.lock-stale-*``) and a check that the owner is still the one we
  judged dead; the aside copy is removed right away (a later deploy removes any left by a crash).

The same owner record marks a ``.partial`` upload (``.edgekit-owner`` inside it, there from the moment
the directory appears), so pruning removes only partials of its own deployer, of a provably dead one,
or unmarked ones an older edgekit left.
"""
from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Dict, Optional, Set

from .errors import ConfigError, DeployError
from .transport import Transport

LOCK = "releases/.lock"
NEW_PREFIX = ".lock-new-"
STALE_PREFIX = ".lock-stale-"
PARTIAL_OWNER = ".edgekit-owner"
OWNER_LIMIT = 1 << 16
"""Bytes of an owner or heartbeat file read: a device's files are bounded like its output."""
POLL_S = 0.2
HEARTBEAT_S = 5.0
STALE_S = 45.0
"""Below the CLI's default --lock-timeout (60 s), so a waiter with the defaults can break a dead lock."""

_held: Set[str] = set()  # tokens of the locks this process holds right now
_held_guard = threading.Lock()


def _setting(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise ConfigError(f"environment variable {name}={raw[:40]!r}: expected seconds > 0")
    return value


def _read_local(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("ascii", "replace").strip()
    except OSError:
        return ""


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    stat = _read_local(f"/proc/{pid}/stat")
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


@functools.lru_cache(maxsize=1)
def machine() -> Dict[str, str]:
    """This machine's identity as far as pids mean anything: empty values where it cannot be told
    (then no lock is ever judged dead by pid, only by its heartbeat)."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = ""
    # /proc mounted for another PID namespace (unshare -p without --mount-proc) shows other pids.
    if _read_local("/proc/self/stat").split(" ", 1)[0] != str(os.getpid()):
        pid_ns = ""
    machine_id = _read_local("/etc/machine-id") or _read_local("/var/lib/dbus/machine-id")
    return {"machine_id": machine_id, "boot_id": _read_local("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns}


def new_owner() -> Dict[str, Any]:
    pid = os.getpid()
    return {"token": uuid.uuid4().hex, "pid": pid, "start": _start_time(pid), "host": socket.gethostname(),
            "time": round(time.time(), 3), **machine()}


def parse_owner(raw: str) -> Optional[Dict[str, Any]]:
    try:
        owner = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return owner if isinstance(owner, dict) else None


def owner_dead(owner: Dict[str, Any]) -> bool:
    """True only when the owner provably no longer runs: taken on this machine, in this boot and this
    PID namespace, and its process is gone or is another process now (or it is this very process,
    which no longer holds it: a deploy whose connection was lost)."""
    me = machine()
    if not all(me.values()) or any(owner.get(k) != v for k, v in me.items()):
        return False
    try:
        pid = int(owner["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    if pid == os.getpid():
        with _held_guard:
            return owner.get("token") not in _held
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    start = _start_time(pid)
    return start is not None and owner.get("start") is not None and start != owner.get("start")


def _clean(value: Any, limit: int = 64) -> str:
    """A device-provided value for one line of output: printable characters only, bounded."""
    return "".join(c for c in str(value)[:limit] if c.isprintable())


def describe_owner(raw: str) -> str:
    o = parse_owner(raw)
    if o is None:
        return "owner unknown"
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(o["time"])))
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        since = "an unknown time"
    where = "this machine" if all(machine().values()) and all(o.get(k) == v for k, v in machine().items()) \
        else f"machine {_clean(o.get('machine_id') or '?', 12)}"
    return f"held by pid {_clean(o.get('pid', '?'), 12)} on {_clean(o.get('host', '?'))} ({where}) since {since}"


class DeviceLock:
    """``releases/.lock`` on one device; use as ``lock = DeviceLock(t).acquire()`` ... ``lock.release()``."""

    def __init__(self, fs: Transport, timeout: float, *, stale_s: Optional[float] = None,
                 heartbeat_s: Optional[float] = None) -> None:
        self.fs = fs
        self.timeout = timeout
        self.stale_s = stale_s if stale_s is not None else _setting("EDGEKIT_LOCK_STALE_S", STALE_S)
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else _setting("EDGEKIT_LOCK_HEARTBEAT_S", HEARTBEAT_S)
        self.owner = new_owner()
        self.text = json.dumps(self.owner, sort_keys=True)
        self.token = str(self.owner["token"])
        self._stop = threading.Event()
        self._beater: Optional[threading.Thread] = None

    def _read(self, path: str) -> str:
        try:
            return self.fs.read_head(path, OWNER_LIMIT).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    # -- taking it ------------------------------------------------------------------------------
    def acquire(self) -> "DeviceLock":
        name = self.fs.name
        try:
            self.fs.makedirs("releases")
        except OSError as exc:
            raise DeployError(f"device '{name}': cannot create {self.fs.path('releases')}: {os_text(exc)}",
                              hint="check that the device directory is writable (not a read-only filesystem)",
                              kind="lock_failed") from None
        deadline = time.monotonic() + self.timeout
        seen: Optional[tuple] = None
        since = time.monotonic()
        while True:
            if not self._present() and self._offer():
                with _held_guard:
                    _held.add(self.token)
                self._beater = threading.Thread(target=self._beat, name=f"edgekit-lock-{name}", daemon=True)
                self._beater.start()
                return self
            held, beat = self._read(f"{LOCK}/owner"), self._read(f"{LOCK}/heartbeat")
            owner = parse_owner(held)
            if not (owner is not None and beat.endswith(f" {str(owner.get('token', ''))[:8]}")):
                beat = ""  # not the owner's beat: a deposed holder still beating keeps nobody's lock alive
            now = time.monotonic()
            if (held, beat) != seen:
                seen, since = (held, beat), now
            if (owner is not None and owner_dead(owner)) or now - since >= self.stale_s:
                if self._break(held):
                    seen = None
                    continue
            if now >= deadline:
                raise DeployError(
                    f"device '{name}': another deploy holds the lock {self.fs.path(LOCK)} ({describe_owner(held)})",
                    hint=f"wait for it to finish (--lock-timeout); a lock whose owner is gone is broken once its "
                         f"heartbeat has not moved for {self.stale_s:.0f} s (EDGEKIT_LOCK_STALE_S)", kind="locked")
            time.sleep(POLL_S)

    def _present(self) -> bool:
        """Whether a lock is there; a lock path that is not a directory is refused, never broken."""
        if self.fs.is_dir(LOCK):
            return True
        if self.fs.exists(LOCK):
            self._refuse_non_directory()
        return False

    def _refuse_non_directory(self) -> None:
        where = self.fs.path(LOCK)
        raise DeployError(f"device '{self.fs.name}': {where} exists but is not a directory: not a lock edgekit "
                          "made, so it is left alone", hint=f"remove {where} on the device if nothing uses it",
                          kind="lock_failed")

    def _offer(self) -> bool:
        """Try once to install our lock: True when it is ours, False when another lock is there."""
        cand = f"releases/{NEW_PREFIX}{self.token[:16]}"
        try:
            self.fs.mkdir(cand)
            self.fs.write_bytes(f"{cand}/owner", self.text.encode())
            self.fs.write_bytes(f"{cand}/heartbeat", b"0")
            self.fs.rename(cand, LOCK)
            return True
        except OSError as exc:
            failure = exc
        try:
            self.fs.rmtree(cand)
            busy = self.fs.is_dir(LOCK)
            other = not busy and self.fs.exists(LOCK)
        except OSError:
            busy = other = False
        if busy:
            return False
        if other:
            self._refuse_non_directory()
        raise DeployError(f"device '{self.fs.name}': cannot take the deploy lock {self.fs.path(LOCK)}: "
                          f"{os_text(failure)}",
                          hint="check that the device directory is writable (not a read-only or full filesystem)",
                          kind="lock_failed")

    def _break(self, held: str) -> bool:
        """Set a dead lock aside and remove it; False when it changed hands meanwhile."""
        aside = f"releases/{STALE_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            self.fs.rename(LOCK, aside)
        except OSError:
            return False  # another waiter broke it first
        try:
            if self._read(f"{aside}/owner") != held:
                # A fresh lock taken between our look and the rename: give it back while we can. If yet
                # another deploy locked meanwhile, the aside owner finds it lost the lock before it
                # switches anything (still_held), and aborts.
                if not self.fs.exists(LOCK):
                    self.fs.rename(aside, LOCK)
                    return False
            self.fs.rmtree(aside)
        except OSError:
            pass  # a later deploy removes what is left aside
        return True

    # -- holding it -----------------------------------------------------------------------------
    def _beat(self) -> None:
        n = 0
        while not self._stop.wait(self.heartbeat_s):
            n += 1
            try:
                self.fs.write_bytes_aside(f"{LOCK}/heartbeat", f"{n} {self.token[:8]}".encode())
            except Exception:  # noqa: BLE001 - a background beat must never kill the deploy; a lost
                pass           # link fails the deploy's own next request, which reports it

    def still_held(self) -> bool:
        return self._read(f"{LOCK}/owner") == self.text

    def check(self) -> None:
        """Refuse to go on (before a switch) when our lock was broken by someone else."""
        if not self.still_held():
            raise DeployError(f"device '{self.fs.name}': the deploy lock was taken over by another deploy "
                              f"({describe_owner(self._read(f'{LOCK}/owner'))}); stopping before the switch",
                              kind="lock_lost")

    def release(self) -> None:
        self._stop.set()
        if self._beater is not None:
            self._beater.join(10)
        with _held_guard:
            _held.discard(self.token)
        if self.still_held():
            aside = f"releases/{STALE_PREFIX}{self.token[:12]}"
            self.fs.rename(LOCK, aside)  # released atomically: never a lock without its owner
            self.fs.rmtree(aside)

    # -- what it owns ---------------------------------------------------------------------------
    def claim(self, partial: str) -> None:
        """Make ``partial`` ours (see ``abandoned``). A new one appears with our mark already inside
        (prepared under a candidate name, then renamed), so no other deployer's prune ever sees it
        unmarked; an abandoned one being resumed gets our mark. Anything but a real directory there
        (a link a device planted, which uploads would follow) is removed first, never followed."""
        mark = f"{partial}/{PARTIAL_OWNER}"
        if self.fs.is_dir(partial):
            self.fs.write_bytes(mark, self.text.encode())
            return
        self.fs.rmtree(partial)  # a file or a link: unlinked, never followed
        cand = f"releases/{NEW_PREFIX}{self.token[:16]}-partial"
        try:
            self.fs.mkdir(cand)
            self.fs.write_bytes(f"{cand}/{PARTIAL_OWNER}", self.text.encode())
            self.fs.rename(cand, partial)
        except BaseException:
            try:
                self.fs.rmtree(cand)
            except OSError:
                pass  # the link is gone: a later deploy removes it (leftover)
            raise

    def abandoned(self, partial: str) -> bool:
        """A .partial that nobody will finish: ours, unmarked (made by an older edgekit), or marked by
        an owner that is provably dead. One marked by a live (or unknown) deployer is kept."""
        raw = self._read(f"{partial}/{PARTIAL_OWNER}")
        if not raw:
            return True
        owner = parse_owner(raw)
        return owner is not None and (owner.get("token") == self.token or owner_dead(owner))

    def leftover(self, name: str) -> bool:
        """A dot-entry of releases/ a lock operation left behind and nobody uses: a lock set aside, or
        a candidate lock of a provably dead deployer."""
        if name.startswith(STALE_PREFIX):
            return True
        if name.startswith(NEW_PREFIX):
            inside = PARTIAL_OWNER if name.endswith("-partial") else "owner"
            owner = parse_owner(self._read(f"releases/{name}/{inside}"))
            return owner is not None and (owner.get("token") == self.token or owner_dead(owner))
        return False


def os_text(exc: OSError) -> str:
    """One line for an OSError (local errno text, or the SFTP server's message)."""
    text = exc.strerror or str(exc) or type(exc).__name__
    name = getattr(exc, "filename", None)
    return f"{text} ({name})" if name else text
