"""The release on the device: manifest.json, and reference.npz read without loading it whole."""
import json
import os

from .errors import RunnerError

try:  # numpy is required, but its absence must become a result, not a traceback (runner.py)
    import numpy as np
except ImportError:  # pragma: no cover - exercised on bare devices
    np = None


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
