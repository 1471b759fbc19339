"""The candidate and exporter registries: defined once, everything else derived from them.

Coverage (every registered precision and exporter is in the README table and has a test that builds
through it), the schema and CLI derivations, the integer/float family in ``choose``, and a toy
precision registered from one plugin file that is built, guarded, timed and chosen in a real
digits build, then deployed and validated.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np
import pytest

from edgekit import exporters, targets
from edgekit.errors import TargetError
from edgekit.metrics import MetricSpec
from edgekit.quantize import registry
from edgekit.quantize.choose import choose
from edgekit.quantize.registry import CandidateBuilder
from edgekit.quantize.result import Candidate

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "tests" / "plugins" / "toy_candidate.py"

# precision -> a test that ships it from a real build
PRECISION_TESTS = {
    "int8": "tests/test_build.py::test_digits_bundle_is_complete_and_verified",
    "fp16": "tests/test_build_targets.py::test_every_target_builds_the_digits_sample",  # jetson-nano ships fp16
    "fp32": "tests/test_quantize.py::test_forced_precision",
}


def _readme_block(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {name}:begin[^>]*-->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert m, f"README.md has no generated {name} table"
    return m.group(1)


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Builders a test defines in-process are removed afterwards."""
    registry.ensure_loaded()
    saved = dict(CandidateBuilder.registry)
    yield
    CandidateBuilder.registry.clear()
    CandidateBuilder.registry.update(saved)


def test_every_precision_is_in_the_readme_and_tested() -> None:
    assert set(registry.names()) == set(PRECISION_TESTS)
    assert _readme_block("precisions") == registry.markdown_table()
    for node in PRECISION_TESTS.values():
        file, _, name = node.partition("::")
        assert f"def {name}(" in (ROOT / file).read_text(), node
    assert sum(1 for b in registry.builders() if b.reference) == 1  # exactly one FP32 reference


def test_every_exporter_is_in_the_readme() -> None:
    # the end-to-end test per exporter: tests/test_build_targets.py::test_every_exporter_is_registered_and_tested
    assert _readme_block("exporters") == exporters.markdown_table()
    for source in exporters.names():
        assert f"| `{source}` |" in _readme_block("exporters")


def test_schema_and_cli_choices_come_from_the_registry(tmp_path: Path, clean_registry: None) -> None:
    from edgekit.cli.build import build as build_cmd

    option = next(p for p in build_cmd.params if p.name == "precision")
    assert list(option.type.choices) == ["auto", *registry.names()]
    # a profile naming an unknown precision is one line naming the file, the field and the known names
    profile = (ROOT / "edgekit" / "profiles" / "x86-avx2.toml").read_text()
    bad = tmp_path / "x86-avx2.toml"
    bad.write_text(re.sub(r"precisions = \[.*\]", 'precisions = ["int4", "fp32"]', profile))
    with pytest.raises(TargetError, match=r"x86-avx2.toml: field 'quantization.precisions.0': unknown precision "
                                          r"'int4' \(known: int8, fp16, fp32\)"):
        targets.load_profile(bad)

    class Int4(CandidateBuilder):  # registering it is all the schema and the CLI need
        precision = "int4"
        family = "integer"
        order = 15
        description = "test"

    assert targets.load_profile(bad).quantization.precisions == ["int4", "fp32"]
    assert list(option.type.choices) == ["auto", "int8", "int4", "fp16", "fp32"]
    assert registry.is_integer("int4") and not registry.is_integer("fp16") and registry.is_reference("fp32")
    with pytest.raises(TypeError, match="already registered"):
        type("Other", (CandidateBuilder,), {"precision": "int4", "family": "float"})


def test_a_new_integer_precision_is_judged_as_integer(clean_registry: None) -> None:
    """choose() never ships an integer candidate that ran slower than float; before the registry it
    compared against the string 'int8', so an 'int4' would have been judged as float."""
    class Int4(CandidateBuilder):
        precision = "int4"
        family = "integer"
        description = "test"

    cands = [Candidate(name="int4", precision="int4", method="int4", metric={"value": 0.995}, passed=True),
             Candidate(name="fp32", precision="fp32", method="fp32", metric={"value": 1.0}, passed=True)]
    fp32 = [10.0 + 0.01 * (i % 3) for i in range(9)]
    rounds = {"int4": [x * 1.04 for x in fp32], "fp32": fp32}  # 4% slower every round: under the 10% margin

    def measure(files: Dict[str, Path], *a: object, **k: object) -> Dict[str, List[float]]:
        return rounds

    profile = targets.resolve("x86-avx2", host_flags={"avx2", "fma"})
    chosen, reason = choose(cands, {c.name: Path(c.name) for c in cands}, ["int4", "fp32"], "auto", profile,
                            MetricSpec("cosine", 0.99), True, True, {}, {"x": np.zeros(1)}, time.monotonic() + 60,
                            measure=measure)
    assert chosen.name == "fp32" and "ran slower here" in reason


