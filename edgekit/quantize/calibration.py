"""Calibration: checked feeds, a memory-bounded data reader, and ranges computed once and cached.

Ranges are computed once per (method, symmetric) and written as onnxruntime's own calibration cache
(``save_tensors_data``), which ``quantize_static(calibration_cache_path=...)`` reads back. The many
quantizations of the fallback search then cost no calibration passes.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import QuantizationError
from ..optimize import ort_level, quiet

MAX_CALIBRATION_SAMPLES = 128
"""The default cap: more samples barely move MinMax/Entropy ranges but cost a full forward pass
each. ``[calibration] max_samples`` in edgekit.toml replaces it."""

CHUNK = 8
"""Samples per collect_data call: the calibrator keeps every intermediate tensor of a chunk in
memory (MiniLM at seq 128: ~40 MB per sample), so ranges/histograms are merged chunk by chunk."""

CALIBRATION_THREADS = 2
"""Fixed so that float reductions, hence ranges, hence model bytes, do not depend on the host's
core count."""

_ONNX_TO_NUMPY = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
                  10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}


class FeedsReader:
    """An onnxruntime ``CalibrationDataReader`` over a list of feeds, with ``set_range`` support."""

    def __init__(self, feeds: Sequence[Dict[str, np.ndarray]]) -> None:
        self.feeds = list(feeds)
        self.start, self.end = 0, len(self.feeds)
        self.pos = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.start + self.pos >= self.end:
            return None
        feed = self.feeds[self.start + self.pos]
        self.pos += 1
        return feed

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.pos = start_index, min(end_index, len(self.feeds)), 0

    def rewind(self) -> None:
        self.pos = 0

    # onnxruntime checks for the abstract base class by ``get_next``; iterating is a convenience.
    def __iter__(self) -> "FeedsReader":
        return self

    def __next__(self) -> Dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def input_specs(model: "onnx.ModelProto") -> Dict[str, tuple]:  # type: ignore[name-defined]  # noqa: F821
    """{input name: (numpy dtype name, [dim or None for symbolic])}, initializers excluded."""
    inits = {i.name for i in model.graph.initializer}
    specs = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        specs[vi.name] = (_ONNX_TO_NUMPY.get(tt.elem_type, str(tt.elem_type)), dims)
    return specs


def check_feeds(model: "onnx.ModelProto", feeds: Sequence[Dict[str, np.ndarray]], what: str) -> None:  # type: ignore[name-defined]  # noqa: F821
    """Raise QuantizationError naming the input, what the model expects and what the sample has."""
    if not feeds:
        raise QuantizationError(f"no {what} samples were given", hint="check the data path in edgekit.toml")
    specs = input_specs(model)
    for i, feed in enumerate(feeds):
        missing = [n for n in specs if n not in feed]
        if missing:
            raise QuantizationError(
                f"{what} sample {i}: input '{missing[0]}' is missing (the model expects "
                f"{', '.join(specs)}; the sample has {', '.join(sorted(feed)) or 'nothing'})")
        for name in sorted(feed):
            if name not in specs:
                raise QuantizationError(f"{what} sample {i}: '{name}' is not an input of the model "
                                        f"(inputs: {', '.join(specs)})")
            dtype, dims = specs[name]
            arr = feed[name]
            got_dtype = str(getattr(arr, "dtype", type(arr).__name__))
            shape = list(np.shape(arr))
            expected = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
            if got_dtype != dtype:
                raise QuantizationError(
                    f"{what} sample {i}: input '{name}' expected dtype {dtype} {expected}, got {got_dtype} {shape}")
            if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
                raise QuantizationError(
                    f"{what} sample {i}: input '{name}' expected shape {expected} ({dtype}), got {shape} ({got_dtype})")


def select_samples(feeds: Sequence[Dict[str, np.ndarray]], cap: int, seed: int) -> List[Dict[str, np.ndarray]]:
    """At most ``cap`` feeds, chosen by ``seed`` and kept in their original order."""
    if len(feeds) <= cap:
        return list(feeds)
    idx = np.sort(np.random.default_rng(seed).choice(len(feeds), size=cap, replace=False))
    return [feeds[int(i)] for i in idx]


def describe_selection(used: int, given: int, cap: int, configured: bool) -> str:
    """One line for the build output: how many calibration samples were used, and why not all."""
    if used >= given:
        if configured:
            return f"calibration: {used} of {given} samples loaded (max_samples = {cap} in [calibration])"
        return f"calibration: {used} of {given} samples (all given)"
    if configured:
        return f"calibration: {used} of {given} samples (max_samples = {cap} in [calibration])"
    return (f"calibration: {used} of {given} samples (the default cap of {cap}; set max_samples in "
            "[calibration] to use more)")


def feeds_digest(feeds: Sequence[Dict[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            arr = np.ascontiguousarray(feed[name])
            h.update(name.encode())
            h.update(str(arr.dtype).encode())
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
    return h.hexdigest()[:16]


def _method(name: str) -> "CalibrationMethod":  # type: ignore[name-defined]  # noqa: F821
    from onnxruntime.quantization import CalibrationMethod

    try:
        return getattr(CalibrationMethod, name)
    except AttributeError:
        raise QuantizationError(f"unknown calibration method '{name}' (known: MinMax, Entropy, Percentile)") from None


def calibrate(model_path: Path, feeds: Sequence[Dict[str, np.ndarray]], method: str, op_types: Sequence[str],
              cache_path: Path, extra: Optional[Dict[str, object]] = None, large: bool = False) -> Path:
    """Compute activation ranges for ``op_types`` nodes and write them to ``cache_path``.

    Runs ``collect_data`` chunk by chunk: MinMax merges ranges, Entropy/Percentile merge histograms,
    so memory stays at one chunk of intermediate tensors whatever the number of samples.
    """
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    if cache_path.is_file():
        return cache_path
    work = cache_path.parent / (cache_path.stem + ".augmented.onnx")
    try:
        with quiet():
            calibrator = create_calibrator(Path(model_path), list(op_types), augmented_model_path=str(work),
                                           calibrate_method=_method(method), use_external_data_format=large,
                                           extra_options=dict(extra or {}))
            # Re-open the augmented model with a fixed thread count (see CALIBRATION_THREADS).
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort_level("disabled")
            opts.intra_op_num_threads = CALIBRATION_THREADS
            calibrator.infer_session = ort.InferenceSession(str(work), opts, providers=["CPUExecutionProvider"])
            reader = FeedsReader(feeds)
            for start in range(0, len(feeds), CHUNK):
                reader.set_range(start, start + CHUNK)
                calibrator.collect_data(reader)
            ranges = calibrator.compute_data()
            save_tensors_data(ranges, cache_path)
    except QuantizationError:
        raise
    except Exception as exc:
        raise QuantizationError(f"calibration ({method}) failed: {str(exc).splitlines()[0]}") from None
    finally:
        for leftover in (work, work.parent / (work.name + ".data")):
            leftover.unlink(missing_ok=True)
    return cache_path
