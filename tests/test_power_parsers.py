"""Every sampler's pure parse() on captured real output (tests/power_cases/*.json) and the sensor
registry's coverage test (the package-wide Python 3.8 and standard-library checks are in
tests/test_device_package.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

import pytest

from edgekit.device import power
from sysfs_sim import SIMULATED_FAMILIES

CASES_DIR = Path(__file__).resolve().parent / "power_cases"


def load_cases() -> List[Dict[str, Any]]:
    cases = []
    for path in sorted(CASES_DIR.glob("*.json")):
        case = json.loads(path.read_text())
        case["_file"] = path.name
        cases.append(case)
    return cases


CASES = load_cases()


def _parser(case: Dict[str, Any]):
    name = case.get("parser", "parse")
    if name == "parse":
        return power.REGISTRY[case["sampler"]].parse
    if name == "counter_delta":
        return lambda raw: power.counter_delta(raw["prev"], raw["cur"], raw["max_range"])
    return getattr(power, name)


def _match(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: expected a dict, got {got!r}"
        for key, value in want.items():
            assert key in got, f"{where}: missing {key!r} in {sorted(got)}"
            _match(got[key], value, f"{where}.{key}")
    elif isinstance(want, bool) or want is None or isinstance(want, str):
        assert got == want, f"{where}: {got!r} != {want!r}"
    elif isinstance(want, (int, float)):
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), f"{where}: {got!r} != {want!r}"
    elif isinstance(want, list):
        assert sorted(got) == sorted(want), f"{where}: {got!r} != {want!r}"
    else:  # pragma: no cover
        raise AssertionError(f"{where}: unsupported expectation {want!r}")


@pytest.mark.parametrize("case", CASES, ids=[c["_file"] for c in CASES])
def test_parser_on_captured_output(case: Dict[str, Any]) -> None:
    assert case.get("source"), f"{case['_file']}: every case names where its text comes from"
    parse = _parser(case)
    if "expected_error" in case:
        with pytest.raises(ValueError, match=case["expected_error"]):
            parse(case["input"])
        return
    _match(parse(case["input"]), case["expected"], case["_file"])


def test_every_registered_sampler_has_cases_and_a_simulated_board() -> None:
    covered = {c["sampler"] for c in CASES}
    missing = set(power.REGISTRY) - covered
    assert not missing, f"registered samplers without a captured-output case in tests/power_cases: {missing}"
    unknown = covered - set(power.REGISTRY)
    assert not unknown, f"cases for samplers that are not registered: {unknown}"
    assert set(SIMULATED_FAMILIES) | {"estimate"} == set(power.REGISTRY), \
        "every sensor sampler needs a simulated board in tests/sysfs_sim.py"
    # a case that only checks an error, or a helper such as counter_delta, does not count
    parsed_ok = {c["sampler"] for c in CASES if "expected" in c and c.get("parser", "parse") == "parse"}
    assert parsed_ok == set(power.REGISTRY)


@pytest.mark.parametrize("name", list(power.REGISTRY))
def test_sampler_declares_scope_method_and_what_it_reads(name: str) -> None:
    cls = power.REGISTRY[name]
    assert cls.name == name
    assert cls.scope in power.SCOPES
    assert cls.method in power.METHODS
    assert cls.reading in ("power", "energy")
    assert cls.reads
    assert cls.is_estimate == (cls.method == "estimate")
    # parse is pure: a staticmethod, callable without an instance
    assert isinstance(cls.__dict__.get("parse") or power.Sampler.__dict__["parse"], staticmethod)


def test_tegrastats_parse_uses_the_last_line() -> None:
    text = "VDD_IN 1000mW/1000mW\nVDD_IN 2000mW/1500mW\n\n"
    assert power.TegrastatsSampler.parse(text)["power_w"] == 2.0


def test_jetson_total_prefers_the_input_rail_over_the_sum() -> None:
    total, rail, scope = power.jetson_total({"VDD_IN": 5.0, "VDD_CPU_GPU_CV": 1.0, "VDD_SOC": 1.5})
    assert (total, rail, scope) == (5.0, "VDD_IN", "board input")
    total, rail, scope = power.jetson_total({"GPU": 1.0, "CPU": 2.0})
    assert (total, rail, scope) == (3.0, None, "module rails")


def test_counter_delta_reset_without_a_known_range_counts_from_zero() -> None:
    assert power.counter_delta(5000, 100, None) == 100


def test_every_registered_sampler_has_a_row_in_the_readme_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in readme.splitlines() if line.startswith("| `")}
    missing = set(power.REGISTRY) - rows
    assert not missing, f"registered samplers without a row in README.md's sampler table: {missing}"
