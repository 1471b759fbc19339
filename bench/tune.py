"""Benchmark: what ``--tune-on`` buys and costs on the local device (this host).

For each sample (digits; MiniLM with --minilm) the project is built for ``x86`` with
``--tune-on local``; then every candidate the device measured is timed again *alone* (one session
at a time, sequential windows, as a release runs it), so the table compares:
- the tuned choice,
- the host's choice (what ``edgekit build`` without ``--tune-on`` ships),
- each candidate alone,
and the tuning's cost: wall seconds, bytes and files sent, first on a fresh device, then on an
identical second device (the cache answers), then with --retune on that device (code already there).

    nice .venv/bin/python bench/tune.py [--minilm] [--windows 5] [--duration 1.0] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _project(name: str, dest: Path) -> Path:
    project = dest / name
    shutil.copytree(ROOT / "samples" / name, project, ignore=shutil.ignore_patterns("dist", ".device", "runs"))
    if name == "digits" and not (project / "data" / "val.npz").is_file():
        subprocess.run([sys.executable, str(project / "train.py"), "--out", str(project / "data")], check=True,
                       capture_output=True)
    toml = project / "edgekit.toml"
    toml.write_text(toml.read_text() + '\n[[devices]]\nname = "bench-a"\ntarget = "x86"\ntransport = "local"\n'
                    'path = ".device/a"\n\n[[devices]]\nname = "bench-b"\ntarget = "x86"\ntransport = "local"\n'
                    'path = ".device/b"\n')
    return project


def _alone(files: Dict[str, Path], plan: Dict[str, Dict[str, Any]], feed: Dict[str, Any], windows: int,
           duration: float) -> Dict[str, Dict[str, float]]:
    """Each candidate on its own session (spinning off, the release's level), windows alternating
    between candidates so drift hits all alike; the median of the windows' p50 and p99."""
    from edgekit.device import runner
    from edgekit.device.tune import open_candidate

    runs = {n: open_candidate(dict(plan[n], path=str(p)), {"threads": None, "runtime": {}, "workdir": "/"})[0]
            for n, p in files.items()}
    for run in runs.values():
        for _ in range(20):
            run(feed)
    got: Dict[str, List[Dict[str, float]]] = {n: [] for n in runs}
    for _ in range(windows):
        for n, run in runs.items():
            got[n].append(runner.time_window(run, feed, duration)[0])
    return {n: {"p50_ms": statistics.median(w["p50_ms"] for w in ws), "p99_ms": statistics.median(w["p99_ms"] for w in ws)}
            for n, ws in got.items()}


def bench(name: str, tmp: Path, windows: int, duration: float) -> Dict[str, Any]:
    from edgekit import config, targets, tune_build
    from edgekit.build import build
    from edgekit.device import runner
    from edgekit.quantize.presets import DISABLED_OPTIMIZERS, runtime_level_for
    from edgekit.tune import TuneOptions

    project = _project(name, tmp)
    cfg = config.load(project / "edgekit.toml")
    profile = targets.resolve("x86")
    seen: Dict[str, Any] = {}
    original = tune_build.tune

    def capture(*args: Any, **kw: Any) -> Any:  # the candidates' files (variants too), which the build does not return
        seen["q"] = args[0]
        return original(*args, **kw)

    tune_build.tune = capture  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        first = build(cfg, profile, project / "dist", tune=TuneOptions(device="bench-a"))
        build_s = time.perf_counter() - t0
        twin = build(cfg, profile, project / "dist", tune=TuneOptions(device="bench-b"))
        retune = build(cfg, profile, project / "dist", tune=TuneOptions(device="bench-b", retune=True))
    finally:
        tune_build.tune = original  # type: ignore[assignment]
    q = seen["q"]
    t = first.tuning
    names = [c["name"] for c in t["candidates"]]
    files = {n: Path(q.candidate_files[n]) for n in names}
    plan = {c.name: {"name": c.name, "precision": c.precision, "graph_optimization": runtime_level_for(c.method, profile),
                     "disabled_optimizers": list(DISABLED_OPTIMIZERS) if c.precision == "int8" else []}
            for c in q.candidates if c.name in names}
    ref = runner.open_reference(str(first.bundle / "reference.npz"))
    feeds, _ = runner.split_reference(json.loads((first.bundle / "manifest.json").read_text()), ref)
    alone = _alone(files, plan, feeds[0], windows, duration)
    return {"sample": name, "target": profile.name, "host_choice": t["host_choice"], "tuned_choice": t["chosen"],
            "reason": t["reason"], "noise_floor": t["method"].get("noise_floor"), "rounds": t["method"]["rounds"],
            "interleaved": {c["name"]: {"p50_ms": c["p50_ms"], "p99_ms": c["p99_ms"]} for c in t["candidates"]},
            "alone": alone, "build_s": round(build_s, 1),
            "cost": {"first": first.tuning["run"], "identical_device": twin.tuning["run"],
                     "retune": retune.tuning["run"]}}


def report(r: Dict[str, Any]) -> str:
    lines = [f"### {r['sample']} ({r['target']}, local device)", "",
             "| candidate | role | alone p50 ms | alone p99 ms | interleaved p50 ms | interleaved p99 ms |",
             "|---|---|---|---|---|---|"]
    for n, a in r["alone"].items():
        role = " + ".join(x for x, on in (("tuned choice", n == r["tuned_choice"]), ("host choice", n == r["host_choice"]))
                          if on) or "-"
        i = r["interleaved"][n]
        lines.append(f"| {n} | {role} | {a['p50_ms']:.4f} | {a['p99_ms']:.4f} | {i['p50_ms']:.4f} | {i['p99_ms']:.4f} |")
    tuned, host = r["alone"][r["tuned_choice"]], r["alone"][r["host_choice"]]
    lines += ["", f"tuned choice vs host choice (alone, p50): {host['p50_ms'] / tuned['p50_ms']:.3f}x "
              f"({'the same candidate' if r['tuned_choice'] == r['host_choice'] else 'different candidates'}); "
              f"A/A noise floor on the device {r['noise_floor']:.1%} over {r['rounds']} rounds", "",
              f"reason: {r['reason']}", "", "| tuning run | seconds | bytes sent | files sent | files reused | measured |",
              "|---|---|---|---|---|---|"]
    for k, c in r["cost"].items():
        lines.append(f"| {k} | {c['seconds']:.2f} | {c['bytes_sent']} | {c['files_sent']} | {c['files_reused']} | "
                     f"{'no (cache)' if c['reused'] else 'yes'} |")
    lines.append(f"\nwhole build with tuning: {r['build_s']} s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minilm", action="store_true", help="also MiniLM (minutes)")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-tune-") as tmp:
        for name in ["digits"] + (["minilm"] if args.minilm else []):
            r = bench(name, Path(tmp), args.windows, args.duration)
            out.append(r)
            print(report(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
