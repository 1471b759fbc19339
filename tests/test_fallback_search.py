"""Issue 18: the float-set search tries several strategies and keeps the fastest passing one where
the host can time the target (the fewest float nodes where it cannot), within the budget."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from edgekit.errors import AccuracyError
from edgekit.metrics import MetricSpec
from edgekit.quantize.evaluate import AA_SUFFIX
from edgekit.quantize.fallback import aa_spread, depthwise_blocks, faster_than_fp32, noise_floor, search_float_set

NODES = [f"n{i}" for i in range(8)]  # graph order, input side first


class Fake:
    """A model whose cosine is 1 - the harm of the nodes left quantized; builds are counted."""

    def __init__(self, harm: Dict[str, float]) -> None:
        self.harm = harm
        self.built: List[frozenset] = []

    def build(self, excluded: Sequence[str]) -> Path:
        self.built.append(frozenset(excluded))
        return Path("m-" + "-".join(sorted(excluded)) + ".onnx")

    def score(self, path: Path) -> Dict[str, float]:
        excluded = set(path.stem[2:].split("-")) - {""}
        return {"value": 1.0 - sum(h for n, h in self.harm.items() if n not in excluded)}


# n6 is the one harmful node; n0..n3 are mildly harmful, together more than the threshold allows
HARM = {"n0": 0.004, "n1": 0.004, "n2": 0.004, "n3": 0.004, "n4": 0.0, "n5": 0.0, "n6": 0.02, "n7": 0.0}
RANKED = [("n6", 0.02), ("n0", 0.004), ("n1", 0.004), ("n2", 0.004), ("n3", 0.004), ("n4", 0.0), ("n5", -0.001),
          ("n7", -0.002)]
METRIC = MetricSpec("cosine", 0.99)


def _search(fake: Fake, timing=None, deadline: Optional[float] = None):
    path0 = fake.build([])
    first = (path0, fake.score(path0))
    return search_float_set(fake.build, fake.score, METRIC, RANKED, NODES, [[n] for n in NODES],
                            deadline if deadline is not None else time.monotonic() + 60, first, timing=timing)


def test_noise_floor_is_the_largest_harm_a_revert_did() -> None:
    assert noise_floor([0.02, 0.0, -0.001, -0.002]) == 0.002
    assert noise_floor([0.5, 0.1]) == 0.0


def test_without_timing_the_fewest_float_nodes_win_and_every_strategy_is_recorded() -> None:
    fake = Fake(HARM)
    res = _search(fake)
    # cosine 1 - 0.036: needs n6 and two of n0..n3 float; the ranked prefix finds 3 nodes
    assert res.strategy == "ranked prefix" and res.excluded == ["n6", "n0", "n1"]
    assert res.metric["value"] >= 0.99 and res.faster_than_fp32 is None
    tried = {s["strategy"]: s for s in res.record["strategies"]}
    assert list(tried) == ["ranked prefix", "gain above noise", "blocks by gain", "input side", "output side"]
    assert tried["gain above noise"]["float_nodes"] == 5  # n6, n0..n3 beat the 0.002 noise floor
    # untimed, a later prefix search only looks for fewer than 3 float nodes: one build each
    for label in ("input side", "output side"):
        assert not tried[label]["passed"] and tried[label]["note"] == "no passing set with fewer than 3 float nodes"
    assert frozenset(NODES[:2]) in fake.built and frozenset(NODES[:7]) not in fake.built
    assert res.record["noise_floor"] == 0.002
    assert len(set(fake.built)) == len(fake.built)  # no float set is built twice


def test_timed_searches_explore_bigger_sets_too() -> None:
    fake = Fake(HARM)
    res = _search(fake, lambda models: {k: [1.0] * 9 for k in list(models) + ["fp32"]})
    tried = {s["strategy"]: s for s in res.record["strategies"]}
    assert tried["input side"]["float_nodes"] == 7  # n0..n6
    assert tried["output side"]["float_nodes"] == 6  # n7..n2: n6 and two of n0..n3 float
    assert res.strategy == "ranked prefix"  # equal timings: the default pick (fewest float nodes) stays


def test_on_a_matching_host_a_bigger_but_faster_float_set_wins() -> None:
    """Timing says float on the input side is cheap (its convs are memory-bound, say): the input-side
    prefix (7 float nodes) runs clearly faster than the ranked prefix (3), so it ships."""
    fake = Fake(HARM)
    calls: List[List[str]] = []

    def timing(models: Dict[str, Path]) -> Dict[str, List[float]]:
        calls.append(sorted(models))
        ms = {label: 2.0 for label in models}
        ms["input side"] = 1.0
        ms["fp32"] = 3.0
        return {k: [v * (1 + 0.01 * (r % 3)) for r in range(9)] for k, v in ms.items()}

    res = _search(fake, timing)
    assert calls and "ranked prefix" in calls[0] and "input side" in calls[0]
    assert res.strategy == "input side" and len(res.excluded) == 7
    assert res.faster_than_fp32 is True and res.record["p50_ms"]["input side"] < res.record["p50_ms"]["ranked prefix"]


def test_a_noisy_speed_difference_keeps_the_default_pick() -> None:
    fake = Fake(HARM)

    def timing(models: Dict[str, Path]) -> Dict[str, List[float]]:
        # the input-side set wins some rounds and loses others: not clearly faster
        return {k: [1.0 + (0.3 if (r + len(k)) % 2 else -0.3) for r in range(10)] for k in list(models) + ["fp32"]}

    res = _search(fake, timing)
    assert res.strategy == "ranked prefix"


def test_mostly_float_but_slower_than_fp32_is_reported() -> None:
    fake = Fake(HARM)

    def timing(models: Dict[str, Path]) -> Dict[str, List[float]]:
        out = {k: [2.0] * 9 for k in models}
        out["fp32"] = [1.0] * 9
        return out

    res = _search(fake, timing)
    assert res.faster_than_fp32 is False and res.record["faster_than_fp32"] is False


def test_unreachable_is_an_accuracy_error_naming_the_best_value() -> None:
    fake = Fake({n: 0.01 for n in NODES})  # even all float: 1.0, so make the threshold unreachable instead
    with pytest.raises(AccuracyError, match=r"cosine reached at best .* threshold 1.5"):
        first = (fake.build([]), fake.score(fake.build([])))
        search_float_set(fake.build, fake.score, MetricSpec("cosine", 1.5), RANKED, NODES, [[n] for n in NODES],
                         time.monotonic() + 60, first)


def test_the_budget_is_an_error_never_a_partial_search() -> None:
    fake = Fake(HARM)
    with pytest.raises(AccuracyError, match="budget") as err:
        _search(fake, deadline=time.monotonic() - 1)
    assert err.value.details["budget"] is True


def test_depthwise_blocks_pair_a_depthwise_conv_with_its_pointwise_conv(tmp_path: Path) -> None:
    import onnx

    from test_fallback_exact import relu6_cnn

    model = onnx.load(str(relu6_cnn(tmp_path / "m.onnx")))
    names = ["stem/Conv", "b0.dw/Conv", "b0.pw/Conv", "b1.dw/Conv", "b1.pw/Conv", "b2.dw/Conv", "b2.pw/Conv",
             "gap", "fc/Gemm"]
    assert depthwise_blocks(model, names) == [["stem/Conv"], ["b0.dw/Conv", "b0.pw/Conv"],
                                              ["b1.dw/Conv", "b1.pw/Conv"], ["b2.dw/Conv", "b2.pw/Conv"],
                                              ["gap"], ["fc/Gemm"]]


def test_the_all_float_set_never_wins_the_timing() -> None:
    """The input-side prefix ends up reverting everything here (n7 is harmful too); all float is
    fastest on a host where int8 does not pay, but that is the FP32 candidate's case, not an int8
    float set."""
    harm = dict(HARM, n7=0.02)
    fake = Fake(harm)
    ranked = [("n6", 0.02), ("n7", 0.02)] + [r for r in RANKED if r[0] not in ("n6", "n7")]

    def timing(models: Dict[str, Path]) -> Dict[str, List[float]]:
        out = {}
        for k, p in models.items():
            floats = len(Path(p).stem.split("-")) - 1
            out[k] = [10.0 - floats] * 9  # more float, faster
        out["fp32"] = [1.5] * 9
        return out

    path0 = fake.build([])
    res = search_float_set(fake.build, fake.score, METRIC, ranked, NODES, [[n] for n in NODES],
                           time.monotonic() + 60, (path0, fake.score(path0)), timing=timing)
    tried = {s["strategy"]: s for s in res.record["strategies"]}
    assert tried["input side"]["float_nodes"] == len(NODES)
    assert res.strategy != "input side" and len(res.excluded) < len(NODES)
    assert res.faster_than_fp32 is False


def _rounds(ms: float, spread: float = 0.0) -> List[float]:
    return [ms * (1 + (spread if r % 2 else -spread)) for r in range(10)]


def test_faster_than_fp32_must_beat_the_a_a_control_spread() -> None:
    """The picked set runs 6% faster than FP32 in every round. With FP32's A/A twin agreeing within
    1% that is a real difference; with the twin 20% off, 6% is inside this host's noise."""
    for twin_spread, expected in ((0.005, True), (0.1, False)):
        def timing(models: Dict[str, Path], s: float = twin_spread) -> Dict[str, List[float]]:
            out = {k: _rounds(0.94) for k in models}
            out["fp32"] = _rounds(1.0)
            out["fp32" + AA_SUFFIX] = _rounds(1.0, s)
            return out

        res = _search(Fake(HARM), timing)
        assert res.faster_than_fp32 is expected, twin_spread
        assert res.record["aa_noise_floor"] == pytest.approx(noise_of(twin_spread), abs=1e-3)


