"""Labels and provider options that say what the bundle really is: TensorRT's int8 flag only on
int8 artifacts, a file without a quantized node never labelled int8, size ratios like for like.
Real builds of small onnx.helper models (real onnxruntime quantization and sessions)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.device import runner
from edgekit.quantize.presets import provider_options_for
from edgekit.quantize.result import quantized_node_count
from edgekit.targets import resolve

from bundles import TINY_PROJECT, tiny_model

JETSON = resolve("jetson-orin-nano")


@pytest.mark.parametrize("precision,int8,fp16", [("int8", True, True), ("fp16", False, True), ("fp32", False, False)])
def test_tensorrt_precision_flags_follow_the_artifact(precision: str, int8: bool, fp16: bool) -> None:
    opts = provider_options_for(JETSON, precision)["TensorrtExecutionProvider"]
    assert opts["trt_int8_enable"] is int8 and opts["trt_fp16_enable"] is fp16
    assert opts["trt_engine_cache_enable"] is True  # everything else as the profile says
    assert JETSON.runtime.provider_options["TensorrtExecutionProvider"]["trt_int8_enable"] is True  # profile untouched


def _project(tmp_path: Path, model_fn=tiny_model) -> Path:
    model_fn(tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    for name in ("calib", "val"):
        np.savez(tmp_path / f"{name}.npz", x=rng.standard_normal((32, 16)).astype(np.float32))
    (tmp_path / "edgekit.toml").write_text(TINY_PROJECT.replace("threshold = 0.9", "threshold = 0.9\nmax_samples = 32"))
    return tmp_path / "edgekit.toml"


def _build(cfg: Path, *args: str) -> dict:
    result = CliRunner().invoke(main, ["build", "--config", str(cfg), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_jetson_manifest_enables_int8_only_for_int8(tmp_path: Path, precision: str) -> None:
    built = _build(_project(tmp_path), "--target", "jetson-orin-nano", "--precision", precision)
    assert built["precision"] == precision
    manifest = json.loads((Path(built["bundle"]) / "manifest.json").read_text())
    trt = manifest["runtime"]["provider_options"]["TensorrtExecutionProvider"]
    assert trt["trt_int8_enable"] is (precision == "int8") and trt["trt_fp16_enable"] is True
    # and what the device's runner would hand to onnxruntime
    providers, options, _ = runner.provider_plan(manifest["runtime"], ["TensorrtExecutionProvider",
                                                                       "CPUExecutionProvider"], str(tmp_path))
    assert options[0]["trt_int8_enable"] == ("True" if precision == "int8" else "False")


def elementwise_model(path: Path) -> None:
    """Add + Sigmoid only: nothing the generic int8 preset quantizes (Conv/Gemm/MatMul)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    b = numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16), "b")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["h"]), helper.make_node("Sigmoid", ["h"], ["y"])], "ew",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], initializer=[b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_a_file_without_a_quantized_node_is_never_labelled_int8(tmp_path: Path) -> None:
    cfg = _project(tmp_path, elementwise_model)
    cfg.write_text(cfg.read_text().replace('metric = "top1"', 'metric = "cosine"'))
    built = _build(cfg, "--target", "x86-avx2")
    assert built["precision"] == "fp32" and built["method"] == "fp32"
    assert built["size_bytes"] == built["fp32_size_bytes"]  # the FP32 file it ships is the FP32 reference: 100%
    manifest = json.loads((Path(built["bundle"]) / "manifest.json").read_text())
    int8 = [c for c in manifest["quantization"]["candidates"] if c["precision"] == "int8"]
    assert int8 and all(c["quantized_nodes"] == 0 and c["refused"].startswith("no node is quantized") for c in int8)
    assert all(c["passed"] is True for c in int8)  # it met the threshold: recorded as such
    assert "but was refused: no node is quantized" in built["reason"]
    # forcing int8 is refused with that reason, not with "misses its threshold"
    result = CliRunner().invoke(main, ["build", "--config", str(cfg), "--target", "x86-avx2", "--precision", "int8"])
    assert result.exit_code == 5, result.output
    assert "but was refused: no node is quantized" in result.output and "misses" not in result.output


def test_quantized_node_count_sees_a_real_int8_model(tmp_path: Path) -> None:
    built = _build(_project(tmp_path), "--target", "x86-avx2", "--precision", "int8")
    assert built["precision"] == "int8"
    assert quantized_node_count(Path(built["bundle"]) / "model.onnx") > 0
    manifest = json.loads((Path(built["bundle"]) / "manifest.json").read_text())
    chosen = next(c for c in manifest["quantization"]["candidates"] if c["precision"] == "int8")
    assert chosen["quantized_nodes"] > 0 and chosen["refused"] == ""
