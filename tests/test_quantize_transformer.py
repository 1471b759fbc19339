"""The transformer path on a tiny BERT (random weights, built locally, exported with optimum-onnx):
family detection, attention fusion, dynamic int8 first, static QDQ (MatMul only) for GPU targets."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from edgekit import optimize, targets
from edgekit.metrics import MetricSpec
from edgekit.quantize import quantize_for_target

SEQ = 16


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    d = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).eval().save_pretrained(d / "hf")
    from optimum.exporters.onnx import main_export

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main_export(str(d / "hf"), output=str(d / "onnx"), task="feature-extraction", opset=17,
                    do_validation=False)
    return optimize.prepare(d / "onnx" / "model.onnx", d / "prepared.onnx", targets.load_all()["x86-avx2"])


def _feeds(n: int, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(4, SEQ))
        ids = np.zeros((1, SEQ), np.int64)
        ids[0, :length] = rng.integers(5, 200, size=length)
        mask = (ids != 0).astype(np.int64)
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((1, SEQ), np.int64)})
    return out


def test_transformer_on_cpu_target_prefers_fused_dynamic(tiny_bert: Path, tmp_path: Path) -> None:
    profile = targets.load_all()["x86-avx512-vnni"]
    result = quantize_for_target(tiny_bert, tmp_path / "w", profile, _feeds(16, 1), _feeds(12, 2),
                                 MetricSpec("cosine", 0.98, pooling="mean"))
    assert result.family == "transformer"
    assert result.precision == "int8" and result.method == "dynamic"
    assert result.preset["transformer_fusion"].get("Attention", 0) == 2  # one per layer
    import onnx

    ops = {n.op_type for n in onnx.load(str(result.model_path)).graph.node}
    assert "QAttention" in ops
    assert result.metric_after["value"] >= 0.98
    # Attention score MatMuls are listed as kept float on the unfused graph (they live inside
    # Attention once fused, so none are left over here).
    assert all(k.op_type != "MatMul" or "attention" in k.reason for k in result.kept_float)


def test_transformer_on_gpu_target_gets_matmul_only_static_qdq(tiny_bert: Path, tmp_path: Path) -> None:
    profile = targets.load_all()["jetson-orin-nano"]
    result = quantize_for_target(tiny_bert, tmp_path / "w", profile, _feeds(16, 1), _feeds(12, 2),
                                 MetricSpec("cosine", 0.9, pooling="mean"), precision="int8")
    assert result.method == "static-qdq"
    assert result.preset["op_types"] == ["MatMul", "Gemm"] and result.preset["extra_options"]["MatMulConstBOnly"]
    import onnx

    q = onnx.load(str(result.model_path))
    assert all(n.domain in ("", "ai.onnx") for n in q.graph.node)  # no CPU-only contrib ops for TensorRT
    quantized_inputs = {n.input[0] for n in q.graph.node if n.op_type == "MatMul"}
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    # Q.K^T and probs.V stay float: only weight MatMuls read a DequantizeLinear activation.
    float_mm = [n for n in q.graph.node if n.op_type == "MatMul" and producers.get(n.input[0]) != "DequantizeLinear"]
    assert len(float_mm) >= 4 and quantized_inputs
    assert sum(1 for k in result.kept_float if "attention" in k.reason) == 4
