"""calibrate(): every method onnxruntime offers, and chunking (the memory bound) that does not
change the ranges. Real onnxruntime calibrators on a small MLP; no timing."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest

import test_quantize_models as tm
from edgekit.quantize import calibration


def _ranges(path: Path) -> Dict[str, np.ndarray]:
    from onnxruntime.quantization.calibrate import load_tensors_data

    data = load_tensors_data(str(path))
    return {name: np.array([float(np.asarray(v.range_value[0]).min()), float(np.asarray(v.range_value[1]).max())])
            if hasattr(v, "range_value") else np.asarray(v) for name, v in data.data.items()}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tm.mlp(tmp_path_factory.mktemp("cal") / "mlp.onnx")


def feeds_with_outliers(n: int = 40) -> list:
    feeds = tm.feeds(n, (1, 16), 7)
    feeds[3]["x"][0, 5] = 60.0  # one rare, large activation: MinMax keeps it, Percentile clips it
    return feeds


@pytest.mark.parametrize("method", ["MinMax", "Entropy", "Percentile"])
def test_every_method_writes_ranges_for_the_quantized_inputs(model: Path, tmp_path: Path, method: str) -> None:
    extra = {"percentile": 99.9} if method == "Percentile" else {}
    cache = calibration.calibrate(model, feeds_with_outliers(), method, ["MatMul"], tmp_path / f"{method}.cache", extra)
    ranges = _ranges(cache)
    assert "x" in ranges and all(np.isfinite(r).all() and r[0] <= r[1] for r in ranges.values())


def test_percentile_clips_the_outlier_that_minmax_keeps(model: Path, tmp_path: Path) -> None:
    feeds = feeds_with_outliers()
    mm = _ranges(calibration.calibrate(model, feeds, "MinMax", ["MatMul"], tmp_path / "mm.cache"))
    pc = _ranges(calibration.calibrate(model, feeds, "Percentile", ["MatMul"], tmp_path / "pc.cache", {"percentile": 99.0}))
    assert mm["x"][1] == pytest.approx(60.0)
    assert pc["x"][1] < 0.5 * mm["x"][1]


def test_chunking_does_not_change_minmax_ranges(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feeds = feeds_with_outliers(37)  # not a multiple of the chunk
    feeds[-1]["x"][0, 2] = -45.0  # only the last, partial chunk holds the minimum
    monkeypatch.setattr(calibration, "CHUNK", 1000)
    whole = _ranges(calibration.calibrate(model, feeds, "MinMax", ["MatMul"], tmp_path / "whole.cache"))
    monkeypatch.setattr(calibration, "CHUNK", 5)
    chunked = _ranges(calibration.calibrate(model, feeds, "MinMax", ["MatMul"], tmp_path / "chunked.cache"))
    assert whole.keys() == chunked.keys() and chunked["x"][0] == pytest.approx(-45.0)
    for name in whole:
        np.testing.assert_allclose(whole[name], chunked[name], rtol=1e-6)


def test_unknown_method_is_a_clear_error(model: Path, tmp_path: Path) -> None:
    from edgekit.errors import QuantizationError

    with pytest.raises(QuantizationError, match="unknown calibration method 'Median'"):
        calibration.calibrate(model, tm.feeds(4, (1, 16), 1), "Median", ["MatMul"], tmp_path / "x.cache")
