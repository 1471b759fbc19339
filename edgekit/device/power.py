#!/usr/bin/env python3
"""edgekit power sampling and energy per inference (standard library only, Python >= 3.8).

The samplers live in ``sensors/`` (one module per sensor family, registered by defining the class);
the energy arithmetic in ``energy.py``. This module opens a sampler by name, ``auto`` or instance,
and runs ``measure(run_window, ...)``: an idle baseline, then samples in a background thread while
``run_window()`` runs; it returns ``(window_result, power_dict)``. The runner calls it on the board;
the host imports it as ``edgekit.device.power`` (doctor, tests, benchmarks).

On a board: ``python3 -m edgekit.device.power probe | measure`` from a release directory.
"""
from __future__ import print_function

import argparse
import json
import math
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .energy import _r, carbon, cumulative_energy, energy_over, power_trace  # noqa: F401 (the host's names)
from .sensors import (METHODS, REGISTRY, SCOPES, CommandRunner, Opener, Reading, Sampler,  # noqa: F401
                      SamplerUnavailable, SensorError, auto_order, profile_get, read_text, run_command)
from .sensors.estimate import DEFAULT_WATTS_PER_CORE, EstimateSampler  # noqa: F401
from .sensors.jetson import NOT_SUMMED, TOTAL_RAILS, Ina3221HwmonSampler, Ina3221xSampler, jetson_total  # noqa: F401
from .sensors.nvml import NvmlSampler  # noqa: F401
from .sensors.rapl import RaplSampler, counter_delta  # noqa: F401
from .sensors.rpi import THROTTLE_BITS, RpiPmicSampler, parse_throttled  # noqa: F401
from .sensors.tegrastats import TegrastatsSampler  # noqa: F401

DEFAULT_GRID_G_PER_KWH = 481.0
# World-average carbon intensity of electricity generation in 2023: 481 gCO2/kWh (Ember, "Global
# Electricity Review 2024", as charted by Statista from Ember data, July 2024; Ember reported 436 g
# for 2022). Grids differ by more than 10x (Norway ~30 g, India ~713 g in 2023), so pass the figure
# for the grid where the device runs: measure(grid_g_per_kwh=...), the runner's --grid-intensity.

MIN_RATE_HZ = 1.0
MAX_RATE_HZ = 100.0


def make_sampler(name, root="/", profile=None, command_runner=None, opener=None):
    # type: (str, str, Any, Optional[CommandRunner], Optional[Opener]) -> Sampler
    if name not in REGISTRY:
        raise ValueError("unknown power sampler '%s' (known: %s)" % (name, ", ".join(sorted(REGISTRY))))
    return REGISTRY[name](root=root, command_runner=command_runner, opener=opener, profile=profile)


def describe_samplers(root="/", command_runner=None):
    # type: (str, Optional[CommandRunner]) -> List[Dict[str, Any]]
    """Probe every registered sampler: [{name, available, reason, scope, method, ...}]."""
    out = []
    for name in REGISTRY:
        smp = make_sampler(name, root=root, command_runner=command_runner)
        info = smp.describe()
        try:
            smp.probe()
            info.update(available=True, scope=smp.scope, scope_note=smp.scope_note)
        except SamplerUnavailable as exc:
            info.update(available=False, reason=exc.reason)
        except Exception as exc:  # a probe must never break doctor
            info.update(available=False, reason="%s: %s" % (type(exc).__name__, exc))
        finally:
            smp.close()
        out.append(info)
    return out


def available_samplers(root="/", command_runner=None):
    # type: (str, Optional[CommandRunner]) -> List[str]
    """Names of the samplers that work here (``estimate`` always does); used by ``edgekit doctor``."""
    return [d["name"] for d in describe_samplers(root, command_runner) if d["available"]]


