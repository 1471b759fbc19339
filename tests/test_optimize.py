"""optimize.prepare: pre-processing, offline graph optimization, determinism, and no litter."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import test_quantize_models as tm
from edgekit import optimize, targets
from edgekit.errors import QuantizationError


def _run(path: Path, feed):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.mark.parametrize("name", sorted(targets.load_all()))
def test_prepare_keeps_the_function_for_every_target(name: str, tmp_path: Path) -> None:
    profile = targets.load_all()[name]
    src = tm.cnn(tmp_path / "cnn.onnx")
    out = optimize.prepare(src, tmp_path / "out" / "prep.onnx", profile)
    assert out == (tmp_path / "out" / "prep.onnx").resolve() and out.is_file()
    x = {"x": np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(_run(out, x), _run(src, x), rtol=1e-4, atol=1e-5)


def test_prepare_is_deterministic(tmp_path: Path) -> None:
    profile = targets.load_all()["x86-avx2"]
    src = tm.mlp(tmp_path / "m.onnx")
    a = optimize.prepare(src, tmp_path / "a.onnx", profile).read_bytes()
    b = optimize.prepare(src, tmp_path / "b.onnx", profile).read_bytes()
    assert a == b


def test_prepare_folds_and_infers_shapes(tmp_path: Path) -> None:
    import onnx

    out = optimize.prepare(tm.mlp(tmp_path / "m.onnx"), tmp_path / "p.onnx", targets.load_all()["x86-avx2"])
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert "Gemm" in ops and "Add" not in ops  # basic level: MatMul + Add -> Gemm
    assert len(model.graph.value_info) > 0  # shapes for the quantizer


def test_offline_level_is_capped_at_basic(tmp_path: Path) -> None:
    """extended/all would bake CPU-only contrib ops and host-specific layouts into a shipped file."""
    import onnx

    profile = targets.load_all()["x86-avx2"].model_copy(update={"graph_optimization": "all"})
    out = optimize.prepare(tm.cnn(tmp_path / "c.onnx"), tmp_path / "p.onnx", profile)
    domains = {n.domain for n in onnx.load(str(out)).graph.node}
    assert domains <= {"", "ai.onnx"}


def test_disabled_level_skips_optimization(tmp_path: Path) -> None:
    import onnx

    profile = targets.load_all()["x86-avx2"].model_copy(update={"graph_optimization": "disabled"})
    out = optimize.prepare(tm.mlp(tmp_path / "m.onnx"), tmp_path / "p.onnx", profile)
    assert "Add" in [n.op_type for n in onnx.load(str(out)).graph.node]


def test_symbolic_shape_failure_falls_back_and_leaves_no_litter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Symbolic shape inference gives up on exported transformers and then dumps
    sym_shape_infer_temp.onnx into the working directory; prepare must fall back to ONNX shape
    inference and keep the user's directory clean."""
    from onnxruntime.tools import symbolic_shape_infer

    def give_up(*args, **kwargs):
        import onnx

        onnx.save_model(onnx.ModelProto(), "sym_shape_infer_temp.onnx")  # what onnxruntime does
        raise Exception("Incomplete symbolic shape inference")

    monkeypatch.setattr(symbolic_shape_infer.SymbolicShapeInference, "infer_shapes", staticmethod(give_up))
    cwd = tmp_path / "project"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = optimize.prepare(tm.mlp(tmp_path / "m.onnx"), Path("p.onnx"), targets.load_all()["x86-avx2"])
    assert out.is_file() and sorted(os.listdir(cwd)) == ["p.onnx"]


def test_prepare_rejects_a_non_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(QuantizationError, match="not a readable ONNX model"):
        optimize.prepare(bad, tmp_path / "p.onnx", targets.load_all()["x86-avx2"])


