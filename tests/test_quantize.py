"""quantize_for_target: presets per target, the result value, reproducibility, input checks.

Real onnxruntime sessions on tiny models; no assertion depends on timing.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import test_quantize_models as tm
from edgekit import optimize, targets
from edgekit.errors import AccuracyError, QuantizationError
from edgekit.metrics import MetricSpec
from edgekit.quantize import QuantizeResult, quantize_for_target
from edgekit.quantize.presets import model_family, presets_for, runtime_level_for

ALL_PROFILES = sorted(targets.load_all())

# What each target's int8 kernels want (see edgekit/quantize/presets.py for the sources):
# (activation, weight, reduce_range, symmetric activations) of the primary preset, and the pairs tried.
EXPECTED = {
    "x86-avx512-vnni": (("QUInt8", "QInt8", False, False), [("QUInt8", "QInt8")]),
    "x86-avx2": (("QUInt8", "QInt8", True, False), [("QUInt8", "QInt8"), ("QUInt8", "QUInt8")]),
    "raspberry-pi-4": (("QUInt8", "QInt8", False, False), [("QUInt8", "QInt8"), ("QInt8", "QInt8")]),
    "raspberry-pi-5": (("QUInt8", "QInt8", False, False), [("QUInt8", "QInt8"), ("QInt8", "QInt8")]),
    "jetson-orin-nano": (("QInt8", "QInt8", False, True), [("QInt8", "QInt8")]),
    "jetson-nano": (("QInt8", "QInt8", False, True), [("QInt8", "QInt8")]),
}


def test_every_target_has_an_expected_preset() -> None:
    assert sorted(EXPECTED) == ALL_PROFILES, "a target profile was added without a preset expectation here"


@pytest.mark.parametrize("name", ALL_PROFILES)
def test_presets_per_target(name: str) -> None:
    profile = targets.load_all()[name]
    (act, wt, rr, sym), pairs = EXPECTED[name]
    presets = presets_for(profile, "transformer")
    primary = presets[0]
    assert (primary.activation_type, primary.weight_type, primary.reduce_range, primary.symmetric_activations) == (act, wt, rr, sym)
    assert [(p.activation_type, p.weight_type) for p in presets] == pairs
    for p in presets:
        assert p.format == "QDQ" and p.per_channel and p.symmetric_weights
        assert p.op_types == ("MatMul", "Gemm")
        assert p.extra_options["MatMulConstBOnly"] is True
        # reduce_range only where u8 x s8 can saturate (VPMADDUBSW without VNNI)
        assert p.reduce_range == (name == "x86-avx2" and (p.activation_type, p.weight_type) == ("QUInt8", "QInt8"))
        kwargs = p.ort_kwargs()
        assert kwargs["extra_options"]["WeightSymmetric"] is True
    if profile.is_gpu:
        assert primary.calibration_method == "Entropy"
        assert runtime_level_for("static-qdq", profile) == profile.graph_optimization  # TensorRT reads QDQ
    else:
        assert runtime_level_for("static-qdq", profile) == "all"  # QLinear fusion (extended) + NHWC int8 conv (all)
    json.dumps(primary.summary())


def test_model_family() -> None:
    assert model_family({"Conv": 10, "Relu": 10, "Gemm": 1}) == "cnn"
    assert model_family({"MatMul": 48, "Softmax": 6, "LayerNormalization": 13}) == "transformer"
    assert model_family({"MatMul": 3, "Relu": 3}) == "generic"
    assert "Conv" in presets_for(targets.load_all()["x86-avx2"], "cnn")[0].op_types


def _cnn_inputs(n: int, seed: int):
    return tm.feeds(n, (1, 1, 8, 8), seed)


@pytest.fixture(scope="module")
def cnn_model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cnn")
    return optimize.prepare(tm.cnn(d / "cnn.onnx"), d / "cnn.prep.onnx", targets.load_all()["raspberry-pi-5"])


def test_quantize_cnn_for_arm(cnn_model: Path, tmp_path: Path) -> None:
    profile = targets.load_all()["raspberry-pi-5"]
    messages = []
    result = quantize_for_target(cnn_model, tmp_path / "work", profile, _cnn_inputs(16, 1), _cnn_inputs(16, 2),
                                 MetricSpec("cosine", 0.98), progress=messages.append)
    assert isinstance(result, QuantizeResult)
    assert result.precision == "int8" and result.method == "static-qdq"
    assert result.model_path.parent == tmp_path / "work" and result.model_path.is_file()
    assert result.metric_after["value"] >= 0.98
    assert result.preset["activation_type"] in ("QUInt8", "QInt8")
    assert result.family == "cnn"
    assert result.latency_ms["host_matches_target"] is False  # an ARM board, measured from x86
    # CNNs: static int8 (onnxruntime's advice); dynamic is not tried once static passes.
    # (fp16 is the Pi 5's last candidate: built and scored, shipped only when the board times it fastest)
    assert [c.name for c in result.candidates] == [result.candidates[0].name, "fp32", "fp16"]
    assert result.candidates[0].name.startswith("int8-static-")
    assert result.reason and messages
    # The manifest stores this; it must be JSON.
    json.dumps(result.model_dump(mode="json", exclude={"model_path"}))

    import onnx

    ops = {n.op_type for n in onnx.load(str(result.model_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def _stable(result: QuantizeResult) -> dict:
    """The result minus measurements (what the build keeps out of the manifest)."""
    data = result.model_dump(mode="json", exclude={"model_path", "latency_ms", "latency_pruning"})
    for c in data["candidates"]:
        c.pop("p50_ms")
    return data


@pytest.mark.parametrize("host", ["matches", "differs"])
def test_reproducible_bytes_and_recipe(tmp_path: Path, host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same inputs and seed -> same recipe and identical model bytes, including after fallback, also
    where this host's CPU matches the target so that timing takes part (pruning and the choice): the
    second run answers its timing comparisons from the first run's record, as a rebuild does."""
    from edgekit.build_record import TimingMemo
    from edgekit.quantize.evaluate import measure_latency

    profile = targets.load_all()["x86-avx512-vnni"]
    flags = set(profile.isa_features) | {"avx2", "fma"} if host == "matches" else {"avx2", "fma"}
    monkeypatch.setenv(targets.HOST_FLAGS_ENV, " ".join(sorted(flags)))
    monkeypatch.setenv(targets.HOST_ARCH_ENV, "x86_64")
    model = optimize.prepare(tm.mlp(tmp_path / "mlp.onnx", hot_scale=1000.0), tmp_path / "prep.onnx", profile)
    calib, val = tm.feeds(40, (1, 16), 1), tm.feeds(24, (1, 16), 2)
    memos = [TimingMemo(measure_latency)]
    runs = [quantize_for_target(model, tmp_path / "w0", profile, calib, val, MetricSpec("cosine", 0.99), seed=3,
                                measure=memos[0])]
    memos.append(TimingMemo(measure_latency, previous=memos[0].used))
    runs.append(quantize_for_target(model, tmp_path / "w1", profile, calib, val, MetricSpec("cosine", 0.99), seed=3,
                                    measure=memos[1]))
    assert runs[0].model_path.read_bytes() == runs[1].model_path.read_bytes()
    assert _stable(runs[0]) == _stable(runs[1])
    assert any(c.kept_float for c in runs[0].candidates)  # the fallback ran, and still reproduced
    assert runs[0].latency_ms["host_matches_target"] is (host == "matches")
    # timing ran in the first run (the x86 host can run the model) and was reused, never re-measured, in the second
    assert memos[0].measured >= 1 and memos[0].reused == 0
    assert memos[1].measured == 0 and memos[1].reused == memos[0].measured


