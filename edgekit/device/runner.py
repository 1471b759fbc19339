#!/usr/bin/env python3
"""edgekit on-device runner: the ``validate`` command, run from the release directory.

Needs only Python >= 3.8 (JetPack 5), numpy and one runtime: onnxruntime, or tflite_runtime /
ai_edge_litert for ``.tflite`` models. Usage on the device (``runner.py`` at the release's root is
the launcher, ``edgekit/device/__main__.py``):

    python3 runner.py validate --release DIR --out result.json [--duration S] [--threads N]
        [--repeat N] [--warmup N] [--power SAMPLER] [--power-rate HZ] [--idle S] [--requests-per-s R]
        [--sysfs-root DIR] [--grid-intensity G]

It always writes the result JSON, failures included (``"ok": false`` and an ``error`` with a
``kind`` and a ``message``). Exit status: 0 passed, 3 metric missed its threshold, 4 failure.
The host imports this package too, so host and device score alike: the names re-exported below
(``score``, ``passes``, ``HIGHER_IS_BETTER``, ``open_reference``...) are a stable interface.
"""
from __future__ import print_function

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback

from . import plugins
from .errors import RunnerError, first_line
from .facts import ARM_CORES, EMULATED_NOTE, EMULATION_MARKER, device_facts, emulation  # noqa: F401
from .metrics import (HIGHER_IS_BETTER, all_metrics, further_checks, metric_key, passes, score,  # noqa: F401
                      with_slack)
from .reference import load_release, open_reference, run_feeds, split_reference, stream_carry  # noqa: F401
from .sessions import (_import_tflite, _node_providers, classify, disabled_optimizers, main_provider,  # noqa: F401
                       open_onnxruntime, open_session, open_tflite, provider_plan, resolve_threads)
from .timing import CHUNK_S, MAX_ITERATIONS, MAX_SAMPLES, measure_latency, percentiles, rss_mb, stride, time_window  # noqa: F401

RESULT_SCHEMA = 2
EXIT_OK, EXIT_METRIC, EXIT_FAILURE = 0, 3, 4

try:  # numpy is required, but its absence must become a result, not a traceback
    import numpy as np
except ImportError:  # pragma: no cover - exercised on bare devices
    np = None


def measure_power(args, manifest, run_window):
    """Wrap the timed window in power.measure. Returns (latency or None, power dict). Any power
    failure is recorded, never fatal: a sensor must not cost the accuracy and latency figures."""
    try:
        from . import power
    except Exception as exc:
        return None, {"available": False, "reason": "the power module failed to import: %s" % first_line(exc)}
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
                      "reason": "power sampler '%s' failed: %s: %s" % (args.power, type(exc).__name__, first_line(exc))}
    return window, dict(result or {})


# ----------------------------------------------------------------------------------------------
# The validate command
# ----------------------------------------------------------------------------------------------
def validate(args, result):
    """Fill ``result`` step by step, so a failure half-way keeps what was measured before it."""
    from . import guard  # numpy at import: only once numpy is known to be there

    base_rss = rss_mb()
    manifest, ref = load_release(args.release)
    plugins.load_dir(args.release)  # the project's own metrics and sensors, before anything names them
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
        raise RunnerError(classify(exc, "inference"), "inference failed: %s" % first_line(exc))
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
        metric["passed"] = bool(passes(spec["name"], value["value"], with_slack(spec["name"], bar)))
    if "labels" in ref:  # task accuracy beside agreement, when the reference carries labels
        preds = np.array([np.asarray(g).reshape(-1, np.shape(g)[-1]).argmax(axis=-1)[0] for g in got])
        labels = np.asarray(ref["labels"]).reshape(-1)[: len(preds)]
        metric["task_accuracy"] = float(np.mean(preds == labels))
    result["metric"] = metric
    result["metrics"] = all_metrics(got, want, feeds, spec)
    if spec.get("also"):
        metric["also"] = further_checks(spec, result["metrics"])
    if "guard" in manifest:  # the build's guards, again on the device's own outputs
        result["guard"] = guard.check_outputs(out_names, outputs, refs, manifest["guard"], feeds)

    def run_window():
        try:
            return measure_latency(run, feeds[0], args.duration, warmup=args.warmup, repeat=args.repeat,
                                   max_iterations=args.max_iterations)
        except MemoryError:
            raise
        except Exception as exc:
            raise RunnerError(classify(exc, "inference"), "inference failed while timing: %s" % first_line(exc))

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
    p.add_argument("--power", default=None, help="power sampler name, or auto (python3 -m edgekit.device.power probe lists them)")
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
                       "max_iterations": args.max_iterations,
                       "threads": args.threads, "power": args.power},
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
        result["error"] = {"kind": "internal", "message": "%s: %s" % (type(exc).__name__, first_line(exc)),
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
