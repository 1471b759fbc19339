#!/usr/bin/env python3
"""edgekit on-device runner: one file, copied into every release.

Needs only Python >= 3.8 (JetPack 5), numpy and one runtime: onnxruntime, or tflite_runtime /
ai_edge_litert for ``.tflite`` models. Usage on the device:

    python3 runner.py validate --release DIR --out result.json [--duration S] [--threads N]
        [--repeat N] [--warmup N] [--power SAMPLER] [--power-rate HZ] [--idle S] [--requests-per-s R]
        [--sysfs-root DIR] [--grid-intensity G]

It always writes the result JSON, failures included (``"ok": false`` and an ``error`` with a
``kind`` and a ``message``). Exit status: 0 passed, 3 metric missed its threshold, 4 failure.
The host imports the metric functions from this file too, so host and device score alike:
``score``, ``passes`` and ``HIGHER_IS_BETTER`` are a stable interface.
"""
from __future__ import print_function

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback

RESULT_SCHEMA = 2
MAX_SAMPLES = 1000  # raw latency samples kept in the JSON (evenly strided) for histograms
EXIT_OK, EXIT_METRIC, EXIT_FAILURE = 0, 3, 4

try:  # numpy is required, but its absence must become a result, not a traceback
    import numpy as np
except ImportError:  # pragma: no cover - exercised on bare devices
    np = None


class RunnerError(Exception):
    """A failure with a message meant for the user, written into the result JSON."""

    def __init__(self, kind, message, hint=None):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message
        self.hint = hint


# ----------------------------------------------------------------------------------------------
# Metrics (pure numpy; also used by the host through edgekit.metrics)
# ----------------------------------------------------------------------------------------------
HIGHER_IS_BETTER = {"top1": True, "topk": True, "cosine": True, "psnr": True, "max_abs": False, "max_rel": False,
                    "detections": True, "sequences": True}
TASK_METRICS = ("detections", "sequences")
"""Task metrics: their arithmetic lives in guard.py (shipped beside this file) with the guards."""


def guard_module():
    """guard.py: ``edgekit.device.guard`` on the host, the file beside runner.py on the device."""
    if __package__:
        return __import__(__package__ + ".guard", fromlist=["guard"])
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        import guard
    except ImportError:
        raise RunnerError("release", "guard.py is missing beside %s" % os.path.abspath(__file__),
                          "rebuild and deploy the release with this edgekit version")
    return guard


def _pool(arr, feed, pooling, mask_input):
    arr = np.asarray(arr, dtype=np.float64)
    if pooling == "mean" and arr.ndim == 3 and feed is not None and mask_input in feed:
        mask = np.asarray(feed[mask_input], dtype=np.float64)[..., None]
        return (arr * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    return arr


def score(metric, outputs, references, feeds=None, k=5, pooling="none", mask_input="attention_mask", options=None):
    """Compare per-sample outputs with references.

    ``outputs`` and ``references`` are lists (one entry per sample) of arrays for the chosen output.
    Returns a dict: ``value`` (the metric), plus ``min`` where a per-sample figure exists.
    ``options``: the task metric's settings (detections, sequences; see guard.py).
    """
    if len(outputs) != len(references) or not outputs:
        raise RunnerError("metric", "expected as many outputs as references, got %d and %d" % (len(outputs), len(references)))
    if metric in TASK_METRICS:
        return guard_module().TASK_METRICS[metric](outputs, references, options)
    feeds = feeds if feeds is not None else [None] * len(outputs)
    if metric in ("top1", "topk"):
        hits = []
        for out, ref in zip(outputs, references):
            o = np.asarray(out).reshape(-1, np.shape(out)[-1])
            r = np.asarray(ref).reshape(-1, np.shape(ref)[-1])
            want = r.argmax(axis=-1)
            if metric == "top1":
                hits.extend((o.argmax(axis=-1) == want).tolist())
            else:
                kk = min(k, o.shape[-1])
                # stable on -scores: ties rank in index order, as argmax picks the first maximum
                top = np.argsort(-o.astype(np.float64), axis=-1, kind="stable")[:, :kk]
                hits.extend([bool(w in t) for w, t in zip(want, top)])
        return {"value": float(np.mean(hits)), "n": len(hits)}
    if metric == "cosine":
        sims = []
        for out, ref, feed in zip(outputs, references, feeds):
            o = _pool(out, feed, pooling, mask_input)
            r = _pool(ref, feed, pooling, mask_input)
            o = o.reshape(o.shape[0], -1) if o.ndim > 1 else o.reshape(1, -1)
            r = r.reshape(r.shape[0], -1) if r.ndim > 1 else r.reshape(1, -1)
            num = (o * r).sum(axis=1)
            den = np.linalg.norm(o, axis=1) * np.linalg.norm(r, axis=1)
            sims.extend((num / np.maximum(den, 1e-12)).tolist())
        return {"value": float(np.mean(sims)), "min": float(np.min(sims)), "n": len(sims)}
    o = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in outputs])
    r = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in references])
    if metric == "psnr":
        mse = float(np.mean((o - r) ** 2))
        peak = float(np.max(np.abs(r))) or 1.0
        value = float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)
        return {"value": float(value), "mse": mse}
    if metric == "max_abs":
        return {"value": float(np.max(np.abs(o - r)))}
    if metric == "max_rel":
        return {"value": float(np.max(np.abs(o - r) / (np.abs(r) + 1e-6)))}
    raise RunnerError("metric", "unknown metric '%s' (known: %s)" % (metric, ", ".join(sorted(HIGHER_IS_BETTER))))