def noise_of(spread: float) -> float:
    return aa_spread({"fp32": _rounds(1.0), "fp32" + AA_SUFFIX: _rounds(1.0, spread)})


def test_one_float_set_against_fp32() -> None:
    """The guard fallback's test for a mostly-float result: None where the host cannot time the target."""
    assert faster_than_fp32(None, "guarded", Path("g.onnx")) is None
    seen: List[List[str]] = []

    def timing(models: Dict[str, Path]) -> Dict[str, List[float]]:
        seen.append(sorted(models))
        return {"guarded": _rounds(0.8), "fp32": _rounds(1.0), "fp32" + AA_SUFFIX: _rounds(1.0, 0.01)}

    assert faster_than_fp32(timing, "guarded", Path("g.onnx")) is True and seen == [["guarded"]]
    slow = lambda models: {"guarded": _rounds(1.1), "fp32": _rounds(1.0)}  # noqa: E731
    assert faster_than_fp32(slow, "guarded", Path("g.onnx")) is False


def test_a_fast_stand_in_build_is_checked_by_a_real_build_of_every_passing_set() -> None:
    """The search may run on in-memory reverts (a stand-in for the quantizer); every passing set is
    then built for real and scored again, and a set whose real build misses is dropped, so what
    ships is always a real build that passed."""
    fake, real = Fake(HARM), Fake(dict(HARM, n2=0.03))  # for real, n2 hurts far more
    path0 = fake.build([])
    res = search_float_set(fake.build, fake.score, METRIC, RANKED, NODES, [[n] for n in NODES],
                           time.monotonic() + 60, (path0, fake.score(path0)), rebuild=real.build, rescore=real.score)
    # the stand-in's best (n6, n0, n1 float) leaves n2 quantized: its real build misses and is dropped
    assert res.record["real_build_missed"] == [{"strategy": "ranked prefix", "float_nodes": 3, "value": 0.966}]
    tried = {e["strategy"]: e for e in res.record["strategies"]}
    assert tried["ranked prefix"] == {"strategy": "ranked prefix", "passed": True, "float_nodes": 3,
                                      "value": 0.966, "in_memory_value": 0.992}
    assert res.strategy == "gain above noise" and sorted(res.excluded) == ["n0", "n1", "n2", "n3", "n6"]
    assert frozenset(res.excluded) in real.built and res.model_path == real.build(res.excluded)
    assert res.metric == real.score(res.model_path) and res.metric["value"] >= 0.99
    assert res.record["real_builds"] == 2


