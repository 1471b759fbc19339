"""choose(): the profile's order, overridden only by consistent host timing. Timing is injected
(``measure=``) as per-round latencies, so each case is exact; no test here is timed."""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from edgekit.metrics import MetricSpec
from edgekit.quantize.choose import choose
from edgekit.quantize.result import Candidate
from edgekit.targets import resolve

METRIC = MetricSpec("cosine", 0.99)
PROFILE = resolve("x86-avx2", host_flags={"avx2", "fma"})


def cands() -> List[Candidate]:
    return [Candidate(name="int8-static", precision="int8", method="static-qdq", metric={"value": 0.995}, passed=True),
            Candidate(name="int8-dynamic", precision="int8", method="dynamic", metric={"value": 0.992}, passed=True),
            Candidate(name="fp32", precision="fp32", method="fp32", metric={"value": 1.0}, passed=True)]


def pick(rounds: Dict[str, List[float]], host_ok: bool = True) -> Candidate:
    def measure(files: Dict[str, Path], *a: object, **k: object) -> Dict[str, List[float]]:
        assert set(files) == set(rounds)  # every passing candidate (and fp32) is timed
        return rounds

    latency: Dict[str, object] = {}
    chosen, reason = choose(cands(), {c.name: Path(f"{c.name}.onnx") for c in cands()}, ["int8", "fp32"], "auto",
                            PROFILE, METRIC, True, host_ok, latency, {"x": np.zeros(1)}, time.monotonic() + 60,
                            measure=measure)
    assert reason.startswith(chosen.name)
    return chosen


def noisy(mean: float, n: int = 9, spread: float = 0.05, seed: int = 0) -> List[float]:
    rng = random.Random(seed)
    return [mean * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def test_int8_a_little_slower_than_fp32_in_every_round_is_not_shipped() -> None:
    fp32 = noisy(10.0, spread=0.01)
    slower = [x * 1.04 for x in fp32]  # 4% slower, round after round: under the 10% margin, still never shipped
    assert pick({"int8-static": slower, "int8-dynamic": [x * 1.06 for x in fp32], "fp32": fp32}).name == "fp32"


def test_a_tie_keeps_the_profile_order() -> None:
    # The same mean with independent noise: rounds don't agree, so int8 (the profile's first) stays.
    for seed in range(5):
        chosen = pick({"int8-static": noisy(10.0, seed=seed), "int8-dynamic": noisy(12.0, seed=seed + 50),
                       "fp32": noisy(10.0, seed=seed + 100)})
        assert chosen.name == "int8-static", seed


def test_a_clearly_faster_int8_variant_replaces_the_first_one() -> None:
    fp32 = noisy(10.0, spread=0.01)
    chosen = pick({"int8-static": [x * 0.9 for x in fp32], "int8-dynamic": [x * 0.6 for x in fp32], "fp32": fp32})
    assert chosen.name == "int8-dynamic"
    # ...but not by a small margin: the profile's order holds
    chosen = pick({"int8-static": [x * 0.9 for x in fp32], "int8-dynamic": [x * 0.86 for x in fp32], "fp32": fp32})
    assert chosen.name == "int8-static"


def test_timing_on_a_host_without_the_target_isa_is_never_used() -> None:
    fp32 = noisy(10.0, spread=0.01)
    assert pick({"int8-static": [x * 2 for x in fp32], "int8-dynamic": [x * 2 for x in fp32], "fp32": fp32},
                host_ok=False).name == "int8-static"
