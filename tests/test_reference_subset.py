"""reference.npz: a bounded, deterministic subset of the validation set, and a runner that reads it
without loading it whole (memory-mapped entries), treating its bytes as untrusted."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from edgekit import artifact
from edgekit.device import runner

RUNNER = Path(runner.__file__)


def samples(n: int, floats_in: int, floats_out: int) -> tuple:
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, floats_in)).astype(np.float32)} for _ in range(n)]
    outs = [[rng.standard_normal((1, floats_out)).astype(np.float32)] for _ in range(n)]
    return feeds, outs


def test_default_bound_is_the_smaller_of_32_samples_and_64_mb() -> None:
    feeds, outs = samples(400, 16, 4)  # 80 bytes a sample: the count bound wins
    idx = artifact.reference_subset(feeds, outs, 32, 64.0)
    assert len(idx) == 32 and idx[0] == 0 and idx[-1] == 399  # spread over the whole set
    assert idx == sorted(set(idx))
    big_feeds, big_outs = samples(40, 1_000_000, 0)  # 4 MB a sample: the size bound wins (16 x 4 MB = 64 MB)
    idx = artifact.reference_subset(big_feeds, big_outs, 32, 64.0)
    assert len(idx) == 16
    assert sum(big_feeds[i]["x"].nbytes + big_outs[i][0].nbytes for i in idx) <= 64e6


def test_subset_is_deterministic_bytes_included(tmp_path: Path) -> None:
    feeds, outs = samples(100, 16, 4)
    a = artifact.reference_subset(feeds, outs, 10, 64.0)
    b = artifact.reference_subset(list(feeds), list(outs), 10, 64.0)
    assert a == b == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    for name in ("one.npz", "two.npz"):
        artifact.write_reference(tmp_path / name, [feeds[i] for i in a], [outs[i] for i in a], ["y"])
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()


def test_streams_ship_whole() -> None:
    feeds, outs = samples(30, 16, 4)
    starts = [i % 6 == 0 for i in range(30)]  # five streams of six chunks
    idx = artifact.reference_subset(feeds, outs, 14, 64.0, starts)
    assert idx == [0, 1, 2, 3, 4, 5, 24, 25, 26, 27, 28, 29]  # two whole streams, first and last
    # a single stream over the bound: a prefix of the first one (still a stream from its start)
    idx = artifact.reference_subset(feeds, outs, 4, 64.0, [i == 0 for i in range(30)])
    assert idx == [0, 1, 2, 3]


def test_one_sample_ships_even_over_the_size_bound() -> None:
    feeds, outs = samples(3, 1_000_000, 0)
    assert artifact.reference_subset(feeds, outs, 32, 1.0) == [0]


def test_large_entries_are_memory_mapped_small_ones_read(tmp_path: Path) -> None:
    path = tmp_path / "reference.npz"
    feeds, outs = samples(8, 100_000, 4)  # 400 KB a sample: input/x is 3.2 MB, output/y is tiny
    artifact.write_reference(path, feeds, outs, ["y"], labels=np.arange(8), starts=[True] * 8)
    ref = runner.open_reference(str(path))
    assert isinstance(ref["input/x"], np.memmap) and not isinstance(ref["output/y"], np.memmap)
    with np.load(path) as z:
        for key in z.files:
            np.testing.assert_array_equal(np.asarray(ref[key]), z[key])
    assert ref["stream/start"].dtype == np.uint8
    # compressed entries (a hand-made file) still load, read normally
    np.savez_compressed(tmp_path / "c.npz", **{"input/x": np.ones((4, 3), np.float32)})
    assert runner.open_reference(str(tmp_path / "c.npz"))["input/x"].shape == (4, 3)


def _zip_with(tmp_path: Path, header: Dict[str, object], payload: bytes) -> Path:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)  # type: ignore[arg-type]
    path = tmp_path / "hostile.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("input/x.npy", buf.getvalue() + payload)  # the header writer adds the magic
    return path


def test_an_entry_shorter_than_its_header_is_refused(tmp_path: Path) -> None:
    path = _zip_with(tmp_path, {"descr": "<f4", "fortran_order": False, "shape": (10**9,)}, b"\0" * (2 << 20))
    with pytest.raises(runner.RunnerError, match="shorter than its header says"):
        runner.open_reference(str(path))


def test_an_object_entry_is_refused(tmp_path: Path) -> None:
    path = _zip_with(tmp_path, {"descr": "|O", "fortran_order": False, "shape": (300000,)}, b"\0" * (2 << 20))
    with pytest.raises(runner.RunnerError, match="holds Python objects"):
        runner.open_reference(str(path))


def test_split_reference_checks_sample_counts(tmp_path: Path) -> None:
    manifest = {"inputs": [{"name": "x"}], "outputs": [{"name": "y"}]}
    ref = {"input/x": np.zeros((4, 1, 2), np.float32), "output/y": np.zeros((3, 1, 2), np.float32)}
    with pytest.raises(runner.RunnerError, match="'output/y' holds \\(3,\\) samples, 'input/x' holds 4"):
        runner.split_reference(manifest, ref)


def test_reading_one_sample_of_a_large_reference_stays_small(tmp_path: Path) -> None:
    """Peak memory, in a fresh process: opening a 96 MB reference and scoring two samples of it must not
    read the file whole (np.load of the zip would)."""
    path = tmp_path / "reference.npz"
    n, width = 24, 1_000_000  # 4 MB a sample
    with open(path, "wb") as f:
        np.savez(f, **{"input/x": np.ones((n, 1, width), np.float32), "output/y": np.ones((n, 1, 4), np.float32)})
    code = f"""
