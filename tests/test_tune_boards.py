"""``--tune-on`` an emulated board (tools/boards): refused as a timing source, and the whole mechanism
end to end through the option meant for tests: upload over real SSH to an aarch64 userland, the
candidates scored and guarded by onnxruntime's ARM kernels, timed interleaved, chosen, recorded.
Emulated latency is qemu's, so nothing here asserts on its values."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest
from click.testing import CliRunner

from edgekit.cli import main

from test_boards import _project, boards  # noqa: F401  (the fixture: boards up, or fail under CI)


@pytest.fixture(scope="module")
def cfg(boards: Dict[str, Any], digits_project: Path, tmp_path_factory: pytest.TempPathFactory) -> str:  # noqa: F811
    return _project(digits_project, tmp_path_factory.mktemp("tune-emu") / "digits", boards, max_samples=64)


def test_emulated_board_is_refused_as_a_timing_source(cfg: str) -> None:
    res = CliRunner().invoke(main, ["build", "--config", cfg, "--target", "raspberry-pi-5", "--tune-on", "emu-pi5"])
    assert res.exit_code == 8, res.output
    assert "device 'emu-pi5' is emulated (qemu-user, QEMU_CPU=cortex-a76): its latency is the emulator's" in res.output
    assert "--tune-allow-emulated" in res.output and "Traceback" not in res.output


def test_tuning_end_to_end_on_emu_pi5_through_the_test_option(cfg: str) -> None:
    res = CliRunner().invoke(main, ["build", "--config", cfg, "--target", "raspberry-pi-5", "--tune-on", "emu-pi5",
                                    "--tune-allow-emulated", "--tune-budget", "10"])
    assert res.exit_code == 0, res.output
    assert "because --tune-allow-emulated was given" in res.output
    assert "emu-pi5: [1/" in res.output and "EMULATED" in res.output
    bundle = Path(cfg).parent / "dist" / "digits" / "raspberry-pi-5"
    m = json.loads((bundle / "manifest.json").read_text())
    t = m["tuning"]
    assert t["device"] == "emu-pi5" and t["facts"]["emulated"] is True and t["facts"]["machine"] == "aarch64"
    assert "asimddp" in t["facts"]["cpu_features"] and t["facts"]["runtime_version"] == "1.32.0"
    names = {c["name"] for c in t["candidates"]}
    assert "fp32" in names and any(n.startswith("int8-static") for n in names)
    for c in t["candidates"]:  # scored by the ARM kernels against the host's FP32 reference
        assert c["metric_passed"] is True and c["provider"] == "CPUExecutionProvider"
        assert c["guard"] == (None if c["name"] == "fp32" else "pass") and 0 < c["p50_ms"] <= c["p99_ms"]
    assert t["chosen"] in names and m["quantization"]["precision"] == next(
        c["precision"] for c in t["candidates"] if c["name"] == t["chosen"])