def test_bad_calibration_sample_names_the_input(cnn_model: Path, tmp_path: Path) -> None:
    profile = targets.load_all()["raspberry-pi-5"]
    val = _cnn_inputs(4, 2)
    wrong_shape = _cnn_inputs(3, 1) + [{"x": np.zeros((1, 1, 7, 8), np.float32)}]
    with pytest.raises(QuantizationError) as err:
        quantize_for_target(cnn_model, tmp_path / "w", profile, wrong_shape, val, MetricSpec("cosine", 0.9))
    msg = str(err.value)
    assert "calibration sample 3" in msg and "'x'" in msg and "[1, 1, 8, 8]" in msg and "[1, 1, 7, 8]" in msg

    wrong_dtype = [{"x": np.zeros((1, 1, 8, 8), np.float64)}]
    with pytest.raises(QuantizationError, match=r"input 'x' expected dtype float32 .* got float64"):
        quantize_for_target(cnn_model, tmp_path / "w", profile, wrong_dtype, val, MetricSpec("cosine", 0.9))

    wrong_name = [{"image": np.zeros((1, 1, 8, 8), np.float32)}]
    with pytest.raises(QuantizationError, match=r"input 'x' is missing"):
        quantize_for_target(cnn_model, tmp_path / "w", profile, wrong_name, val, MetricSpec("cosine", 0.9))


def test_forced_precision(cnn_model: Path, tmp_path: Path) -> None:
    profile = targets.load_all()["raspberry-pi-5"]
    calib, val = _cnn_inputs(8, 1), _cnn_inputs(8, 2)
    fp32 = quantize_for_target(cnn_model, tmp_path / "a", profile, calib, val, MetricSpec("top1", 0.5), precision="fp32")
    assert fp32.precision == "fp32" and fp32.method == "fp32" and fp32.metric_after["value"] == 1.0
    assert fp32.model_path.read_bytes() == cnn_model.read_bytes()
    # A forced precision that cannot meet the threshold is an AccuracyError, not a silent fallback.
    with pytest.raises(AccuracyError) as err:
        quantize_for_target(cnn_model, tmp_path / "b", profile, calib, val, MetricSpec("max_abs", 1e-9),
                            precision="int8")
    assert "max_abs" in str(err.value) and "1e-09" in str(err.value)
    with pytest.raises(QuantizationError, match="unknown precision"):
        quantize_for_target(cnn_model, tmp_path / "c", profile, calib, val, MetricSpec("top1", 0.5), precision="int4")


def test_gpu_target_gets_fp16_candidate_and_symmetric_int8(tmp_path: Path) -> None:
    profile = targets.load_all()["jetson-orin-nano"]
    model = optimize.prepare(tm.mlp(tmp_path / "m.onnx"), tmp_path / "p.onnx", profile)
    result = quantize_for_target(model, tmp_path / "w", profile, tm.feeds(16, (1, 16), 1), tm.feeds(16, (1, 16), 2),
                                 MetricSpec("cosine", 0.98))
    names = {c.name for c in result.candidates}
    assert "fp16" in names and "int8-dynamic" not in names  # TensorRT imports QDQ only
    assert result.precision == "int8"  # profile order: int8 first, and it passes
    assert result.preset["symmetric_activations"] is True and result.preset["activation_type"] == "QInt8"
    assert "GPU" in result.reason
    import onnx
    from onnx import numpy_helper

    zero_points = [numpy_helper.to_array(i) for i in onnx.load(str(result.model_path)).graph.initializer
                   if i.name.endswith("zero_point")]
    assert zero_points and all((z == 0).all() for z in zero_points)  # symmetric, as TensorRT expects
    half = onnx.load(str(tmp_path / "w" / "model.fp16.onnx"))
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