import json, resource, sys
sys.path.insert(0, {str(RUNNER.parent.parent.parent)!r})
import numpy as np
from edgekit.device import reference as runner
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ref = runner.open_reference({str(path)!r})
feeds, refs = runner.split_reference({{"inputs": [{{"name": "x"}}], "outputs": [{{"name": "y"}}]}}, ref)
total = float(np.sum(feeds[0]["x"])) + float(np.sum(feeds[-1]["x"]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"delta_mb": (peak - base) / 1024.0, "total": total, "n": len(feeds)}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout)
    assert out["n"] == n and out["total"] == 2 * width
    assert out["delta_mb"] < 40, out  # two 4 MB samples touched, not 96 MB


def _validate(bundle: Path, tmp_path: Path) -> dict:
    out = tmp_path / "result.json"
    code = runner.main(["validate", "--release", str(bundle), "--out", str(out), "--duration", "0.05", "--warmup", "0"])
    result = json.loads(out.read_text())
    assert result["exit_code"] == code
    return result


def test_a_subset_that_misses_the_threshold_must_match_the_hosts_score_on_it(tmp_path: Path) -> None:
    """top-1 on 8 shipped samples moves 12.5% per miss: where the subset misses the threshold the
    build met on the whole set, the device must reproduce the host's score on those samples."""
    from bundles import make_tiny_bundle

    make_tiny_bundle(tmp_path / "plain", corrupt_reference=True)
    value = _validate(tmp_path / "plain", tmp_path)["metric"]["value"]
    assert value < 0.99
    for host_value, ok in ((value, True), (value + 0.125, False)):
        bundle = tmp_path / f"b{host_value}"
        make_tiny_bundle(bundle, corrupt_reference=True,
                         extra_fields={"reference": {"samples": 8, "of": 400, "host_value": host_value}})
        metric = _validate(bundle, tmp_path)["metric"]
        assert metric["passed"] is ok and metric["subset_bar"] == host_value
        assert "8 of 400 validation samples" in metric["subset_note"]
    # the whole set shipped: the threshold alone decides
    make_tiny_bundle(tmp_path / "whole", corrupt_reference=True,
                     extra_fields={"reference": {"samples": 8, "of": 8, "host_value": value}})
    assert _validate(tmp_path / "whole", tmp_path)["metric"]["passed"] is False
