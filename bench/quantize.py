"""Side-by-side int8 benchmark: edgekit's quantize_for_target against the usual anchors.

    nice .venv/bin/python bench/quantize.py [--models digits,minilm,efficientnet] [--json PATH] [--no-append]
                                            [--skip VARIANT,...]

Models: the digits CNN (samples/digits, or trained here), MiniLM-L6 (real weights, batch 1, seq 128)
and EfficientNet-Lite0 (real ImageNet weights, crops of photographs shipped in scikit-image and
scikit-learn: bench/models/efficientnet.py); ``mobilenet`` (random weights) is still selectable.
Variants per model (the anchors, side by side in one run):

* ``fp32``            the exported model in onnxruntime (ORT_ENABLE_ALL); ``fp32-aa`` a second session
                      of the same file, the A/A control whose paired "speedup" is the noise floor
* ``ort-static``      ``quantize_static`` defaults on the pre-processed model (QDQ, S8S8, all ops)
* ``ort-dynamic``     ``quantize_dynamic`` defaults
* ``optimum-vnni``    optimum's ``AutoQuantizationConfig.avx512_vnni(is_static=True)`` (per-channel U8S8 QDQ)
* ``optimum-avx2``    optimum's ``AutoQuantizationConfig.avx2(is_static=True)``
* ``olive-static``    Olive's ``OnnxStaticQuantization`` pass (olive-ai), when it is installed
* ``nncf-ptq``        ``nncf.quantize`` defaults (ONNX backend; transformer model type for MiniLM)
* ``nncf-ac``         ``nncf.quantize_with_accuracy_control`` (max drop 1 pt of the model's metric)
* ``edgekit-vnni``    ``quantize_for_target`` for the x86-avx512-vnni profile
* ``edgekit-avx2``    ``quantize_for_target`` for x86-avx2 (the profile this host matches)

Each build runs in a fresh child process (forkserver), so "build s" is that build alone and "peak MB"
is the child's peak resident memory (VmHWM: the build plus its imports). Every model then runs in
this one process with 2 intra-op threads, timed interleaved (round robin, best of 3 runs per round),
so load from other processes on the shared host hits all of them alike. Quality is measured on
held-out inputs, never the calibration ones.
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
from bench.models import efficientnet as effnet_model  # noqa: E402
from bench.models import minilm as minilm_model  # noqa: E402
from bench.models import mobilenet as mobilenet_model  # noqa: E402
from edgekit.optimize import inside, quiet  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import append_results  # noqa: E402

THREADS = 2
BUDGET_S = 2400.0
"""edgekit's --budget here, a cap: EfficientNet-Lite0's whole build takes about 3 min on a quiet 2-core host."""
RESULTS = ROOT / "bench" / "RESULTS.md"
TARGETS = {"digits": (2.5, "top-1 drop <= 0.5 pt"), "minilm": (2.0, "mean cosine >= 0.99, min >= 0.98"),
           "mobilenet": (2.5, "top-1 agreement >= 99%"), "efficientnet": (2.0, "top-1 agreement >= 99%")}




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


def optimum_preset(preset: str, prep: Path, out: Path, calib) -> Path:
    """optimum's ``preset`` static preset (avx512_vnni, avx2) through its own ORTQuantizer (fit + quantize).

    ``datasets`` is not installed; ORTQuantizer only iterates the dataset, one unbatched sample per
    item, so a list of dicts stands in for it."""
    from onnxruntime.quantization import CalibrationMethod
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig, CalibrationConfig

    qconfig = getattr(AutoQuantizationConfig, preset)(is_static=True)
    dataset = [{k: v[0] for k, v in f.items()} for f in calib]
    ccfg = CalibrationConfig(dataset_name="bench", dataset_config_name="bench", dataset_split="calibration",
                             dataset_num_samples=len(dataset), method=CalibrationMethod.MinMax)
    # optimum names its output "<stem>_quantized" then swaps the suffix, so "x.pre.onnx" would come
    # back as "x.onnx": give it a plain name in its own directory.
    src_dir = out.parent / f"optimum-src-{preset}"
    src_dir.mkdir(exist_ok=True)
    src = src_dir / "model.onnx"
    src.write_bytes(prep.read_bytes())
    with quiet():
        quantizer = ORTQuantizer(src)
        ranges = quantizer.fit(dataset=dataset, calibration_config=ccfg,
                               onnx_augmented_model_name=str(out.parent / f"optimum-augmented-{preset}.onnx"),
                               operators_to_quantize=qconfig.operators_to_quantize)
        saved = quantizer.quantize(qconfig, out.parent / f"optimum-{preset}", calibration_tensors_range=ranges)
    produced = Path(saved) / "model_quantized.onnx"
    produced.replace(out)
    return out


def olive_static(prep: Path, out: Path, calib) -> Path:
    """Olive's onnxruntime static quantization pass (``OnnxStaticQuantization``) with its defaults,
    run as a single pass on an ONNX model; calibration comes through a registered dataloader."""
    from olive.data.registry import Registry
    from olive.model import ONNXModelHandler
    from olive.passes.olive_pass import create_pass_from_dict
    from olive.passes.onnx.quantization import OnnxStaticQuantization

    name = f"edgekit_bench_{len(calib)}"

    @Registry.register_dataset(name)
    def _dataset(**kwargs):  # noqa: ANN003
        return [(f, 0) for f in calib]

    @Registry.register_dataloader(name)
    def _loader(dataset, **kwargs):  # noqa: ANN001, ANN003
        return dataset

    config = {"data_config": {"name": "bench", "load_dataset_config": {"type": name},
                              "dataloader_config": {"type": name}}}
    with quiet():
        p = create_pass_from_dict(OnnxStaticQuantization, config, disable_search=True)
        result = p.run(ONNXModelHandler(model_path=str(prep)), str(out))
    produced = Path(result.model_path)
    if produced != out:
        produced.replace(out)
    return out


def _nncf_recipe(name: str) -> Dict[str, Any]:
    from edgekit.quantize.methods import nncf_backend

    return nncf_backend.recipe(transformer=name == "minilm", preset="mixed" if name == "minilm" else "performance")


def nncf_ptq(model_name: str):
    def run(prep: Path, out: Path, calib) -> Path:
        from edgekit.quantize.methods import nncf_backend

        return nncf_backend.build_nncf(prep, out, calib, {**_nncf_recipe(model_name), "subset_size": len(calib)})
    return run


def nncf_ac(model_name: str, val, refs, labels):
    """NNCF's accuracy-control loop, fed the held-out set and the bench's own quality figure
    (top-1 agreement, or mean cosine for MiniLM), allowed 1 point of drop."""
    def run(prep: Path, out: Path, calib) -> Path:
        from edgekit.quantize.methods import nncf_backend

        def validate(model, items):
            sess = model if hasattr(model, "run") else session_bytes(model.SerializeToString())
            per = []
            for idx, _feed in items:
                o = sess.run(None, val[idx])[0]
                if model_name == "minilm":
                    q = quality(model_name, [o], [refs[idx]], [val[idx]], None)["cosine_mean"]
                else:
                    q = float(int(np.argmax(o)) == int(np.argmax(refs[idx])))
                per.append(q)
            return float(np.mean(per)), per

        import nncf

        items = list(enumerate(val))
        rec = {**_nncf_recipe(model_name), "subset_size": len(calib)}
        model = __import__("onnx").load(str(prep))
        with quiet():
            q = nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(list(calib)), nncf.Dataset(items, lambda it: it[1]), validation_fn=validate,
                max_drop=0.01, subset_size=len(calib), preset=getattr(nncf.QuantizationPreset, rec["preset"].upper()),
                **({"model_type": nncf.ModelType.TRANSFORMER} if model_name == "minilm" else {}))
        __import__("onnx").save(q, str(out))
        return out
    return run


def session_bytes(model: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def edgekit_variant(profile_name: str, metric, exported: Path, out: Path, calib, val) -> Dict[str, Any]:
    from edgekit import optimize, targets
    from edgekit.quantize import quantize_for_target

    profile = targets.load_all()[profile_name]
    prepared = optimize.prepare(exported, out.parent / f"{profile_name}.prepared.onnx", profile)
    from edgekit.guard import resolve as resolve_guard

    # the guard settings `edgekit build` resolves (feature axes from the declared shapes, the mask)
    guard = resolve_guard({}, exported, metric.mask_input)
    progress = _Stopwatch()
    res = quantize_for_target(prepared, out.parent / f"{profile_name}-work", profile, calib, val, metric,
                              budget_s=BUDGET_S, guard=guard, progress=progress)
    return {"path": res.model_path, "level": res.runtime_graph_optimization,
            "recipe": {"precision": res.precision, "method": res.method, "preset": res.preset,
                       "kept_float": len(res.kept_float), "reason": res.reason,
                       "methods_skipped": res.methods_skipped, "fallback_s": progress.fallback_s(),
                       "candidates": [c.model_dump(mode="json") for c in res.candidates]}}


class _Stopwatch:
    """The build's progress lines with their times: how long the accuracy-aware fallback took (from
    "ranking N quantized nodes" to the first line after the search), the issue's build-cost figure."""

    def __init__(self) -> None:
        self.lines: List[tuple] = []

    def __call__(self, msg: str) -> None:
        self.lines.append((time.perf_counter(), msg))

    def fallback_s(self) -> Optional[float]:
        total, start = 0.0, None
        for t, msg in self.lines:
            inside = msg.startswith(("ranking", "sensitivity", "fallback:"))
            if msg.startswith("ranking") and start is None:
                start = t
            elif start is not None and not inside:
                total, start = total + (t - start), None
        return round(total, 1) if total else None


