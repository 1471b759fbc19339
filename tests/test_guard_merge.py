"""Where the guards meet main's features: refused candidates (named with their measured speed),
strict project-file numbers, and the hostile-input result schema."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from edgekit import config
from edgekit.errors import ConfigError
from edgekit.metrics import MetricSpec
from edgekit.quantize.choose import choose, guard_refusal
from edgekit.quantize.result import Candidate
from edgekit.report.schema import RunFileError, parse_result
from edgekit.targets import resolve

from bundles import TINY_PROJECT

FINDINGS = {"passed": False, "findings": [{"output": "output0", "check": "collapse", "slice": 5, "axis": 1,
                                           "value": 0.0, "threshold": 0.25,
                                           "message": "output0 slice 5 on axis 1 collapsed"}], "outputs": []}


def test_a_guard_refused_candidate_never_ships_and_the_reason_names_it_with_its_speed() -> None:
    """int8 meets the metric and is twice as fast, but a guard failed: FP32 ships, and the reason
    says which candidate the guards refused, on what, and how fast it was measured."""
    cands = [Candidate(name="int8-static", precision="int8", method="static-qdq", metric={"value": 0.995},
                       passed=True, refused="guard: output0 slice 5 on axis 1 collapsed", guard=FINDINGS),
             Candidate(name="fp32", precision="fp32", method="fp32", metric={"value": 1.0}, passed=True)]
    rounds = {"int8-static": [1.0] * 7, "fp32": [2.0] * 7}

    def measure(files: Dict[str, Path], *a: object, **k: object) -> Dict[str, List[float]]:
        assert set(files) == set(rounds)  # the refused candidate is timed too, so its speed can be told
        return rounds

    chosen, reason = choose(cands, {c.name: Path(f"{c.name}.onnx") for c in cands}, ["int8", "fp32"], "auto",
                            resolve("x86-avx2", host_flags={"avx2", "fma"}), MetricSpec("cosine", 0.99), True, True,
                            {}, {"x": np.zeros(1)}, time.monotonic() + 60, measure=measure)
    assert chosen.name == "fp32"
    assert "int8-static met cosine >= 0.99 (0.9950) but the guards refused it: output0 slice 5 on axis 1 collapsed" \
        in reason, reason
    assert "measured 2.00x FP32 speed here (1.0 vs 2.0 ms)" in reason, reason
    assert guard_refusal(cands[0]) == "output0 slice 5 on axis 1 collapsed"
    assert guard_refusal(cands[1]) == ""


@pytest.mark.parametrize("line,field", [
    ('max_rel_error = "0.5"', "validation.guard.max_rel_error"),
    ("min_range_kept = nan", "validation.guard.min_range_kept"),
    ('feature_axis = { output0 = "1" }', "validation.guard.feature_axis.output0"),
])
def test_guard_numbers_are_strict(tmp_path: Path, line: str, field: str) -> None:
    (tmp_path / "edgekit.toml").write_text(TINY_PROJECT + f"\n[validation.guard]\n{line}\n")
    with pytest.raises(ConfigError) as exc:
        config.load(tmp_path / "edgekit.toml")
    assert field in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


@pytest.mark.parametrize("line,field", [
    ('max_detections = "300"', "validation.detections.max_detections"),
    ('blank = "1"', "validation.sequences.blank"),
    ('reference_samples = "32"', "validation.reference_samples"),
])
def test_task_and_subset_numbers_are_strict(tmp_path: Path, line: str, field: str) -> None:
    section, _, text = line.partition(" ")  # the key
    table = {"max_detections": "[validation.detections]\n", "blank": "[validation.sequences]\n"}.get(section, "")
    body = TINY_PROJECT.replace("threshold = 0.9\n", "threshold = 0.9\n" + ("" if table else line + "\n"))
    (tmp_path / "edgekit.toml").write_text(body + (f"\n{table}{line}\n" if table else ""))
    with pytest.raises(ConfigError) as exc:
        config.load(tmp_path / "edgekit.toml")
    assert field in str(exc.value), str(exc.value)


def _result(guard: object) -> bytes:
    return json.dumps({"schema": 2, "ok": True, "metric": {"value": 1.0, "passed": True}, "guard": guard}).encode()


def test_the_result_guard_block_is_checked_like_the_rest_of_a_device_result() -> None:
    assert parse_result(_result(FINDINGS))["guard"]["findings"][0]["slice"] == 5
    bad = [({"passed": "yes"}, "guard.passed"),
           ({"passed": False, "findings": [{"message": 7}]}, "guard.findings.0.message"),
           ({"passed": False, "findings": [{"message": "m", "slice": 1.5}]}, "guard.findings.0.slice"),
           ({"passed": False, "findings": [{"message": "x" * 70000}]}, "guard.findings.0.message"),
           ([1, 2], "guard")]
    for guard, field in bad:
        with pytest.raises(RunFileError) as exc:
            parse_result(_result(guard))
        assert exc.value.field == field, (guard, str(exc.value))