SUBSET_SLACK = {"cosine": -1e-4, "psnr": -0.1, "max_abs": 0.01, "max_rel": 0.01}
"""Device vs host float differences allowed against a subset bar (absolute for cosine and psnr dB,
relative for max_abs/max_rel); rates (top1/topk) must match exactly."""


def _with_slack(metric, bar):
    slack = SUBSET_SLACK.get(metric, 0.0)
    return bar * (1.0 + slack) if metric in ("max_abs", "max_rel") else bar + slack


def passes(metric, value, threshold):
    return value >= threshold if HIGHER_IS_BETTER[metric] else value <= threshold


def metric_key(metric, k=5):
    """The key ``all_metrics`` files a metric under."""
    return {"topk": "top%d" % int(k), "psnr": "psnr_db"}.get(metric, metric)


def further_checks(spec, metrics):
    """The manifest's ``also`` thresholds against the computed metrics: a list of checks."""
    checks = []
    for name in sorted(spec.get("also") or {}):
        threshold = spec["also"][name]
        value = metrics.get(metric_key(name, spec.get("k", 5)))
        ok = value is not None and passes(name, value, threshold)
        checks.append({"name": name, "value": value, "threshold": threshold, "passed": bool(ok)})
    return checks


def all_metrics(outputs, references, feeds, spec):
    """Every agreement figure at once, so a report can show more than the gating metric."""
    tasks = [m for m in TASK_METRICS if m == spec.get("name") or m in (spec.get("also") or {})]
    names = [(m, metric_key(m, spec.get("k", 5))) for m in ["top1", "topk", "cosine", "psnr", "max_abs", "max_rel"] + tasks]
    found = {}
    for metric, key in names:
        try:
            found[key] = score(metric, outputs, references, feeds, k=int(spec.get("k", 5)),
                               pooling=spec.get("pooling", "none"),
                               mask_input=spec.get("mask_input", "attention_mask"), options=spec.get(metric))["value"]
        except Exception:  # e.g. cosine on mismatched shapes: that figure is just absent
            found[key] = None
    return found


# ----------------------------------------------------------------------------------------------
# Latency statistics (MLPerf conventions: mean, min, p50, p90, p99)
# ----------------------------------------------------------------------------------------------
def percentiles(samples_ms):
    a = np.sort(np.asarray(samples_ms, dtype=np.float64))
    return {
        "mean_ms": float(a.mean()),
        "min_ms": float(a[0]),
        "max_ms": float(a[-1]),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "iterations": int(a.size),
    }


MAX_ITERATIONS = 10000
"""A window also ends after this many runs: enough for a stable p99, and a 0.04 ms model is done in
well under a second instead of spinning for the whole --duration."""
CHUNK_S = 0.05
"""Runs are planned in chunks of about this much estimated work, with a clock check between chunks."""


def time_window(run, feed, duration_s, min_iterations=10, max_iterations=MAX_ITERATIONS):
    """Run until ``duration_s`` seconds or ``max_iterations`` runs, whichever comes first (at least
    ``min_iterations``), planning the iteration count from the measured cost.

    TVM's ``min_repeat_ms`` idea: time a few runs, then plan as many as fill the window. Plans are
    cut into chunks of about CHUNK_S that at most double the runs done, so an estimate taken on a
    few fast first runs can overshoot the window by one short chunk, never by the whole window.
    """
    clock = time.perf_counter
    samples = []
    cap = max(1, max_iterations, min_iterations)
    start = clock()
    planned = min(min_iterations, cap)
    while True:
        for _ in range(planned - len(samples)):
            t0 = clock()
            run(feed)
            samples.append((clock() - t0) * 1000.0)
        elapsed = clock() - start
        if elapsed >= duration_s or len(samples) >= cap:
            break
        per_run = max(elapsed / len(samples), 1e-7)
        wanted = int(math.ceil((duration_s - elapsed) / per_run))
        # At most as many again as done so far: a cost estimated on fast first runs cannot plan
        # thousands of slow ones before the clock is read again.
        planned = min(cap, len(samples) + max(1, min(wanted, int(CHUNK_S / per_run), len(samples))))
    stats = percentiles(samples)
    stats["window_s"] = clock() - start
    return stats, samples