ANCHORS = ("ort-static", "ort-dynamic", "optimum-vnni", "optimum-avx2", "olive-static", "nncf-ptq", "nncf-ac",
           "edgekit-vnni", "edgekit-avx2")


def build_variant(vname: str, model: str, exported: Path, prep: Path, calib, val, labels, refs, metric) -> Dict[str, Any]:
    out = prep.parent / f"{model}.{vname}.onnx"
    if vname == "ort-static":
        return {"path": ort_static_defaults(prep, out, calib)}
    if vname == "ort-dynamic":
        return {"path": ort_dynamic_defaults(prep, out, calib)}
    if vname.startswith("optimum-"):
        return {"path": optimum_preset({"vnni": "avx512_vnni", "avx2": "avx2"}[vname.split("-")[1]], prep, out, calib)}
    if vname == "olive-static":
        return {"path": olive_static(prep, out, calib)}
    if vname == "nncf-ptq":
        return {"path": nncf_ptq(model)(prep, out, calib)}
    if vname == "nncf-ac":
        return {"path": nncf_ac(model, val, refs, labels)(prep, out, calib)}
    if vname.startswith("edgekit-"):
        profile = {"edgekit-vnni": "x86-avx512-vnni", "edgekit-avx2": "x86-avx2"}[vname]
        return edgekit_variant(profile, metric, exported, out, calib, val)
    raise SystemExit(f"unknown variant {vname}")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _child(args) -> Dict[str, Any]:
    """One build in a fresh process: its wall time and peak resident memory, and what it produced."""
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: count the build, not the unpickling
    except OSError:
        pass
    t0 = time.perf_counter()
    try:
        out = build_variant(*args)
    except BaseException as exc:  # an anchor failing is a result too
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
    out["build_s"] = time.perf_counter() - t0
    out["peak_mb"] = _peak_rss_mb()
    return out


