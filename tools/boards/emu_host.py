"""The host side of the emulator: root, tools, binfmt_misc, and processes in mount namespaces.

Every mount the boards need (proc, the cpuinfo bind, sysfs, /dev, homes) is made inside a private
mount namespace (``unshare --mount``) that belongs to one process tree: the host's mount table
never sees them, and they vanish with the last process of the tree. So cleaning up is stopping
processes; ``leftover_mounts`` checks that nothing leaked anyway.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU = "/usr/bin/qemu-aarch64-static"
APT_PACKAGES = ("qemu-user-static", "debootstrap", "binfmt-support")


class BoardsError(Exception):
    """One line for the user; boards.py prints it and exits non-zero."""


def log(msg: str) -> None:
    print(f"boards: {msg}", flush=True)


def require_root() -> None:
    if os.geteuid() != 0:
        raise BoardsError("must run as root (debootstrap, chroot, mounts and binfmt_misc need it); try: sudo make boards")


def _missing_tools() -> List[str]:
    return [t for t, path in (("qemu-user-static", QEMU), ("debootstrap", "/usr/sbin/debootstrap"),
                              ("binfmt-support", "/usr/sbin/update-binfmts"))
            if not os.path.exists(path) and shutil.which(os.path.basename(path)) is None]


def ensure_tools() -> None:
    """Install qemu-user-static, debootstrap and binfmt-support through apt when any is missing."""
    missing = _missing_tools()
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise BoardsError(f"{', '.join(missing)} missing and no apt-get to install them; install them and retry")
    log(f"installing {' '.join(APT_PACKAGES)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *APT_PACKAGES]):
        res = subprocess.run(argv, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BoardsError(f"'{' '.join(argv)}' failed: {tail[0]}")
    still = _missing_tools()
    if still:
        raise BoardsError(f"apt-get ran but {', '.join(still)} is still missing")


def binfmt_entry() -> Dict[str, str]:
    """/proc/sys/fs/binfmt_misc/qemu-aarch64 as a dict ('enabled', 'interpreter', 'flags')."""
    path = BINFMT / "qemu-aarch64"
    out: Dict[str, str] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if line in ("enabled", "disabled"):
            out["state"] = line
        elif key.rstrip(":") in ("interpreter", "flags"):
            out[key.rstrip(":")] = value.strip()
    return out


def ensure_binfmt() -> None:
    """qemu-aarch64 registered with flag F (the interpreter opened at registration, so it works
    inside a chroot that has no qemu binary)."""
    if not (BINFMT / "status").exists():
        res = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, text=True)
        if res.returncode != 0:
            raise BoardsError(f"cannot mount binfmt_misc at {BINFMT}: {res.stderr.strip() or 'mount failed'}"
                              " (a container needs --privileged, or the host's binfmt_misc)")
    if not binfmt_entry():
        res = subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, text=True)
        if not binfmt_entry():
            raise BoardsError("cannot register qemu-aarch64 with binfmt_misc: "
                              f"{(res.stderr or res.stdout).strip() or 'update-binfmts --enable qemu-aarch64 failed'}")
    entry = binfmt_entry()
    if entry.get("state") != "enabled":
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
        entry = binfmt_entry()
        if entry.get("state") != "enabled":
            raise BoardsError("binfmt_misc has qemu-aarch64 but it is disabled and cannot be enabled")
    if "F" not in entry.get("flags", ""):
        raise BoardsError(f"binfmt_misc's qemu-aarch64 lacks flag F (flags: {entry.get('flags') or 'none'}); "
                          "chroots cannot start aarch64 programs without it (reinstall qemu-user-static)")


def leftover_mounts(under: Path) -> List[str]:
    """Mount points in this (the host's) namespace at or below ``under``."""
    base = str(under.resolve())
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == base or point.startswith(base + "/"):
                found.append(point)
    return found


def safe_rmtree(path: Path) -> None:
    """rm -rf that refuses to descend into anything mounted (a bound /dev, for instance)."""
    if not path.exists():
        return
    mounted = leftover_mounts(path)
    if mounted:
        raise BoardsError(f"refusing to delete {path}: {mounted[0]} is mounted (umount it first)")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


# ----------------------------------------------------------------------------------------------
# Shell scripts run inside a fresh mount namespace
# ----------------------------------------------------------------------------------------------
def mount_script(root: Path, cpuinfo: Path, binds: Sequence[tuple] = (), run_tmpfs: bool = True) -> List[str]:
    """Shell lines mounting what a program in the chroot needs. ``binds``: (host path, path in root)."""
    r = shlex.quote(str(root))
    lines = [
        "set -e",
        f"mount -t proc proc {r}/proc",
        # qemu 7.2's onnxruntime import segfaults parsing the host's x86 cpuinfo: the board's instead.
        f"mount --bind {shlex.quote(str(cpuinfo))} {r}/proc/cpuinfo",
        # sysfs fresh rather than --rbind /sys, which drags in the cgroup submounts.
        f"mount -t sysfs sysfs {r}/sys",
        f"mount --bind /dev {r}/dev",
        f"mount --bind /dev/pts {r}/dev/pts",
    ]
    if run_tmpfs:
        lines += [f"mount -t tmpfs -o mode=0755 tmpfs {r}/run", f"mkdir -p {r}/run/sshd"]
    for src, dest in binds:
        lines.append(f"mount --bind {shlex.quote(str(src))} {r}{shlex.quote(str(dest))}")
    return lines


def namespaced(lines: Iterable[str]) -> List[str]:
    """argv running ``lines`` in a new private mount namespace (the last line usually an exec)."""
    return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", "\n".join(lines)]


# ----------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------
def mount_ns(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def pids_in_ns(ns: str) -> List[int]:
    """Every process whose mount namespace is ``ns`` (the board's sshd, its sessions, runners)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and mount_ns(int(entry)) == ns:
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_tree(pid: int, ns: Optional[str], timeout: float = 20.0) -> None:
    """SIGTERM a board's sshd and everything in its mount namespace, then wait for all of them
    (sshd takes over a second to exit under qemu); SIGKILL whatever outlives ``timeout``. The
    namespace, and with it every mount, is gone when this returns."""
    host_ns = mount_ns(os.getpid())
    targets = set(pids_in_ns(ns)) if ns and ns != host_ns else set()
    if alive(pid) and (ns is None or mount_ns(pid) == ns):
        targets.add(pid)
    targets.discard(os.getpid())
    for p in targets:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap()
        targets = {p for p in targets if alive(p)}
        if ns and ns != host_ns:
            targets |= set(pids_in_ns(ns)) - {os.getpid()}
        if not targets:
            return
        time.sleep(0.1)
    for p in targets:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.5)
    _reap()


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