def stride(samples, limit=MAX_SAMPLES):
    """At most ``limit`` samples, evenly strided so time order (and drift) stays visible."""
    if len(samples) <= limit:
        return [round(s, 4) for s in samples]
    step = len(samples) / float(limit)
    return [round(samples[int(i * step)], 4) for i in range(limit)]


def measure_latency(run, feed, duration_s, warmup=5, repeat=1, max_iterations=MAX_ITERATIONS):
    """Warm up, then ``repeat`` windows; the median of the windows is reported (MLPerf Tiny: 5)."""
    for _ in range(max(0, warmup)):
        run(feed)
    windows, everything = [], []
    for _ in range(max(1, repeat)):
        stats, samples = time_window(run, feed, duration_s, max_iterations=max_iterations)
        windows.append(stats)
        everything.extend(samples)
    latency = {}
    for key in ("mean_ms", "min_ms", "max_ms", "p50_ms", "p90_ms", "p99_ms"):
        latency[key] = float(np.median([w[key] for w in windows]))
    latency["iterations"] = int(sum(w["iterations"] for w in windows))
    latency["window_s"] = float(sum(w["window_s"] for w in windows))
    latency["throughput_ips"] = latency["iterations"] / latency["window_s"] if latency["window_s"] else None
    latency["repeat"] = len(windows)
    latency["warmup"] = warmup
    latency["windows"] = [{k: w[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "iterations", "window_s")} for w in windows]
    latency["samples_ms"] = stride(everything)
    latency["samples_total"] = len(everything)
    return latency


def rss_mb():
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024.0 if sys.platform != "darwin" else kb / (1024.0 * 1024.0)
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------
# Release and runtimes
# ----------------------------------------------------------------------------------------------
def load_release(release):
    path = os.path.join(release, "manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (IOError, OSError) as exc:
        raise RunnerError("release", "cannot read %s: %s" % (path, getattr(exc, "strerror", None) or exc),
                          "deploy the release again: edgekit deploy")
    except ValueError as exc:
        raise RunnerError("release", "%s is not valid JSON: %s" % (path, exc))
    for key in ("artifact", "inputs", "outputs", "metric"):
        if key not in manifest:
            raise RunnerError("release", "%s has no '%s' field; rebuild with this edgekit version" % (path, key))
    ref_path = os.path.join(release, "reference.npz")
    if not os.path.isfile(ref_path):
        raise RunnerError("release", "reference outputs %s are missing" % ref_path, "rebuild and deploy the release")
    try:
        ref = open_reference(ref_path)
    except RunnerError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError: all mean an unreadable file
        raise RunnerError("release", "cannot read reference outputs %s: %s" % (ref_path, exc))
    return manifest, ref


INLINE_BYTES = 1 << 20
"""Entries smaller than this are read into memory; larger ones are memory-mapped."""


def _stored_entry(path, info):
    """(dtype, shape, fortran, data offset) of an uncompressed .npy entry inside the zip, read from
    its local header; the bundle is untrusted, so every size is checked against the entry's."""
    import struct

    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local = raw.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise RunnerError("release", "reference.npz entry %r has a corrupt local header" % info.filename)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        raw.seek(start)
        version = np.lib.format.read_magic(raw)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(raw)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(raw)
        else:
            return None
        offset = raw.tell()
    if dtype.hasobject:
        raise RunnerError("release", "reference.npz entry %r holds Python objects; refusing to load it" % info.filename)
    count = 1
    for d in shape:
        count *= int(d)
    if offset - start + count * dtype.itemsize > info.file_size:
        raise RunnerError("release", "reference.npz entry %r is shorter than its header says" % info.filename)
    return dtype, shape, fortran, offset, count * dtype.itemsize


def open_reference(path):
    """reference.npz as {key: array} without reading it whole: np.savez stores entries uncompressed,
    so each large array is memory-mapped in place and validate touches one sample at a time
    (bounded memory whatever the file's size). Compressed entries are read normally."""
    import zipfile

    arrays = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            entry = _stored_entry(path, info) if info.compress_type == zipfile.ZIP_STORED else None
            if entry is None or entry[4] < INLINE_BYTES:
                with zf.open(info) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
                continue
            dtype, shape, fortran, offset, _ = entry
            arrays[key] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape),
                                    order="F" if fortran else "C")
    return arrays


