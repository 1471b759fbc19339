#!/usr/bin/env python3
"""edgekit on-device tuning: every candidate of a build scored, timed and metered on the device,
in one invocation. Standard library + numpy + onnxruntime; parses under Python 3.8.

    python3 -m edgekit.device.tune facts [--package-root DIR]     # JSON on stdout: CPU, features, runtime, sensors
    python3 -m edgekit.device.tune measure --plan PLAN --out RESULT [--progress FILE] [--sysfs-root DIR]
        [--package-root DIR]

The host ships this package as a release lays it out (``edgekit/device/``, a root ``edgekit/__init__.py``
and the project's ``plugins/``) into a run directory and runs it with that directory as the working
directory, so ``-m`` imports the shipped package; ``--package-root`` names that directory, and the
command refuses to run from any other copy of edgekit (one installed on the device, say).

The plan (written by the host, edgekit/tune.py) names the candidate files, the reference outputs
and the metric and guard settings; the result holds, per candidate, the metric and guards against
the reference, per-round latencies (interleaved, spinning off, with an A/A twin of the control),
p50/p99 over every timed run, and energy per inference where the device has a power sensor. The
host chooses; this file only measures. Like runner.py it always writes a result, failures included.
"""
from __future__ import print_function

import argparse
import json
import os
import sys
import time
import traceback

from . import plugins, runner
from .errors import RunnerError
from .errors import first_line as _first_line
from .metrics import with_slack as _with_slack
from .sessions import classify as _classify

try:  # numpy is required, but its absence must become a result, not a traceback
    import numpy as np
except ImportError:  # pragma: no cover - a bare device
    np = None
SCHEMA = 1
AA_SUFFIX = "~aa"
"""The control's twin session: the same file timed again, so the spread between the two is noise."""
MAX_KEPT_SAMPLES = 400
"""Raw latency samples per candidate kept in the result (evenly strided); percentiles use them all."""


