"""Calibration and validation samples: .npz/.npy files (or a directory of them) or text lines.

Every sample becomes a feed ``{input_name: array}`` holding a batch of one. In files, each input's
samples are stacked along its batch axis (axis 0 unless ``batch_axis`` says otherwise); an input
without a batch axis holds one value for all samples or one per sample on a new axis 0; an input
declared ``constant`` holds one sample, and one with ``value`` is not read from files at all. Shapes and dtypes are checked against ``[[inputs]]`` here,
so a bad sample gives one clear line instead of an onnxruntime traceback later.
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import DataSpec, InputSpec, ProjectConfig
from .errors import ConfigError, QuantizationError

Feed = Dict[str, np.ndarray]


def _fmt_shape(shape: Sequence[object]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _dims(spec: InputSpec, sample_axis: Optional[int]) -> List[str]:
    """The declared shape as text, '*' on dynamic axes and 'N' on ``sample_axis``."""
    return ["N" if i == sample_axis else "*" if i in spec.dynamic_axes else str(d) for i, d in enumerate(spec.shape)]


def expected_layout(spec: InputSpec) -> str:
    """The rule for this input's arrays in data files, with the exact shape expected."""
    k = spec.batch
    if spec.constant:
        one = [1 if i == k else d for i, d in enumerate(_dims(spec, None))]
        return (f"input '{spec.name}' is constant across samples (constant = true), so the file must hold one "
                f"sample shaped {_fmt_shape(one)} {spec.dtype}")
    if k is None:
        return (f"input '{spec.name}' has no batch axis (batch_axis = \"none\"), so the file must hold either one "
                f"value shaped {_fmt_shape(_dims(spec, None))} (fed with every sample) or one per sample stacked on "
                f"a new axis 0: {_fmt_shape(['N'] + _dims(spec, None))} {spec.dtype}")
    why = "the default; set batch_axis otherwise" if k == 0 else f"batch_axis = {k}"
    return (f"input '{spec.name}' has its samples on axis {k} ({why}), so the file must hold N samples "
            f"as {_fmt_shape(_dims(spec, k))} {spec.dtype}")


def _fits(arr: np.ndarray, spec: InputSpec, skip: Optional[int], lead: int = 0) -> bool:
    """``arr`` (after ``lead`` extra leading axes) has the declared shape, except on ``skip`` and on
    dynamic axes."""
    if arr.ndim != len(spec.shape) + lead:
        return False
    return all(i == skip or i in spec.dynamic_axes or arr.shape[i + lead] == d for i, d in enumerate(spec.shape))


class _Column:
    """One input's data from one file: how to take sample ``i`` from it."""

    def __init__(self, arr: np.ndarray, axis: Optional[int], per_sample: bool) -> None:
        self.arr, self.axis, self.per_sample = arr, axis, per_sample

    @property
    def count(self) -> Optional[int]:
        if not self.per_sample:
            return None
        return int(self.arr.shape[self.axis if self.axis is not None else 0])

    def sample(self, i: int) -> np.ndarray:
        if not self.per_sample:
            return self.arr
        if self.axis is None:
            return self.arr[i]
        index = (slice(None),) * self.axis + (slice(i, i + 1),)
        return self.arr[index]  # a view, batch axis kept (size 1)


def _check_array(arr: np.ndarray, spec: InputSpec, source: Path, err: type) -> _Column:
    want = np.dtype(spec.dtype)
    kind_ok = arr.dtype.kind == want.kind or (want.kind in "iu" and arr.dtype.kind in "iu")
    k = spec.batch
    if spec.constant:  # exactly one sample: a batch of one, even on a dynamic batch axis
        ok = _fits(arr, spec, None) and (k is None or arr.shape[k] == 1)
        column = _Column(arr, k, False)
    elif k is None:
        ok = _fits(arr, spec, None) or _fits(arr, spec, None, lead=1)
        column = _Column(arr, None, arr.ndim == len(spec.shape) + 1)
    else:
        ok, column = _fits(arr, spec, k), _Column(arr, k, True)
    if not ok or not kind_ok:
        raise err(f"{source}: {expected_layout(spec)}, got {_fmt_shape(arr.shape)} {arr.dtype}")
    column.arr = arr.astype(want, copy=False)
    return column


# What a damaged or hostile sample file raises from numpy: a truncated .npz (BadZipFile, or EOFError
# and zlib.error on a cut member), an object array (ValueError: pickles are never loaded), a bad
# header (ValueError), an unreadable file (OSError).
_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def _read_arrays(path: Path, inputs: List[InputSpec], labels_key: Optional[str], ids_key: Optional[str], err: type
                 ) -> Tuple[Dict[str, _Column], Optional[np.ndarray], Optional[np.ndarray]]:
    """The file's arrays, checked. A file that cannot be read is bad input (ConfigError) in either
    table; a readable one that does not fit the model raises ``err``."""
    try:
        return _read_checked(path, inputs, labels_key, ids_key, err)
    except _UNREADABLE as exc:
        raise ConfigError(f"{path}: cannot read samples ({type(exc).__name__}: {exc})",
                          hint="numpy .npz/.npy files of plain numeric arrays are expected (no pickled objects)") from None


