"""Who holds a deploy lock, and whether that owner is provably dead: the owner record and the one
judgement both engines use: edgekit/deploy_lock.py on the host, and the Ansible collection's release
module on the device (its module_utils/lock_owner.py is a link to this file).

Standard library only, Python >= 3.8 (it runs inside Ansible's module payload). Owner records come
from the device's lock files: every value in them is hostile and only ever compared.
"""
import errno
import functools
import json
import os
import socket
import time
import uuid


def _read_local(path):
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("ascii", "replace").strip()
    except (IOError, OSError):
        return ""


def process_start(pid):
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    fields = _read_local("/proc/%d/stat" % pid).rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


@functools.lru_cache(maxsize=1)
def machine():
    """This machine's identity as far as pids mean anything: empty values where it cannot be told
    (then no lock is ever judged dead by pid, only by its heartbeat)."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = ""
    # /proc mounted for another PID namespace (unshare -p without --mount-proc) shows other pids.
    if _read_local("/proc/self/stat").split(" ", 1)[0] != str(os.getpid()):
        pid_ns = ""
    return {"machine_id": _read_local("/etc/machine-id") or _read_local("/var/lib/dbus/machine-id"),
            "boot_id": _read_local("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns}


def new_owner(**extra):
    """A fresh owner record: a random token, plus what lets this machine later prove its process gone."""
    pid = os.getpid()
    owner = {"token": uuid.uuid4().hex, "pid": pid, "start": process_start(pid), "host": socket.gethostname(),
             "time": round(time.time(), 3)}
    owner.update(extra)
    owner.update(machine())
    return owner


def parse_owner(raw):
    """An owner record read from the device, or None when it is not a JSON object."""
    try:
        owner = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return owner if isinstance(owner, dict) else None


def owner_dead(owner, still_mine):
    """True only when the owner provably no longer runs: taken on this machine, in this boot and this
    PID namespace, and its process is gone or is another process now. An owner in this very process
    is dead unless ``still_mine(token)``: a deploy whose connection was lost no longer holds it, and
    only the caller knows which tokens it holds."""
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
        return not still_mine(owner.get("token"))
    try:
        os.kill(pid, 0)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return True
        # EPERM: a process runs under that pid (another user's); its start time tells whether it is ours
    start = process_start(pid)
    return start is not None and owner.get("start") is not None and start != owner.get("start")
