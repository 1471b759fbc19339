"""Real-model shapes of trouble: control flow, old opsets, dynamic axes, external data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import test_quantize_models as tm
from edgekit import optimize, targets
from edgekit.metrics import MetricSpec
from edgekit.quantize import quantize_for_target
from edgekit.quantize.graph import has_subgraphs, name_nodes, op_counts


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_if_subgraph_quantizes_around_it(tmp_path: Path) -> None:
    profile = targets.load_all()["x86-avx512-vnni"]
    src = tm.with_if(tmp_path / "if.onnx")
    model = optimize.prepare(src, tmp_path / "p.onnx", profile)
    import onnx

    assert has_subgraphs(onnx.load(str(model)))
    # Both branches of the If are taken across these feeds (the condition is sum(x) > 0).
    calib, val = tm.feeds(24, (1, 16), 1), tm.feeds(24, (1, 16), 2)
    assert len({bool(f["x"].sum() > 0) for f in val}) == 2
    result = quantize_for_target(model, tmp_path / "w", profile, calib, val, MetricSpec("cosine", 0.98),
                                 precision="int8")
    assert result.precision == "int8"
    q = onnx.load(str(result.model_path))
    assert "If" in {n.op_type for n in q.graph.node} and "QuantizeLinear" in {n.op_type for n in q.graph.node}
    assert any(k.op_type == "If" and "subgraph" in k.reason for k in result.kept_float)
    out = _session(result.model_path).run(None, val[0])[0]
    assert out.shape == (1, 8) and np.isfinite(out).all()


def test_opset_11_model_is_upgraded_for_per_channel_qdq(tmp_path: Path) -> None:
    import onnx

    from edgekit.optimize import ai_onnx_opset

    profile = targets.load_all()["raspberry-pi-5"]  # per_channel = true
    src = tm.cnn(tmp_path / "old.onnx", opset=11)
    assert ai_onnx_opset(onnx.load(str(src))) == 11
    model = optimize.prepare(src, tmp_path / "p.onnx", profile)
    assert ai_onnx_opset(onnx.load(str(model))) >= 13
    feeds = lambda n, s: tm.feeds(n, (1, 1, 8, 8), s)  # noqa: E731
    result = quantize_for_target(model, tmp_path / "w", profile, feeds(16, 1), feeds(16, 2), MetricSpec("cosine", 0.98))
    assert result.precision == "int8" and result.preset["per_channel"] is True
    q = onnx.load(str(result.model_path))
    assert ai_onnx_opset(q) >= 13
    # per-channel: the conv weights' DequantizeLinear carries a vector of scales
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    dq = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
          and inits[n.input[0]].ndim == 4]
    assert dq and all(inits[n.input[1]].size > 1 for n in dq)


def test_opset_11_model_handed_straight_to_quantize(tmp_path: Path) -> None:
    """quantize_for_target upgrades by itself too, for models that skipped prepare."""
    profile = targets.load_all()["raspberry-pi-5"]
    src = tm.mlp(tmp_path / "old.onnx", opset=11)
    result = quantize_for_target(src, tmp_path / "w", profile, tm.feeds(16, (1, 16), 1), tm.feeds(16, (1, 16), 2),
                                 MetricSpec("cosine", 0.98))
    import onnx

    from edgekit.optimize import ai_onnx_opset

    assert ai_onnx_opset(onnx.load(str(result.model_path))) >= 13


def test_dynamic_axes_survive_quantization(tmp_path: Path) -> None:
    profile = targets.load_all()["raspberry-pi-5"]
    model = optimize.prepare(tm.mlp(tmp_path / "m.onnx"), tmp_path / "p.onnx", profile)
    result = quantize_for_target(model, tmp_path / "w", profile, tm.feeds(16, (1, 16), 1), tm.feeds(16, (1, 16), 2),
                                 MetricSpec("cosine", 0.98), precision="int8")
    out = _session(result.model_path).run(None, {"x": np.ones((5, 16), np.float32)})[0]
    assert out.shape == (5, 10)


def test_external_data_past_the_protobuf_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Models over 2 GB are written with external data. We lower the limit instead of allocating 2 GB."""
    import onnx

    from edgekit import optimize as opt

    monkeypatch.setattr(opt, "PROTOBUF_LIMIT", 1000)
    model = onnx.load(str(tm.mlp(tmp_path / "m.onnx", width=64)))
    out = opt.save_model(model, tmp_path / "big" / "model.onnx")
    data = out.parent / "model.onnx.data"
    assert data.is_file() and out.stat().st_size < data.stat().st_size
    assert opt.is_large(out)
    # It loads and runs with its weights beside it, and survives prepare.
    x = {"x": np.ones((1, 16), np.float32)}
    ref = _session(tmp_path / "m.onnx").run(None, x)[0]
    np.testing.assert_allclose(_session(out).run(None, x)[0], ref, rtol=1e-6)
    prepared = opt.prepare(out, tmp_path / "prep" / "model.onnx", targets.load_all()["x86-avx2"])
    assert (prepared.parent / "model.onnx.data").is_file()
    np.testing.assert_allclose(_session(prepared).run(None, x)[0], ref, rtol=1e-5, atol=1e-6)