def _toy_project(digits_project: Path, tmp_path: Path) -> Path:
    """The digits sample with a project profile, toy-vnni (x86-avx512-vnni's facts), that lists the toy first."""
    import shutil

    project = tmp_path / "digits"
    shutil.copytree(digits_project, project, ignore=shutil.ignore_patterns("dist", ".device", "runs", "reports"))
    profile = (ROOT / "edgekit" / "profiles" / "x86-avx512-vnni.toml").read_text()
    profile = profile.replace('name = "x86-avx512-vnni"', 'name = "toy-vnni"').replace('family = "x86"', 'family = "toy"')
    profile = profile.replace('precisions = ["int8", "fp32"]', 'precisions = ["toy-int8fc", "int8", "fp32"]')
    (project / "targets").mkdir()
    (project / "targets" / "toy-vnni.toml").write_text(profile)
    toml = (project / "edgekit.toml").read_text().replace('target = "x86-avx512-vnni"', 'target = "toy-vnni"')
    (project / "edgekit.toml").write_text(toml)
    return project


def _edgekit(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGEKIT_PLUGINS=str(TOY),
               # an x86 host without the target's VNNI (by override on any machine): candidates are
               # timed, and the profile's order decides, so the toy ships everywhere
               EDGEKIT_HOST_ARCH="x86_64", EDGEKIT_HOST_CPU_FLAGS="avx2 fma sse4_2", PYTHONPATH=os.pathsep.join(
                   [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, "-c", "from edgekit.cli import run; run()", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=900)


def test_toy_candidate_from_one_plugin_file_is_built_guarded_timed_and_chosen(digits_project: Path,
                                                                               tmp_path: Path) -> None:
    project = _toy_project(digits_project, tmp_path)
    # without the plugin the profile is bad input: one line naming the file and the field
    bare = subprocess.run([sys.executable, "-c", "from edgekit.cli import run; run()", "build", "-t", "toy-vnni"],
                          cwd=project, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "EDGEKIT_PLUGINS"})
    assert bare.returncode == 3 and "unknown precision 'toy-int8fc'" in bare.stderr and "Traceback" not in bare.stderr

    help_text = _edgekit(project, "build", "--help").stdout
    assert "toy-int8fc" in help_text  # the plugin's precision is a --precision choice

    res = _edgekit(project, "build", "-t", "toy-vnni", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["precision"] == "toy-int8fc" and out["method"] == "toy-dynamic-fc", out["reason"]
    bundle = Path(out["bundle"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    q = manifest["quantization"]
    toy = next(c for c in q["candidates"] if c["name"] == "toy-int8fc")
    # built and scored, a real int8 file, and guarded on every output
    assert toy["passed"] is True and toy["quantized_nodes"] > 0 and toy["metric"]["value"] >= 0.99
    assert toy["guard"]["passed"] is True and toy["guard"]["outputs"]
    # judged as an integer model: the device session turns off the pass that would re-quantize float nodes
    assert manifest["runtime"]["disabled_optimizers"] == ["WeightBiasQuantization"]
    assert q["preset"] == {"method": "toy-dynamic-fc", "op_types": ["MatMul", "Gemm"], "per_channel": False}
    assert "toy-int8fc: the first of the profile's precisions (toy-int8fc, int8, fp32)" in q["reason"]
    # timed beside the others, interleaved, with the A/A control (recorded in the build record)
    record = json.loads(Path(out["record"]).read_text())
    assert record["candidates_p50_ms"]["toy-int8fc"] > 0 and record["candidates_p50_ms"]["fp32"] > 0
    assert record["latency_ms"]["decision"] == "profile order"
    assert {c["precision"] for c in q["candidates"]} == {"toy-int8fc", "int8", "fp32"}  # every listed precision is built

    # and the device runs and validates it like any other artifact
    dep = _edgekit(project, "deploy", "--device", "local", "--json")
    assert dep.returncode == 0, dep.stderr
    val = _edgekit(project, "validate", "--device", "local", "--power", "none", "--duration", "1", "--json")
    assert val.returncode == 0, val.stderr + val.stdout
    result = json.loads(val.stdout)
    assert result["ok"] is True and result["metric"]["passed"] is True and result["target"] == "toy-vnni"
    assert result["release_id"] == manifest["release_id"]


def test_a_plugin_that_cannot_load_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.errors import ConfigError

    monkeypatch.setenv("EDGEKIT_PLUGINS", str(tmp_path / "missing.py"))
    with pytest.raises(ConfigError, match=r"EDGEKIT_PLUGINS: plugin file not found: .*missing.py"):
        registry.names()
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    monkeypatch.setenv("EDGEKIT_PLUGINS", f"{bad},json")
    with pytest.raises(ConfigError, match=r"importing plugin '.*bad.py' failed: RuntimeError: boom"):
        exporters.names()
    monkeypatch.setenv("EDGEKIT_PLUGINS", "no_such_module_here")
    with pytest.raises(ConfigError, match=r"importing plugin 'no_such_module_here' failed: ModuleNotFoundError"):
        registry.names()
