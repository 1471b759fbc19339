"""Calibration and validation samples: .npz/.npy files (or a directory of them) or text lines.

Every sample becomes a feed ``{input_name: array}`` holding a batch of one. Arrays in files are
stacked on axis 0, one sample per row. Shapes and dtypes are checked against ``[[inputs]]`` here,
so a bad sample gives one clear line instead of an onnxruntime traceback later.
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .config import DataSpec, InputSpec, ProjectConfig
from .errors import ConfigError, QuantizationError

Feed = Dict[str, np.ndarray]


def _fmt_shape(shape: Tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _expected_row(spec: InputSpec) -> str:
    row = ["*" if i in spec.dynamic_axes else str(d) for i, d in enumerate(spec.shape[1:], start=1)]
    return "[N," + ",".join(row) + "]"


def _check_array(arr: np.ndarray, spec: InputSpec, source: Path, err: type) -> np.ndarray:
    want = np.dtype(spec.dtype)
    row_ok = arr.ndim == len(spec.shape) and all(
        i in spec.dynamic_axes or arr.shape[i] == d for i, d in enumerate(spec.shape) if i > 0)
    kind_ok = arr.dtype.kind == want.kind or (want.kind in "iu" and arr.dtype.kind in "iu")
    if not row_ok or not kind_ok:
        raise err(f"{source}: input '{spec.name}' expects samples shaped {_expected_row(spec)} {spec.dtype}, "
                  f"got {_fmt_shape(arr.shape)} {arr.dtype}")
    return arr.astype(want, copy=False)


# What a damaged or hostile sample file raises from numpy: a truncated .npz (BadZipFile, or EOFError
# and zlib.error on a cut member), an object array (ValueError: pickles are never loaded), a bad
# header (ValueError), an unreadable file (OSError).
_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def _read_arrays(path: Path, inputs: List[InputSpec], labels_key: Optional[str], err: type
                 ) -> Tuple[Dict[str, np.ndarray], Optional[np.ndarray]]:
    """The file's arrays, checked. A file that cannot be read is bad input (ConfigError) in either
    table; a readable one that does not fit the model raises ``err``."""
    try:
        return _read_checked(path, inputs, labels_key, err)
    except _UNREADABLE as exc:
        raise ConfigError(f"{path}: cannot read samples ({type(exc).__name__}: {exc})",
                          hint="numpy .npz/.npy files of plain numeric arrays are expected (no pickled objects)") from None


def _read_checked(path: Path, inputs: List[InputSpec], labels_key: Optional[str], err: type
                  ) -> Tuple[Dict[str, np.ndarray], Optional[np.ndarray]]:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            raise err(f"{path}: a .npy file holds one array, but the model has {len(inputs)} inputs; use .npz keyed by input name")
        return {inputs[0].name: _check_array(loaded, inputs[0], path, err)}, None
    with loaded as z:
        missing = [i.name for i in inputs if i.name not in z.files]
        if missing:
            raise err(f"{path}: no array for input '{missing[0]}' (arrays: {', '.join(z.files)})")
        arrays = {i.name: _check_array(z[i.name], i, path, err) for i in inputs}
        labels = None
        if labels_key:
            if labels_key not in z.files:
                raise err(f"{path}: no labels array '{labels_key}' (arrays: {', '.join(z.files)})")
            labels = z[labels_key]
    counts = {a.shape[0] for a in arrays.values()}
    if len(counts) != 1:
        raise err(f"{path}: inputs hold different sample counts {sorted(counts)}")
    return arrays, labels


def _tokenize(lines: List[str], inputs: List[InputSpec], model_dir: Path, source: Path, err: type) -> Dict[str, np.ndarray]:
    from transformers import AutoTokenizer  # heavy: only for text data

    seq = inputs[0].shape[1] if len(inputs[0].shape) > 1 else 128
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise err(f"{model_dir}: cannot load the tokenizer for {source}: {exc}") from None
    enc = tok(lines, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    arrays = {}
    for spec in inputs:
        if spec.name not in enc:
            raise err(f"{source}: the tokenizer gives {', '.join(enc.keys())}, not input '{spec.name}'")
        arrays[spec.name] = enc[spec.name].astype(np.dtype(spec.dtype))
    return arrays


def load_samples(spec: DataSpec, config: ProjectConfig, what: str = "calibration") -> Tuple[List[Feed], Optional[np.ndarray]]:
    """Feeds (a batch of one each) and optional labels for the ``[calibration]`` or ``[validation]`` table."""
    err = QuantizationError if what == "calibration" else ConfigError
    inputs = config.inputs
    if spec.text is not None:
        source = config.resolve(spec.text)
        assert source is not None
        if not source.is_file():
            raise ConfigError(f"{config.path}: field '{what}.text': file not found: {source}")
        if config.model.source != "hf":
            raise ConfigError(f"{config.path}: field '{what}.text' needs a Hugging Face model (source = 'hf') for its tokenizer")
        try:
            lines = [ln.strip() for ln in source.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
        if not lines:
            raise err(f"{source}: no text lines")
        model_dir = config.resolve(config.model.path)
        assert model_dir is not None
        arrays = _tokenize(lines[: spec.max_samples], inputs, model_dir, source, err)
        labels = None
    else:
        source = config.resolve(spec.data)
        assert source is not None
        if source.is_dir():
            files = sorted(p for p in source.iterdir() if p.suffix in (".npz", ".npy"))
            if not files:
                raise ConfigError(f"{config.path}: field '{what}.data': no .npz/.npy files in {source}")
        elif source.is_file():
            files = [source]
        else:
            raise ConfigError(f"{config.path}: field '{what}.data': file not found: {source}")
        parts = [_read_arrays(f, inputs, spec.labels, err) for f in files]
        try:
            arrays = {i.name: np.concatenate([p[0][i.name] for p in parts]) for i in inputs}
            labels = np.concatenate([p[1] for p in parts]) if spec.labels else None
        except ValueError as exc:  # dynamic axes of different lengths across the files
            raise ConfigError(f"{source}: the files' samples cannot be stacked on axis 0: {exc}") from None
    count = next(iter(arrays.values())).shape[0]
    if count == 0:  # refused here, before any export starts, rather than as an IndexError later
        raise ConfigError(f"{source}: no samples (axis 0 is empty) for [{what}]")
    if labels is not None and labels.shape[:1] != (count,):
        raise ConfigError(f"{source}: labels '{spec.labels}' hold {labels.shape[0] if labels.ndim else 0} value(s) "
                          f"for {count} sample(s)")
    n = min(spec.max_samples, count)
    feeds = [{name: a[i: i + 1] for name, a in arrays.items()} for i in range(n)]
    return feeds, (labels[:n] if labels is not None else None)