def say(progress, line):
    """One progress line: stdout (the host keeps its tail) and the progress file it polls."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if progress:
        with open(progress, "a") as f:
            f.write(line + "\n")


# ----------------------------------------------------------------------------------------------
# Facts: what the host keys its tuning cache on, and what decides whether this device may time
# ----------------------------------------------------------------------------------------------
def facts(sysfs_root="/"):
    out = {"schema": SCHEMA, "device": runner.device_facts(), "versions": runner.versions()}
    try:
        import onnxruntime as ort

        out["runtime"] = {"name": "onnxruntime", "version": ort.__version__,
                          "providers": list(ort.get_available_providers())}
    except Exception as exc:
        out["runtime"] = {"name": "onnxruntime", "error": _first_line(exc)}
    try:
        from . import power

        out["power_sensors"] = [n for n in power.available_samplers(sysfs_root) if n != "estimate"]
    except Exception as exc:
        out["power_sensors"] = []
        out["power_error"] = _first_line(exc)
    return out


# ----------------------------------------------------------------------------------------------
# Sessions: as the release runs them, plus spinning off (an idle spinning session steals cores
# from the one being timed)
# ----------------------------------------------------------------------------------------------
def open_candidate(cand, plan):
    import onnxruntime as ort

    levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels.get(cand.get("graph_optimization"), levels["basic"])
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if plan.get("threads"):
        opts.intra_op_num_threads = int(plan["threads"])
    runtime = dict(plan.get("runtime") or {})
    runtime["provider_options"] = cand.get("provider_options") or runtime.get("provider_options") or {}
    providers, options, _ = runner.provider_plan(runtime, ort.get_available_providers(), plan["workdir"])
    disabled = runner.disabled_optimizers({"disabled_optimizers": cand.get("disabled_optimizers") or []})
    extra = {"disabled_optimizers": disabled} if disabled else {}
    try:
        sess = ort.InferenceSession(cand["path"], sess_options=opts, providers=providers, provider_options=options,
                                    **extra)
    except Exception as exc:
        raise RunnerError(_classify(exc, "model"), "onnxruntime could not load %s: %s"
                          % (cand["name"], _first_line(exc)))
    names = [o.name for o in sess.get_outputs()]
    used = sess.get_providers()

    def run(feed):
        return sess.run(names, feed)
    return run, (used[0] if used else None)


# ----------------------------------------------------------------------------------------------
# Scoring against the reference, guards included (the same arithmetic as validate)
# ----------------------------------------------------------------------------------------------
def score_candidate(run, cand, plan, feeds, refs, carry):
    manifest = plan["manifest"]
    spec = manifest["metric"]
    out_names = [o["name"] for o in manifest["outputs"]]
    outputs = runner.run_feeds(run, feeds, carry)
    idx = out_names.index(spec["output"]) if spec.get("output") in out_names else 0
    got, want = [o[idx] for o in outputs], [r[idx] for r in refs]
    value = runner.score(spec["name"], got, want, feeds, k=spec.get("k", 5), pooling=spec.get("pooling", "none"),
                         mask_input=spec.get("mask_input", "attention_mask"), options=spec.get(spec["name"]))
    metric = {"name": spec["name"], "threshold": spec["threshold"], "value": value["value"]}
    metric["passed"] = bool(runner.passes(spec["name"], value["value"], spec["threshold"]))
    subset = manifest.get("reference") or {}
    bar = cand.get("host_value")
    if not metric["passed"] and bar is not None and subset.get("samples", 0) < subset.get("of", 0):
        # reference.npz is a subset of the validation set: the host's score on it is the bar
        metric["subset_bar"] = bar
        metric["passed"] = bool(runner.passes(spec["name"], value["value"], _with_slack(spec["name"], bar)))
    guard = None
    if manifest.get("guard") and cand.get("precision") != "fp32":  # FP32 is the reference itself
        from . import guard  # numpy at import: only once numpy is known to be there

        full = guard.check_outputs(out_names, outputs, refs, manifest["guard"], feeds)
        guard = {"passed": full["passed"], "findings": [{"message": str(f.get("message"))[:300]}
                                                        for f in full["findings"][:20]]}
    return metric, guard


# ----------------------------------------------------------------------------------------------
# Interleaved timing: rounds rotate the order; an A/A twin of the control gives the noise floor
# ----------------------------------------------------------------------------------------------
def _median(values):
    return float(np.median(np.asarray(values, dtype=np.float64)))


def stable(rounds, names, tol, window):
    """Every session's running median moved less than ``tol`` (relative) over the last ``window`` rounds."""
    for name in names:
        r = rounds[name]
        if len(r) < 2 * window:
            return False
        now, before = _median(r), _median(r[:-window])
        if before <= 0 or abs(now - before) / before > tol:
            return False
    return True


def time_interleaved(runs, feed, timing, progress):
    """{name: per-round medians}, {name: every timed run in ms}, rounds, why it stopped."""
    clock = time.perf_counter
    names = list(runs)
    warmup = int(timing.get("warmup", 5))
    per_round = max(1, int(timing.get("per_round", 3)))
    min_rounds, max_rounds = int(timing.get("min_rounds", 7)), int(timing.get("max_rounds", 60))
    budget = float(timing.get("budget_s", 30.0))
    tol, window = float(timing.get("rel_tol", 0.02)), max(1, int(timing.get("window", 3)))
    min_samples = int(timing.get("min_samples", 100))
    for name in names:
        for _ in range(warmup):
            runs[name](feed)
    rounds = dict((n, []) for n in names)
    samples = dict((n, []) for n in names)
    start = clock()
    why = "max_rounds"
    for r in range(max_rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            mine = []
            for _ in range(per_round):
                t0 = clock()
                runs[name](feed)
                mine.append((clock() - t0) * 1000.0)
            samples[name].extend(mine)
            rounds[name].append(_median(mine))
        done = r + 1
        if done >= min_rounds and stable(rounds, names, tol, window) and \
                min(len(s) for s in samples.values()) >= min_samples:
            why = "stable"
            break
        if clock() - start > budget and done >= min_rounds:
            why = "budget"
            break
        if done == min_rounds or done % 10 == 0:
            say(progress, "timing: round %d, %s" % (done, ", ".join("%s %.3f ms" % (n, _median(rounds[n]))
                                                                    for n in names if not n.endswith(AA_SUFFIX))))
        # the first rounds plan the rest: as many runs per round as reach min_samples by min_rounds
        if done == 1:
            per = max(rounds[n][0] for n in names) or 1e-3
            per_round = max(per_round, min(50, int(min_samples / float(min_rounds)) + 1,
                                           int(budget * 1000.0 / (per * len(names) * min_rounds * 2)) or 1))
    return rounds, samples, done, why


def stats(samples):
    a = np.sort(np.asarray(samples, dtype=np.float64))
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a[0]),
            "runs": int(a.size)}


