"""Benchmark: the runner's reported p50 vs a bare onnxruntime loop on the same model, one process.

The runner must not distort what it measures. Both loops run the same ONNX model with the same
session options (one intra-op thread, basic graph optimisation), alternating round by round so that
CPU frequency drift and noisy neighbours hit both alike; the table reports the median over rounds.
Target: the runner's p50 within 3% of the bare loop's.

    .venv/bin/python bench/runner.py [--rounds 5] [--duration 2] [--out bench/RESULTS.md]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.device import runner  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import append_results  # noqa: E402


def mlp(path: Path, width: int, depth: int, batch: int, seed: int = 0) -> Tuple[str, Tuple[int, int]]:
    """A ReLU MLP (depth x [width x width] MatMul) built with onnx.helper: a realistic ~ms workload."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        w = numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"a{i}"]))
        prev = f"a{i}"
    nodes[-1] = helper.make_node("Identity", [f"h{depth - 1}"], ["y"])
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return "x", (batch, width)


def bare_session(model: Path) -> Any:
    """What one would write by hand: a plain session with the same options."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])


def bare_window(sess: Any, feed: Dict[str, np.ndarray], duration: float) -> float:
    """perf_counter around sess.run until ``duration`` has passed; the p50 in ms."""
    samples: List[float] = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run(None, feed)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return float(np.percentile(samples, 50))


def bench(name: str, model_dir: Path, width: int, depth: int, batch: int, rounds: int, duration: float,
          control: bool = False) -> Dict[str, Any]:
    """``control``: an A/A run, a second bare session in the runner's place, to show the noise floor."""
    model = model_dir / f"{name}.onnx"
    inp, shape = mlp(model, width, depth, batch)
    feed = {inp: np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    manifest = {"artifact": model.name, "runtime": {"name": "onnxruntime", "providers": ["CPUExecutionProvider"],
                                                    "graph_optimization": "basic"}}
    # The runner's own code path: open_session (profiling on for the reference runs, then off).
    run, _, finish = runner.open_session(str(model_dir), manifest, threads=1)
    run(feed)
    finish()
    sess = bare_session(model)
    if control:
        other = bare_session(model)

        def run(feed: Dict[str, np.ndarray]) -> Any:  # noqa: F811 - the A/A stand-in
            return other.run(None, feed)
    for _ in range(20):  # warm both before the first pair
        run(feed)
        sess.run(None, feed)
    pairs = []
    for i in range(rounds):
        # Short windows, alternating which goes first: this VM's speed drifts by 20% between seconds,
        # so only back-to-back pairs compare like with like.
        if i % 2 == 0:
            r = runner.measure_latency(run, feed, duration, warmup=0)["p50_ms"]
            b = bare_window(sess, feed, duration)
        else:
            b = bare_window(sess, feed, duration)
            r = runner.measure_latency(run, feed, duration, warmup=0)["p50_ms"]
        pairs.append((r, b))
    ratios = sorted(r / b for r, b in pairs)
    q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    med = statistics.median(ratios)
    print(f"{name}: median ratio {med:.4f} (IQR {q1:.4f}..{q3:.4f})", file=sys.stderr)
    return {"model": name + (" (A/A control: bare vs bare)" if control else ""), "shape": f"{depth} x MatMul {width}x{width}, batch {batch}",
            "runner_p50_ms": statistics.median(p[0] for p in pairs), "bare_p50_ms": statistics.median(p[1] for p in pairs),
            "diff_pct": 100.0 * (med - 1.0), "iqr_pct": (100.0 * (q1 - 1.0), 100.0 * (q3 - 1.0)), "pairs": pairs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--duration", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args()
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench("mlp-1024", Path(tmp), 1024, 4, 4, args.rounds, args.duration),
                bench("mlp-64", Path(tmp), 64, 2, 1, args.rounds, args.duration),
                bench("mlp-1024", Path(tmp), 1024, 4, 4, args.rounds, args.duration, control=True)]
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    lines = ["# Runner latency vs a bare onnxruntime loop", "",
             f"Machine: {cpu}, {platform.machine()}, Python {platform.python_version()}, onnxruntime {ort.__version__}, "
             f"numpy {np.__version__}; 1 intra-op thread, CPUExecutionProvider.", "",
             f"Both loops hold one session each, created once (the runner's through `runner.open_session`, profiling "
             f"switched off after the reference runs as in `validate`). {args.rounds} back-to-back pairs of "
             f"{args.duration:g} s windows, alternating which goes first: `runner.measure_latency` vs a hand-written "
             "perf_counter loop around `sess.run`. The difference is the median of the per-pair p50 ratios (IQR beside "
             "it), because this shared VM's speed drifts by up to 20% from one second to the next. "
             "Target: runner within 3% of the bare loop. The A/A row puts a second bare loop in the runner's place: "
             "its spread is this machine's noise floor.", "",
             "| model | workload | runner p50 (ms) | bare loop p50 (ms) | difference (median of pairs) | IQR |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["iqr_pct"]
        lines.append(f"| {r['model']} | {r['shape']} | {r['runner_p50_ms']:.4f} | {r['bare_p50_ms']:.4f} | "
                     f"{r['diff_pct']:+.2f}% | {lo:+.1f}% .. {hi:+.1f}% |")
    lines += ["", "Reading the table:", "",
              "- On a ~2 ms workload the runner's p50 and the bare loop's agree to within the A/A control's own "
              "spread: the runner adds no measurable cost to what it times.",
              "- On a ~20 us workload the bare loop is the slower one: `sess.run(None, feed)` rebuilds the list of "
              "output names inside the timed call, while the runner passes the names it resolved once. At that size "
              "a few microseconds of Python show up; the runner's figure is the closer one to the model's cost.",
              "- The IQR columns are the honest error bars. On this 2-core shared VM they are wider than the 3% "
              "target, so the target is met in the median, not proven per pair; rerun on a quiet board for tighter bars."]
    lines += ["", "Reproduce:", "", "```", ".venv/bin/python bench/runner.py "
              f"--rounds {args.rounds} --duration {args.duration:g}", "```", ""]
    append_results(args.out, "\n".join(lines))
    print(json.dumps([{k: v for k, v in r.items() if k != "pairs"} for r in rows], indent=2))


if __name__ == "__main__":
    main()
