"""Side-by-side int8 benchmark: edgekit's quantize_for_target against the usual anchors.

    .venv/bin/python bench/quantize.py [--models digits,minilm,mobilenet] [--json PATH] [--no-append]

Models: the digits CNN (samples/digits, or trained here), MiniLM-L6 (real weights, batch 1, seq 128)
and a MobileNetV2-shaped CNN with random weights (bench/models/mobilenet.py). Variants per model:

* ``fp32``            the exported model in onnxruntime (ORT_ENABLE_ALL)
* ``ort-static``      ``quantize_static`` defaults on the pre-processed model (QDQ, S8S8, all ops)
* ``optimum-vnni``    optimum's ``AutoQuantizationConfig.avx512_vnni(is_static=True)`` (per-channel U8S8 QDQ)
* ``ort-dynamic``     ``quantize_dynamic`` defaults
* ``edgekit-vnni``    ``quantize_for_target`` for the x86-avx512-vnni profile
* ``edgekit-avx2``    ``quantize_for_target`` for x86-avx2 (the profile this host matches)

Every variant runs in this one process with 2 intra-op threads, timed interleaved (round robin, best
of 3 runs per round), so load from other processes on the shared host hits all of them alike.
Quality is measured on held-out inputs, never the calibration ones.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.models import digits as digits_model  # noqa: E402
from bench.models import minilm as minilm_model  # noqa: E402
from bench.models import mobilenet as mobilenet_model  # noqa: E402
from edgekit.optimize import inside, quiet  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import append_results  # noqa: E402

THREADS = 2
RESULTS = ROOT / "bench" / "RESULTS.md"
TARGETS = {"digits": (2.5, "top-1 drop <= 0.5 pt"), "minilm": (2.0, "mean cosine >= 0.99, min >= 0.98"),
           "mobilenet": (2.5, "top-1 agreement >= 99%")}




class Reader:
    def __init__(self, feeds: List[Dict[str, np.ndarray]]) -> None:
        self.it = iter(feeds)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self.it, None)


def session(path: Path, level: str = "all"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def size_of(path: Path) -> int:
    data = path.parent / (path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


# ------------------------------------------------------------------------------------------------
# Anchors
# ------------------------------------------------------------------------------------------------
def ort_static_defaults(prep: Path, out: Path, calib) -> Path:
    from onnxruntime.quantization import quantize_static

    with quiet():
        quantize_static(str(prep), str(out), Reader(calib))
    return out


def ort_dynamic_defaults(prep: Path, out: Path, calib) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    with quiet():
        quantize_dynamic(str(prep), str(out))
    return out


def optimum_vnni(prep: Path, out: Path, calib) -> Path:
    """optimum's avx512_vnni static preset through its own ORTQuantizer (fit + quantize).

    ``datasets`` is not installed; ORTQuantizer only iterates the dataset, one unbatched sample per
    item, so a list of dicts stands in for it."""
    from onnxruntime.quantization import CalibrationMethod
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig, CalibrationConfig

    qconfig = AutoQuantizationConfig.avx512_vnni(is_static=True)
    dataset = [{k: v[0] for k, v in f.items()} for f in calib]
    ccfg = CalibrationConfig(dataset_name="bench", dataset_config_name="bench", dataset_split="calibration",
                             dataset_num_samples=len(dataset), method=CalibrationMethod.MinMax)
    # optimum names its output "<stem>_quantized" then swaps the suffix, so "x.pre.onnx" would come
    # back as "x.onnx": give it a plain name in its own directory.
    src_dir = out.parent / "optimum-src"
    src_dir.mkdir(exist_ok=True)
    src = src_dir / "model.onnx"
    src.write_bytes(prep.read_bytes())
    with quiet():
        quantizer = ORTQuantizer(src)
        ranges = quantizer.fit(dataset=dataset, calibration_config=ccfg,
                               onnx_augmented_model_name=str(out.parent / "optimum-augmented.onnx"),
                               operators_to_quantize=qconfig.operators_to_quantize)
        saved = quantizer.quantize(qconfig, out.parent / "optimum", calibration_tensors_range=ranges)
    produced = Path(saved) / "model_quantized.onnx"
    produced.replace(out)
    return out


def edgekit_variant(profile_name: str, metric) -> Callable:
    def run(exported: Path, out: Path, calib, val) -> Dict[str, Any]:
        from edgekit import optimize, targets
        from edgekit.quantize import quantize_for_target

        profile = targets.load_all()[profile_name]
        prepared = optimize.prepare(exported, out.parent / f"{profile_name}.prepared.onnx", profile)
        result = quantize_for_target(prepared, out.parent / f"{profile_name}-work", profile, calib, val, metric,
                                     budget_s=400.0)
        return {"path": result.model_path, "level": result.runtime_graph_optimization, "result": result}
    return run


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
def load_model(name: str, work: Path):
    """(exported path, calibration feeds, held-out feeds, labels or None, metric spec, quality fn)."""
    from edgekit.metrics import MetricSpec

    if name == "digits":
        path, calib, val, labels = digits_model.export(work / "digits.onnx")
        return path, calib[:128], val, labels, MetricSpec("top1", 0.99)
    if name == "minilm":
        path = minilm_model.export(work / "minilm")
        calib, val = minilm_model.data(64, 40)
        return path, calib, val, None, MetricSpec("cosine", 0.99, pooling="mean")
    if name == "mobilenet":
        path = mobilenet_model.export(work / "mobilenet.onnx")
        return path, mobilenet_model.feeds(32, seed=1), mobilenet_model.feeds(60, seed=2), None, MetricSpec("top1", 0.99)
    raise SystemExit(f"unknown model {name}")


def quality(name: str, outs: List[np.ndarray], refs: List[np.ndarray], val, labels) -> Dict[str, float]:
    from edgekit.device.runner import score

    if name == "minilm":
        s = score("cosine", outs, refs, val, pooling="mean", mask_input="attention_mask")
        return {"cosine_mean": s["value"], "cosine_min": s["min"]}
    q = {"top1_agreement": score("top1", outs, refs)["value"]}
    if labels is not None:
        q["top1_accuracy"] = float(np.mean([int(np.argmax(o)) == int(l) for o, l in zip(outs, labels)]))
    return q


def time_interleaved(sessions: Dict[str, Any], feed, rounds: int, per: int = 3) -> Dict[str, Dict[str, float]]:
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feed)
    best: Dict[str, List[float]] = {n: [] for n in sessions}
    every: Dict[str, List[float]] = {n: [] for n in sessions}
    for _ in range(rounds):
        for n, s in sessions.items():
            runs = []
            for _ in range(per):
                t0 = time.perf_counter()
                s.run(None, feed)
                runs.append((time.perf_counter() - t0) * 1000.0)
            every[n] += runs
            best[n].append(min(runs))
    base = best[next(iter(sessions))]  # the first session is FP32
    return {n: {"p50_ms": float(np.median(every[n])), "p90_ms": float(np.percentile(every[n], 90)),
                "best_of_3_median_ms": float(np.median(best[n])), "runs": len(every[n]),
                # Paired: the ratio within each round (same moment, same load), then the median.
                "speedup_paired": float(np.median(np.array(base) / np.array(best[n])))} for n in sessions}


def bench_model(name: str, work: Path, log: Callable[[str], None]) -> Dict[str, Any]:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.perf_counter()
    exported, calib, val, labels, metric = load_model(name, work)
    export_s = time.perf_counter() - t0
    log(f"[{name}] exported in {export_s:.1f}s; {len(calib)} calibration, {len(val)} held-out inputs")
    prep = work / f"{name}.pre.onnx"
    t0 = time.perf_counter()
    with quiet(), inside(work):  # ORT drops sym_shape_infer_temp.onnx into the working directory
        try:
            quant_pre_process(str(exported), str(prep))
        except Exception:  # symbolic shape inference gives up on exported transformers
            quant_pre_process(str(exported), str(prep), skip_symbolic_shape=True)
    prep_s = time.perf_counter() - t0

    variants: Dict[str, Dict[str, Any]] = {"fp32": {"path": exported, "level": "all", "build_s": 0.0}}
    anchors = [("ort-static", ort_static_defaults), ("optimum-vnni", optimum_vnni), ("ort-dynamic", ort_dynamic_defaults)]
    for vname, fn in anchors:
        log(f"[{name}] building {vname}")
        t0 = time.perf_counter()
        try:
            path = fn(prep, work / f"{name}.{vname}.onnx", calib)
            variants[vname] = {"path": path, "level": "all", "build_s": time.perf_counter() - t0 + prep_s}
        except Exception as exc:  # an anchor failing is a result too
            variants[vname] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    for vname, profile in (("edgekit-vnni", "x86-avx512-vnni"), ("edgekit-avx2", "x86-avx2")):
        log(f"[{name}] building {vname}")
        t0 = time.perf_counter()
        out = edgekit_variant(profile, metric)(exported, work / f"{name}.{vname}.onnx", calib, val)
        res = out.pop("result")
        out["build_s"] = time.perf_counter() - t0
        out["recipe"] = {"precision": res.precision, "method": res.method, "preset": res.preset,
                         "kept_float": len(res.kept_float), "reason": res.reason,
                         "candidates": [c.model_dump(mode="json") for c in res.candidates]}
        variants[vname] = out

    log(f"[{name}] scoring on held-out inputs")
    sessions = {v: session(d["path"], d["level"]) for v, d in variants.items() if "path" in d}
    out_idx = 0
    refs = [sessions["fp32"].run(None, f)[out_idx] for f in val]
    for v, s in sessions.items():
        outs = [s.run(None, f)[out_idx] for f in val]
        variants[v]["quality"] = quality(name, outs, refs, val, labels)
        variants[v]["size_bytes"] = size_of(Path(variants[v]["path"]))
    log(f"[{name}] timing {len(sessions)} variants interleaved")
    rounds = {"digits": 100, "minilm": 25, "mobilenet": 30}[name]
    timing = time_interleaved(sessions, val[0], rounds)
    base = timing["fp32"]
    for v, t in timing.items():
        t["speedup_p50"] = base["p50_ms"] / t["p50_ms"]
        variants[v]["latency"] = t
    for d in variants.values():
        if "path" in d:
            d["path"] = str(Path(d["path"]).name)
    return {"model": name, "export_s": export_s, "variants": variants,
            "target": {"speedup": TARGETS[name][0], "quality": TARGETS[name][1]}}


def host_facts() -> Dict[str, Any]:
    import onnxruntime

    from edgekit import targets

    flags = targets.host_cpu_flags()
    cpu = "unknown"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "isa": sorted(f for f in flags if f.startswith(("avx", "fma", "vnni", "amx"))),
            "vnni": any("vnni" in f for f in flags), "onnxruntime": onnxruntime.__version__,
            "threads": THREADS, "loadavg_start": os.getloadavg()}


def markdown(report: Dict[str, Any], command: str) -> str:
    h = report["host"]
    lines = [f"### Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"`{command}`", "",
             f"Host: {h['cpu']}, {h['cores']} cores, ISA {' '.join(h['isa'])} (VNNI: {'yes' if h['vnni'] else 'no'}); "
             f"onnxruntime {h['onnxruntime']}, {h['threads']} intra-op threads; load average "
             f"{h['loadavg_start'][0]:.1f} at start, {h['loadavg_end'][0]:.1f} at end (shared host). "
             f"Total {report['total_s']:.0f}s.", ""]
    for m in report["models"]:
        lines += [f"**{m['model']}** (target: >= {m['target']['speedup']}x FP32, {m['target']['quality']})", "",
                  "| variant | p50 ms | speedup (p50) | speedup (paired) | quality (held-out) | size MB | build s | recipe |",
                  "|---|---:|---:|---:|---|---:|---:|---|"]
        for v, d in m["variants"].items():
            if "error" in d:
                lines.append(f"| {v} | - | - | - | failed: {d['error']} | - | - | - |")
                continue
            t = d["latency"]
            q = ", ".join(f"{k} {val:.4f}" for k, val in d["quality"].items())
            recipe = ""
            if "recipe" in d:
                r = d["recipe"]
                recipe = f"{r['precision']} {r['method']}" + (f", {r['kept_float']} kept float" if r["kept_float"] else "")
            lines.append(f"| {v} | {t['p50_ms']:.3f} | {t['speedup_p50']:.2f}x | {t['speedup_paired']:.2f}x | {q} | "
                         f"{d['size_bytes'] / 1e6:.2f} | {d.get('build_s', 0):.1f} | {recipe} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits,minilm,mobilenet")
    ap.add_argument("--json", type=Path, default=None, help="write the full report here")
    ap.add_argument("--no-append", action="store_true", help=f"do not append the table to {RESULTS.name}")
    ap.add_argument("--keep", type=Path, default=None, help="keep the built models in this directory")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    import torch

    torch.set_num_threads(THREADS)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    report: Dict[str, Any] = {"host": host_facts(), "models": []}
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        work_root = args.keep or Path(tmp)
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            work = work_root / name
            work.mkdir(parents=True, exist_ok=True)
            report["models"].append(bench_model(name, work, log))
    report["host"]["loadavg_end"] = os.getloadavg()
    report["total_s"] = time.perf_counter() - t_start
    command = "python bench/quantize.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report["command"] = command.strip()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    md = markdown(report, report["command"])
    print(md)
    if not args.no_append:
        append_results(RESULTS, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