# ----------------------------------------------------------------------------------------------
# Energy: one metered window per candidate, with the device's sensor only (the CPU-time estimate
# is not a measurement and would rank candidates by their latency again)
# ----------------------------------------------------------------------------------------------
def energy(run, feed, conf, profile, root):
    from . import power

    smp, _, available, reason = power.open_sampler(conf.get("sampler", "auto"), root, profile)
    smp.close()
    if not available or smp.is_estimate:
        return {"measured": False, "reason": "no power sensor on this device (%s): only the CPU-time estimate "
                "exists, which is not a measurement" % (reason or smp.name)}
    duration = float(conf.get("duration_s", 1.0))

    def window():
        stats_, _ = runner.time_window(run, feed, duration)
        return stats_

    _, pw = power.measure(window, sampler=conf.get("sampler", "auto"), rate_hz=float(conf.get("rate_hz", 50.0)),
                          idle_s=float(conf.get("idle_s", 1.0)), root=root, profile=profile)
    keep = ("sampler", "scope", "is_estimate", "energy_per_inference_mj", "energy_per_inference_above_idle_mj",
            "idle_power_w", "mean_power_w", "iterations", "window_s", "coverage")
    out = dict((k, pw.get(k)) for k in keep)
    out["measured"] = not pw.get("is_estimate")
    out["warnings"] = [str(w)[:300] for w in (pw.get("warnings") or [])][:8]
    return out


# ----------------------------------------------------------------------------------------------
# The measure command
# ----------------------------------------------------------------------------------------------
def measure(args, result):
    with open(args.plan) as f:
        plan = json.load(f)
    plan["workdir"] = os.path.dirname(os.path.abspath(args.plan))
    manifest = plan["manifest"]
    ref = runner.open_reference(plan["reference"])
    feeds, refs = runner.split_reference(manifest, ref)
    out_names = [o["name"] for o in manifest["outputs"]]
    starts = ref.get("stream/start")
    carry = runner.stream_carry(manifest["metric"].get("stream"),
                                None if starts is None else np.asarray(starts).reshape(-1), out_names, len(feeds))
    runs = {}
    result["candidates"] = {}
    cands = plan["candidates"]
    for i, cand in enumerate(cands):
        name = cand["name"]
        entry = result["candidates"][name] = {"loaded": False}
        try:
            run, provider = open_candidate(cand, plan)
            entry.update(loaded=True, provider=provider)
            entry["metric"], entry["guard"] = score_candidate(run, cand, plan, feeds, refs, carry)
        except RunnerError as exc:
            entry["error"] = {"kind": exc.kind, "message": exc.message}
            say(args.progress, "[%d/%d] %s: failed: %s" % (i + 1, len(cands), name, exc.message))
            continue
        except Exception as exc:
            entry["error"] = {"kind": _classify(exc, "inference"),
                              "message": "inference failed: %s" % _first_line(exc)}
            say(args.progress, "[%d/%d] %s: failed: %s" % (i + 1, len(cands), name, entry["error"]["message"]))
            continue
        runs[name] = run
        g = entry["guard"]
        say(args.progress, "[%d/%d] %s: %s %.4f (%s), guards %s, on %s" % (
            i + 1, len(cands), name, entry["metric"]["name"], entry["metric"]["value"],
            "pass" if entry["metric"]["passed"] else "MISS",
            "-" if g is None else ("pass" if g.get("passed") else "FAIL"), provider))
    if not runs:
        raise RunnerError("model", "no candidate could run on this device")
    control = plan.get("control") if plan.get("control") in runs else sorted(runs)[0]
    twin, _ = open_candidate([c for c in cands if c["name"] == control][0], plan)
    runs[control + AA_SUFFIX] = twin
    say(args.progress, "timing %d candidates interleaved (A/A control: %s)" % (len(runs) - 1, control))
    rounds, samples, n, why = time_interleaved(runs, feeds[0], plan.get("timing") or {}, args.progress)
    result["timing"] = {"rounds": n, "stopped": why, "control": control, "allow_spinning": False,
                        "threads": plan.get("threads"), "aa_rounds_ms": rounds[control + AA_SUFFIX]}
    for name in runs:
        if name.endswith(AA_SUFFIX):
            continue
        entry = result["candidates"][name]
        entry["rounds_ms"] = rounds[name]
        entry["latency"] = stats(samples[name])
        entry["samples_ms"] = runner.stride(samples[name], MAX_KEPT_SAMPLES)
    del runs[control + AA_SUFFIX]
    conf = plan.get("power") or {}
    if conf.get("sampler", "auto") != "none":
        for i, name in enumerate(sorted(runs)):
            e = result["candidates"][name]
            e["energy"] = energy(runs[name], feeds[0], conf, manifest.get("target_profile"), args.sysfs_root)
            if not e["energy"]["measured"]:
                for other in runs:
                    result["candidates"][other]["energy"] = e["energy"]
                break
            say(args.progress, "energy %s: %.4f mJ per inference above idle (%s)" % (
                name, e["energy"].get("energy_per_inference_above_idle_mj") or float("nan"), e["energy"]["sampler"]))
    result["ok"] = True


