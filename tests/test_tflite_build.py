"""A converted .tflite model through the whole CLI: build (shipped as is, reference from the real
LiteRT interpreter) -> deploy -> validate on a local device through the runner's LiteRT path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from edgekit.cli import main

from conftest import SAMPLES

PROJECT = """
[model]
name = "tiny-tflite"
source = "tflite"
path = "{model}"

[[inputs]]
name = "x"
shape = [1, 16]

[calibration]
data = "val.npz"

[validation]
data = "val.npz"
metric = "max_abs"
threshold = 1e-4

[[devices]]
name = "local"
target = "raspberry-pi-5"
path = "device"
"""


def _project(tmp_path: Path, model: Path) -> str:
    with np.load(SAMPLES / "tflite" / "reference.npz") as ref:
        np.savez(tmp_path / "val.npz", x=ref["input/x"].reshape(-1, 16))
    (tmp_path / "edgekit.toml").write_text(PROJECT.format(model=model))
    return str(tmp_path / "edgekit.toml")


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_tflite_build_deploy_validate(tmp_path: Path) -> None:
    cfg = _project(tmp_path, SAMPLES / "tflite" / "tiny.tflite")
    built = _cli("build", "--target", "rpi", "--config", cfg, "--json")
    assert built.exit_code == 0, built.output
    out = json.loads(built.stdout)
    assert out["method"] == "tflite-passthrough" and out["target"] == "raspberry-pi-5"
    manifest = json.loads((Path(out["bundle"]) / "manifest.json").read_text())
    assert manifest["artifact"] == "model.tflite" and manifest["runtime"]["name"] == "tflite"
    assert manifest["inputs"][0]["shape"] == [1, 16]
    # the reference is LiteRT's own output: check it against the sample's numpy-verified outputs
    with np.load(Path(out["bundle"]) / "reference.npz") as ref, np.load(SAMPLES / "tflite" / "reference.npz") as want:
        np.testing.assert_allclose(ref["output/" + manifest["outputs"][0]["name"]], want["output/y"], rtol=1e-5, atol=1e-5)
    assert _cli("deploy", "--device", "local", "--config", cfg).exit_code == 0
    res = _cli("validate", "--device", "local", "--config", cfg, "--duration", "0.3", "--json")
    assert res.exit_code == 0, res.output
    val = json.loads(res.stdout)
    assert val["ok"] and val["runtime"]["name"] == "tflite" and val["metric"]["value"] <= 1e-4


def test_corrupt_tflite_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"this is not a flatbuffer")
    result = _cli("build", "--target", "rpi", "--config", _project(tmp_path, bad))
    assert result.exit_code == 4
    assert "bad.tflite" in result.output and "Traceback" not in result.output
