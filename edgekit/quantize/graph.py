"""Read-only facts about an ONNX graph that the quantizer needs, and small deterministic fix-ups."""
from __future__ import annotations

from collections import Counter
from typing import Dict, Iterator, List, Sequence, Set

SUBGRAPH_OPS = ("If", "Loop", "Scan")


def iter_nodes(graph: "onnx.GraphProto", depth: int = 0) -> Iterator[tuple]:  # type: ignore[name-defined]  # noqa: F821
    """(node, depth) for every node, descending into If/Loop/Scan bodies."""
    import onnx

    for node in graph.node:
        yield node, depth
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g, depth + 1)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_nodes(g, depth + 1)


def op_counts(model: "onnx.ModelProto") -> Dict[str, int]:  # type: ignore[name-defined]  # noqa: F821
    return dict(Counter(n.op_type for n, _ in iter_nodes(model.graph)))


def has_subgraphs(model: "onnx.ModelProto") -> bool:  # type: ignore[name-defined]  # noqa: F821
    return any(n.op_type in SUBGRAPH_OPS for n in model.graph.node)


def name_nodes(model: "onnx.ModelProto") -> bool:  # type: ignore[name-defined]  # noqa: F821
    """Give unnamed nodes stable names (``nodes_to_exclude`` works by name). True if any changed."""
    taken: Set[str] = {n.name for n, _ in iter_nodes(model.graph) if n.name}
    changed = False
    for i, (node, depth) in enumerate(iter_nodes(model.graph)):
        if node.name:
            continue
        base = f"{node.op_type}_{'sub' + str(depth) + '_' if depth else ''}{i}"
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        node.name = name
        taken.add(name)
        changed = True
    return changed


def initializer_names(model: "onnx.ModelProto") -> Set[str]:  # type: ignore[name-defined]  # noqa: F821
    return {i.name for i in model.graph.initializer}


EXACT_IN_INT8 = frozenset({"Relu", "Clip", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice",
                           "Split", "Pad", "Resize", "MaxPool", "Gather", "GatherElements", "TopK"})
"""Ops that move or clamp int8 values without new rounding (Relu/Clip fold into the Q range), so
reverting them alone to float cannot help accuracy: the fallback never spends a build on them."""


def activation_matmuls(model: "onnx.ModelProto") -> List[str]:  # type: ignore[name-defined]  # noqa: F821
    """Names of top-level MatMuls whose B is not a constant (attention Q.K^T and probs.V).

    onnxruntime honours ``MatMulConstBOnly`` only in QOperator mode (``QOpMatMul.should_quantize``);
    its QDQ MatMul quantizer ignores it. So for QDQ we exclude these nodes by name ourselves.
    """
    consts = initializer_names(model) | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and (len(n.input) < 2 or n.input[1] not in consts)]


def quantizable_nodes(model: "onnx.ModelProto", op_types: Sequence[str], const_b_only: bool = False) -> List["onnx.NodeProto"]:  # type: ignore[name-defined]  # noqa: F821
    """Top-level nodes whose int8 version rounds values (the fallback's candidates), in graph order.

    Static QDQ quantizes the main graph only: If/Loop/Scan bodies stay float and the quantizer puts
    Q/DQ around the control-flow node's inputs and outputs at most.
    """
    skip = set(activation_matmuls(model)) if const_b_only else set()
    out = []
    for node in model.graph.node:
        if node.op_type not in op_types or node.op_type in EXACT_IN_INT8 or node.name in skip:
            continue
        out.append(node)
    return out
