"""The build record: what a build measured on this host, kept outside the release.

A release is content-addressed: its id covers every deployed file, manifest.json included, so the
manifest must hold only what the inputs determine. Host timings, the build's duration and the
host's facts vary from one build to the next; they go to ``dist/<model>/<target>.build.json``
beside the bundle, which is never deployed.

The record doubles as a timing memo. Where timing takes part in the choice (a host whose CPU
matches the target), two builds of the same inputs could otherwise time the same candidates a little
differently and choose differently. Each comparison is keyed by the exact bytes of the models
compared, their session levels, the feed and the timing settings; a rebuild whose comparison has a
key the previous record holds reuses that measurement, so it makes the same choices and writes the
same bytes. ``edgekit build --remeasure`` times everything afresh.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from . import __version__

SUFFIX = ".build.json"
SCHEMA = 1
MAX_RECORD_BYTES = 16 << 20
"""A record larger than this is not read back as a memo (it is ours, but bound what we parse)."""

Measure = Callable[..., Dict[str, List[float]]]


def record_path(bundle: Path) -> Path:
    """``dist/<model>/<target>/`` -> ``dist/<model>/<target>.build.json``."""
    bundle = Path(bundle)
    return bundle.parent / f"{bundle.name}{SUFFIX}"


def _model_digest(src: Any) -> str:
    if isinstance(src, (bytes, bytearray)):
        return hashlib.sha256(src).hexdigest()
    h = hashlib.sha256()
    path = Path(src)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    for extra in sorted(path.parent.glob(path.name + ".data")):  # external weights, where a model has them
        h.update(extra.read_bytes())
    return h.hexdigest()


def _feed_digest(feed: Dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(feed):
        a = np.ascontiguousarray(feed[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class TimingMemo:
    """Wraps a ``measure(models, feed, levels, **settings)`` function (``evaluate.measure_latency``'s
    signature): a comparison recorded by the previous build is answered from the record."""

    def __init__(self, measure: Measure, previous: Optional[Dict[str, Any]] = None, fresh: bool = False) -> None:
        self.measure = measure
        self.previous = {} if fresh or not previous else dict(previous)
        self.used: Dict[str, Any] = {}
        self.reused = 0
        self.measured = 0

    @staticmethod
    def key(models: Dict[str, Any], feed: Dict[str, np.ndarray], levels: Dict[str, str], settings: Dict[str, Any]) -> str:
        body = {
            "models": {name: _model_digest(src) for name, src in sorted(models.items())},
            "levels": {name: levels.get(name) for name in sorted(models)},
            "feed": _feed_digest(feed),
            "settings": {k: v for k, v in sorted(settings.items()) if k != "deadline"},
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    def __call__(self, models: Dict[str, Any], feed: Dict[str, np.ndarray], levels: Dict[str, str],
                 **settings: Any) -> Dict[str, List[float]]:
        key = self.key(models, feed, levels, settings)
        hit = self.previous.get(key)
        if isinstance(hit, dict) and isinstance(hit.get("rounds"), dict) and set(models) <= set(hit["rounds"]):
            self.reused += 1  # the recorded rounds, A/A control entries included
            rounds = {name: [float(x) for x in v] for name, v in hit["rounds"].items()}
        else:
            self.measured += 1
            rounds = self.measure(models, feed, levels, **settings)
        self.used[key] = {"rounds": {name: [float(x) for x in v] for name, v in rounds.items()}}
        return rounds

    def summary(self) -> str:
        if not self.reused:
            return f"{self.measured} timing comparison(s) measured" if self.measured else "no timing"
        return (f"{self.reused} timing comparison(s) reused from the previous build record (identical models), "
                f"{self.measured} measured; 'edgekit build --remeasure' times them afresh")


def read_timings(bundle: Path) -> Dict[str, Any]:
    """The previous record's timing memo (empty when there is none, it is unreadable, or it was
    written by another edgekit version: its choices may differ)."""
    path = record_path(bundle)
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("edgekit_version") != __version__ or data.get("schema") != SCHEMA:
        return {}
    timings = data.get("timings")
    return timings if isinstance(timings, dict) else {}


def host_facts() -> Dict[str, Any]:
    from . import targets

    model = targets.host_cpu()[0]
    flags = targets.host_cpu_flags()
    return {"arch": targets.host_arch(), "cpu": model, "cpu_count": os.cpu_count(),
            "int8_flags": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                                                           "asimddp", "i8mm", "asimdhp")),
            "flags_overridden": targets.HOST_FLAGS_ENV in os.environ,
            "python": platform.python_version()}


def write(bundle: Path, release_id: str, seconds: float, measured: Dict[str, Any], memo: Optional[TimingMemo]) -> Path:
    """Write the record atomically (temp file + rename) beside the bundle."""
    path = record_path(bundle)
    record = {
        "schema": SCHEMA, "edgekit_version": __version__, "release_id": release_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(seconds, 3),
        "host": host_facts(), **measured,
        "timing_memo": memo.summary() if memo else "no timing",
        "timings": memo.used if memo else {},
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
