"""Benchmark: edgekit's SSH push against scp, unchanged redeploys, and 1 vs 16 devices, in one run.

Everything runs against real OpenSSH servers on loopback (the test suite's sshd fixtures: one sshd
per 127.0.0.x address), so scp and edgekit talk to the same servers with the same keys.

1. Transfer: one 100 MB file, each round on a fresh connection (connect + copy), alternating:
   ``scp`` (OpenSSH 9: SFTP protocol underneath), edgekit's ``SSHTransport.put``, and paramiko's
   stock ``SFTPClient.put`` (the 66% baseline). Target: edgekit >= 90% of scp's throughput.
2. Unchanged redeploy of a bundle holding that 100 MB model: wall time of ``deploy_device``
   (connect, lock, hash on the device, unlock) and bytes sent, with the wire bytes counted by a TCP
   proxy. Target: < 1 s and 0 bytes of model data.
3. Fleet: one bundle deployed to 1 device and to 16 devices (16 sshd, max_parallel 16), fresh
   device directories each round, on bare loopback and with a network round trip added per device,
   for a 4 MB and a digits-sized bundle. Target: 16 devices in <= 3x the time of one. Each run also
   gets the lower bound this host allows: the 16-device run's CPU spread over every core.

    .venv/bin/python bench/deploy.py [--rounds 5] [--size-mb 100] [--fleet-mb 4] [--rtt-ms 20] [--out bench/RESULTS.md]

4. ``--round-trips`` (alone): one --fleet-mb deploy on a fresh connection, then an unchanged redeploy,
   through a proxy adding each of --rtts, with the round trips counted at the proxy (issue 19).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
if "--src" in sys.argv:  # another checkout's edgekit (the before of a before/after), this bench's harness
    sys.path.insert(0, sys.argv[sys.argv.index("--src") + 1])

from sshd_fixtures import SshdFleet, start_fleet, trust, write_project  # noqa: E402
from tcp_proxy import TcpProxy  # noqa: E402

from bundles import make_tiny_bundle  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import append_results  # noqa: E402


def scratch_home(prefix: str) -> Tuple[Path, Path]:
    """A fresh work directory and its home/, made $HOME without an ssh-agent: the benchmark trusts
    only its own servers (their keys go into that home's known_hosts)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    home = work / "home"
    (home / ".ssh").mkdir(parents=True)
    os.environ["HOME"] = str(home)
    os.environ.pop("SSH_AUTH_SOCK", None)
    return work, home


def median(xs: List[float]) -> float:
    return statistics.median(xs)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_transfer(fleet: SshdFleet, kh: Path, src: Path, rounds: int) -> Dict[str, List[float]]:
    import paramiko

    from edgekit.transport.ssh import SSHTransport

    s = fleet.servers[0]
    dst = s.device_root / "transfer.bin"

    def scp() -> None:
        subprocess.run(["scp", "-q", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={kh}", "-i", str(fleet.user_key),
                        "-P", str(s.port), str(src), f"root@{s.host}:{dst}"], check=True)

    def edgekit() -> None:
        with SSHTransport("bench", s.host, str(s.device_root), port=s.port, user="root",
                          identity_file=str(fleet.user_key)) as t:
            t.put(src, "transfer.bin")

    def paramiko_put() -> None:
        c = paramiko.SSHClient()
        c.load_host_keys(str(kh))
        c.connect(s.host, s.port, "root", key_filename=str(fleet.user_key), allow_agent=False, look_for_keys=False)
        try:
            sftp = c.open_sftp()
            sftp.put(str(src), str(dst))
            sftp.close()
        finally:
            c.close()

    times: Dict[str, List[float]] = {"scp": [], "edgekit": [], "paramiko": []}
    device_cpu: Dict[str, List[float]] = {"scp": [], "edgekit": [], "paramiko": []}
    edgekit()  # warm the page cache and the servers once
    for i in range(rounds):
        order = [("scp", scp), ("edgekit", edgekit), ("paramiko", paramiko_put)]
        for name, fn in (order if i % 2 == 0 else order[::-1]):
            time.sleep(0.5)  # the previous session is over and reaped
            s0 = server_cpu(fleet)
            times[name].append(timed(fn))
            time.sleep(0.5)
            device_cpu[name].append(server_cpu(fleet) - s0)
            assert dst.stat().st_size == src.stat().st_size
    dst.unlink()
    return {**times, **{f"cpu-{k}": v for k, v in device_cpu.items()}}


def device(server, name: str, path: Path) -> Dict[str, object]:  # type: ignore[no-untyped-def]
    return {"name": name, "target": "x86-avx2", "transport": "ssh", "host": server.host, "port": server.port,
            "user": "root", "identity_file": str(server.workdir.parent / "id_ed25519"), "path": str(path),
            "python": sys.executable, "groups": ["fleet"]}


def bench_redeploy(fleet: SshdFleet, work: Path, big: Path, rounds: int, home: Path) -> Dict[str, object]:
    from edgekit.config import load
    from edgekit.fleet import deploy_device

    s = fleet.servers[0]
    proj = work / "redeploy"
    with TcpProxy((s.host, s.port)) as proxy:
        trust(home, s.known_hosts_line("127.0.0.1", proxy.port))
        spec = device(s, "dev", s.device_root / "redeploy")
        cfg_path = write_project(proj, [spec, dict(spec, name="counted", host="127.0.0.1", port=proxy.port)], bundles={})
        bundle = proj / "dist" / "tiny" / "x86-avx2"
        bundle.mkdir(parents=True)
        os.link(big, bundle / "blob.bin")  # a 100 MB model file in the bundle
        make_tiny_bundle(bundle)
        cfg = load(cfg_path)
        first = timed(lambda: deploy_device(cfg, cfg.device("dev")))
        runs = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            r = deploy_device(cfg, cfg.device("dev"))
            runs.append(time.perf_counter() - t0)
            assert r.skipped and r.uploaded_bytes == 0
        before = proxy.upstream_bytes
        counted = deploy_device(cfg, cfg.device("counted"))
        wire = proxy.upstream_bytes - before
        edgekit = shutil.which("edgekit", path=str(Path(sys.executable).parent)) or "edgekit"
        cli = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            subprocess.run([edgekit, "deploy", "--device", "dev", "--config", str(cfg_path), "--json"], check=True,
                           capture_output=True)
            cli.append(time.perf_counter() - t0)
    return {"first": first, "runs": runs, "uploaded_bytes": counted.uploaded_bytes, "wire_bytes": wire, "cli": cli}


def server_cpu(fleet: SshdFleet) -> float:
    """CPU seconds the sshd servers' finished sessions used (the listeners' reaped children)."""
    total = 0
    for s in fleet.servers:
        fields = Path(f"/proc/{s.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()  # type: ignore[union-attr]
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def bench_fleet(fleet: SshdFleet, work: Path, size_mb: float, rounds: int, home: Path,
                delay: float = 0.0) -> Dict[str, object]:
    """Deploy one bundle to 1 and to 16 devices (fresh directories each round); ``delay`` adds that
    many seconds each way to every device's link through a proxy (a LAN/WiFi-like round trip)."""
    from edgekit.config import load
    from edgekit.fleet import deploy_fleet

    proj = work / f"fleet-{size_mb:g}-{delay:g}"
    bundle = proj / "dist" / "tiny" / "x86-avx2"
    bundle.mkdir(parents=True)
    (bundle / "blob.bin").write_bytes(os.urandom(int(size_mb * 1e6)))
    make_tiny_bundle(bundle)
    size = sum(p.stat().st_size for p in bundle.iterdir())
    out: Dict[str, object] = {"bundle_bytes": size}
    for n in (1, 16):
        ports: List[int] = []
        proxy_proc = None
        if delay:  # the proxies run in a process of their own: their threads must not share our GIL
            proxy_proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "tcp_proxy.py"), "--delay", str(delay),
                                           *[f"{s.host}:{s.port}" for s in fleet.servers[:n]]],
                                          stdout=subprocess.PIPE, text=True)
            ports = [int(proxy_proc.stdout.readline()) for _ in range(n)]  # type: ignore[union-attr]
            trust(home, *[s.known_hosts_line("127.0.0.1", p) for s, p in zip(fleet.servers, ports)])
        times: List[float] = []
        time.sleep(1.0)  # sessions of the previous runs are over and reaped
        c0, s0 = time.process_time(), server_cpu(fleet)
        try:
            for r in range(rounds):
                devices = []
                for i, s in enumerate(fleet.servers[:n]):
                    d = device(s, f"d{i}", s.device_root / f"fleet-{size_mb:g}-{delay:g}-{n}-{r}-{i}")
                    devices.append(dict(d, host="127.0.0.1", port=ports[i]) if ports else d)
                cfg = load(write_project(proj, devices, deploy={"max_parallel": 16}, bundles={}))
                res = deploy_fleet(cfg, cfg.devices)
                assert res.ok and all(o.deploy and o.deploy.uploaded_bytes == size for o in res.results.values())
                times.append(res.seconds)
        finally:
            if proxy_proc is not None:  # closes the proxied connections, so their sessions end
                proxy_proc.kill()
                proxy_proc.wait()
        time.sleep(1.0)
        # CPU per round, averaged over the rounds (a server accounts a session when it reaps it)
        out[str(n)] = times
        out[f"cpu{n}"] = ((time.process_time() - c0) / rounds, (server_cpu(fleet) - s0) / rounds)
    return out


