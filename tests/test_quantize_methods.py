"""Issue #14 methods: cross-layer equalization on the ONNX graph, NNCF PTQ as a second backend, and
the methods as build candidates (recorded with their recipes, chosen by measurement)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

import test_quantize_models as tm
from edgekit import optimize, targets
from edgekit.errors import QuantizationError
from edgekit.metrics import MetricSpec
from edgekit.quantize import quantize_for_target
from edgekit.quantize.methods import cle, nncf_backend


def _mobile_block(path: Path, act: str = "Relu", spread: float = 2.0, seed: int = 0) -> Path:
    """conv(3->16) + act -> depthwise(16) + act -> conv(16->8) -> GAP -> Gemm, with conv1's output
    channels scaled over 10**+-spread and the depthwise conv compensating: the float function of a
    well-scaled net, the per-channel ranges of a badly scaled one (what CLE undoes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    s = (10.0 ** rng.uniform(-spread, spread, 16)).astype(np.float32)
    w1 = (rng.standard_normal((16, 3, 3, 3)) / 5).astype(np.float32) * s[:, None, None, None]
    b1 = (0.1 * rng.standard_normal(16)).astype(np.float32) * s
    wd = (rng.standard_normal((16, 1, 3, 3)) / 3).astype(np.float32) / s[:, None, None, None]
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w1", w1), ("b1", b1), ("wd", wd), ("bd", (0.1 * rng.standard_normal(16)).astype(np.float32)),
        ("w2", (rng.standard_normal((8, 16, 1, 1)) / 4).astype(np.float32)), ("b2", np.zeros(8, np.float32)),
        ("fw", (rng.standard_normal((10, 8)) / 3).astype(np.float32)), ("fb", np.zeros(10, np.float32)),
        ("lo", np.array(0.0, np.float32)), ("hi", np.array(6.0, np.float32))]]
    extra = ["lo", "hi"] if act == "Clip" else []
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(act, ["c1"] + extra, ["a1"], name="act1"),
        helper.make_node("Conv", ["a1", "wd", "bd"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=16),
        helper.make_node(act, ["c2"] + extra, ["a2"], name="act2"),
        helper.make_node("Conv", ["a2", "w2", "b2"], ["c3"], name="pw"),
        helper.make_node("GlobalAveragePool", ["c3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "mobile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _feeds(n: int, seed: int) -> List[Dict[str, np.ndarray]]:
    return tm.feeds(n, (1, 3, 16, 16), seed)


def _run(path_or_model, feeds) -> np.ndarray:
    import onnxruntime as ort

    src = path_or_model.SerializeToString() if hasattr(path_or_model, "SerializeToString") else str(path_or_model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def _weights(model) -> Dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_cle_keeps_the_float_function_and_evens_channel_ranges(tmp_path: Path) -> None:
    import onnx

    src = onnx.load(str(_mobile_block(tmp_path / "m.onnx")))
    eq, report = cle.equalize(src)
    feeds = _feeds(8, 1)
    before, after = _run(src, feeds), _run(eq, feeds)
    assert np.allclose(before, after, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    # conv1 -> dw and dw -> pw are equalizable; pw -> GAP is not a conv pair
    assert report.pairs == 2 and report.relu6_replaced == 0
    r0, r1 = (np.abs(_weights(m)["w1"]).reshape(16, -1).max(1) for m in (src, eq))
    assert r0.max() / r0.min() > 100  # the built-in spread
    assert r1.max() / r1.min() < r0.max() / r0.min() / 20
    assert report.range_ratio_after < report.range_ratio_before
    assert _weights(src)["w1"].tobytes() != _weights(eq)["w1"].tobytes()
    assert np.array_equal(_weights(onnx.load(str(tmp_path / "m.onnx")))["w1"], _weights(src)["w1"])  # input untouched


def test_cle_leaves_relu6_pairs_alone_unless_asked(tmp_path: Path) -> None:
    import onnx

    src = onnx.load(str(_mobile_block(tmp_path / "m.onnx", act="Clip")))
    same, report = cle.equalize(src, relu6_to_relu=False)
    assert report.pairs == 0 and report.skipped["relu6 (not homogeneous)"] == 2
    assert same.SerializeToString() == src.SerializeToString()
    changed, report = cle.equalize(src, relu6_to_relu=True)
    assert report.pairs == 2 and report.relu6_replaced == 2
    assert [n.op_type for n in changed.graph.node].count("Clip") == 0
    assert [n.op_type for n in changed.graph.node].count("Relu") == 2


def test_cle_improves_per_tensor_int8_on_a_badly_scaled_net(tmp_path: Path) -> None:
    """The point of CLE, measured: per-tensor static int8 of the equalized model is closer to FP32."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    src = _mobile_block(tmp_path / "m.onnx")
    eq = tmp_path / "eq.onnx"
    cle.equalize_file(src, eq)
    calib, val = _feeds(32, 1), _feeds(32, 2)
    ref = _run(src, val)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    errors = []
    for model in (src, eq):
        out = tmp_path / f"q-{model.stem}.onnx"
        quantize_static(str(model), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=False)
        errors.append(float(np.abs(_run(out, val) - ref).mean() / np.abs(ref).mean()))
    assert errors[1] < errors[0] / 2, errors


needs_nncf = pytest.mark.skipif(not nncf_backend.available() and not __import__("os").environ.get("CI"),
                                reason="nncf is not installed (pip install 'edgekit[nncf]')")


@needs_nncf
def test_nncf_backend_writes_standard_qdq_close_to_fp32(tmp_path: Path) -> None:
    import onnx

    src = _mobile_block(tmp_path / "m.onnx", spread=0.3)
    out = nncf_backend.build_nncf(src, tmp_path / "q.onnx", _feeds(16, 1), nncf_backend.recipe(subset_size=16))
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 6
    assert not any(o.startswith("NNCF") for o in ops)
    val = _feeds(16, 2)
    a, b = _run(src, val), _run(out, val)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.mean() > 0.98 and not np.array_equal(a, b)


def test_nncf_missing_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)  # what an environment without the extra looks like
    assert nncf_backend.available() is False
    src = _mobile_block(tmp_path / "m.onnx")
    with pytest.raises(QuantizationError, match=r"pip install 'edgekit\[nncf\]'"):
        nncf_backend.build_nncf(src, tmp_path / "q.onnx", _feeds(4, 1), nncf_backend.recipe())


def test_methods_are_build_candidates_when_plain_int8_needs_rescue(tmp_path: Path) -> None:
    """A badly scaled mobile block on x86-avx2, with a threshold the profile's static int8 misses at
    full int8: the methods are built, scored, recorded with their recipes, and compete."""
    profile = targets.load_all()["x86-avx2"]
    model = optimize.prepare(_mobile_block(tmp_path / "m.onnx", spread=2.5), tmp_path / "p.onnx", profile)
    result = quantize_for_target(model, tmp_path / "w", profile, _feeds(32, 1), _feeds(24, 2),
                                 MetricSpec("cosine", 0.9995), budget_s=600)
    by_name = {c.name: c for c in result.candidates}
    assert "int8-cle" in by_name and "int8-per-tensor" in by_name and "int8-qoperator" in by_name
    cle_c = by_name["int8-cle"]
    assert cle_c.method == "static-qdq+cle" and cle_c.metric is not None and cle_c.quantized_nodes
    assert cle_c.passed == (cle_c.metric["value"] >= 0.9995)
    assert by_name["int8-qoperator"].method == "static-qoperator"
    if nncf_backend.available():
        assert by_name["int8-nncf"].method == "static-qdq-nncf"
    json.dumps(result.model_dump(mode="json", exclude={"model_path"}))
    if result.method == "static-qdq+cle":
        assert result.preset["equalization"]["pairs"] == 2


def _pi5_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, flags: str, measure=None):
    monkeypatch.setenv(targets.HOST_ARCH_ENV, arch)
    monkeypatch.setenv(targets.HOST_FLAGS_ENV, flags)
    profile = targets.load_all()["raspberry-pi-5"]
    tmp_path.mkdir(parents=True, exist_ok=True)
    model = optimize.prepare(_mobile_block(tmp_path / "m.onnx", spread=0.3), tmp_path / "p.onnx", profile)
    return quantize_for_target(model, tmp_path / "w", profile, _feeds(16, 1), _feeds(16, 2),
                               MetricSpec("cosine", 0.99), measure=measure)


def test_fp16_on_the_pi5_is_a_scored_candidate_never_assumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built and scored from an x86 host, but the profile order (int8, fp32, fp16) keeps it from
    shipping unless a host with the board's CPU times it faster."""
    result = _pi5_build(tmp_path, monkeypatch, "x86_64", "avx2 fma")
    fp16 = next(c for c in result.candidates if c.name == "fp16")
    assert fp16.metric is not None and fp16.passed and fp16.metric["value"] > 0.999
    assert result.precision == "int8" and "profile order" in result.reason


def test_fp16_on_the_pi5_ships_when_the_board_times_it_fastest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a host with the board's ISA the choice is timing: given rounds where fp16 is clearly the
    fastest (an injected measurement: this host is not an A76), fp16 ships; given rounds where it
    is slow, it does not."""
    def timing(fast: str):
        def measure(models, feed, levels, threads, deadline=None, control=None, **kw):
            speed = {"fp16": 1.0 if fast == "fp16" else 9.0, "fp32": 6.0}
            out = {n: [speed.get(n, 4.0)] * 12 for n in models}
            if control:
                out[control + " (A/A)"] = list(out[control])
            return out
        return measure

    flags = "asimd asimddp asimdhp fphp"
    fast = _pi5_build(tmp_path / "a", monkeypatch, "aarch64", flags, measure=timing("fp16"))
    assert fast.precision == "fp16" and fast.method == "fp16"
    slow = _pi5_build(tmp_path / "b", monkeypatch, "aarch64", flags, measure=timing("int8"))
    assert slow.precision == "int8"
