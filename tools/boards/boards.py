#!/usr/bin/env python3
"""Emulated ARM boards as real SSH devices on loopback (standard library only; run as root).

    boards.py up        build the root filesystems once (cached), start emu-pi5, emu-pi4, emu-bullseye
    boards.py down      stop them: sshd and every process in each board's mount namespace
    boards.py status    print the state file (--json) or one line per board
    boards.py project DIR [--out FILE]   DIR/edgekit.toml plus the boards as [[devices]]

Each board is an arm64 Debian root filesystem run by qemu-user through binfmt_misc: sshd and all
it starts are aarch64 programs in a chroot, inside a private mount namespace holding the board's
own cpuinfo (Cortex-A76 or A72, matched by QEMU_CPU), home, /tmp and /run. Cache:
$EDGEKIT_BOARDS_CACHE, else ~/.cache/edgekit/boards of the invoking user. What is written there
for the user (run/): ssh_config (Host emu-pi5 ...), known_hosts, id_ed25519, inventory.ini and
state.json, which the test tier reads.
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from emu_build import CHROOT_PATH, build_rootfs, built_info, rootfs_dir  # noqa: E402
from emu_host import (BoardsError, ensure_binfmt, ensure_tools, log, mount_ns, mount_script,  # noqa: E402
                  namespaced, require_root, stop_tree)
from emu_recipe import BOARDS, CPUS, ROOTFS, Board, cpuinfo  # noqa: E402

STATE_VERSION = 1
USER_BLOCK_BEGIN = "# >>> edgekit emulated boards (tools/boards/boards.py; removed by make boards-down) >>>"
USER_BLOCK_END = "# <<< edgekit emulated boards <<<"
DEVICE_PATH = "/root/edgekit"
DEVICE_PYTHON = "/usr/bin/python3"


def cache_dir() -> Path:
    env = os.environ.get("EDGEKIT_BOARDS_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    # The invoking user's real home, not $HOME: the test suite runs with a throwaway HOME and must
    # still find the boards that `make boards` started.
    return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "edgekit" / "boards"


def run_dir(cache: Path) -> Path:
    return cache / "run"


def load_state(cache: Path) -> Optional[Dict[str, object]]:
    path = run_dir(cache) / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _keygen(path: Path, comment: str) -> Path:
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True,
                       capture_output=True)
    return path


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(preferred: int, taken: List[int]) -> int:
    if preferred not in taken and _port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sshd_config(port: int) -> str:
    # UsePAM no: pam_loginuid fails in containers. Sessions get QEMU_CPU from ~/.ssh/environment
    # (PermitUserEnvironment), because sshd builds each session's environment from scratch and
    # qemu reads QEMU_CPU anew at every exec. Directives stay within bullseye's OpenSSH 8.4.
    return "\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", "AddressFamily inet",
        "HostKey /etc/edgekit-board/ssh_host_ed25519_key",
        "AuthorizedKeysFile /etc/edgekit-board/authorized_keys",
        "PidFile /run/sshd.pid", "UsePAM no", "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "ChallengeResponseAuthentication no",
        "PermitUserEnvironment QEMU_CPU", "PrintMotd no", "MaxStartups 32:30:64", "MaxSessions 32",
        "Subsystem sftp /usr/lib/openssh/sftp-server", "LogLevel INFO", "",
    ])


def _prepare_board(run: Path, board: Board, port: int, user_pub: Path) -> Dict[str, Path]:
    """The board's own files: etc (sshd config, host key, marker, cpuinfo), home, tmp."""
    base = run / board.name
    etc, home, tmp = base / "etc", base / "home", base / "tmp"
    for d, mode in ((base, 0o755), (etc, 0o755), (home, 0o700), (home / ".ssh", 0o700), (tmp, 0o1777)):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, mode)
    cpu = CPUS[board.cpu]
    _keygen(etc / "ssh_host_ed25519_key", f"host-{board.name}")
    (etc / "authorized_keys").write_text(user_pub.read_text())
    os.chmod(etc / "authorized_keys", 0o600)
    (etc / "sshd_config").write_text(_sshd_config(port))
    (etc / "cpuinfo").write_text(cpuinfo(cpu))
    (etc / "environment").write_text(f"QEMU_CPU={cpu.qemu}\n")
    (home / ".ssh" / "environment").write_text(f"QEMU_CPU={cpu.qemu}\n")
    # What the runner reads to mark its results as emulated (key=value lines).
    (etc / "edgekit-emulated").write_text(
        f"emulator=qemu-user\nboard={board.name}\nqemu_cpu={cpu.qemu}\nrootfs={board.rootfs}\n"
        "note=emulated, not representative: latency and power are not the board's\n")
    return {"etc": etc, "home": home, "tmp": tmp, "log": base / "sshd.log"}