def build_isolated(*args) -> Dict[str, Any]:
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("forkserver")) as pool:
        try:
            return pool.submit(_child, args).result()
        except Exception as exc:  # the child died (killed for memory, a crash in native code)
            return {"error": f"build process died: {type(exc).__name__}: {exc}"[:300]}


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
    if name == "efficientnet":
        path = effnet_model.export(work / "efficientnet.onnx")
        return path, effnet_model.feeds(64, seed=11), effnet_model.feeds(60, seed=12), None, MetricSpec("top1", 0.99)
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


def bench_model(name: str, work: Path, log: Callable[[str], None], skip: tuple = ()) -> Dict[str, Any]:
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

    variants: Dict[str, Dict[str, Any]] = {"fp32": {"path": exported, "level": "all", "build_s": 0.0},
                                           "fp32-aa": {"path": exported, "level": "all", "build_s": 0.0}}
    fp32 = session(exported)
    refs = [fp32.run(None, f)[0] for f in val]
    del fp32
    for vname in [v for v in ANCHORS if v not in skip and f"{name}:{v}" not in skip]:
        log(f"[{name}] building {vname}")
        out = build_isolated(vname, name, exported, prep, calib, val, labels, refs, metric)
        if "error" not in out and not vname.startswith("edgekit-"):
            out["build_s"] += prep_s  # quant_pre_process is part of the anchor's recipe
        out.setdefault("level", "all")
        variants[vname] = out
        log(f"[{name}] {vname}: " + (out["error"] if "error" in out else f"{out['build_s']:.1f}s, peak {out['peak_mb']:.0f} MB"))

    log(f"[{name}] scoring on held-out inputs")
    sessions = {v: session(d["path"], d["level"]) for v, d in variants.items() if "path" in d}
    out_idx = 0
    refs = [sessions["fp32"].run(None, f)[out_idx] for f in val]
    for v, s in sessions.items():
        outs = [s.run(None, f)[out_idx] for f in val]
        variants[v]["quality"] = quality(name, outs, refs, val, labels)
        variants[v]["size_bytes"] = size_of(Path(variants[v]["path"]))
    log(f"[{name}] timing {len(sessions)} variants interleaved")
    rounds = {"digits": 100, "minilm": 25, "mobilenet": 30, "efficientnet": 30}[name]
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
                  f"A/A noise floor (fp32 against a second fp32 session, paired): "
                  f"{abs(1 - m['variants']['fp32-aa']['latency']['speedup_paired']):.1%}", "",
                  "| variant | p50 ms | speedup (p50) | speedup (paired) | quality (held-out) | size MB | build s | peak build MB | recipe |",
                  "|---|---:|---:|---:|---|---:|---:|---:|---|"]
        for v, d in m["variants"].items():
            if "error" in d:
                lines.append(f"| {v} | - | - | - | failed: {d['error']} | - | - | - | - |")
                continue
            t = d["latency"]
            q = ", ".join(f"{k} {val:.4f}" for k, val in d["quality"].items())
            recipe = ""
            if "recipe" in d:
                r = d["recipe"]
                recipe = f"{r['precision']} {r['method']}" + (f", {r['kept_float']} kept float" if r["kept_float"] else "")
                tried = [c["name"] for c in r["candidates"] if c["name"].startswith("int8-") and c.get("metric")]
                recipe += f" (int8 candidates: {', '.join(tried)})" if tried else ""
                recipe += f"; accuracy fallback {r['fallback_s']:.0f} s" if r.get("fallback_s") else ""
            peak = f"{d['peak_mb']:.0f}" if "peak_mb" in d else "-"
            lines.append(f"| {v} | {t['p50_ms']:.3f} | {t['speedup_p50']:.2f}x | {t['speedup_paired']:.2f}x | {q} | "
                         f"{d['size_bytes'] / 1e6:.2f} | {d.get('build_s', 0):.1f} | {peak} | {recipe} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="digits,minilm,efficientnet")
    ap.add_argument("--skip", default="", help=f"variants to leave out (of {', '.join(ANCHORS)}); MODEL:VARIANT "
                                               "leaves it out for one model")
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
            report["models"].append(bench_model(name, work, log, tuple(x.strip() for x in args.skip.split(",") if x)))
            if args.json:  # after each model: a later model failing must not lose the earlier ones
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(report, indent=2, default=str))
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