def open_sampler(sampler="estimate", root="/", profile=None, command_runner=None, rate_hz=10.0):
    # type: (Any, str, Any, Optional[CommandRunner], float) -> Tuple[Sampler, str, bool, Optional[str]]
    """Probe the requested sampler (a name, "auto", or a Sampler instance) and fall back to the
    labelled estimate when it is unavailable. Returns (sampler, requested, available, reason)."""
    if isinstance(sampler, Sampler):
        candidates = [sampler]
        requested = sampler.name
    else:
        requested = sampler or "auto"
        if requested == "auto":
            wanted = profile_get(profile, "power_sensor")
            names = [wanted] if wanted in REGISTRY else auto_order()
        else:
            if requested not in REGISTRY:
                raise ValueError("unknown power sampler '%s' (known: auto, %s)"
                                 % (requested, ", ".join(sorted(REGISTRY))))
            names = [requested]
        candidates = [make_sampler(n, root, profile, command_runner) for n in names]
    reasons = []
    for smp in candidates:
        smp.rate_hz = rate_hz
        try:
            smp.probe()
            return smp, requested, True, None
        except Exception as exc:  # SamplerUnavailable, or anything a strange board throws
            smp.close()
            why = exc.reason if isinstance(exc, SamplerUnavailable) else "%s: %s" % (type(exc).__name__, exc)
            reasons.append("%s: %s" % (smp.name, why) if len(candidates) > 1 else why)
    fallback = EstimateSampler(root=root, profile=profile)
    fallback.probe()
    return fallback, requested, False, "; ".join(reasons)


# ----------------------------------------------------------------------------------------------
# Sampling thread and measure()
# ----------------------------------------------------------------------------------------------
class _Recorder(object):
    """Takes samples (from the thread and from the caller at window edges) under one lock, and
    remembers the first failure instead of raising it."""

    def __init__(self, sampler, clock):
        # type: (Sampler, Callable[[], float]) -> None
        self.sampler = sampler
        self.clock = clock
        self.samples = []  # type: List[Tuple[float, float]]
        self.rails = []  # type: List[Tuple[float, Dict[str, float]]]
        self.error = None  # type: Optional[str]
        self.error_t = None  # type: Optional[float]
        self.busy_s = 0.0
        self.cpu_s = 0.0
        self.overruns = 0
        self.retries = 0
        self.fastest = None  # type: Optional[float]
        self.lock = threading.Lock()

    def take(self):
        # type: () -> Optional[float]
        with self.lock:
            if self.error is not None:
                return None
            for attempt in (0, 1):
                ta = self.clock()
                ca = time.thread_time()
                try:
                    r = self.sampler.sample()
                    value = float(r["energy_j"] if self.sampler.reading == "energy" else r["power_w"])
                    if not math.isfinite(value):
                        raise ValueError("non-finite reading %r" % value)
                except Exception as exc:
                    self.error = "%s: %s" % (type(exc).__name__, exc)
                    self.error_t = ta
                    return None
                tb = self.clock()
                self.busy_s += tb - ta
                self.cpu_s += time.thread_time() - ca
                # A read that took far longer than the fastest one was preempted half-way: when the
                # value was taken inside [ta, tb] is unknown, so read once more at once.
                slow = self.fastest is not None and tb - ta > max(0.002, 4.0 * self.fastest)
                self.fastest = tb - ta if self.fastest is None else min(self.fastest, tb - ta)
                if not (slow and attempt == 0):
                    break
                self.retries += 1
            t = (ta + tb) / 2.0
            self.samples.append((t, value))
            if isinstance(r.get("rails"), dict):
                self.rails.append((t, r["rails"]))
            return t

    def loop(self, period, stop):
        # type: (float, threading.Event) -> None
        next_t = self.clock() + period
        while not stop.wait(max(0.0, next_t - self.clock())):
            if self.take() is None and self.error is not None:
                return
            next_t += period
            now = self.clock()
            if next_t < now:  # a read took longer than the period: skip the missed ticks
                self.overruns += int((now - next_t) / period) + 1
                next_t = now + period