def test_the_screening_scorer_stops_a_hopeless_candidate_and_scores_a_passing_one_in_full(tmp_path: Path) -> None:
    """Scorer.screen on top-1: the samples the first scored candidate missed go first, and scoring
    stops once the misses rule the threshold out; a candidate that can pass is scored on every
    sample, with the same value as score()."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from edgekit.quantize.evaluate import Scorer

    def linear(w: np.ndarray, path: Path) -> Path:
        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], w.astype(np.float32).ravel())])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3))
    feeds = [{"x": rng.normal(size=(1, 4)).astype(np.float32)} for _ in range(40)]
    refs = [f["x"] @ w.astype(np.float32) for f in feeds]
    metric = MetricSpec("top1", 0.95)
    scorer = Scorer(metric, feeds, refs, 0, "basic")
    bad = linear(-w, tmp_path / "bad.onnx")  # argmax becomes argmin: nearly every sample missed
    first = scorer.score(bad)
    assert first["value"] < 0.5 and "screened" not in first
    again = scorer.screen(bad)
    assert again.get("screened") == 1.0 and again["value"] < 0.95 and scorer.screened == 1
    assert again["value"] >= first["value"]  # a bound: at least what the full score is
    good = linear(w, tmp_path / "good.onnx")
    full, screened = scorer.score(good), scorer.screen(good)
    assert "screened" not in screened and screened["value"] == full["value"] == 1.0
    assert scorer.screened == 1
    cosine = Scorer(MetricSpec("cosine", 0.99), feeds, refs, 0, "basic")  # not a share of rows: always in full
    cosine.score(bad)
    assert "screened" not in cosine.screen(bad)


def test_when_every_stand_in_pick_misses_for_real_the_search_reruns_with_real_builds() -> None:
    """A stand-in that disagrees with the quantizer everywhere must not turn a reachable threshold
    into "unreachable": the search raises with ``stand_in_missed``, and the engine's fallback
    searches again with real builds only."""
    import types

    import onnx

    from edgekit.quantize.fallback import accuracy_fallback

    stand_in = Fake({n: 0.0 for n in NODES} | {"n6": 0.02})  # in memory only n6 hurts
    real = Fake(HARM)  # for real n0..n3 hurt too
    ranked = [("n6", 0.02)] + [(n, 0.0) for n in NODES if n not in ("n6", "n7")] + [("n7", -0.005)]
    path0 = real.build([])
    first = (path0, real.score(path0))
    with pytest.raises(AccuracyError) as err:
        search_float_set(stand_in.build, stand_in.score, METRIC, ranked, NODES, [[n] for n in NODES],
                         time.monotonic() + 60, first, rebuild=real.build, rescore=real.score)
    assert err.value.details["stand_in_missed"] is True  # its only pick, n6 alone, misses for real

    said: List[str] = []
    ctx = types.SimpleNamespace(metric=METRIC, say=said.append, graph=onnx.ModelProto(), deadline=time.monotonic() + 60,
                                host_ok=False)
    memory = {"n6": 0.02}

    def in_memory(excluded: Sequence[str]) -> Path:  # a stand-in file: scored by what it computes
        return Path("s-" + "-".join(sorted(excluded)) + ".onnx")

    def score(path: Path) -> Dict[str, float]:
        if path.name.startswith("s-"):
            gone = set(path.stem[2:].split("-")) - {""}
            return {"value": 1.0 - sum(h for n, h in memory.items() if n not in gone)}
        return real.score(path)
    scorer = types.SimpleNamespace(score=score)
    rank = lambda names, group: ranked  # noqa: E731
    path, score, kept, note, record = accuracy_fallback(ctx, real.build, scorer, first, [(n, "Conv") for n in NODES],
                                                        rank, "all", fast_build=lambda: in_memory)
    assert note == "" and score["value"] >= 0.99
    assert [k["node"] for k in kept] == ["n6", "n0", "n1"]  # what real builds need, as without a stand-in
    assert record["search_builds"] == "quantizer"
    assert any("searching with real builds" in s for s in said)
