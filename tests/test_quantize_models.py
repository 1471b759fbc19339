"""Tiny ONNX models for the quantization tests, built with onnx.helper (no torch, no downloads).

Kept in a module named test_quantize_* so it belongs to the quantization test set; it holds no tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np


def _init(name: str, arr: np.ndarray) -> "onnx.TensorProto":  # noqa: F821
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def mlp(path: Path, seed: int = 0, hot_scale: float = 1.0, opset: int = 17, layers: int = 4,
        width: int = 32, classes: int = 10, dynamic_batch: bool = True) -> Path:
    """x[?, 16] -> (MatMul + Add + Relu) x layers -> MatMul -> logits.

    ``hot_scale`` multiplies one input feature of layer 1 (``fc1``) and divides the matching weight
    row: the float function is unchanged in scale, but fc1's input has a huge dynamic range, so
    quantizing that input wipes out every other feature. Reverting ``fc1`` alone restores the output.
    """
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, dim = "x", 16
    for i in range(layers):
        w = (rng.standard_normal((dim, width)) / np.sqrt(dim)).astype(np.float32)
        if i == 1 and hot_scale != 1.0:
            w[0, :] /= hot_scale  # fc1's output stays normal: only its *input* range is extreme
        b = (0.1 * rng.standard_normal(width)).astype(np.float32)
        inits += [_init(f"w{i}", w), _init(f"b{i}", b)]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"], name=f"fc{i}"),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"], name=f"bias{i}"),
                  helper.make_node("Relu", [f"add{i}"], [f"h{i}"], name=f"relu{i}")]
        if i == 0 and hot_scale != 1.0:
            # One channel of h0 is huge: after it, fc1's input range is dominated by one feature.
            scale = np.ones(width, np.float32)
            scale[0] = hot_scale
            inits.append(_init("hot", scale))
            nodes.append(helper.make_node("Mul", ["h0", "hot"], ["h0s"], name="hot_mul"))
            prev = "h0s"
        else:
            prev = f"h{i}"
        dim = width
    wo = (rng.standard_normal((dim, classes)) / np.sqrt(dim)).astype(np.float32)
    inits.append(_init("wo", wo))
    nodes.append(helper.make_node("MatMul", [prev, "wo"], ["logits"], name="head"))
    batch = "batch" if dynamic_batch else 1
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgekit-tests")
    model.ir_version = 7 if opset < 15 else 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def cnn(path: Path, seed: int = 0, opset: int = 13, channels: int = 8, classes: int = 10, size: int = 8) -> Path:
    """x[1, 1, size, size] -> Conv+Relu -> Conv+Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    c = channels
    inits = [
        _init("c1w", (rng.standard_normal((c, 1, 3, 3)) / 3).astype(np.float32)),
        _init("c1b", (0.1 * rng.standard_normal(c)).astype(np.float32)),
        _init("c2w", (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)),
        _init("c2b", (0.1 * rng.standard_normal(c)).astype(np.float32)),
        _init("fcw", (rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32)),
        _init("fcb", np.zeros(classes, np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2w", "c2b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fcw", "fcb"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgekit-tests")
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def with_if(path: Path, seed: int = 0) -> Path:
    """x[1, 16] -> MatMul -> If(sum > 0: Relu branch, else: Neg branch) -> MatMul -> y.

    The If's branches are subgraphs; the quantizer must leave them alone and quantize around them.
    """
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((16, 32)) / 4).astype(np.float32)
    w2 = (rng.standard_normal((32, 8)) / 6).astype(np.float32)
    then_g = helper.make_graph([helper.make_node("Relu", ["h"], ["t_out"], name="then_relu")], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [1, 32])])
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["e_out"], name="else_neg")], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [1, 32])])
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["branch"], name="branch_if", then_branch=then_g, else_branch=else_g),
        helper.make_node("MatMul", ["branch", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "with_if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [_init("w1", w1), _init("w2", w2), _init("zero", np.array(0.0, np.float32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def feeds(n: int, shape, seed: int, name: str = "x", dtype=np.float32) -> List[Dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(dtype)} for _ in range(n)]


def profile(name: str, directory: Optional[Path] = None):
    from edgekit import targets

    return targets.load_all(directory)[name]