def _clamp_rate(rate_hz, warnings):
    # type: (Any, List[str]) -> float
    try:
        rate = float(rate_hz)
    except (TypeError, ValueError):
        rate = float("nan")
    if not math.isfinite(rate) or rate <= 0:
        warnings.append("rate_hz %r is not a positive number; 10 Hz used" % (rate_hz,))
        return 10.0
    clamped = min(MAX_RATE_HZ, max(MIN_RATE_HZ, rate))
    if clamped != rate:
        warnings.append("rate_hz %g is outside %g..%g Hz; %g Hz used" % (rate, MIN_RATE_HZ, MAX_RATE_HZ, clamped))
    return clamped


def measure(run_window, sampler="estimate", rate_hz=10.0, idle_s=2.0, root="/", profile=None,
            grid_g_per_kwh=None, requests_per_s=1.0, command_runner=None):
    # type: (Callable[[], Dict[str, Any]], Any, float, float, str, Any, Optional[float], float, Optional[CommandRunner]) -> Tuple[Dict[str, Any], Dict[str, Any]]
    """1) idle baseline for idle_s; 2) sample in a background thread at rate_hz (bounded 1..100 Hz)
    while run_window() runs; 3) return (window_result, power_dict).

    run_window() returns a dict containing 'iterations' (number of inferences in the window).
    ``sampler`` is a registered name, "auto" (the profile's ``power_sensor``, else the first
    available), or a Sampler instance. An unavailable sampler falls back to the labelled
    ``estimate`` (``available: false`` and ``reason``). ``profile`` is the target profile dict
    from manifest.json (``nominal_watts_per_core``, ``power_sensor``). ``command_runner(argv) ->
    stdout`` replaces running vcgencmd / tegrastats (tests feed captured text through it).

    power_dict (JSON-serialisable): sampler, requested, scope, scope_note, method, is_estimate,
    available, reason, reads, total_rail, energy_j, mean_power_w, idle_power_w,
    energy_per_inference_mj, energy_per_inference_above_idle_mj, iterations, samples,
    idle_samples, window_s, idle_s, coverage, energy_extrapolated, rate_hz, achieved_rate_hz,
    trace ([t_s, W], t from the window start; the idle baseline has negative t), window [0, window_s],
    rails_mean_w, throttling, overhead, carbon {grid_g_per_kwh, g_per_1000_inferences,
    g_per_day_at_rps, requests_per_s, basis}, warnings.
    A failure of run_window() propagates (after the sampling thread is stopped); a sensor that
    disappears mid-run keeps the samples so far and adds a warning.
    """
    warnings = []  # type: List[str]
    rate = _clamp_rate(rate_hz, warnings)
    try:
        idle = max(0.0, float(idle_s or 0.0))
    except (TypeError, ValueError):
        idle = 0.0
    grid = DEFAULT_GRID_G_PER_KWH if grid_g_per_kwh is None else float(grid_g_per_kwh)
    rps = 1.0 if requests_per_s is None else float(requests_per_s)

    smp, requested, available, reason = open_sampler(sampler, root, profile, command_runner, rate)
    if not available:
        warnings.append("power sampler '%s' is unavailable (%s); using the CPU-time estimate "
                        "instead: the figures below are estimates, not measurements" % (requested, reason))
    clock = time.monotonic
    rec = _Recorder(smp, clock)
    period = 1.0 / rate
    health_start = _health(smp, warnings)
    stop = threading.Event()
    thread = threading.Thread(target=rec.loop, args=(period, stop), name="edgekit-power", daemon=True)
    try:
        rec.take()
        thread.start()
        if idle > 0:
            time.sleep(idle)
        rec.take()
        t0 = clock()
        window_result = run_window()
        t1 = clock()
        rec.take()
    finally:
        stop.set()
        if thread.is_alive() or thread.ident is not None:
            thread.join(timeout=5.0)
        health_end = _health(smp, warnings)
        smp.close()

    power = _summarize(rec, smp, t0, t1, period, window_result, warnings)
    power.update({
        "requested": requested,
        "available": available,
        "rate_hz": rate,
        "idle_s": _r(t0 - rec.samples[0][0]) if rec.samples else 0.0,
    })
    if reason:
        power["reason"] = reason
    if health_start is not None or health_end is not None:
        power["throttling"] = {"start": health_start, "end": health_end}
        _throttle_warnings(health_start, health_end, warnings)
    power["carbon"] = carbon(
        None if power["energy_per_inference_mj"] is None else power["energy_per_inference_mj"] / 1000.0,
        power["idle_power_w"],
        None if power["energy_per_inference_above_idle_mj"] is None
        else power["energy_per_inference_above_idle_mj"] / 1000.0,
        grid, rps)
    iters = power["iterations"]
    if iters and power["window_s"] and rps > iters / power["window_s"]:
        warnings.append("requests_per_s %g exceeds the measured throughput (%.3g inferences/s); the "
                        "daily carbon figure assumes the device keeps up" % (rps, iters / power["window_s"]))
    for note in smp.notes:
        warnings.append(note)
    power["warnings"] = warnings
    return window_result, power