def _start_board(cache: Path, board: Board, port: int, files: Dict[str, Path]) -> subprocess.Popen:
    root = rootfs_dir(cache, ROOTFS[board.rootfs])
    binds = [(files["etc"], "/etc/edgekit-board"), (files["etc"] / "environment", "/etc/environment"),
             (files["etc"] / "edgekit-emulated", "/etc/edgekit-emulated"), (files["home"], "/root"),
             (files["tmp"], "/tmp")]
    (root / "etc" / "edgekit-board").mkdir(exist_ok=True)  # mount points for the binds
    for point in ("etc/environment", "etc/edgekit-emulated"):
        (root / point).touch(exist_ok=True)
    cpu = CPUS[board.cpu].qemu
    lines = mount_script(root, files["etc"] / "cpuinfo", binds=binds) + [
        f"export QEMU_CPU={shlex.quote(cpu)}",
        # unshare and sh exec into chroot, env and sshd: the pid Popen returns is sshd's.
        "exec chroot " + shlex.quote(str(root)) + " /usr/bin/env -i " + " ".join(shlex.quote(a) for a in [
            f"PATH={CHROOT_PATH}", f"QEMU_CPU={cpu}", "LANG=C.UTF-8", "/usr/sbin/sshd", "-D", "-e", "-f",
            "/etc/edgekit-board/sshd_config"]),
    ]
    with open(files["log"], "ab") as out:
        return subprocess.Popen(namespaced(lines), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _wait_banner(proc: subprocess.Popen, port: int, logf: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = [ln for ln in logf.read_text(errors="replace").splitlines() if ln.strip()][-1:] or ["no output"]
            raise BoardsError(f"sshd on 127.0.0.1:{port} exited ({proc.returncode}): {tail[0]} (log: {logf})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(10)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BoardsError(f"sshd on 127.0.0.1:{port} did not greet within {timeout:.0f} s (log: {logf})")
        time.sleep(0.2)


def _write_client_files(run: Path, boards: Dict[str, Dict[str, object]], key: Path) -> Dict[str, Path]:
    kh = run / "known_hosts"
    cfg = run / "ssh_config"
    inv = run / "inventory.ini"
    kh.write_text("".join(f"[127.0.0.1]:{b['port']} {b['host_key']}\n" for b in boards.values()))
    blocks = []
    for name, b in boards.items():
        blocks.append("\n".join([
            f"Host {name}", "    HostName 127.0.0.1", f"    Port {b['port']}", "    User root",
            f"    IdentityFile {key}", "    IdentitiesOnly yes", f"    UserKnownHostsFile {kh}",
            "    StrictHostKeyChecking yes", ""]))
    cfg.write_text("\n".join(blocks))
    lines = ["# edgekit inventory of the emulated boards (written by tools/boards/boards.py up)", "[emu]"]
    for name, b in boards.items():
        lines.append(f"{name} ansible_host=127.0.0.1 ansible_port={b['port']} ansible_user=root "
                     f"ansible_ssh_private_key_file={key} ansible_python_interpreter={DEVICE_PYTHON} "
                     f"edgekit_target={b['target']} edgekit_path={DEVICE_PATH}")
    inv.write_text("\n".join(lines) + "\n")
    return {"known_hosts": kh, "ssh_config": cfg, "inventory": inv}


def _user_ssh_config(text: Optional[str]) -> Optional[Path]:
    """Put (text) or remove (None) the Host blocks in the user's ~/.ssh/config, between markers.
    paramiko, which edgekit uses, ignores Include, so the blocks themselves go there."""
    if os.environ.get("EDGEKIT_BOARDS_USER_SSH_CONFIG", "1") == "0":
        return None
    ssh = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh"
    path = ssh / "config"
    old = path.read_text() if path.exists() else ""
    kept, skipping = [], False
    for line in old.splitlines():
        if line == USER_BLOCK_BEGIN:
            skipping = True
        elif line == USER_BLOCK_END:
            skipping = False
        elif not skipping:
            kept.append(line)
    new = "\n".join(kept).rstrip("\n")
    if text:
        new = (new + "\n\n" if new else "") + f"{USER_BLOCK_BEGIN}\n{text.rstrip()}\n{USER_BLOCK_END}"
    if new.strip() == old.strip():
        return path
    ssh.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name("config.edgekit-tmp")
    tmp.write_text(new + "\n" if new else "")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def _ssh_check(cfg: Path, name: str) -> str:
    """uname -m through the generated ssh config: proves the alias, the key and known_hosts."""
    res = subprocess.run(["ssh", "-F", str(cfg), "-o", "BatchMode=yes", "-o", "ConnectTimeout=60", name, "uname", "-m"],
                         capture_output=True, text=True, timeout=120)
    if res.returncode != 0 or res.stdout.strip() != "aarch64":
        raise BoardsError(f"ssh {name} uname -m answered {res.stdout.strip()!r} (exit {res.returncode}): "
                          f"{res.stderr.strip().splitlines()[-1:] or ''}")
    return res.stdout.strip()


def _build_all(cache: Path, names: List[str]) -> Dict[str, float]:
    """Build the root filesystems the boards need, in parallel (each is mostly qemu on one core)."""
    wanted = {}
    for name in names:
        b = BOARDS[name]
        wanted.setdefault(b.rootfs, b.cpu)
    errors: List[BaseException] = []
    timings: Dict[str, float] = {}

    def one(rootfs: str, cpu: str) -> None:
        t0 = time.monotonic()
        try:
            build_rootfs(cache, ROOTFS[rootfs], cpu)
            timings[rootfs] = round(time.monotonic() - t0, 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=item) for item in wanted.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return timings


def up(cache: Path, names: List[str], check_ssh: bool = True) -> Dict[str, object]:
    t0 = time.monotonic()
    require_root()
    ensure_tools()
    ensure_binfmt()
    state = load_state(cache)
    if state:
        down(cache, quiet=True)  # a restart: the previous sshd's may run an older root filesystem
    build_s = _build_all(cache, names)
    run = run_dir(cache)
    run.mkdir(parents=True, exist_ok=True)
    os.chmod(run, 0o700)
    key = _keygen(run / "id_ed25519", "edgekit-boards")
    started: Dict[str, Dict[str, object]] = {}
    procs: Dict[str, subprocess.Popen] = {}
    try:
        taken: List[int] = []
        for name in names:
            board = BOARDS[name]
            port = _pick_port(board.port, taken)
            taken.append(port)
            files = _prepare_board(run, board, port, Path(str(key) + ".pub"))
            proc = _start_board(cache, board, port, files)
            procs[name] = proc
            rootfs = ROOTFS[board.rootfs]
            started[name] = {
                "host": "127.0.0.1", "port": port, "user": "root", "python": DEVICE_PYTHON, "path": DEVICE_PATH,
                "target": board.target, "cpu": board.cpu, "qemu_cpu": CPUS[board.cpu].qemu,
                "features": list(CPUS[board.cpu].features), "rootfs": board.rootfs,
                "rootfs_dir": str(rootfs_dir(cache, rootfs)), "versions": built_info(cache, rootfs)["versions"],
                "description": board.description, "pid": proc.pid, "mnt_ns": None,
                "host_key": " ".join((files["etc"] / "ssh_host_ed25519_key.pub").read_text().split()[:2]),
                "log": str(files["log"]),
            }
        for name, proc in procs.items():
            _wait_banner(proc, int(started[name]["port"]), Path(str(started[name]["log"])))  # type: ignore[arg-type]
            started[name]["mnt_ns"] = mount_ns(proc.pid)
        client = _write_client_files(run, started, key)
        state = {"version": STATE_VERSION, "cache": str(cache), "identity_file": str(key),
                 **{k: str(v) for k, v in client.items()}, "boards": started,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_s": build_s}
        (run / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        if check_ssh:
            for name in names:
                _ssh_check(client["ssh_config"], name)
        user_cfg = _user_ssh_config(client["ssh_config"].read_text())
    except BaseException:
        for name, proc in procs.items():
            stop_tree(proc.pid, mount_ns(proc.pid))
        (run / "state.json").unlink(missing_ok=True)
        raise
    state["up_s"] = round(time.monotonic() - t0, 1)
    (run / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    for name, b in started.items():
        log(f"{name}: ssh -F {client['ssh_config']} {name}  (127.0.0.1:{b['port']}, {b['description']})")
    if user_cfg:
        log(f"aliases emu-pi5, emu-pi4, emu-bullseye written to {user_cfg} (EDGEKIT_BOARDS_USER_SSH_CONFIG=0: don't)")
    log(f"up in {state['up_s']} s; state: {run / 'state.json'}; stop with: make boards-down")
    return state


def down(cache: Path, quiet: bool = False) -> None:
    state = load_state(cache)
    if state is None:
        if not quiet:
            log("no boards are up (no state file)")
        _user_ssh_config(None)
        return
    for name, b in dict(state.get("boards") or {}).items():  # type: ignore[union-attr]
        pid, ns = int(b["pid"]), b.get("mnt_ns")
        own = mount_ns(pid)
        if own is not None and ns is not None and own != ns:
            continue  # the pid was reused by an unrelated process: not ours to stop
        stop_tree(pid, ns)
        if not quiet:
            log(f"{name} stopped")
    (run_dir(cache) / "state.json").unlink(missing_ok=True)
    _user_ssh_config(None)


def status(cache: Path, as_json: bool) -> int:
    state = load_state(cache)
    if state is None:
        print("boards: none up (make boards)")
        return 1
    if as_json:
        print(json.dumps(state, indent=2))
    alive = 0
    for name, b in state["boards"].items():  # type: ignore[union-attr]
        ok = mount_ns(int(b["pid"])) == b.get("mnt_ns")
        alive += ok
        if not as_json:
            print(f"{name}: {'up' if ok else 'DOWN'} 127.0.0.1:{b['port']} {b['target']} qemu_cpu={b['qemu_cpu']}")
    return 0 if alive == len(state["boards"]) else 1  # type: ignore[arg-type]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="boards.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="build once, then start the boards")
    u.add_argument("boards", nargs="*", default=list(BOARDS), help=f"default: {' '.join(BOARDS)}")
    sub.add_parser("down", help="stop the boards and remove their mounts")
    s = sub.add_parser("status", help="which boards are up")
    s.add_argument("--json", action="store_true")
    pr = sub.add_parser("project", help="write DIR/edgekit.boards.toml: DIR/edgekit.toml plus the boards as devices")
    pr.add_argument("dir", type=Path)
    pr.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    cache = cache_dir()
    try:
        if args.cmd == "up":
            unknown = [b for b in args.boards if b not in BOARDS]
            if unknown:
                raise BoardsError(f"unknown board {unknown[0]} (known: {', '.join(BOARDS)})")
            up(cache, args.boards)
        elif args.cmd == "down":
            require_root()
            down(cache)
        elif args.cmd == "status":
            return status(cache, args.json)
        else:
            from emu_project import write_project

            log(f"wrote {write_project(args.dir, load_state(cache), args.out)}")
    except BoardsError as exc:
        print(f"boards: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, subprocess.SubprocessError) as exc:  # a full disk, a vanished tool: still one line
        print(f"boards: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("boards: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
