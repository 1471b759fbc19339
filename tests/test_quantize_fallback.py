"""Accuracy-aware fallback: ranking, reverting until the threshold holds, and clear failures."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

import test_quantize_models as tm
from edgekit import optimize, targets
from edgekit.errors import AccuracyError
from edgekit.metrics import MetricSpec
from edgekit.quantize import quantize_for_target
from edgekit.quantize.fallback import revert_until_within_tolerance


def _fake(values: Dict[int, float]):
    """build/score pair where the metric depends only on how many ranked nodes are float."""
    built: List[int] = []

    def build(excluded: Sequence[str]) -> Path:
        built.append(len(excluded))
        return Path(f"m{len(excluded)}.onnx")

    def score(path: Path) -> Dict[str, float]:
        return {"value": values[int(path.stem[1:])]}

    return build, score, built


def test_fallback_finds_the_shortest_passing_prefix() -> None:
    ranked = [f"n{i}" for i in range(10)]
    values = {k: (0.999 if k >= 6 else 0.9 + 0.01 * k) for k in range(11)}
    build, score, built = _fake(values)
    result = revert_until_within_tolerance(build, score, MetricSpec("cosine", 0.99), ranked, time.monotonic() + 60)
    assert result.excluded == ranked[:6]
    assert result.metric["value"] == 0.999
    assert built == [0, 1, 2, 4, 8, 6, 5]  # doubling, then bisection: log-many builds, always the same


def test_fallback_unreachable_is_a_clear_accuracy_error() -> None:
    ranked = ["a", "b", "c"]
    build, score, _ = _fake({0: 0.5, 1: 0.6, 2: 0.7, 3: 0.8})
    with pytest.raises(AccuracyError) as err:
        revert_until_within_tolerance(build, score, MetricSpec("top1", 0.95), ranked, time.monotonic() + 60)
    msg = str(err.value)
    assert "top1" in msg and "0.8000" in msg and "0.95" in msg
    assert not err.value.details.get("budget")


def test_fallback_budget_is_a_clear_accuracy_error() -> None:
    build, score, _ = _fake({k: 0.5 for k in range(5)})
    with pytest.raises(AccuracyError, match=r"cosine reached at best 0.5000 before the quantization time budget ran out, threshold 0.99") as err:
        revert_until_within_tolerance(build, score, MetricSpec("cosine", 0.99), ["a", "b", "c", "d"],
                                      deadline=time.monotonic() - 1, first=(Path("m0.onnx"), {"value": 0.5}))
    assert err.value.details["budget"] is True


def test_fallback_lower_is_better_metric() -> None:
    build, score, _ = _fake({0: 0.5, 1: 0.2, 2: 0.01, 3: 0.001})
    result = revert_until_within_tolerance(build, score, MetricSpec("max_abs", 0.05), ["a", "b", "c"],
                                           time.monotonic() + 60)
    assert result.excluded == ["a", "b"]


def test_sensitive_layer_is_found_and_reverted(tmp_path: Path) -> None:
    """One layer sees a huge dynamic range: quantizing it breaks the model; the fallback must rank
    it first and revert it (and little else) to meet the threshold."""
    profile = targets.load_all()["raspberry-pi-5"]
    model = optimize.prepare(tm.mlp(tmp_path / "m.onnx", hot_scale=1000.0), tmp_path / "p.onnx", profile)
    result = quantize_for_target(model, tmp_path / "w", profile, tm.feeds(32, (1, 16), 1), tm.feeds(32, (1, 16), 2),
                                 MetricSpec("cosine", 0.99))
    assert result.precision == "int8"
    assert result.metric_before["value"] < 0.99 <= result.metric_after["value"]
    reverted = [k.node for k in result.kept_float if k.reason.startswith("accuracy")]
    assert reverted and reverted[0].startswith("fc1")  # the layer fed by the huge channel
    assert len(reverted) <= 2
    import onnx

    # fc1 runs in float: it reads no DequantizeLinear output.
    q = onnx.load(str(result.model_path))
    fc1 = next(n for n in q.graph.node if n.name.startswith("fc1"))
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    assert producers.get(fc1.input[0]) != "DequantizeLinear"


def test_unreachable_threshold_with_forced_int8_raises(tmp_path: Path) -> None:
    profile = targets.load_all()["raspberry-pi-5"]
    model = optimize.prepare(tm.mlp(tmp_path / "m.onnx"), tmp_path / "p.onnx", profile)
    with pytest.raises(AccuracyError) as err:
        quantize_for_target(model, tmp_path / "w", profile, tm.feeds(16, (1, 16), 1), tm.feeds(16, (1, 16), 2),
                            MetricSpec("max_abs", 1e-7), precision="int8")
    msg = str(err.value)
    assert "max_abs" in msg and "1e-07" in msg and "best" in msg


def test_unreachable_int8_in_auto_mode_ships_fp32_and_says_why(tmp_path: Path) -> None:
    profile = targets.load_all()["raspberry-pi-5"]
    model = optimize.prepare(tm.mlp(tmp_path / "m.onnx"), tmp_path / "p.onnx", profile)
    result = quantize_for_target(model, tmp_path / "w", profile, tm.feeds(16, (1, 16), 1), tm.feeds(16, (1, 16), 2),
                                 MetricSpec("max_abs", 1e-7))
    assert result.precision == "fp32"
    int8 = [c for c in result.candidates if c.precision == "int8"]
    assert int8 and not any(c.passed for c in int8)
    assert "fp32" in result.reason


def test_budget_exhausted_raises_instead_of_settling(tmp_path: Path) -> None:
    """A partial search would make the bytes depend on the host's speed: it must be an error."""
    profile = targets.load_all()["raspberry-pi-5"]
    model = optimize.prepare(tm.mlp(tmp_path / "m.onnx", hot_scale=1000.0), tmp_path / "p.onnx", profile)
    with pytest.raises(AccuracyError, match="budget") as err:
        quantize_for_target(model, tmp_path / "w", profile, tm.feeds(16, (1, 16), 1), tm.feeds(16, (1, 16), 2),
                            MetricSpec("cosine", 0.99), budget_s=0.0)
    assert err.value.details.get("budget") is True
