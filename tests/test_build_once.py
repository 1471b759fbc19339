"""Each computation happens once per build (issue #11): spies wrap the real functions during one
real build of the digits sample (exported at opset 11, so the opset upgrade really runs)."""
from __future__ import annotations

import pathlib
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from edgekit import config, data, targets

ROOT = Path(__file__).resolve().parent.parent
FP32_FILES = {"model.fp32.onnx", "model.prepared.onnx", "fp32.onnx"}
"""Every file of a build that holds the FP32 model: the export, the prepared graph, the quantizer's
base and the FP32 candidate (a copy of the base)."""


def test_feeds_opset_references_and_cpuinfo_once_per_build(digits_project: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx.version_converter
    import onnxruntime as ort

    from edgekit.build import build
    from edgekit.quantize import calibration

    project = tmp_path / "digits"
    shutil.copytree(digits_project, project, ignore=shutil.ignore_patterns("dist", ".device", "runs", "reports"))
    toml = (project / "edgekit.toml").read_text()
    (project / "edgekit.toml").write_text(re.sub(r"(?m)^opset = \d+", "opset = 11", toml))
    cfg = config.load(project / "edgekit.toml")
    assert cfg.model.opset == 11
    val, _, _ = data.load_stream_samples(cfg.validation, cfg, "validation")
    last = val[-1]["pixels"].copy()  # timing feeds only val[0]; calibration feeds are other samples

    checked: List[str] = []
    real_check = calibration.check_feeds

    def check_spy(model: Any, feeds: Any, what: str) -> None:
        checked.append(what.rsplit(": ", 1)[-1])
        real_check(model, feeds, what)

    conversions: List[int] = []
    real_convert = onnx.version_converter.convert_version

    def convert_spy(model: Any, version: int) -> Any:
        conversions.append(version)
        return real_convert(model, version)

    fp32_runs: Dict[str, int] = {}
    real_run = ort.InferenceSession.run

    def run_spy(self: Any, output_names: Any, input_feed: Dict[str, np.ndarray], run_options: Any = None) -> Any:
        name = Path(str(getattr(self, "_model_path", "") or "")).name
        feed = input_feed.get("pixels")
        if name in FP32_FILES and feed is not None and np.array_equal(feed, last):
            fp32_runs[name] = fp32_runs.get(name, 0) + 1
        return real_run(self, output_names, input_feed, run_options)

    cpuinfo_reads: List[str] = []
    real_read = pathlib.Path.read_text

    def read_spy(self: Path, *a: Any, **k: Any) -> str:
        if str(self) == "/proc/cpuinfo":
            cpuinfo_reads.append(str(self))
        return real_read(self, *a, **k)

    monkeypatch.setattr(calibration, "check_feeds", check_spy)
    monkeypatch.setattr(onnx.version_converter, "convert_version", convert_spy)
    monkeypatch.setattr(ort.InferenceSession, "run", run_spy)
    monkeypatch.setattr(pathlib.Path, "read_text", read_spy)
    targets.host_cpu.cache_clear()  # this process may have read it already: count this build's reads
    monkeypatch.setenv("EDGEKIT_HOST_ARCH", "x86_64")  # the Pi 5 target is never this host: no timing

    result = build(cfg, targets.resolve("raspberry-pi-5"), tmp_path / "dist")

    assert result.precision == "int8"  # the build really quantized (what ships is unchanged)
    assert sorted(checked) == ["calibration", "validation"]  # every feed checked against the model, once
    assert conversions == [13]  # opset 11 -> 13 once, in optimize.prepare
    # the FP32 outputs on the validation set: computed once, on the quantizer's base; the metric,
    # the guards, the FP32 candidate's score and reference.npz all use them
    assert fp32_runs == {"fp32.onnx": 1}, fp32_runs
    assert len(cpuinfo_reads) == 1  # the host's one reader (build record: model name; flags: overridable)
    with np.load(result.bundle / "reference.npz") as ref:
        assert ref["output/output"].shape[0] == len(val)


def test_host_code_defines_the_ort_level_map_and_reads_cpuinfo_in_one_place() -> None:
    """The device side (edgekit/device/) keeps its own copies: it imports nothing from the host."""
    host = [p for p in (ROOT / "edgekit").rglob("*.py") if "device" not in p.relative_to(ROOT / "edgekit").parts]
    levels = [p.name for p in host if "GraphOptimizationLevel." in p.read_text()]
    cpuinfo = [p.name for p in host if re.search(r"Path\(\"/proc/cpuinfo\"\)", p.read_text())]
    assert levels == ["optimize.py"] and cpuinfo == ["targets.py"]