def _health(smp, warnings):
    # type: (Sampler, List[str]) -> Optional[Dict[str, Any]]
    try:
        return smp.health()
    except Exception as exc:
        warnings.append("%s: health check failed: %s: %s" % (smp.name, type(exc).__name__, exc))
        return None


def _throttle_warnings(start, end, warnings):
    # type: (Optional[Dict[str, Any]], Optional[Dict[str, Any]], List[str]) -> None
    now = [name for bit, name in THROTTLE_BITS if bit < 16
           and any(h and h.get(name) for h in (start, end))]
    if now:
        warnings.append("the board reported %s during the run (vcgencmd get_throttled %s): energy "
                        "and latency reflect a throttled board" % (", ".join(now), (end or start)["raw"]))
    if start and end:
        new = [name for bit, name in THROTTLE_BITS if bit >= 16 and end.get(name) and not start.get(name)]
        if new:
            warnings.append("new since the run started: %s" % ", ".join(new))


def _summarize(rec, smp, t0, t1, period, window_result, warnings):
    # type: (_Recorder, Sampler, float, float, float, Any, List[str]) -> Dict[str, Any]
    samples = list(rec.samples)
    reading = smp.reading
    cum = cumulative_energy(samples, reading)
    window_s = t1 - t0
    first_t = samples[0][0] if samples else t0
    idle_j, idle_cov = energy_over(cum, first_t, t0)
    idle_power = idle_j / idle_cov if idle_j is not None and idle_cov > 0 else None
    win_j, win_cov = energy_over(cum, t0, t1)
    coverage = (win_cov / window_s) if window_s > 0 else 0.0
    mean_power = win_j / win_cov if win_j is not None and win_cov > 0 else None

    iterations = None
    if isinstance(window_result, dict):
        iterations = window_result.get("iterations")
    try:
        iterations = int(iterations) if iterations is not None else None
    except (TypeError, ValueError):
        iterations = None
    if not iterations:
        warnings.append("run_window() reported no 'iterations'; energy per inference is not computed")

    extrapolated = mean_power is not None and coverage < 0.999
    per_inf = above = None
    if mean_power is not None and iterations:
        per_inf = mean_power * window_s / iterations
        if idle_power is not None:
            above = (mean_power - idle_power) * window_s / iterations
            if above < 0:
                warnings.append("the window's mean power is below the idle baseline: the workload's "
                                "energy is within the sensor's noise")

    if rec.error is not None:
        where = rec.error_t - t0 if rec.error_t is not None else 0.0
        phase = "during the idle baseline" if where < 0 else "%.2f s into the window" % where
        warnings.append("power sensor '%s' stopped answering %s (%s); the samples taken before are "
                        "kept: %.0f%% of the window is covered%s"
                        % (smp.name, phase, rec.error, 100.0 * coverage,
                           ", and per-inference figures extrapolate its mean power" if extrapolated else ""))

    in_window = [t for t, _ in samples if t0 < t < t1]
    achieved = len(in_window) / window_s if window_s > 0 else None
    rate = 1.0 / period
    if achieved is not None and window_s >= 5 * period and rec.error is None and achieved < 0.8 * rate:
        per_read = rec.busy_s / max(len(samples), 1)
        why = ("one read of '%s' takes %.1f ms" % (smp.name, 1000.0 * per_read) if per_read > 0.5 * period
               else "the sampling thread was not scheduled often enough: the CPUs are busy")
        warnings.append("sampled at %.1f Hz instead of %g Hz (%s)" % (achieved, rate, why))

    trace = [[_r(t - t0, 6), _r(w, 6)] for t, w in power_trace(samples, reading, period / 2.0)]
    rails_mean = {}  # type: Dict[str, float]
    win_rails = [r for t, r in rec.rails if t0 <= t <= t1] or [r for _, r in rec.rails]
    if reading == "power" and win_rails:
        for name in win_rails[0]:
            vals = [r[name] for r in win_rails if name in r]
            rails_mean[name] = _r(sum(vals) / len(vals))
    out = {
        "sampler": smp.name,
        "scope": smp.scope,
        "scope_note": smp.scope_note,
        "method": smp.method,
        "is_estimate": bool(smp.is_estimate),
        "reads": smp.reads,
        "total_rail": smp.total_rail,
        "energy_j": _r(win_j),
        "mean_power_w": _r(mean_power),
        "idle_power_w": _r(idle_power),
        "energy_per_inference_mj": _r(per_inf * 1000.0) if per_inf is not None else None,
        "energy_per_inference_above_idle_mj": _r(above * 1000.0) if above is not None else None,
        "iterations": iterations,
        "samples": len([t for t, _ in samples if t >= t0 - period and t <= t1 + period]),
        "idle_samples": len([t for t, _ in samples if t < t0]),
        "window_s": _r(window_s),
        "coverage": _r(coverage, 4),
        "energy_extrapolated": bool(extrapolated),
        "achieved_rate_hz": _r(achieved, 4),
        "trace": trace,
        "window": [0.0, _r(window_s)],
        "overhead": {"sampler_busy_s": _r(rec.busy_s, 4), "sampler_cpu_s": _r(rec.cpu_s, 4),
                     "cpu_fraction": _r(rec.cpu_s / max(t1 - first_t, 1e-9), 4),
                     "reads": len(samples), "overruns": rec.overruns, "reread_after_preemption": rec.retries},
    }
    if rails_mean:
        out["rails_mean_w"] = rails_mean
    return out


