"""`edgekit build` with source = "onnx" on a model whose weights are ONNX external data
(model.onnx + model.onnx.data): the bundle must hold a complete model that loads on its own."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit import artifact
from edgekit.cli import main

from bundles import TINY_PROJECT

N_IN, N_HID, N_OUT = 16, 128, 4  # int8 w1 (2 KB) is over the 1 KB external-data threshold


def _external_model(path: Path) -> None:
    """A small MLP saved the way large exports are: every initializer in one model.onnx.data."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w1", rng.standard_normal((N_IN, N_HID)) / 4), ("b1", rng.standard_normal(N_HID) / 4),
        ("w2", rng.standard_normal((N_HID, N_OUT)) / 4), ("b2", rng.standard_normal(N_OUT) / 4))]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
         helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
         helper.make_node("Add", ["o", "b2"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N_OUT])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "project"
    src.mkdir()
    (src / "edgekit.toml").write_text(TINY_PROJECT)
    _external_model(src / "model.onnx")
    rng = np.random.default_rng(1)
    val = rng.standard_normal((16, N_IN)).astype(np.float32)
    # calibration covers the validation inputs, so int8 differs from float by rounding, not clipping
    np.savez(src / "calib.npz", x=np.concatenate([val, rng.standard_normal((16, N_IN)).astype(np.float32)]))
    np.savez(src / "val.npz", x=val)
    return src


def _float_outputs(model: Path, xs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.stack([sess.run(["y"], {"x": x[None]})[0] for x in xs])


def _build(project: Path, out: Path):
    # --precision int8: with auto, this host's timing may ship the float model of so tiny a net, and
    # the quantized model is the one that must be rebuilt from the external weights.
    return CliRunner().invoke(main, ["build", "--target", "x86-avx2", "--config", str(project / "edgekit.toml"),
                                     "--out", str(out), "--precision", "int8", "--json"])


def _check_bundle(bundle: Path, project: Path, tmp_path: Path) -> dict:
    import onnx
    import onnxruntime as ort

    manifest = artifact.verify_bundle(bundle)  # every listed file is there with its sha256
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {artifact.MANIFEST}
    assert set(manifest["files"]) == on_disk  # and nothing in the bundle is unlisted
    assert manifest["export"]["source"] == "onnx" and manifest["artifact"] == "model.onnx"
    header = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    for t in header.graph.initializer:  # any external data the shipped model uses is in the bundle
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}["location"]
            assert loc in manifest["files"] and not Path(loc).is_absolute()

    xs = np.load(project / "val.npz")["x"]
    want = _float_outputs(project / "model.onnx", xs)  # the float source model, with its .data
    with np.load(bundle / artifact.REFERENCE) as ref:  # the FP32 references are the source's outputs
        np.testing.assert_allclose(ref["output/y"], want, rtol=1e-5, atol=1e-5)
    # The bundle stands alone: the source's weights are gone when it runs.
    shutil.move(str(project), str(tmp_path / "gone"))
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    got = np.stack([sess.run(["y"], {"x": x[None]})[0] for x in xs])
    scale = float(np.max(np.abs(want)))
    assert float(np.max(np.abs(got - want))) <= 0.05 * scale, manifest["quantization"]["precision"]
    assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) >= 0.9
    return manifest


def test_onnx_with_external_data_builds_a_complete_bundle(project: Path, tmp_path: Path) -> None:
    result = _build(project, tmp_path / "dist")
    assert result.exit_code == 0, result.output
    bundle = Path(json.loads(result.stdout)["bundle"])
    manifest = _check_bundle(bundle, project, tmp_path)
    # Under the protobuf limit the weights are folded into the one shipped file.
    files = set(manifest["files"])
    assert {f for f in files if not f.startswith("edgekit/")} == {"model.onnx", "reference.npz", "runner.py"}
    assert {"edgekit/__init__.py", "edgekit/device/runner.py", "edgekit/device/power.py",
            "edgekit/device/guard.py", "edgekit/device/metrics/top1.py", "edgekit/device/sensors/rapl.py"} <= files
    assert manifest["quantization"]["precision"] == "int8"
    assert manifest["export"]["opset"] == 17


def test_external_data_kept_past_the_protobuf_limit(project: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With the limit lowered to a few bytes the tiny model takes the >2 GB path end to end:
    export, prepare, quantize and bundle keep the weights in a .data file beside each model."""
    from edgekit import optimize

    monkeypatch.setattr(optimize, "PROTOBUF_LIMIT", 64)
    result = _build(project, tmp_path / "dist")
    assert result.exit_code == 0, result.output
    bundle = Path(json.loads(result.stdout)["bundle"])
    work_fp32 = tmp_path / "dist" / ".work" / "tiny" / "x86-avx2" / "model.fp32.onnx"
    assert (work_fp32.parent / "model.fp32.onnx.data").is_file()  # the export kept external data
    manifest = _check_bundle(bundle, project, tmp_path)
    assert "model.onnx.data" in manifest["files"] and manifest["quantization"]["precision"] == "int8"


def test_missing_external_data_is_one_clear_line(project: Path, tmp_path: Path) -> None:
    (project / "model.onnx.data").unlink()
    result = _build(project, tmp_path / "dist")
    assert result.exit_code == 4, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "model.onnx.data" in lines[0] and "external data" in lines[0]
    assert "Traceback" not in result.output
