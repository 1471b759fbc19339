"""Issue 18 item 4: the build output says how many calibration samples were used and why."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from bundles import TINY_PROJECT, tiny_model
from edgekit import artifact
from edgekit.cli import main
from edgekit.quantize.calibration import describe_selection


def _project(tmp_path: Path, n_calib: int, max_samples: int = 0) -> Path:
    text = TINY_PROJECT
    if max_samples:
        text = text.replace('data = "calib.npz"', f'data = "calib.npz"\nmax_samples = {max_samples}')
    (tmp_path / "edgekit.toml").write_text(text)
    tiny_model(tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((n_calib, 16)).astype(np.float32))
    np.savez(tmp_path / "val.npz", x=rng.standard_normal((8, 16)).astype(np.float32))
    return tmp_path / "edgekit.toml"


def _build(cfg: Path, *extra: str):
    return CliRunner().invoke(main, ["build", "--target", "x86-avx2", "--config", str(cfg), "--precision", "int8",
                                     *extra])


def test_the_default_cap_is_stated_in_the_build_output(tmp_path: Path) -> None:
    result = _build(_project(tmp_path, 200))
    assert result.exit_code == 0, result.output
    assert ("x86-avx2: calibration: 128 of 200 samples (the default cap of 128; set max_samples in "
            "[calibration] to use more)") in result.stdout


def test_max_samples_in_the_config_is_the_cap(tmp_path: Path) -> None:
    result = _build(_project(tmp_path, 200, max_samples=160), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["calibration"] == "calibration: 160 of 160 samples loaded (max_samples = 160 in [calibration])"
    cal = artifact.read_manifest(Path(out["bundle"]))["quantization"]["calibration"]
    assert (cal["samples"], cal["given"], cal["cap"]) == (160, 160, 160)


def test_describe_selection_wording() -> None:
    assert describe_selection(20, 20, 128, False) == "calibration: 20 of 20 samples (all given)"
    assert describe_selection(64, 100, 64, True) == "calibration: 64 of 100 samples (max_samples = 64 in [calibration])"