def test_name_nodes_is_stable() -> None:
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["y"], ["z"], name="Neg_1")],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    m1, m2 = helper.make_model(g), helper.make_model(g)
    assert name_nodes(m1) and name_nodes(m2)
    assert [n.name for n in m1.graph.node] == [n.name for n in m2.graph.node] == ["Relu_0", "Neg_1"]
    assert not name_nodes(m1)
    assert op_counts(m1) == {"Relu": 1, "Neg": 1}
    onnx.checker.check_model(m1)


def _with_loop(path: Path, seed: int = 0) -> Path:
    """x[1, 16] -> MatMul -> Loop(3 times: h = tanh(h @ w_loop), w_loop from the outer scope) -> MatMul -> y."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    init = lambda name, a: numpy_helper.from_array(a, name)  # noqa: E731
    w1 = (rng.standard_normal((16, 32)) / 4).astype(np.float32)
    wl = (rng.standard_normal((32, 32)) / 6).astype(np.float32)
    w2 = (rng.standard_normal((32, 8)) / 6).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="loop_cond"),
         helper.make_node("MatMul", ["v_in", "w_loop"], ["mm"], name="loop_fc"),
         helper.make_node("Tanh", ["mm"], ["v_out"], name="loop_tanh")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 32])])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Loop", ["trips", "true", "h"], ["looped"], name="loop", body=body),
             helper.make_node("MatMul", ["looped", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(
        nodes, "with_loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [init("w1", w1), init("w_loop", wl), init("w2", w2), init("trips", np.array(3, np.int64)),
         init("true", np.array(True))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_loop_subgraph_quantizes_around_it(tmp_path: Path) -> None:
    import onnx

    profile = targets.load_all()["x86-avx512-vnni"]
    src = _with_loop(tmp_path / "loop.onnx")
    model = optimize.prepare(src, tmp_path / "p.onnx", profile)
    assert has_subgraphs(onnx.load(str(model)))
    calib, val = tm.feeds(24, (1, 16), 1), tm.feeds(24, (1, 16), 2)
    result = quantize_for_target(model, tmp_path / "w", profile, calib, val, MetricSpec("cosine", 0.98),
                                 precision="int8")
    assert result.precision == "int8"
    q = onnx.load(str(result.model_path))
    ops = {n.op_type for n in q.graph.node}
    assert "Loop" in ops and "QuantizeLinear" in ops
    assert any(k.op_type == "Loop" and "subgraph" in k.reason for k in result.kept_float)
    from edgekit.quantize.evaluate import make_session

    chosen = next(c for c in result.candidates if c.name.startswith("int8") and c.passed)
    # at the level the build scored at (exact int8 arithmetic when this host's kernels are not the target's)
    ref, quant = _session(src), make_session(result.model_path, chosen.scored_at or "all")
    cos = []
    for f in val:  # the metric, recomputed here against the unprepared float source
        a, b = ref.run(None, f)[0].ravel(), quant.run(None, f)[0].ravel()
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    assert np.mean(cos) >= 0.98 and np.mean(cos) == pytest.approx(result.metric_after["value"], abs=1e-4)


def test_opset_21_model_quantizes_and_keeps_its_opset(tmp_path: Path) -> None:
    import onnx

    from edgekit.optimize import ai_onnx_opset

    profile = targets.load_all()["raspberry-pi-5"]
    src = tm.mlp(tmp_path / "new.onnx", opset=21)
    assert ai_onnx_opset(onnx.load(str(src))) == 21
    result = quantize_for_target(src, tmp_path / "w", profile, tm.feeds(16, (1, 16), 1), tm.feeds(16, (1, 16), 2),
                                 MetricSpec("cosine", 0.98), precision="int8")
    q = onnx.load(str(result.model_path))
    assert result.precision == "int8" and ai_onnx_opset(q) == 21
    assert "QuantizeLinear" in {n.op_type for n in q.graph.node}
    out = _session(result.model_path).run(None, tm.feeds(1, (1, 16), 3)[0])[0]
    assert np.isfinite(out).all()