def build_parser():
    parser = argparse.ArgumentParser(prog="python3 -m edgekit.device.tune", description="edgekit on-device tuning")
    sub = parser.add_subparsers(dest="command")
    f = sub.add_parser("facts", help="print the device's facts as JSON")
    f.add_argument("--sysfs-root", default="/")
    f.add_argument("--package-root", default=None, help="the directory the host shipped this package into")
    m = sub.add_parser("measure", help="score, time and meter the plan's candidates")
    m.add_argument("--plan", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--progress", default=None, help="file that gets one line per step")
    m.add_argument("--sysfs-root", default="/", help="root for sysfs reads (tests point it elsewhere)")
    m.add_argument("--package-root", default=None, help="the directory the host shipped this package into")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "package_root", None):
        mine = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if os.path.realpath(mine) != os.path.realpath(args.package_root):
            sys.stderr.write("tune: running edgekit from %s, not the package shipped to %s; run it with that "
                             "directory as the working directory\n" % (mine, args.package_root))
            return 4
        try:  # the project's own metrics and sensors, before anything names them (as validate does)
            plugins.load_dir(args.package_root)
        except RunnerError as exc:
            if args.command == "facts":
                sys.stderr.write("tune: %s\n" % exc.message)
                return 4
            args.plugin_error = exc
    if args.command == "facts":
        print(json.dumps(runner._jsonable(facts(args.sysfs_root)), sort_keys=True))
        return 0
    if args.command != "measure":
        parser.print_help()
        return 2
    result = {"schema": SCHEMA, "ok": False, "device": runner.device_facts(), "versions": runner.versions(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t0 = time.perf_counter()
    try:
        if np is None:
            raise RunnerError("runtime", "numpy cannot be imported by %s" % sys.executable, "pip install numpy")
        if getattr(args, "plugin_error", None) is not None:
            raise args.plugin_error
        measure(args, result)
    except RunnerError as exc:
        result["error"] = {"kind": exc.kind, "message": exc.message}
    except MemoryError:
        result["error"] = {"kind": "memory", "message": "out of memory while tuning"}
    except Exception as exc:
        result["error"] = {"kind": "internal", "message": "%s: %s" % (type(exc).__name__, _first_line(exc)),
                           "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = time.perf_counter() - t0
    try:
        runner.write_result(args.out, result)
    except (IOError, OSError) as exc:
        sys.stderr.write("tune: cannot write %s: %s\n" % (args.out, exc))
        return 4
    return 0 if result.get("ok") else 4


if __name__ == "__main__":
    sys.exit(main())
