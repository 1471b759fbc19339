"""Latency pruning (issue #3 step 4): int8 groups that run slower than float on a matching host are
reverted; on a non-matching host the step is skipped with a recorded reason.

Timing is injected (``measure=``): a cost model that charges every quantized elementwise op, so no
assertion depends on this machine's real speed. The host is pinned to an AVX2-only x86_64 machine
(like the dev VM) so x86-avx2 matches and x86-avx512-vnni does not, wherever the tests run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest

import test_quantize_models as tm
from edgekit import targets
from edgekit.metrics import MetricSpec
from edgekit.quantize import quantize_for_target
from edgekit.quantize.prune import clearly_slower_quantized, drop_unprofitable_quantization, group_by_op_type

ELEMENTWISE = ("ew_add1", "ew_mul1", "ew_add2")


def conv_with_elementwise_tail(path: Path, channels: int = 8) -> Path:
    """x[1, 1, 8, 8] -> Conv -> Conv -> Add(c) -> Mul(c) -> Add(c) -> GAP -> Flatten -> Gemm.

    A CNN, so the static preset quantizes Add/Mul too: Q/DQ around three cheap elementwise ops whose
    int8 kernels cannot pay for the conversions.
    """
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    c = channels
    init = tm._init
    inits = [init("c1w", (rng.standard_normal((c, 1, 3, 3)) / 3).astype(np.float32)), init("c1b", np.zeros(c, np.float32)),
             init("c2w", (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)),
             init("c2b", np.zeros(c, np.float32)),
             init("k1", np.full((1, c, 1, 1), 0.5, np.float32)), init("k2", np.full((1, c, 1, 1), 1.5, np.float32)),
             init("fcw", (rng.standard_normal((10, c)) / np.sqrt(c)).astype(np.float32)), init("fcb", np.zeros(10, np.float32))]
    node = helper.make_node
    nodes = [node("Conv", ["x", "c1w", "c1b"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             node("Conv", ["a", "c2w", "c2b"], ["b"], name="conv2", pads=[1, 1, 1, 1]),
             node("Add", ["b", "k1"], ["e1"], name="ew_add1"),
             node("Mul", ["e1", "k2"], ["e2"], name="ew_mul1"),
             node("Add", ["e2", "k1"], ["e3"], name="ew_add2"),
             node("GlobalAveragePool", ["e3"], ["g"], name="gap"),
             node("Flatten", ["g"], ["f"], name="flatten"),
             node("Gemm", ["f", "fcw", "fcb"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgekit-tests")
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def quantized_nodes(path: Path) -> List[str]:
    """Compute nodes whose every input is a DequantizeLinear output: onnxruntime fuses exactly those
    into int8 kernels (an excluded node keeps a raw float constant input, so it runs in float)."""
    import onnx

    q = onnx.load(str(path))
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    return sorted(n.name for n in q.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                  and all(producers.get(i) == "DequantizeLinear" for i in n.input if i))


class CostModel:
    """Injected ``measure``: ms = 1 + 0.5 per quantized Add/Mul - 0.2 per quantized Conv/Gemm."""

    COST = {"ew_add1": 0.5, "ew_mul1": 0.5, "ew_add2": 0.5, "conv1": -0.2, "conv2": -0.2, "fc": -0.2}

    def __init__(self) -> None:
        self.calls: List[List[str]] = []

    def __call__(self, models: Dict[str, object], feed, levels, threads: int, rounds: int = 12, per_round: int = 3,
                 deadline=None, **_: object) -> Dict[str, List[float]]:
        self.calls.append(sorted(models))
        out = {}
        for name, path in models.items():
            ms = 1.0 + sum(self.COST.get(n, 0.0) for n in quantized_nodes(Path(path)))  # type: ignore[arg-type]
            out[name] = [ms * (1.0 + 0.01 * (r % 3)) for r in range(rounds)]  # a little jitter, no overlap
        return out


@pytest.fixture
def avx2_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targets, "host_arch", lambda: "x86_64")
    monkeypatch.setattr(targets, "host_cpu_flags", lambda: {"sse4_2", "avx", "avx2", "fma", "f16c"})


def _run(tmp_path: Path, target: str, measure: CostModel):
    model = conv_with_elementwise_tail(tmp_path / "m.onnx")
    feeds = lambda n, seed: tm.feeds(n, (1, 1, 8, 8), seed)  # noqa: E731
    return quantize_for_target(model, tmp_path / "w", targets.load_all()[target], feeds(16, 1), feeds(16, 2),
                               MetricSpec("cosine", 0.98), measure=measure)


def test_unprofitable_elementwise_group_is_reverted_on_matching_host(tmp_path: Path, avx2_host: None) -> None:
    measure = CostModel()
    result = _run(tmp_path, "x86-avx2", measure)
    assert result.latency_ms["host_matches_target"] is True
    assert result.precision == "int8" and result.method == "static-qdq"
    latency = {k.node: k for k in result.kept_float if k.reason.startswith("no latency gain")}
    assert sorted(latency) == sorted(ELEMENTWISE)
    assert latency["ew_mul1"].op_type == "Mul" and "group Mul" in latency["ew_mul1"].reason
    assert not any(k.reason.startswith("accuracy") for k in result.kept_float)
    # The shipped model: the elementwise ops run in float, the convolutions and the Gemm stay int8.
    q = quantized_nodes(result.model_path)
    assert not set(ELEMENTWISE) & set(q) and {"conv1", "conv2", "fc"} <= set(q)
    assert result.metric_after["value"] >= 0.98
    record = result.latency_pruning[result.candidates[0].name]
    groups = {g["group"]: g for g in record["groups"]}
    assert groups["Add"]["result"] == groups["Mul"]["result"] == "dropped"
    assert groups["Conv"]["result"] == "kept" and groups["Conv"]["reverted_ms"] > groups["Conv"]["quantized_ms"]
    assert groups["Add"]["quantized_ms"] > groups["Add"]["reverted_ms"] * 1.1
    assert ["quantized", "reverted"] in measure.calls
    json.dumps(result.model_dump(mode="json", exclude={"model_path"}))  # the manifest stores it


def test_pruning_is_skipped_with_a_reason_when_host_does_not_match(tmp_path: Path, avx2_host: None) -> None:
    measure = CostModel()
    result = _run(tmp_path, "x86-avx512-vnni", measure)
    assert result.latency_ms["host_matches_target"] is False
    assert result.precision == "int8"
    assert not any(k.reason.startswith("no latency gain") for k in result.kept_float)
    assert set(ELEMENTWISE) <= set(quantized_nodes(result.model_path))  # untouched by timing
    record = result.latency_pruning[result.candidates[0].name]
    assert record["skipped"].startswith("not run") and "avx512" in record["skipped"] and not record["groups"]
    assert ["quantized", "reverted"] not in measure.calls  # the choice still times candidates; pruning did not


# ---- drop_unprofitable_quantization on its own (fake builds, no onnxruntime) ----

NODES = [("a1", "Add"), ("m1", "MatMul"), ("a2", "Add"), ("m2", "MatMul")]


def _prune(times: Dict[str, float], passes: bool = True, host_ok: bool = True, nodes=NODES, jitter=None):
    """Model i is ``Path('+'.join(reverted groups))``; ``times`` maps that name to its ms."""
    built: List[Sequence[str]] = []

    def build(extra: Sequence[str]) -> Path:
        built.append(tuple(extra))
        return Path("+".join(sorted({op for n, op in nodes if n in extra})) or "none")

    def measure(models, feed, levels, threads, rounds=7, deadline=None, **_):
        return {k: [times[str(p)] * (jitter(r) if jitter and k == "reverted" else 1.0) for r in range(rounds)]
                for k, p in models.items()}

    score = lambda path: {"value": 0.999 if passes else 0.5}  # noqa: E731
    res = drop_unprofitable_quantization(build, (Path("none"), {"value": 0.995}), nodes, score,
                                         MetricSpec("cosine", 0.99), host_ok, {}, "all", 2, float("inf"),
                                         skip_reason="this host lacks avx512_vnni", measure=measure)
    return res, built


def test_groups_follow_graph_order() -> None:
    assert group_by_op_type(NODES) == [("Add", ["a1", "a2"]), ("MatMul", ["m1", "m2"])]


def test_clear_loss_drops_the_group_and_keeps_the_last_one() -> None:
    res, built = _prune({"none": 2.0, "Add": 1.0, "Add+MatMul": 0.5})
    assert [d["node"] for d in res.dropped] == ["a1", "a2"] and str(res.model_path) == "Add"
    assert built == [("a1", "a2")]  # MatMul is the last quantized group: never timed alone
    assert res.record["groups"][1]["result"] == "kept: the last quantized group"


def test_borderline_or_noisy_differences_never_drop() -> None:
    res, _ = _prune({"none": 1.0, "Add": 0.93, "MatMul": 0.95})  # 7% / 5%: under the margin
    assert not res.dropped and str(res.model_path) == "none"
    # One lucky round is not a trend: float 50% faster in 2 of 7 rounds only.
    res, _ = _prune({"none": 1.0, "Add": 1.0, "MatMul": 1.0}, jitter=lambda r: 0.5 if r < 2 else 1.0)
    assert not res.dropped
    assert clearly_slower_quantized([1.0] * 4, [0.5] * 4) is False  # too few rounds
    assert clearly_slower_quantized([0.06] * 7, [0.03] * 7) is False  # 2x, but microseconds: noise
    assert clearly_slower_quantized([1.0] * 7, [0.5] * 7) is True


def test_pruned_model_that_misses_the_metric_is_not_shipped() -> None:
    res, _ = _prune({"none": 2.0, "Add": 1.0, "MatMul": 3.0}, passes=False)
    assert not res.dropped and str(res.model_path) == "none" and res.metric == {"value": 0.995}
    assert "kept the unpruned one" in res.record["skipped"]


def test_not_run_when_host_does_not_match_or_single_group() -> None:
    res, built = _prune({"none": 2.0, "Add": 1.0}, host_ok=False)
    assert not built and not res.dropped and "avx512_vnni" in res.record["skipped"]
    res, built = _prune({"none": 2.0, "Add": 1.0}, nodes=[("a1", "Add"), ("a2", "Add")])
    assert not built and "single quantized op-type group" in res.record["skipped"]
