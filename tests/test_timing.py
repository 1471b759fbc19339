"""Timing you can trust: every interleaved session has spinning off and a pinned thread count, an
A/A control runs with every comparison and its spread sets the noise floor, and a decision inside
the floor follows the profile order and says so. The decision logic is driven with injected,
controlled per-round timings (no test here asserts on a measured time)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest

from edgekit.errors import QuantizationError
from edgekit.metrics import MetricSpec
from edgekit.quantize import evaluate
from edgekit.quantize.choose import choose
from edgekit.quantize.evaluate import AA_SUFFIX, measure_latency, noise_floor
from edgekit.quantize.prune import drop_unprofitable_quantization
from edgekit.quantize.result import Candidate
from edgekit.targets import resolve

from bundles import tiny_model

METRIC = MetricSpec("cosine", 0.99)
PROFILE = resolve("x86-avx2", host_flags={"avx2", "fma"})
BASE = [10.0, 10.1, 9.9, 10.05, 9.95, 10.0, 10.1, 9.9, 10.0, 10.02, 9.98, 10.0]


def scaled(factor: float, rounds: List[float] = BASE) -> List[float]:
    return [x * factor for x in rounds]


def jittered(spread: float) -> List[float]:
    """The same model timed again: each round off by up to ``spread``, alternating sign."""
    return [x * (1 + (spread if i % 2 else -spread)) for i, x in enumerate(BASE)]


class Measure:
    def __init__(self, rounds: Dict[str, List[float]]) -> None:
        self.rounds = rounds
        self.calls: List[dict] = []

    def __call__(self, models: Dict[str, Path], feed, levels, threads: int, rounds: int = 12,
                 deadline: Optional[float] = None, control: Optional[str] = None, **_: object) -> Dict[str, List[float]]:
        self.calls.append({"models": sorted(models), "control": control, "threads": threads})
        return {k: v for k, v in self.rounds.items() if k in models or k == f"{control}{AA_SUFFIX}"}


def candidates(refused_static: str = "") -> List[Candidate]:
    return [Candidate(name="int8-static", precision="int8", method="static-qdq", metric={"value": 0.995}, passed=True,
                      refused=refused_static),
            Candidate(name="int8-dynamic", precision="int8", method="dynamic", metric={"value": 0.993}, passed=True),
            Candidate(name="fp32", precision="fp32", method="fp32", metric={"value": 1.0}, passed=True)]


def run_choose(rounds: Dict[str, List[float]], cands: Optional[List[Candidate]] = None, wanted=("int8", "fp32")):
    cands = cands or candidates()
    measure = Measure(rounds)
    latency: Dict[str, object] = {}
    chosen, reason = choose(cands, {c.name: Path(f"{c.name}.onnx") for c in cands}, list(wanted), "auto", PROFILE,
                            METRIC, True, True, latency, {"x": np.zeros(1)}, time.monotonic() + 60, measure=measure)
    return chosen, reason, latency, measure


def test_noise_floor_is_the_a_a_spread() -> None:
    assert noise_floor(BASE, BASE) == 0.0
    assert noise_floor(BASE, jittered(0.05)) == pytest.approx(0.05 / 0.95, rel=1e-6)  # 80th pct of |a/b - 1|
    assert noise_floor(scaled(1.2), BASE) == pytest.approx(0.2)  # the medians' difference when it is larger
    assert noise_floor([], BASE) == 0.0


def test_every_comparison_runs_an_a_a_control_of_fp32_with_pinned_threads() -> None:
    _, _, latency, measure = run_choose({"int8-static": scaled(0.5), "int8-dynamic": scaled(0.7), "fp32": BASE,
                                         "fp32" + AA_SUFFIX: jittered(0.01)})
    assert measure.calls == [{"models": ["fp32", "int8-dynamic", "int8-static"], "control": "fp32", "threads": 2}]
    assert latency["noise_floor"] == pytest.approx(0.0101, abs=1e-4)
    assert latency["allow_spinning"] is False and latency["threads"] == 2
    assert "fp32 against itself" in str(latency["aa_control"])


def test_a_faster_variant_inside_the_noise_floor_keeps_the_profile_order_and_says_so() -> None:
    # int8-dynamic 20% faster than int8-static in every round: a real difference on a quiet host ...
    rounds = {"int8-static": scaled(0.5), "int8-dynamic": scaled(0.4), "fp32": BASE}
    chosen, reason, latency, _ = run_choose({**rounds, "fp32" + AA_SUFFIX: jittered(0.01)})
    assert chosen.name == "int8-dynamic" and latency["decision"] == "timing"
    assert "beyond the A/A noise floor of 1.0%" in reason
    # ... but noise when the same model differs from itself by 30%
    chosen, reason, latency, _ = run_choose({**rounds, "fp32" + AA_SUFFIX: jittered(0.3)})
    assert chosen.name == "int8-static" and latency["decision"] == "profile order (inside the noise floor)"
    assert "int8-dynamic ran more than 10% faster" in reason and "within the A/A noise floor of 42.9%" in reason
    assert "the difference is noise and the profile order holds" in reason


def test_int8_slower_than_float_inside_the_noise_floor_is_noise() -> None:
    rounds = {"int8-static": scaled(1.04), "int8-dynamic": scaled(1.3), "fp32": BASE}
    chosen, reason, _, _ = run_choose({**rounds, "fp32" + AA_SUFFIX: jittered(0.005)})
    assert chosen.name == "fp32" and "beyond the A/A noise floor of 0.5%" in reason  # 4% > 0.5%: float ships
    chosen, reason, latency, _ = run_choose({**rounds, "fp32" + AA_SUFFIX: jittered(0.08)})
    assert chosen.name == "int8-static" and latency["decision"] == "profile order (inside the noise floor)"
    assert "fp32 ran faster" in reason and "within the A/A noise floor of 8.7%" in reason


def test_without_a_control_the_old_margins_apply() -> None:
    """A measurement that brings no A/A rounds (an older injected measure) has floor 0, recorded as unknown."""
    chosen, _, latency, _ = run_choose({"int8-static": scaled(1.04), "int8-dynamic": scaled(1.3), "fp32": BASE})
    assert chosen.name == "fp32" and latency["noise_floor"] is None


def test_a_refused_candidate_is_recorded_as_passing_timed_and_named_with_its_speed() -> None:
    why = "the fallback had to revert 40 of 63 quantized nodes: too little int8 left to pay for its Q/DQ"
    cands = candidates(refused_static=why)
    cands = [cands[0], cands[2]]  # int8-static (refused) and fp32
    chosen, reason, latency, measure = run_choose({"int8-static": scaled(1.07), "fp32": BASE,
                                                   "fp32" + AA_SUFFIX: jittered(0.01)}, cands)
    assert chosen.name == "fp32"
    assert measure.calls[0]["models"] == ["fp32", "int8-static"]  # the refused one was timed
    assert cands[0].passed is True and cands[0].p50_ms == pytest.approx(10.7)
    assert (f"int8-static met cosine >= 0.99 (0.9950) but was refused: {why}; measured 0.93x FP32 speed here "
            "(10.7 vs 10.0 ms)") in reason
    assert "no other candidate was clearly faster" in reason  # fp32 was the only shippable one


def test_forced_int8_that_was_refused_says_why_not_that_it_missed() -> None:
    cands = [candidates(refused_static="no node is quantized (0 QuantizeLinear or int8 nodes): this file is a "
                                       "float model, not int8")[0]]
    with pytest.raises(QuantizationError, match="int8-static meets cosine >= 0.99 \\(0.9950\\) but was refused: "
                                                "no node is quantized"):
        choose(cands, {"int8-static": Path("m.onnx")}, ["int8"], "int8", PROFILE, METRIC, True, True, {},
               {"x": np.zeros(1)}, time.monotonic() + 60, measure=Measure({}))


def test_pruning_keeps_a_group_whose_gain_is_inside_the_noise_floor() -> None:
    nodes = [("conv1", "Conv"), ("add1", "Add")]

    def run(aa: List[float]) -> dict:
        def measure(models, feed, levels, threads, rounds=7, deadline=None, control=None, **_):
            assert control == "quantized"
            return {"quantized": BASE, "reverted": scaled(0.8), "quantized" + AA_SUFFIX: aa}
        res = drop_unprofitable_quantization(lambda extra: Path("trial.onnx"), (Path("q.onnx"), {"value": 1.0}), nodes,
                                             lambda p: {"value": 1.0}, METRIC, True, {"x": np.zeros(1)}, "all", 2,
                                             time.monotonic() + 60, measure=measure)
        return res.record["groups"][0]

    quiet = run(jittered(0.01))
    assert quiet["result"] == "dropped" and quiet["noise_floor"] == pytest.approx(0.0101, abs=1e-4)
    noisy = run(jittered(0.3))
    assert noisy["result"] == "kept: float was more than 10% faster, but within the A/A noise floor of 42.9%"


def test_real_timing_sessions_spin_off_with_pinned_threads_and_an_a_a_twin(tmp_path: Path) -> None:
    tiny_model(tmp_path / "m.onnx")
    sess = evaluate.make_session(tmp_path / "m.onnx", "all", threads=3)
    opts = sess.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == 3
    feed = {"x": np.ones((1, 16), np.float32)}
    out = measure_latency({"a": tmp_path / "m.onnx", "b": tmp_path / "m.onnx"}, feed, {"a": "all", "b": "all"},
                          threads=1, rounds=4, per_round=1, control="a")
    assert sorted(out) == ["a", "a" + AA_SUFFIX, "b"] and all(len(v) == 4 for v in out.values())


def test_the_manifest_reason_leaves_the_timings_out_so_the_same_choice_gives_the_same_release() -> None:
    """Timings differ from build to build; the manifest is hashed into the release id. The same
    choice measured twice (different ms, ratios and noise floors) must give the same manifest
    reason, while the terminal's reason keeps every figure."""
    from edgekit.quantize.choose import without_measurements

    why = "the fallback had to revert 40 of 63 quantized nodes: too little int8 left to pay for its Q/DQ"
    reasons = []
    for slow, aa in ((1.07, 0.01), (1.12, 0.03)):
        cands = candidates(refused_static=why)
        cands = [cands[0], cands[2]]
        chosen, reason, _, _ = run_choose({"int8-static": scaled(slow), "fp32": BASE, "fp32" + AA_SUFFIX: jittered(aa)},
                                          cands)
        assert chosen.name == "fp32" and " ms)" in reason and "x FP32 speed here" in reason
        reasons.append(reason)
    assert reasons[0] != reasons[1]
    stable = [without_measurements(r) for r in reasons]
    assert stable[0] == stable[1]
    assert " ms" not in stable[0] and "speed here" not in stable[0] and why in stable[0]
    # every form choose() writes: slower-than-float, inside the noise floor, clearly faster
    for rounds in ({"int8-static": scaled(1.04), "int8-dynamic": scaled(1.3), "fp32": BASE, "fp32" + AA_SUFFIX: jittered(0.005)},
                   {"int8-static": scaled(1.04), "int8-dynamic": scaled(1.3), "fp32": BASE, "fp32" + AA_SUFFIX: jittered(0.08)}):
        _, reason, _, _ = run_choose(rounds)
        text = without_measurements(reason)
        assert "%" not in text.replace("more than 10%", "") and " ms" not in text, text