def _read_checked(path: Path, inputs: List[InputSpec], labels_key: Optional[str], ids_key: Optional[str], err: type
                  ) -> Tuple[Dict[str, _Column], Optional[np.ndarray], Optional[np.ndarray]]:
    from_file = [i for i in inputs if i.value is None]
    loaded = np.load(path, allow_pickle=False)
    labels = ids = None
    if isinstance(loaded, np.ndarray):
        if len(from_file) != 1 or ids_key:
            raise err(f"{path}: a .npy file holds one array, but {len(from_file)} inputs need data"
                      + (" and streams need ids" if ids_key else "") + "; use .npz keyed by input name")
        columns = {from_file[0].name: _check_array(loaded, from_file[0], path, err)}
    else:
        with loaded as z:
            missing = [i.name for i in from_file if i.name not in z.files]
            if missing:
                raise err(f"{path}: no array for input '{missing[0]}' (arrays: {', '.join(z.files)}); "
                          "an input the same for every sample can take value = ... in edgekit.toml instead")
            columns = {i.name: _check_array(z[i.name], i, path, err) for i in from_file}
            for key, what in ((labels_key, "labels"), (ids_key, "stream ids")):
                if key and key not in z.files:
                    raise err(f"{path}: no {what} array '{key}' (arrays: {', '.join(z.files)})")
            labels = z[labels_key] if labels_key else None
            ids = z[ids_key].reshape(-1) if ids_key else None
    for spec in inputs:
        if spec.value is not None:
            columns[spec.name] = _Column(np.asarray(spec.value, dtype=spec.dtype), spec.batch, False)
    counts = {name: c.count for name, c in columns.items() if c.count is not None}
    if not counts:
        raise err(f"{path}: every input is constant across samples, so the file gives no sample count; "
                  "hold at least one input per sample")
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"'{n}' {c} (axis {columns[n].axis or 0})" for n, c in sorted(counts.items()))
        raise err(f"{path}: inputs hold different sample counts along their batch axes: {detail}; "
                  "each input's samples lie on its batch_axis (axis 0 unless batch_axis says otherwise)")
    n = next(iter(counts.values()))
    if ids is not None and len(ids) != n:
        raise err(f"{path}: stream ids '{ids_key}' hold {len(ids)} entries for {n} samples")
    return columns, labels, ids


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
    feeds, labels, _ = load_stream_samples(spec, config, what)
    return feeds, labels


def load_stream_samples(spec: DataSpec, config: ProjectConfig, what: str = "calibration"
                        ) -> Tuple[List[Feed], Optional[np.ndarray], Optional[List[bool]]]:
    """As ``load_samples``, plus where each stream starts when ``[validation.stream]`` is declared
    (None otherwise). Each input's samples are taken along its own batch axis."""
    err = QuantizationError if what == "calibration" else ConfigError
    inputs = config.inputs
    stream = config.validation.stream
    ids_key = stream.ids if stream else None
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
        parts = [({n: _Column(a, 0, True) for n, a in arrays.items()}, None, None)]
        if ids_key:
            raise ConfigError(f"{config.path}: field 'validation.stream.ids' needs .npz data, not text")
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
        parts = [_read_arrays(f, inputs, spec.labels, ids_key, err) for f in files]
    feeds: List[Feed] = []
    label_parts, id_parts = [], []
    for columns, labels, file_ids in parts:
        count = next(c.count for c in columns.values() if c.count is not None)
        take = min(count, spec.max_samples - len(feeds))
        feeds.extend({name: c.sample(i) for name, c in columns.items()} for i in range(take))
        if labels is not None:
            label_parts.append(np.asarray(labels)[:take])
        if file_ids is not None:  # ids restart per file: a new file always starts a new stream
            id_parts.append([(len(id_parts), x) for x in file_ids[:take].tolist()])
        if len(feeds) >= spec.max_samples:
            break
    if not feeds:  # refused here, before any export starts, rather than as an IndexError later
        raise ConfigError(f"{source}: no samples (the batch axis is empty) for [{what}]")
    labels_all = np.concatenate(label_parts) if spec.labels and label_parts else None
    if labels_all is not None and labels_all.shape[:1] != (len(feeds),):
        raise ConfigError(f"{source}: labels '{spec.labels}' hold {labels_all.shape[0] if labels_all.ndim else 0} "
                          f"value(s) for {len(feeds)} sample(s)")
    starts: Optional[List[bool]] = None
    if stream is not None:
        if stream.chunks:
            starts = [i % stream.chunks == 0 for i in range(len(feeds))]
        else:
            flat = [x for part in id_parts for x in part]
            starts = [i == 0 or flat[i] != flat[i - 1] for i in range(len(flat))]
    return feeds, labels_all, starts
