"""Runtimes: onnxruntime (execution providers in the profile's order, which one really ran) and
LiteRT / tflite_runtime for ``.tflite`` models. Each opens as ``(run(feed) -> outputs, info, finish)``."""
import json
import os
import shutil
import sys
import tempfile

from .errors import RunnerError, first_line

try:  # numpy is required, but its absence must become a result, not a traceback (runner.py)
    import numpy as np
except ImportError:  # pragma: no cover - exercised on bare devices
    np = None


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


def classify(exc, default_kind):
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
        raise RunnerError("runtime", "onnxruntime cannot be imported by %s: %s" % (sys.executable, first_line(exc)),
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
        raise RunnerError(classify(exc, "model"), "onnxruntime could not load %s: %s" % (model_path, first_line(exc)))
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
        raise RunnerError(classify(exc, "model"), "%s could not load %s: %s" % (module, model_path, first_line(exc)))
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