def split_reference(manifest, ref):
    names = [i["name"] for i in manifest["inputs"]]
    out_names = [o["name"] for o in manifest["outputs"]]
    for key in ["input/" + n for n in names] + ["output/" + n for n in out_names]:
        if key not in ref:
            raise RunnerError("release", "reference.npz has no array '%s' (has: %s)" % (key, ", ".join(sorted(ref))))
    n = ref["input/" + names[0]].shape[0]
    for key in ["input/" + n_ for n_ in names] + ["output/" + n_ for n_ in out_names]:
        if ref[key].ndim < 1 or ref[key].shape[0] != n:
            raise RunnerError("release", "reference.npz array '%s' holds %s samples, '%s' holds %d"
                              % (key, ref[key].shape[:1], "input/" + names[0], n))
    # Views (of memory-mapped arrays): nothing is read until a sample is run.
    # np.asarray keeps a 0-d array for scalar inputs (indexing a 1-d array gives a numpy scalar).
    feeds = [dict((name, np.asarray(ref["input/" + name][i])) for name in names) for i in range(n)]
    refs = [[np.asarray(ref["output/" + name][i]) for name in out_names] for i in range(n)]
    return feeds, refs


def stream_carry(stream, starts, out_names, n):
    """For stateful streaming models: a function (feed, i, previous outputs) -> the feed to run, where
    each declared state input of a chunk that does not start a stream is the previous chunk's state
    output (the model's own, so errors accumulate along a stream as they would in production)."""
    pairs = [(p["input"], p["output"]) for p in (stream or {}).get("state", [])]
    if not pairs:
        return lambda feed, i, prev: feed
    for _, out in pairs:
        if out not in out_names:
            raise RunnerError("release", "stream state output '%s' is not a model output (%s)" % (out, ", ".join(out_names)))
    if starts is None or len(starts) != n:
        raise RunnerError("release", "streams need one start flag per sample: %d flags for %d samples"
                          % (0 if starts is None else len(starts), n))
    index = dict((name, i) for i, name in enumerate(out_names))

    def carry(feed, i, prev):
        if i == 0 or bool(starts[i]) or prev is None:
            return feed
        fed = dict(feed)
        for name, out in pairs:
            fed[name] = prev[index[out]]
        return fed
    return carry


def run_feeds(run, feeds, carry):
    """Run every feed in order, carrying stream state; returns the outputs of each."""
    outputs = []
    for i, feed in enumerate(feeds):
        outputs.append(run(carry(feed, i, outputs[-1] if outputs else None)))
    return outputs


def resolve_threads(manifest, threads):
    """--threads, else the manifest's runtime setting, else the profile's; 0/None: runtime default."""
    if threads is not None:
        return threads
    runtime = manifest.get("runtime") or {}
    for value in (runtime.get("num_threads"), runtime.get("intra_op_threads"),
                  (manifest.get("target_profile") or {}).get("intra_op_threads")):
        if value:
            return int(value)
    return None


def _ort_option(value):
    # onnxruntime's Python binding parses TensorRT booleans as the strings 'True'/'False' only
    # (older JetPack builds reject 'true'/'1'), so normalise booleans to exactly those.
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def provider_plan(runtime, available, release):
    """Execution providers to request, in the profile's priority order, with their options.

    Providers this onnxruntime build lacks are skipped (and reported); CPU always closes the list
    so a session can still be created. TensorRT's engine cache lives inside the release directory,
    so a redeploy of the same release id reuses engines and a new release never sees stale ones.
    """
    wanted = list(runtime.get("providers") or ["CPUExecutionProvider"])
    all_options = runtime.get("provider_options") or {}
    providers, options, skipped = [], [], []
    for name in wanted:
        if name not in available:
            skipped.append(name)
            continue
        opts = dict((k, _ort_option(v)) for k, v in (all_options.get(name) or {}).items())
        if name == "TensorrtExecutionProvider" and opts.get("trt_engine_cache_enable") == "True":
            cache = opts.get("trt_engine_cache_path") or "trt_cache"
            cache = cache if os.path.isabs(cache) else os.path.join(os.path.abspath(release), cache)
            opts["trt_engine_cache_path"] = cache
        providers.append(name)
        options.append(opts)
    if "CPUExecutionProvider" not in providers:
        providers.append("CPUExecutionProvider")
        options.append({})
    return providers, options, skipped


def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _classify(exc, default_kind):
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or "out of memory" in text or "failed to allocate" in text or "bad_alloc" in text:
        return "memory"
    return default_kind


def _node_providers(profile_path):
    """Count kernels per execution provider in an onnxruntime profile: which EP really ran."""
    with open(profile_path) as f:
        events = json.load(f)
    seen = {}
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") == "Node" and "provider" in args and ev.get("name", "").endswith("_kernel_time"):
            seen[ev["name"]] = args["provider"]
    counts = {}
    for provider in seen.values():
        counts[provider] = counts.get(provider, 0) + 1
    return counts