def fleet_rows(name: str, fl: Dict[str, object], cpus: int) -> List[str]:
    rows = []
    for n in ("1", "16"):
        t = median(fl[n])  # type: ignore[arg-type]
        client, server = fl[f"cpu{n}"]  # type: ignore[misc]
        rows.append(f"| {name} | {n} | {t:.3f} | {', '.join(f'{x:.2f}' for x in fl[n])} | "  # type: ignore[attr-defined]
                    f"{client:.2f} + {server:.2f} | {(client + server) / (statistics.mean(fl[n]) * cpus):.0%} |")  # type: ignore[arg-type]
    return rows


class CountingProxy(TcpProxy):
    """A TcpProxy that timestamps every chunk it forwards, to count round trips (see round_trips)."""

    def __init__(self, *a: object, **kw: object) -> None:
        self.events: List[tuple] = []
        super().__init__(*a, **kw)  # type: ignore[arg-type]

    def _pump(self, src, dst, state, upstream):  # type: ignore[no-untyped-def]
        proxy = self

        class Recorded:
            def recv(self, n: int) -> bytes:
                data = src.recv(n)
                if data:
                    proxy.events.append((time.monotonic(), upstream, len(data)))
                return data

            def __getattr__(self, name: str) -> object:
                return getattr(src, name)

        super()._pump(Recorded(), dst, state, upstream)


