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
- **Otherwise only a silent heartbeat breaks it.** The holder's release session rewrites
  ``heartbeat`` every ``EDGEKIT_LOCK_HEARTBEAT_S`` seconds (5) (a thread of the release script on
  the device, or of this process where the logic runs here), each beat tagged with its token; a
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

import json
import os
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Set

from .device.lock_owner import machine, new_owner, parse_owner  # noqa: F401
from .device.lock_owner import owner_dead as _owner_dead
from .device.release import DAMAGED, LOCK, NEW_PREFIX, OWNER_LIMIT, PARTIAL_OWNER, STALE_PREFIX  # noqa: F401
from .errors import ConfigError, DeployError
from .transport import ReleaseSession, Transport
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


def owner_dead(owner: Dict[str, Any]) -> bool:
    """True only when the owner provably no longer runs (see edgekit/device/lock_owner.py), or it is
    this very process, which no longer holds it: a deploy whose connection was lost."""
    def still_mine(token: Any) -> bool:
        with _held_guard:
            return token in _held

    return _owner_dead(owner, still_mine)


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
    """``releases/.lock`` of one device, taken through its release session (the device side is
    edgekit/device/release.py's ``lock``/``unlock``); what only this host can judge (whether an
    owner's process still runs here, whether a heartbeat stood still by our clock) is judged here."""

    def __init__(self, session: ReleaseSession, t: Transport, timeout: float, *, stale_s: Optional[float] = None,
                 heartbeat_s: Optional[float] = None) -> None:
        self.session = session
        self.t = t
        self.timeout = timeout
        self.stale_s = stale_s if stale_s is not None else _setting("EDGEKIT_LOCK_STALE_S", STALE_S)
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else _setting("EDGEKIT_LOCK_HEARTBEAT_S", HEARTBEAT_S)
        self.owner = new_owner()
        self.text = json.dumps(self.owner, sort_keys=True)
        self.token = str(self.owner["token"])
        self.held = False

    def acquire(self, follow: Sequence[Dict[str, Any]] = ()) -> List[Dict[str, Any]]:
        """Take the lock, then run ``follow`` under it in the same round trip; their answers."""
        name = self.t.name
        deadline = time.monotonic() + self.timeout
        seen: Optional[tuple] = None
        since = time.monotonic()
        brk: Optional[str] = None
        while True:
            req = {"op": "lock", "owner": self.text, "heartbeat_s": self.heartbeat_s}
            if brk is not None:
                req["break"] = brk
            # Marked held before asking: the answer comes back only after ``follow`` ran under the
            # lock, and another thread of this process must not judge the lock dead meanwhile.
            with _held_guard:
                _held.add(self.token)
            try:
                answers = self.session.send([req, *follow])
            except BaseException:
                self.forget()
                raise
            got, brk = answers[0], None
            if not got.get("locked"):
                self.forget()
            if not got.get("ok"):
                raise DeployError(f"device '{name}': {_clean(got.get('error'), 500)}",
                                  hint=_clean(got.get("hint"), 500) if got.get("hint") else
                                  "check that the device directory is writable (not a read-only or full filesystem)",
                                  kind=_clean(got.get("kind") or "lock_failed", 40))
            if got.get("locked"):
                self.held = True
                self.session.keepalive(self.heartbeat_s)
                return answers[1:]
            held, beat = str(got.get("held") or "")[:OWNER_LIMIT], str(got.get("beat") or "")[:OWNER_LIMIT]
            owner = parse_owner(held)
            if not (owner is not None and beat.endswith(f" {str(owner.get('token', ''))[:8]}")):
                beat = ""  # not the owner's beat: a deposed holder still beating keeps nobody's lock alive
            now = time.monotonic()
            if (held, beat) != seen:
                seen, since = (held, beat), now
            if (owner is not None and owner_dead(owner)) or now - since >= self.stale_s:
                brk, seen = held, None
                continue
            if now >= deadline:
                raise DeployError(
                    f"device '{name}': another deploy holds the lock {self.t.path(LOCK)} ({describe_owner(held)})",
                    hint=f"wait for it to finish (--lock-timeout); a lock whose owner is gone is broken once its "
                         f"heartbeat has not moved for {self.stale_s:.0f} s (EDGEKIT_LOCK_STALE_S)", kind="locked")
            time.sleep(POLL_S)

    def forget(self) -> None:
        """The device released it (an unlock sent with the commit)."""
        self.held = False
        with _held_guard:
            _held.discard(self.token)

    def release(self) -> None:
        with _held_guard:
            _held.discard(self.token)
        if self.held:
            self.held = False
            self.session.call({"op": "unlock", "owner": self.text})

    def abandoned(self, name: str, raw: str) -> bool:
        """A dot-entry or .partial of releases/ nobody will finish or use (prepare lists them with
        their owner mark): a lock set aside or a damaged release moved aside; a .partial or candidate
        lock unmarked (an older edgekit), ours, or marked by an owner that is provably dead."""
        if name.startswith(STALE_PREFIX) or name.startswith(DAMAGED):
            return True
        if not raw:
            return not name.startswith(NEW_PREFIX)  # an unmarked .partial; a candidate lock being made
        owner = parse_owner(raw)
        return owner is not None and (owner.get("token") == self.token or owner_dead(owner))


def os_text(exc: OSError) -> str:
    """One line for an OSError (local errno text, or the SFTP server's message)."""
    text = exc.strerror or str(exc) or type(exc).__name__
    name = getattr(exc, "filename", None)
    return f"{text} ({name})" if name else text