def main_provider(node_counts, registered_first):
    """The provider that really ran: the one that ran the most kernels in the profiled reference
    runs (TensorRT can be registered first yet hand most nodes to CUDA or the CPU); the first
    registered provider when there is no profile (tflite, or profiling unavailable)."""
    if not node_counts:
        return registered_first
    return sorted(node_counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def disabled_optimizers(runtime):
    """The manifest's runtime.disabled_optimizers: a short list of transformer names (the manifest
    comes from a bundle, so it is checked, not trusted)."""
    names = runtime.get("disabled_optimizers") or []
    if (not isinstance(names, list) or len(names) > 32
            or not all(isinstance(n, str) and 0 < len(n) <= 64 and n.isascii() and n.replace("_", "a").isalnum()
                       for n in names)):
        raise RunnerError("release", "runtime.disabled_optimizers must be a list of up to 32 optimizer names",
                          "rebuild the bundle with edgekit build")
    return list(names)


def open_onnxruntime(release, manifest, threads):
    runtime = manifest.get("runtime") or {}
    try:
        import onnxruntime as ort
    except Exception as exc:  # ImportError, or a broken install raising anything on import
        raise RunnerError("runtime", "onnxruntime cannot be imported by %s: %s" % (sys.executable, _first_line(exc)),
                          "install it for this interpreter (pip install onnxruntime, or NVIDIA's wheel on Jetson)")
    opts = ort.SessionOptions()
    levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    opts.graph_optimization_level = levels.get(runtime.get("graph_optimization", "basic"), levels["basic"])
    if threads:
        opts.intra_op_num_threads = int(threads)
    # Profile only the reference runs (end_profiling stops it before timing) to learn which EP ran.
    profile_dir = tempfile.mkdtemp(prefix="edgekit-ort-")
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(profile_dir, "profile")
    available = ort.get_available_providers()
    providers, options, skipped = provider_plan(runtime, available, release)
    for opt in options:
        if "trt_engine_cache_path" in opt and not os.path.isdir(opt["trt_engine_cache_path"]):
            os.makedirs(opt["trt_engine_cache_path"])
    model_path = os.path.join(release, manifest["artifact"])
    if not os.path.isfile(model_path):
        raise RunnerError("model", "model file %s is missing" % model_path, "deploy the release again")
    disabled = disabled_optimizers(runtime)
    try:
        # The host scored the model with these graph transformers off (nodes kept float would
        # otherwise be re-quantized at load time); the device must run the same graph.
        extra = {"disabled_optimizers": disabled} if disabled else {}
        sess = ort.InferenceSession(model_path, sess_options=opts, providers=providers, provider_options=options,
                                    **extra)
    except Exception as exc:  # onnxruntime raises its own exception types
        shutil.rmtree(profile_dir, ignore_errors=True)
        raise RunnerError(_classify(exc, "model"), "onnxruntime could not load %s: %s" % (model_path, _first_line(exc)))
    out_names = [o.name for o in sess.get_outputs()]
    state = {"profiling": True}

    def run(feed):
        return sess.run(out_names, feed)

    def finish_profiling():
        if not state["profiling"]:
            return {}
        state["profiling"] = False
        try:
            return _node_providers(sess.end_profiling())
        except Exception:
            return {}
        finally:
            shutil.rmtree(profile_dir, ignore_errors=True)

    used = sess.get_providers()
    info = {"name": "onnxruntime", "version": ort.__version__, "providers_requested": list(runtime.get("providers") or []),
            "providers_available": available, "providers_skipped": skipped, "providers_used": used,
            "provider": used[0] if used else None, "provider_options": dict(zip(providers, options)),
            "threads": threads, "output_names": out_names, "disabled_optimizers": disabled}
    return run, info, finish_profiling


def _import_tflite():
    try:
        from tflite_runtime.interpreter import Interpreter
        import tflite_runtime

        return Interpreter, "tflite_runtime", getattr(tflite_runtime, "__version__", "unknown")
    except ImportError:
        pass
    try:
        from ai_edge_litert.interpreter import Interpreter
        import ai_edge_litert

        return Interpreter, "ai_edge_litert", getattr(ai_edge_litert, "__version__", "unknown")
    except ImportError:
        raise RunnerError("runtime", "neither tflite_runtime nor ai_edge_litert can be imported by %s" % sys.executable,
                          "pip install ai-edge-litert (or tflite-runtime on older boards)")


def _quantize(x, detail):
    scale, zero = detail.get("quantization", (0.0, 0))
    dtype = detail["dtype"]
    if scale and np.issubdtype(dtype, np.integer) and np.issubdtype(np.asarray(x).dtype, np.floating):
        info = np.iinfo(dtype)
        return np.clip(np.round(np.asarray(x) / scale + zero), info.min, info.max).astype(dtype)
    return np.asarray(x, dtype=dtype)


def _dequantize(y, detail):
    scale, zero = detail.get("quantization", (0.0, 0))
    if scale and np.issubdtype(y.dtype, np.integer):
        return (y.astype(np.float32) - zero) * scale
    return y


def open_tflite(release, manifest, threads):
    Interpreter, module, version = _import_tflite()
    model_path = os.path.join(release, manifest["artifact"])
    if not os.path.isfile(model_path):
        raise RunnerError("model", "model file %s is missing" % model_path, "deploy the release again")
    try:
        interp = Interpreter(model_path=model_path, num_threads=int(threads)) if threads else Interpreter(model_path=model_path)
        interp.allocate_tensors()
    except Exception as exc:
        raise RunnerError(_classify(exc, "model"), "%s could not load %s: %s" % (module, model_path, _first_line(exc)))
    ins, outs = interp.get_input_details(), interp.get_output_details()
    by_name = dict((d["name"], d) for d in ins)
    in_names = [i["name"] for i in manifest["inputs"]]
    # Match the manifest's inputs by tensor name; converters often rename, so fall back to order.
    in_map = [(n, by_name.get(n, ins[i] if i < len(ins) else None)) for i, n in enumerate(in_names)]
    if any(d is None for _, d in in_map):
        raise RunnerError("model", "%s has %d inputs, the manifest lists %d" % (model_path, len(ins), len(in_names)))
    out_by_name = dict((d["name"], d) for d in outs)
    want_out = [o["name"] for o in manifest["outputs"]]
    out_map = [out_by_name.get(n, outs[i] if i < len(outs) else None) for i, n in enumerate(want_out)]
    if any(d is None for d in out_map):
        raise RunnerError("model", "%s has %d outputs, the manifest lists %d" % (model_path, len(outs), len(want_out)))

    def run(feed):
        for name, detail in in_map:
            interp.set_tensor(detail["index"], _quantize(feed[name], detail))
        interp.invoke()
        return [_dequantize(interp.get_tensor(d["index"]).copy(), d) for d in out_map]

    info = {"name": "tflite", "module": module, "version": version, "providers_requested": ["cpu"],
            "providers_used": ["cpu"], "provider": "cpu", "threads": threads, "output_names": want_out,
            "quantized_io": any(np.issubdtype(d["dtype"], np.integer) for _, d in in_map)}
    return run, info, lambda: {}


def open_session(release, manifest, threads=None):
    """Open the runtime named in the manifest. Returns (run(feed) -> outputs, info, finish)."""
    name = (manifest.get("runtime") or {}).get("name", "onnxruntime")
    if manifest["artifact"].endswith(".tflite") or name == "tflite":
        return open_tflite(release, manifest, threads)
    if name != "onnxruntime":
        raise RunnerError("runtime", "runtime '%s' is not supported by this runner (onnxruntime, tflite)" % name)
    return open_onnxruntime(release, manifest, threads)


# ----------------------------------------------------------------------------------------------
# Device facts and power
# ----------------------------------------------------------------------------------------------
def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except (IOError, OSError):
        return None


EMULATION_MARKER = "/etc/edgekit-emulated"
EMULATED_NOTE = "emulated, not representative"
ARM_CORES = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE", "0xd4f": "Neoverse-V2"}


def emulation():
    """How this device is emulated, or None on real hardware: the marker file an emulated board
    carries (key=value lines; tools/boards writes it) and qemu-user's QEMU_CPU."""
    text = _read(EMULATION_MARKER)
    qemu_cpu = os.environ.get("QEMU_CPU")
    if text is None and not qemu_cpu:
        return None
    info = {"marker": EMULATION_MARKER if text is not None else None, "qemu_cpu": (qemu_cpu or "")[:64] or None,
            "note": EMULATED_NOTE}
    for line in (text or "").splitlines()[:32]:
        key, sep, value = line.partition("=")
        if sep and key.strip() and key.strip() not in info:
            info[key.strip()[:64]] = value.strip()[:256]
    return info


def device_facts():
    facts = {"hostname": platform.node(), "machine": platform.machine(), "system": platform.system(),
             "kernel": platform.release(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model") and value:
            facts["cpu_model"] = value
        elif key in ("flags", "Features") and value and "cpu_features" not in facts:
            facts["cpu_features"] = value.split()[:512]
        elif key == "CPU part" and value and "cpu_part" not in facts:
            facts["cpu_part"] = value
            facts["cpu_core"] = ARM_CORES.get(value.lower(), "unknown ARM part %s" % value)
    emulated = emulation()
    if emulated:
        facts["emulated"] = emulated
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            facts["mem_total_mb"] = int(line.split()[1]) // 1024
    tegra = _read("/etc/nv_tegra_release")
    if tegra:
        facts["l4t"] = tegra.splitlines()[0].strip()
    return facts


def measure_power(args, manifest, run_window):
    """Wrap the timed window in power.measure (power.py ships beside this file).

    Returns (latency or None, power dict). Any power failure is recorded, never fatal.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    if not os.path.isfile(os.path.join(here, "power.py")):
        return None, {"available": False, "reason": "power.py is not in %s; rebuild the release with power sampling" % here}
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        import power
    except Exception as exc:
        return None, {"available": False, "reason": "power.py failed to import: %s" % _first_line(exc)}
    failed = []

    def guarded_window():
        try:
            return run_window()
        except BaseException as exc:  # the model failed, not the sampler: that must not be masked
            failed.append(exc)
            raise

    try:
        window, result = power.measure(guarded_window, sampler=args.power, rate_hz=args.power_rate, idle_s=args.idle,
                                       root=args.sysfs_root, profile=manifest.get("target_profile"),
                                       grid_g_per_kwh=args.grid_intensity, requests_per_s=args.requests_per_s)
    except Exception as exc:
        if failed:
            raise failed[0]
        return None, {"available": False, "sampler": args.power,
                      "reason": "power sampler '%s' failed: %s: %s" % (args.power, type(exc).__name__, _first_line(exc))}
    return window, dict(result or {})


# ----------------------------------------------------------------------------------------------
# The validate command
# ----------------------------------------------------------------------------------------------
def validate(args, result):
    """Fill ``result`` step by step, so a failure half-way keeps what was measured before it."""
    base_rss = rss_mb()
    manifest, ref = load_release(args.release)
    result.update({"release_id": manifest.get("release_id"), "target": manifest.get("target"),
                   "model": manifest.get("model"), "quantization": manifest.get("quantization")})
    result["versions"]["edgekit"] = manifest.get("edgekit_version")
    feeds, refs = split_reference(manifest, ref)
    threads = resolve_threads(manifest, args.threads)
    t0 = time.perf_counter()
    run, info, finish_profiling = open_session(args.release, manifest, threads)
    session_ms = (time.perf_counter() - t0) * 1000.0
    result["runtime"] = info
    result["versions"][info["name"]] = info["version"]
    spec = manifest["metric"]
    out_names = [o["name"] for o in manifest["outputs"]]
    starts = ref.get("stream/start")
    carry = stream_carry(spec.get("stream"), None if starts is None else np.asarray(starts).reshape(-1),
                         out_names, len(feeds))
    outputs = []
    try:
        outputs.append(run(feeds[0]))
        first_load_ms = (time.perf_counter() - t0) * 1000.0
        for i in range(1, len(feeds)):
            outputs.append(run(carry(feeds[i], i, outputs[-1])))
    except Exception as exc:
        finish_profiling()  # removes the profile's temporary folder
        raise RunnerError(_classify(exc, "inference"), "inference failed: %s" % _first_line(exc))
    info["node_providers"] = finish_profiling()
    info["provider"] = main_provider(info["node_providers"], info.get("provider"))
    if spec.get("output") and spec["output"] not in out_names:
        raise RunnerError("release", "metric output '%s' is not a model output (%s)" % (spec["output"], ", ".join(out_names)))
    idx = out_names.index(spec["output"]) if spec.get("output") else 0
    got, want = [o[idx] for o in outputs], [r[idx] for r in refs]
    value = score(spec["name"], got, want, feeds, k=spec.get("k", 5), pooling=spec.get("pooling", "none"),
                  mask_input=spec.get("mask_input", "attention_mask"), options=spec.get(spec["name"]))
    metric = {"name": spec["name"], "threshold": spec["threshold"], "output": out_names[idx]}
    metric.update(value)
    metric["passed"] = bool(passes(spec["name"], value["value"], spec["threshold"]))
    subset = manifest.get("reference") or {}
    bar = subset.get("host_value")
    if not metric["passed"] and bar is not None and subset.get("samples", 0) < subset.get("of", 0):
        # reference.npz is a subset: the build met the threshold on all samples, and the host's own
        # score of this file on these few is the bar (a rate like top-1 moves 3% per miss in 32).
        metric["subset_bar"] = bar
        metric["subset_note"] = ("%d of %d validation samples: the build met %s on all of them; on these the host "
                                 "scored %s, which this device must match" % (subset["samples"], subset["of"],
                                                                              spec["threshold"], bar))
        metric["passed"] = bool(passes(spec["name"], value["value"], _with_slack(spec["name"], bar)))
    if "labels" in ref:  # task accuracy beside agreement, when the reference carries labels
        preds = np.array([np.asarray(g).reshape(-1, np.shape(g)[-1]).argmax(axis=-1)[0] for g in got])
        labels = np.asarray(ref["labels"]).reshape(-1)[: len(preds)]
        metric["task_accuracy"] = float(np.mean(preds == labels))
    result["metric"] = metric
    result["metrics"] = all_metrics(got, want, feeds, spec)
    if spec.get("also"):
        metric["also"] = further_checks(spec, result["metrics"])
    if "guard" in manifest:  # the build's guards, again on the device's own outputs
        result["guard"] = guard_module().check_outputs(out_names, outputs, refs, manifest["guard"], feeds)

    def run_window():
        try:
            return measure_latency(run, feeds[0], args.duration, warmup=args.warmup, repeat=args.repeat,
                                   max_iterations=args.max_iterations)
        except MemoryError:
            raise
        except Exception as exc:
            raise RunnerError(_classify(exc, "inference"), "inference failed while timing: %s" % _first_line(exc))

    latency = None
    if args.power:
        latency, result["power"] = measure_power(args, manifest, run_window)
    if latency is None:
        latency = run_window()
    latency["first_load_ms"] = first_load_ms
    latency["session_create_ms"] = session_ms
    if result["device"].get("emulated"):  # qemu-user is many times slower than the board
        latency["representative"] = False
        latency["note"] = EMULATED_NOTE
    result["latency"] = latency
    result["memory"] = {"baseline_rss_mb": base_rss, "peak_rss_mb": rss_mb()}
    result["ok"] = (metric["passed"] and all(c["passed"] for c in metric.get("also", []))
                    and (result.get("guard") or {}).get("passed", True))


def versions():
    v = {"python": platform.python_version(), "runner_schema": RESULT_SCHEMA}
    if np is not None:
        v["numpy"] = np.__version__
    return v


def _jsonable(value):
    """Strict JSON: numpy scalars become Python numbers, inf/nan become strings ('inf')."""
    if isinstance(value, dict):
        return dict((str(k), _jsonable(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if np is not None and isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    return value


def write_result(path, result):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        os.makedirs(folder)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_jsonable(result), f, indent=2, sort_keys=True, allow_nan=False)
    os.replace(tmp, path)


def build_parser():
    parser = argparse.ArgumentParser(prog="runner.py", description="edgekit on-device runner")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("validate", help="score the release against reference.npz and time it")
    p.add_argument("--release", required=True, help="release directory (holds manifest.json)")
    p.add_argument("--out", required=True, help="where to write the result JSON")
    p.add_argument("--duration", type=float, default=2.0,
                   help="seconds per timed window (it ends earlier after --max-iterations runs)")
    p.add_argument("--max-iterations", type=int, default=MAX_ITERATIONS,
                   help="runs per timed window at most (it ends at whichever of this and --duration comes first)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before the first window")
    p.add_argument("--repeat", type=int, default=1, help="timed windows; their median is reported")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the profile's)")
    p.add_argument("--power", default=None, help="power sampler name (see power.py)")
    p.add_argument("--power-rate", type=float, default=10.0, help="power samples per second")
    p.add_argument("--idle", type=float, default=2.0, help="seconds of idle power measured before the window")
    p.add_argument("--sysfs-root", default="/", help="root for sysfs/procfs reads (tests point it elsewhere)")
    p.add_argument("--grid-intensity", type=float, default=None, help="grid carbon intensity, g CO2e per kWh")
    p.add_argument("--requests-per-s", type=float, default=1.0, help="request rate the carbon-per-day figure assumes")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "validate":
        parser.print_help()
        return 2
    result = {"schema": RESULT_SCHEMA, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "release": os.path.abspath(args.release), "versions": versions(), "device": device_facts(),
              "args": {"duration": args.duration, "warmup": args.warmup, "repeat": args.repeat,
                       "max_iterations": args.max_iterations, "threads": args.threads, "power": args.power},
              "ok": False, "power": None}
    code = EXIT_OK
    try:
        if np is None:
            raise RunnerError("runtime", "numpy cannot be imported by %s" % sys.executable, "pip install numpy")
        if args.duration <= 0 or args.repeat < 1 or args.warmup < 0 or args.max_iterations < 1:
            raise RunnerError("usage", "--duration must be > 0, --repeat and --max-iterations >= 1 and --warmup >= 0")
        validate(args, result)
        code = EXIT_OK if result["ok"] else EXIT_METRIC
    except RunnerError as exc:
        result["error"] = {"kind": exc.kind, "message": exc.message}
        if exc.hint:
            result["error"]["hint"] = exc.hint
        code = EXIT_FAILURE
    except MemoryError:
        result["error"] = {"kind": "memory", "message": "out of memory while running the model"}
        code = EXIT_FAILURE
    except Exception as exc:  # anything else: a message first, the trace only as detail
        result["error"] = {"kind": "internal", "message": "%s: %s" % (type(exc).__name__, _first_line(exc)),
                           "traceback": traceback.format_exc()}
        code = EXIT_FAILURE
    result["ok"] = bool(result["ok"]) and "error" not in result
    result["exit_code"] = code
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        write_result(args.out, result)
    except (IOError, OSError) as exc:
        sys.stderr.write("runner: cannot write %s: %s\n" % (args.out, exc))
        return EXIT_FAILURE
    if "error" in result:
        sys.stderr.write("runner: %s\n" % result["error"]["message"])
    return code


if __name__ == "__main__":
    sys.exit(main())
