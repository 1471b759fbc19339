"""Build a board's root filesystem once: debootstrap arm64, then the aarch64 wheels inside it.

A root filesystem lives in ``<cache>/rootfs/<name>-<key>`` (key: ``recipe.rootfs_key``) and is
complete when it holds ``.edgekit-complete``; a build goes to ``<name>-<key>.partial`` and is
renamed at the end, so an interrupted build is never mistaken for a finished one.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from emu_host import BoardsError, log, mount_script, namespaced, safe_rmtree
from emu_recipe import CPUS, DEBOOTSTRAP_INCLUDE, Rootfs, cpuinfo, pip_download_argv, rootfs_key

COMPLETE = ".edgekit-complete"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def apt_mirror() -> str:
    """$EDGEKIT_BOARDS_MIRROR, else the Debian mirror this host's apt uses, else deb.debian.org."""
    if os.environ.get("EDGEKIT_BOARDS_MIRROR"):
        return os.environ["EDGEKIT_BOARDS_MIRROR"]
    files = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for url in re.findall(r"(?:^deb\s+(?:\[[^\]]*\]\s+)?|^URIs:\s*)(\S+)", text, re.M):
            if url.rstrip("/").endswith("/debian") and url.startswith("http"):
                return url.rstrip("/")
    return DEFAULT_MIRROR


def rootfs_dir(cache: Path, rootfs: Rootfs) -> Path:
    return cache / "rootfs" / f"{rootfs.name}-{rootfs_key(rootfs)}"


def is_built(cache: Path, rootfs: Rootfs) -> bool:
    return (rootfs_dir(cache, rootfs) / COMPLETE).is_file()


def built_info(cache: Path, rootfs: Rootfs) -> Dict[str, object]:
    return json.loads((rootfs_dir(cache, rootfs) / COMPLETE).read_text())


def _run_logged(argv: List[str], logf: Path, what: str, env: Optional[Dict[str, str]] = None) -> str:
    with open(logf, "a") as out:
        out.write(f"\n$ {' '.join(shlex.quote(a) for a in argv)}\n")
        out.flush()
        res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        out.write(res.stdout)
    if res.returncode != 0:
        lines = [ln for ln in res.stdout.strip().splitlines() if ln.strip()]
        raise BoardsError(f"{what} failed (exit {res.returncode}): {lines[-1] if lines else 'no output'} (log: {logf})")
    return res.stdout


def download_wheels(cache: Path, rootfs: Rootfs, logf: Path) -> Path:
    """The aarch64 wheels, fetched on the host (pip cannot resolve them from inside qemu faster)."""
    dest = cache / "wheels" / f"{rootfs.name}-{rootfs_key(rootfs)}"
    if (dest / COMPLETE).is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    _run_logged([sys.executable, "-m", "pip", *pip_download_argv(rootfs, str(dest))], logf,
                f"pip download of the {rootfs.name} wheels")
    (dest / COMPLETE).write_text(json.dumps(sorted(p.name for p in dest.glob("*.whl"))))
    return dest


def chroot_script(root: Path, cpu: str, command: List[str]) -> List[str]:
    """The tail of a namespace script: run ``command`` in the chroot under the matching QEMU_CPU."""
    env = ["/usr/bin/env", "-i", f"PATH={CHROOT_PATH}", "HOME=/root", "LANG=C.UTF-8", f"QEMU_CPU={cpu}"]
    # qemu reads QEMU_CPU when each aarch64 program starts: chroot's environment for env itself.
    return [f"export QEMU_CPU={shlex.quote(cpu)}",
            "exec chroot " + shlex.quote(str(root)) + " " + " ".join(shlex.quote(a) for a in env + command)]