# ----------------------------------------------------------------------------------------------
# Command line, for checks on a board: python3 python3 -m edgekit.device.power probe | measure
# ----------------------------------------------------------------------------------------------
def main(argv=None):
    # type: (Optional[Sequence[str]]) -> int
    parser = argparse.ArgumentParser(prog="python3 -m edgekit.device.power", description="edgekit power samplers")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("probe", help="which samplers work here (JSON)")
    p.add_argument("--sysfs-root", default="/")
    m = sub.add_parser("measure", help="sample while sleeping (JSON power dict)")
    m.add_argument("--power", default="auto", help="sampler name or auto")
    m.add_argument("--seconds", type=float, default=2.0)
    m.add_argument("--power-rate", type=float, default=10.0)
    m.add_argument("--idle", type=float, default=1.0)
    m.add_argument("--sysfs-root", default="/")
    m.add_argument("--grid-intensity", type=float, default=None, help="gCO2 per kWh")
    args = parser.parse_args(argv)
    if args.command == "probe":
        print(json.dumps(describe_samplers(args.sysfs_root), indent=2, sort_keys=True))
        return 0
    if args.command == "measure":
        def window():
            time.sleep(args.seconds)
            return {"iterations": 1}
        _, power = measure(window, sampler=args.power, rate_hz=args.power_rate, idle_s=args.idle,
                           root=args.sysfs_root, grid_g_per_kwh=args.grid_intensity)
        print(json.dumps(power, indent=2, sort_keys=True))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
