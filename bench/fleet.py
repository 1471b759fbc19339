"""Benchmark: one release to 1, 16 and 64 devices with the built-in engine and with the Ansible engine.

Every device is a real OpenSSH server on its own 127.0.0.x address (the test suite's sshd
fixtures), reached through a TCP proxy that adds a network round trip (20 ms by default, a LAN/WiFi
figure) in a process of its own. Each run deploys a digits-sized bundle (plus ``--size-mb`` of
model) into fresh device directories, so every file is uploaded, verified and switched, through
``edgekit.fleet.deploy_fleet`` with the engine named; both engines get the same ``max_parallel``
(Ansible's forks).

Reported per run: wall time; host CPU (this process, plus every child it reaped: ansible-playbook,
its forks and their ssh clients; the proxies are not counted); device CPU (the sshd sessions and
what ran in them: the device release script, Ansible's module wrappers, sftp-server).

    nice .venv/bin/python bench/fleet.py [--sizes 1 16 64] [--rtt-ms 20] [--parallel 16] [--size-mb 0] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from deploy import device, scratch_home, server_cpu  # noqa: E402
from sshd_fixtures import SshdFleet, start_fleet, trust, write_project  # noqa: E402

from bundles import make_tiny_bundle  # noqa: E402


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def proxies(fleet: SshdFleet, n: int, delay: float) -> "tuple[subprocess.Popen[str], List[int]]":
    """One process forwarding 127.0.0.1:<port> to each of the first n servers, ``delay`` s each way."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "tcp_proxy.py"), "--delay", str(delay),
                             *[f"{s.host}:{s.port}" for s in fleet.servers[:n]]], stdout=subprocess.PIPE, text=True)
    return proc, [int(proc.stdout.readline()) for _ in range(n)]  # type: ignore[union-attr]


def one_run(fleet: SshdFleet, work: Path, home: Path, engine: str, n: int, delay: float, parallel: int,
            tag: str) -> Dict[str, Any]:
    from edgekit.config import load
    from edgekit.engine_ansible_fleet import AnsibleEngine
    from edgekit.fleet import deploy_fleet

    proj = work / "proj"
    proc, ports = proxies(fleet, n, delay)
    try:
        trust(home, *[s.known_hosts_line("127.0.0.1", p) for s, p in zip(fleet.servers, ports)])
        devices = [dict(device(s, f"d{i}", s.device_root / f"{tag}-{engine}-{n}-{i}"), host="127.0.0.1", port=ports[i])
                   for i, s in enumerate(fleet.servers[:n])]
        cfg = load(write_project(proj, devices, deploy={"max_parallel": parallel}, bundles={}))
        time.sleep(1.0)  # the previous run's sessions are over and reaped
        c0, k0, s0, t0 = time.process_time(), children_cpu(), server_cpu(fleet), time.perf_counter()
        res = deploy_fleet(cfg, cfg.devices, max_parallel=parallel,
                           engine=AnsibleEngine() if engine == "ansible" else None)
        wall = time.perf_counter() - t0
        host = (time.process_time() - c0) + (children_cpu() - k0)
        assert res.ok and [r.outcome for r in res.results.values()] == ["switched"] * n, res.recap.line()
    finally:
        proc.kill()  # closes the proxied connections, so their sessions end
        proc.wait()
    time.sleep(1.0)
    return {"engine": engine, "devices": n, "wall": wall, "host_cpu": host, "device_cpu": server_cpu(fleet) - s0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--engines", nargs="+", default=["builtin", "ansible"])
    ap.add_argument("--rtt-ms", type=float, default=20)
    ap.add_argument("--parallel", type=int, default=16, help="max_parallel (the Ansible engine's forks)")
    ap.add_argument("--size-mb", type=float, default=0, help="model bytes added to the digits-sized bundle")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = ap.parse_args()

    from edgekit.engine_ansible import missing

    if "ansible" in args.engines and missing():
        sys.exit(f"bench/fleet.py: {missing()} (pip install 'edgekit[ansible]')")
    load_before = os.getloadavg()[0]
    work, home = scratch_home("edgekit-bench-fleet-")
    rows: List[Dict[str, Any]] = []
    fleet: Optional[SshdFleet] = None
    try:
        fleet = start_fleet(work / "sshd", max(args.sizes), first_host=10)
        bundle = work / "proj" / "dist" / "tiny" / "x86-avx2"
        bundle.mkdir(parents=True)
        if args.size_mb:
            (bundle / "blob.bin").write_bytes(os.urandom(int(args.size_mb * 1e6)))
        make_tiny_bundle(bundle)
        size = sum(p.stat().st_size for p in bundle.iterdir())
        for n in args.sizes:
            for engine in args.engines:
                print(f"{engine}: {n} device(s) ...", flush=True)
                rows.append(one_run(fleet, work, home, engine, n, args.rtt_ms / 2000, args.parallel, "r"))
                r = rows[-1]
                print(f"  {r['wall']:.1f} s wall, host CPU {r['host_cpu']:.1f} s, device CPU {r['device_cpu']:.1f} s",
                      flush=True)
    finally:
        if fleet is not None:
            fleet.stop()
        shutil.rmtree(work, ignore_errors=True)

    from importlib.metadata import version

    cpu = os.cpu_count() or 1
    lines = [
        "# Fleet benchmark: the built-in engine vs the Ansible engine, 1 / 16 / 64 devices",
        "",
        f"Machine: {platform.machine()}, {cpu} CPUs, Python {platform.python_version()}, ansible-core "
        f"{version('ansible-core')}, ansible-runner {version('ansible-runner')}, paramiko {version('paramiko')}. "
        f"Devices: real sshd on 127.0.0.x, each behind a proxy adding {args.rtt_ms:g} ms of round trip; a "
        f"{size / 1e3:.0f} kB bundle into fresh directories (every file uploaded, verified, switched); "
        f"max_parallel (forks) {args.parallel}; one run each. Load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after (a shared VM: compare rows within this run). The \"devices\" share "
        "this host's cores, so their CPU (the device column) slows both engines here; real boards bring their own.",
        "",
        "| engine | devices | wall s | host CPU s | host CPU per device s | device CPU s (sshd sessions) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['devices']} | {r['wall']:.1f} | {r['host_cpu']:.1f} | "
                     f"{r['host_cpu'] / r['devices']:.2f} | {r['device_cpu']:.1f} |")
    lines += ["", "Reproduce:", "", "```",
              f"nice .venv/bin/python bench/fleet.py --sizes {' '.join(map(str, args.sizes))} --rtt-ms {args.rtt_ms:g} "
              f"--parallel {args.parallel} --size-mb {args.size_mb:g}", "```", ""]
    text = "\n".join(lines)
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
