"""Latency statistics (MLPerf conventions: mean, min, p50, p90, p99) and the timed window."""
import math
import sys
import time

try:  # numpy is required, but its absence must become a result, not a traceback (runner.py)
    import numpy as np
except ImportError:  # pragma: no cover - exercised on bare devices
    np = None

MAX_SAMPLES = 1000  # raw latency samples kept in the JSON (evenly strided) for histograms


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