def serve_counting_proxy(host: str, port: int, delay: float) -> None:
    """The child process of RemoteCountingProxy: prints its port, then answers each stdin line with
    the JSON list of chunk events so far (and forgets them)."""
    import json

    proxy = CountingProxy((host, port), delay=delay)
    print(proxy.port, flush=True)
    for _ in sys.stdin:
        events, proxy.events = proxy.events, []
        print(json.dumps(events), flush=True)


class RemoteCountingProxy:
    """A CountingProxy in a process of its own: its timing does not compete with the measured
    deploy for this process's GIL (a starved proxy would show CPU stalls as round trips)."""

    def __init__(self, target: tuple, delay: float) -> None:
        code = (f"import sys; sys.path[:0] = {[str(ROOT / 'bench'), str(ROOT), str(ROOT / 'tests')]!r}; "
                f"import deploy; deploy.serve_counting_proxy({target[0]!r}, {target[1]}, {delay})")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.port = int(self.proc.stdout.readline())  # type: ignore[union-attr]

    def take(self) -> List[tuple]:
        """The chunk events since the last take: (monotonic time, upstream, bytes)."""
        import json

        self.proc.stdin.write("\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return [tuple(e) for e in json.loads(self.proc.stdout.readline())]  # type: ignore[union-attr]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def waits(events: List[tuple], rtt: float) -> List[float]:
    """When the client resumed after waiting for the server: the starts of client -> server bursts
    that follow server data after most of a round trip of client silence. Each is one round trip
    the client waited out (pipelined requests share one; a final close waits for nothing, so it
    adds none; the TCP handshake is not seen: the proxy delays data only)."""
    out, last_up, answered = [], None, False
    for t, up, _ in sorted(events):
        if up:
            if last_up is not None and answered and t - last_up >= 0.8 * rtt:
                out.append(t)
            last_up, answered = t, False
        else:
            answered = True
    return out


def bench_round_trips(fleet: SshdFleet, work: Path, home: Path, rtt_ms: float, size_mb: float,
                      rounds: int) -> Dict[str, object]:
    """One deploy of a ``size_mb`` bundle to a fresh device directory through a proxy adding
    ``rtt_ms`` of round trip, on a fresh connection (wall time includes connecting), then an
    unchanged redeploy on the same connection; round trips counted at the proxy."""
    from edgekit import deploy as D
    from edgekit.config import load
    from edgekit.transport import connect

    s = fleet.servers[0]
    rtt = rtt_ms / 1000
    proj = work / f"rt-{rtt_ms:g}-{size_mb:g}"
    bundle = proj / "dist" / "tiny" / "x86-avx2"
    bundle.mkdir(parents=True)
    (bundle / "blob.bin").write_bytes(os.urandom(int(size_mb * 1e6)))
    make_tiny_bundle(bundle)
    out: Dict[str, List[float]] = {"wall": [], "rt_connect": [], "rt_deploy": [], "redeploy": [], "rt_redeploy": []}
    proxy = RemoteCountingProxy((s.host, s.port), delay=rtt / 2)
    try:
        trust(home, s.known_hosts_line("127.0.0.1", proxy.port))
        for r in range(rounds):
            spec = dict(device(s, "dev", s.device_root / f"rt-{rtt_ms:g}-{size_mb:g}-{r}"), host="127.0.0.1",
                        port=proxy.port)
            cfg = load(write_project(proj, [spec], bundles={}))
            time.sleep(0.3)
            proxy.take()
            t0 = time.perf_counter()
            with connect(cfg.device("dev"), cfg) as t:
                t.client  # type: ignore[attr-defined]  # the connection is up (handshake, auth)
                time.sleep(2 * rtt)
                ev = proxy.take()
                up = len(ev)
                res = D.deploy(t, bundle)
                # connect + deploy, less the pause that separates the connection's events from the deploy's
                wall = time.perf_counter() - t0 - 2 * rtt
                time.sleep(2 * rtt)
                ev += proxy.take()
                t1 = time.perf_counter()
                again = D.deploy(t, bundle)
                re_wall = time.perf_counter() - t1
                time.sleep(2 * rtt)
                ev2 = proxy.take()
            assert res.switched and again.skipped and again.uploaded_bytes == 0
            first_deploy = ev[up][0] if len(ev) > up else float("inf")
            w = waits(ev, rtt)
            out["wall"].append(wall)
            out["rt_connect"].append(sum(1 for x in w if x <= first_deploy))
            out["rt_deploy"].append(sum(1 for x in w if x > first_deploy))
            out["redeploy"].append(re_wall)
            out["rt_redeploy"].append(len(waits(ev2, rtt)))
            if os.environ.get("EDGEKIT_BENCH_TRACE"):  # noqa: SIM102  # the timeline behind the counts
                for name, evs in (("deploy", ev[up:]), ("redeploy", ev2)):
                    merged: List[list] = []
                    for t_, u, n in evs:
                        if merged and merged[-1][1] == u and t_ - merged[-1][2] < rtt / 4:
                            merged[-1][2], merged[-1][3] = t_, merged[-1][3] + n
                        else:
                            merged.append([t_, u, t_, n])
                    print(name, " ".join(f"{'>' if u else '<'}{n}@{(t_ - evs[0][0]) * 1000:.0f}"
                                         for t_, u, _, n in merged))
    finally:
        proxy.close()
    return {**out, "bundle_bytes": sum(p.stat().st_size for p in bundle.iterdir())}


def main_round_trips(args: argparse.Namespace) -> None:
    """``--round-trips``: only the round-trip table (issue 19's targets)."""
    work, home = scratch_home("edgekit-bench-rt-")
    fleet = start_fleet(work / "sshd", 1, first_host=40)
    rows = []
    try:
        for rtt_ms in args.rtts:
            r = bench_round_trips(fleet, work, home, rtt_ms, args.fleet_mb, args.rounds)
            rows.append((rtt_ms, r))
    finally:
        fleet.stop()
        shutil.rmtree(work, ignore_errors=True)
    import edgekit

    lines = [f"edgekit from {Path(edgekit.__file__).resolve().parent.parent}; bundle {int(rows[0][1]['bundle_bytes']) / 1e6:.2f} MB; "  # type: ignore[call-overload]
             f"medians of {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}", "",
             "| RTT added | deploy: wall s (connect + deploy) | round trips: connect + deploy | unchanged redeploy: wall s | "
             "round trips (connection up) |", "|---|---|---|---|---|"]
    for rtt_ms, r in rows:
        lines.append(f"| {rtt_ms:g} ms | {median(r['wall']):.3f} | {median(r['rt_connect']):g} + {median(r['rt_deploy']):g} = "  # type: ignore[arg-type]
                     f"{median(r['rt_connect']) + median(r['rt_deploy']):g} | {median(r['redeploy']):.3f} | "  # type: ignore[arg-type,operator]
                     f"{median(r['rt_redeploy']):g} |")  # type: ignore[arg-type]
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--round-trips", action="store_true",
                    help="only the round-trip run: one --fleet-mb deploy and an unchanged redeploy per --rtts value")
    ap.add_argument("--rtts", type=float, nargs="+", default=[20, 150], help="round trips (ms) for --round-trips")
    ap.add_argument("--src", help="import edgekit from this checkout instead (e.g. main, for the numbers before)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size-mb", type=float, default=100)
    ap.add_argument("--fleet-mb", type=float, default=4, help="model size for the 1-vs-16 run")
    ap.add_argument("--rtt-ms", type=float, default=20, help="round trip added per device in the LAN-like fleet run")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args()
    if args.round_trips:
        return main_round_trips(args)

    import paramiko

    load_before = os.getloadavg()[0]
    work, home = scratch_home("edgekit-bench-deploy-")
    fleet = start_fleet(work / "sshd", 16, first_host=10)
    try:
        kh = trust(home, *[s.known_hosts_line() for s in fleet.servers])
        big = work / "model-100mb.bin"
        big.write_bytes(os.urandom(int(args.size_mb * 1e6)))
        print("transfer ...", flush=True)
        tr = bench_transfer(fleet, kh, big, args.rounds)
        print("unchanged redeploy ...", flush=True)
        rd = bench_redeploy(fleet, work, big, args.rounds, home)
        print("1 vs 16 devices ...", flush=True)
        fl = bench_fleet(fleet, work, args.fleet_mb, args.rounds, home)
        tiny = bench_fleet(fleet, work, 0, args.rounds, home)
        lan = bench_fleet(fleet, work, args.fleet_mb, args.rounds, home, delay=args.rtt_ms / 2000)
        tiny_lan = bench_fleet(fleet, work, 0, args.rounds, home, delay=args.rtt_ms / 2000)
    finally:
        fleet.stop()
        shutil.rmtree(work, ignore_errors=True)

    mb = args.size_mb
    scp_t, ek_t, pm_t = median(tr["scp"]), median(tr["edgekit"]), median(tr["paramiko"])
    c16, d16 = fl["cpu16"]  # type: ignore[misc]
    dev_share = d16 / max(c16 + d16, 1e-9)
    runs = (("fl", fl), ("tiny", tiny), ("lan", lan), ("tiny_lan", tiny_lan))
    ratios = {k: median(v["16"]) / median(v["1"]) for k, v in runs}  # type: ignore[arg-type]
    # About the best this host could do: all the CPU the 16-device run used, spread over every core.
    floors = {k: sum(v["cpu16"]) / (os.cpu_count() or 1) / median(v["1"]) for k, v in runs}  # type: ignore[arg-type]
    ssh_v = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    cpu = os.cpu_count()
    lines = [
        "# Deploy benchmark: edgekit over SSH vs scp, unchanged redeploys, 1 vs 16 devices",
        "",
        f"Machine: {platform.machine()}, {cpu} CPUs, Python {platform.python_version()}, paramiko {paramiko.__version__}, "
        f"{ssh_v}. Servers: real sshd on 127.0.0.x loopback (tests/sshd_fixtures.py), ed25519 keys. Ciphers as "
        "negotiated: scp chacha20-poly1305 (OpenSSH's default), edgekit aes128-gcm (it prefers AES-GCM), stock "
        f"paramiko aes128-ctr + hmac-sha2-256. Medians of {args.rounds} rounds, the three transfer methods "
        f"alternating order round by round. Load average {load_before:.1f} before the run and "
        f"{os.getloadavg()[0]:.1f} after it (a shared VM: other jobs ran beside this one, so compare rows within "
        "one run rather than across runs).",
        "",
        f"## 1. Transfer: one {mb:.0f} MB file, fresh connection each time",
        "",
        "| method | median s | MB/s | vs scp (throughput) | device-side CPU s (sshd + sftp-server) | all rounds (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, t, label in (("scp", scp_t, "`scp` (OpenSSH)"), ("edgekit", ek_t, "edgekit `SSHTransport.put`"),
                           ("paramiko", pm_t, "paramiko `SFTPClient.put` (stock)")):
        lines.append(f"| {label} | {t:.3f} | {mb / t:.0f} | {scp_t / t:.0%} | {median(tr['cpu-' + name]):.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in tr[name])} |")
    lines += [
        "",
        f"Target >= 90% of scp: **{'met' if scp_t / ek_t >= 0.9 else 'NOT met'}** ({scp_t / ek_t:.0%}). What does it: "
        "SFTP writes of 255 KiB (OpenSSH's sftp-server accepts 256 KiB messages and advertises 255 KiB in "
        "limits@openssh.com) instead of paramiko's 32 KiB, pipelined; AES-GCM preferred over AES-CTR + HMAC "
        "(one AEAD pass, cheaper for the device too); TCP_NODELAY. The acks of the last pipelined writes are read "
        "before close, so a device-side write error (a full disk) is never lost.",
        "",
        f"## 2. Unchanged redeploy of a bundle with a {mb:.0f} MB model",
        "",
        "| what | median | target |",
        "|---|---|---|",
        f"| first deploy (upload + verify on device + switch) | {rd['first']:.2f} s (once) | |",
        f"| redeploy, `deploy_device` (connect, lock, sha256 on the device, unlock) | {median(rd['runs']):.3f} s | < 1 s: "  # type: ignore[arg-type]
        f"**{'met' if median(rd['runs']) < 1 else 'NOT met'}** |",  # type: ignore[arg-type]
        f"| redeploy, `edgekit deploy --device` as a process (+ interpreter start and imports) | {median(rd['cli']):.3f} s | |",  # type: ignore[arg-type]
        f"| file bytes uploaded | {rd['uploaded_bytes']} B | 0: **{'met' if rd['uploaded_bytes'] == 0 else 'NOT met'}** |",
        f"| all bytes client -> device on the wire (SSH handshake, auth, SFTP and exec control) | {int(rd['wire_bytes']) / 1e3:.1f} kB | |",  # type: ignore[call-overload]
        "",
        "The redeploy re-hashes the release on the device (the 100 MB, with the device's Python hashlib, or "
        "`sha256sum` where that is missing) rather than trusting that the directory exists, so a release damaged "
        "on the device is repaired, not skipped; that hash, and the local check of the bundle against its "
        "manifest, are most of the time above. The process row adds Python's start and edgekit's imports.",
        "",
        "## 3. One device vs sixteen (fresh device directories: every file is uploaded)",
        "",
        "| run | devices | median s | all rounds (s) | CPU s per round: edgekit + devices (sshd sessions) | CPU busy |",
        "|---|---|---|---|---|---|",
        *fleet_rows(f"{int(fl['bundle_bytes']) / 1e6:.1f} MB bundle, loopback", fl, cpu or 1),  # type: ignore[call-overload]
        *fleet_rows(f"{int(tiny['bundle_bytes']) / 1e6:.2f} MB bundle (digits-sized), loopback", tiny, cpu or 1),  # type: ignore[call-overload]
        *fleet_rows(f"{int(lan['bundle_bytes']) / 1e6:.1f} MB bundle, +{args.rtt_ms:g} ms RTT per device", lan, cpu or 1),  # type: ignore[call-overload]
        *fleet_rows(f"{int(tiny_lan['bundle_bytes']) / 1e6:.2f} MB bundle, +{args.rtt_ms:g} ms RTT per device", tiny_lan, cpu or 1),  # type: ignore[call-overload]
        "",
        "| run | 16 devices / one | CPU floor on this host (16-device run's CPU / cores / one-device time) | target <= 3x |",
        "|---|---|---|---|",
        *[f"| {label} | {ratios[k]:.1f}x | {floors[k]:.1f}x | {'met' if ratios[k] <= 3 else 'NOT met'} |"
          for k, label in (("fl", f"{int(fl['bundle_bytes']) / 1e6:.1f} MB, loopback"),  # type: ignore[call-overload]
                           ("tiny", "digits-sized, loopback"),
                           ("lan", f"{int(lan['bundle_bytes']) / 1e6:.1f} MB, +{args.rtt_ms:g} ms RTT"),  # type: ignore[call-overload]
                           ("tiny_lan", f"digits-sized, +{args.rtt_ms:g} ms RTT"))],
        "",
        "The CPU floor is about the shortest time this host could finish the 16-device run in (CPU is "
        "counted per round, so it is approximate). Where it is above 3x, no fan-out can meet the target on "
        "this machine: the sixteen simulated devices' own work (mostly kernel time of their sshd sessions "
        "receiving the bytes, the same for scp) does not fit on its cores in that time. Real boards bring "
        "their own CPUs; the runs through a proxy adding a round trip per device are the closer picture "
        "of a fleet on a LAN or WiFi.",
        "",
        f"Reading it: this machine has {cpu} CPUs, and on loopback the sixteen \"devices\" (sshd, sftp-server, "
        "hashing) run on the same cores as edgekit. Receiving bytes is expensive on this VM (section 1's "
        "device-side CPU column: scp costs the device as much as edgekit does). The CPU columns add up what each run consumed; in the "
        f"16-device loopback run the devices' side is {dev_share:.0%} of it, CPU that real boards bring "
        "themselves. When the busy column is near 100% the run cannot finish sooner on this machine; "
        "edgekit's own share (the first CPU figure) is what grows on the host. With a network round trip "
        "(each device reached through a proxy adding it), the waiting overlaps and shows the fan-out itself.",
        "",
        "Reproduce:",
        "",
        "```",
        f".venv/bin/python bench/deploy.py --rounds {args.rounds} --size-mb {args.size_mb:g} --fleet-mb {args.fleet_mb:g} "
        f"--rtt-ms {args.rtt_ms:g}",
        "```",
        "",
    ]
    append_results(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