def build_rootfs(cache: Path, rootfs: Rootfs, cpu: str) -> Path:
    """Build (or reuse) the root filesystem; returns its directory."""
    final = rootfs_dir(cache, rootfs)
    if (final / COMPLETE).is_file():
        return final
    t0 = time.monotonic()
    logs = cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    logf = logs / f"build-{final.name}.log"
    logf.write_text(f"building {final.name}\n")
    partial = final.with_name(final.name + ".partial")
    safe_rmtree(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    mirror = apt_mirror()
    log(f"building the {rootfs.name} root filesystem (debootstrap arm64 from {mirror}; ~5 min; log: {logf})")
    # pip download runs beside debootstrap: different resources (PyPI vs the Debian mirror + qemu).
    import threading

    wheels: Dict[str, object] = {}

    def fetch() -> None:
        try:
            wheels["dir"] = download_wheels(cache, rootfs, logs / f"wheels-{final.name}.log")
        except BaseException as exc:  # reported after debootstrap
            wheels["error"] = exc

    fetcher = threading.Thread(target=fetch, daemon=True)
    fetcher.start()
    # debootstrap mounts /proc and /sys in the target during its second stage; in a private
    # namespace those mounts cannot outlive it, even when it fails half-way.
    _run_logged(namespaced([f"exec debootstrap --arch=arm64 --variant=minbase --include={DEBOOTSTRAP_INCLUDE} "
                            f"{shlex.quote(rootfs.suite)} {shlex.quote(str(partial))} {shlex.quote(mirror)}"]),
                logf, f"debootstrap of {rootfs.suite} arm64")
    fetcher.join()
    if "error" in wheels:
        raise wheels["error"]  # type: ignore[misc]
    wheel_dir = Path(str(wheels["dir"]))
    cpu_file = cache / "cpuinfo" / f"{cpu}.txt"
    cpu_file.parent.mkdir(parents=True, exist_ok=True)
    cpu_file.write_text(cpuinfo(CPUS[cpu]))
    # Mount points the boards bind their own files over.
    (partial / "etc" / "edgekit-board").mkdir(exist_ok=True)
    (partial / "etc" / "edgekit-emulated").write_text("")
    (partial / "mnt" / "wheels").mkdir(parents=True, exist_ok=True)
    names = [re.split(r"[<>=!~ ]", w, 1)[0] for w in rootfs.wheels]
    install = ["python3", "-m", "pip", "install", "--quiet", "--no-cache-dir", "--no-index", "--find-links",
               "/mnt/wheels", *rootfs.pip_flags, *rootfs.wheels]
    lines = mount_script(partial, cpu_file, binds=[(wheel_dir, "/mnt/wheels")]) + chroot_script(partial, cpu, install)
    _run_logged(namespaced(lines), logf, f"pip install {' '.join(names)} in the {rootfs.name} root filesystem")
    probe = ("import json, platform, sys; import numpy\n"
             "v = {'python': platform.python_version(), 'machine': platform.machine(), 'numpy': numpy.__version__}\n"
             f"for m in {list(rootfs.imports[1:])!r}:\n"
             "    v[m] = __import__(m).__version__ if hasattr(__import__(m), '__version__') else 'unknown'\n"
             "print(json.dumps(v))")
    lines = mount_script(partial, cpu_file) + chroot_script(partial, cpu, ["python3", "-c", probe])
    out = _run_logged(namespaced(lines), logf, f"importing {', '.join(rootfs.imports)} in the {rootfs.name} root filesystem")
    versions = json.loads(out.strip().splitlines()[-1])
    if versions.get("machine") != "aarch64":
        raise BoardsError(f"the {rootfs.name} root filesystem reports machine {versions.get('machine')!r}, not aarch64")
    # Smaller cache: the .debs and package lists are not needed once installed.
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (partial / sub).glob("*"):
            if p.is_file():
                p.unlink()
    (partial / COMPLETE).write_text(json.dumps({"rootfs": rootfs.name, "key": rootfs_key(rootfs), "suite": rootfs.suite,
                                                "versions": versions, "build_s": round(time.monotonic() - t0, 1),
                                                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    os.rename(partial, final)
    for stale in final.parent.glob(f"{rootfs.name}-*"):
        if stale != final:  # an older recipe's build: replaced by this one
            safe_rmtree(stale)
    log(f"{rootfs.name} root filesystem ready in {time.monotonic() - t0:.0f} s: {versions}")
    return final
