"""edgekit doctor: probe parsers on captured real outputs, the checks, and doctor end to end."""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from click.testing import CliRunner

from bundles import make_tiny_bundle
from edgekit.cli import main
from edgekit.config import load
from edgekit.device import probes as P
from edgekit.doctor import Check, doctor_device, evaluate
from edgekit.errors import DeviceError
from edgekit.targets import host_cpu_flags, resolve
from test_runner_support import PY, lay_out_release, write_project

CASES_DIR = Path(__file__).resolve().parent / "probe_cases"
CASES = sorted(CASES_DIR.glob("*.json"))


def _case(name: str) -> Dict[str, Any]:
    return json.loads((CASES_DIR / name).read_text())


def _parsed(name: str) -> Any:
    c = _case(name)
    return P.PROBES[c["probe"]].parse(c["input"])


def _subset(expected: Any, got: Any, where: str = "") -> List[str]:
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [f"{where or 'value'}: expected a dict, got {got!r}"]
        return [e for k, v in expected.items() for e in _subset(v, got.get(k), f"{where}{k}.")]
    return [] if expected == got else [f"{where.rstrip('.')}: expected {expected!r}, got {got!r}"]


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_probe_parses_captured_output(case: Path) -> None:
    c = json.loads(case.read_text())
    assert c["probe"] in P.PROBES, f"{case.name}: unknown probe {c['probe']}"
    assert c.get("source"), f"{case.name}: say where the capture came from"
    got = P.PROBES[c["probe"]].parse(c["input"])
    assert not _subset(c["expected"], got), _subset(c["expected"], got)


def test_every_probe_has_a_captured_case() -> None:
    covered = {json.loads(c.read_text())["probe"] for c in CASES}
    assert set(P.PROBES) <= covered, f"probes without a case in tests/probe_cases: {sorted(set(P.PROBES) - covered)}"


def test_parsers_reject_garbage() -> None:
    for probe, text in (("meminfo", "hello"), ("disk", "df: /nope: No such file"), ("tegra", "# not a release")):
        with pytest.raises(ValueError):
            P.PROBES[probe].parse(text)


def test_probe_argv_fills_placeholders_without_touching_script_braces() -> None:
    argv = P.PROBES["python"].argv(python="/opt/py/bin/python3", device_path="/srv/edge", arg="jetson")
    assert argv[0] == "/opt/py/bin/python3" and argv[-1] == "jetson" and '{"version"' in argv[2]
    assert P.PROBES["deployed"].argv(device_path="/srv/edge") == ["cat", "/srv/edge/current/manifest.json"]
    assert P.PROBES["cpuinfo"].argv() == ["cat", "/proc/cpuinfo"]


# ----------------------------------------------------------------------------------------------
# evaluate(): the checks, on facts parsed from real captures
# ----------------------------------------------------------------------------------------------
def _facts(cpuinfo: str = "", lscpu: str = "", python: str = "python-dev-vm-venv.json", **extra: Any) -> Dict[str, Any]:
    py = _parsed(python)
    facts: Dict[str, Any] = {"python": py}
    if cpuinfo:
        facts["cpuinfo"] = _parsed(cpuinfo)
        arch = facts["cpuinfo"]["arch"]
        facts["python"] = dict(py, machine=arch)  # the interpreter runs on that board
    if lscpu:
        facts["lscpu"] = _parsed(lscpu)
        facts["python"] = dict(py, machine=facts["lscpu"]["arch"])
    facts.update(extra)
    return facts


def _by_name(checks: List[Check], name: str) -> List[Check]:
    return [c for c in checks if c.name == name]


def test_vnni_target_on_a_cpu_without_vnni_warns_and_suggests_avx2() -> None:
    checks = evaluate(resolve("x86-avx512-vnni"), _facts("cpuinfo-amd-epyc-kvm-avx2.json"))
    (isa,) = _by_name(checks, "isa")
    assert isa.status == "warn" and "avx512_vnni" in isa.message and "x86-avx2" in isa.message


def test_vnni_target_on_a_vnni_xeon_is_fine() -> None:
    checks = evaluate(resolve("x86-avx512-vnni"), _facts("cpuinfo-x86-xeon-6972p-avx512-vnni.json"))
    assert _by_name(checks, "isa")[0].status == "ok" and not _by_name(checks, "int8")


@pytest.mark.parametrize("cpuinfo,target,expect", [
    ("cpuinfo-amd-epyc-kvm-avx2.json", "x86-avx2", "avx2 yes, avx512 no, vnni no, amx_int8 no"),
    ("cpuinfo-x86-xeon-6972p-avx512-vnni.json", "x86-avx512-vnni", "avx2 yes, avx512 yes, vnni yes"),
    ("cpuinfo-raspberry-pi-4.json", "raspberry-pi-4", "dotprod no, i8mm no, fp16 no"),
    ("cpuinfo-raspberry-pi-5.json", "raspberry-pi-5", "dotprod yes"),
])
def test_cpu_flags_row_names_the_int8_features(cpuinfo: str, target: str, expect: str) -> None:
    (row,) = _by_name(evaluate(resolve(target), _facts(cpuinfo)), "cpu flags")
    assert expect in row.message


def test_runtimes_row_lists_every_installed_runtime() -> None:
    facts = _facts("cpuinfo-raspberry-pi-5.json")
    py = facts["python"]
    (row,) = _by_name(evaluate(resolve("raspberry-pi-5"), facts), "runtimes")
    expected = [f"{k} {py[k]['version']}" for k in ("onnxruntime", "tflite_runtime", "ai_edge_litert")
                if "error" not in py.get(k, {"error": 1})]
    assert expected and row.status == "ok" and all(e in row.message for e in expected)
    none = dict(facts, python={k: v for k, v in py.items() if k not in ("onnxruntime", "tflite_runtime", "ai_edge_litert")})
    (row,) = _by_name(evaluate(resolve("raspberry-pi-5"), none), "runtimes")
    assert row.status == "warn" and "none of" in row.message


def test_int8_arm_build_without_dotprod_warns() -> None:
    checks = evaluate(resolve("raspberry-pi-4"), _facts("cpuinfo-raspberry-pi-4.json"))
    assert _by_name(checks, "isa")[0].status == "ok"  # the Pi 4 profile asks only for asimd
    (int8,) = _by_name(checks, "int8")
    assert int8.status == "warn" and "asimddp" in int8.message


def test_pi5_build_on_a_pi4_warns_and_suggests_the_pi4_target() -> None:
    checks = evaluate(resolve("raspberry-pi-5"), _facts("cpuinfo-raspberry-pi-4.json"))
    (isa,) = _by_name(checks, "isa")
    assert isa.status == "warn" and "asimddp" in isa.message and "raspberry-pi-4" in isa.message
    assert not _by_name(checks, "int8")  # already said once


def test_pi5_on_a_pi5_is_fine() -> None:
    checks = evaluate(resolve("raspberry-pi-5"), _facts("cpuinfo-raspberry-pi-5.json"))
    assert _by_name(checks, "isa")[0].status == "ok" and _by_name(checks, "arch")[0].status == "ok"
    assert "Cortex-A76" in _by_name(checks, "arch")[0].message


def test_32_bit_os_on_a_64_bit_pi_fails() -> None:
    checks = evaluate(resolve("raspberry-pi-4"), _facts("cpuinfo-raspberry-pi-4-32bit-os.json"))
    (arch,) = _by_name(checks, "arch")
    assert arch.status == "fail" and "32-bit" in arch.message


def test_orin_from_lscpu_alone() -> None:
    facts = _facts(lscpu="lscpu-jetson-orin-nano.json", tegra=_parsed("tegra-r36.4.7-orin-nano.json"))
    checks = evaluate(resolve("jetson-orin-nano"), facts)
    assert _by_name(checks, "isa")[0].status == "ok"
    assert _by_name(checks, "jetpack")[0].message == "L4T 36.4.7 (JetPack 6.x)"
    # this capture's onnxruntime has no TensorRT/CUDA providers: the fallback is named
    providers = _by_name(checks, "providers")
    assert {c.status for c in providers} == {"warn"} and any("TensorrtExecutionProvider" in c.message for c in providers)


def test_jetson_target_without_l4t_warns() -> None:
    checks = evaluate(resolve("jetson-nano"), _facts("cpuinfo-jetson-nano.json"))
    assert _by_name(checks, "jetpack")[0].status == "warn"


def test_interpreter_without_numpy_and_runtime_fails() -> None:
    checks = evaluate(resolve("x86-avx2"), _facts("cpuinfo-amd-epyc-kvm-avx2.json",
                                                  python="python-dev-vm-no-site-packages.json"))
    assert _by_name(checks, "numpy")[0].status == "fail" and "numpy" in _by_name(checks, "numpy")[0].message
    assert _by_name(checks, "runtime")[0].status == "fail" and "onnxruntime" in _by_name(checks, "runtime")[0].message


def test_unreachable_interpreter_fails() -> None:
    checks = evaluate(resolve("x86-avx2"), {"python": {"error": "exit 127: python3.8: command not found"}})
    assert _by_name(checks, "python")[0].status == "fail" and "command not found" in _by_name(checks, "python")[0].message


def test_low_memory_disk_and_no_power_sensor() -> None:
    facts = _facts("cpuinfo-raspberry-pi-5.json", meminfo=_parsed("meminfo-openwrt-arm-no-memavailable.json"),
                   disk={"filesystem": "/dev/root", "total_mb": 1000, "used_mb": 900, "available_mb": 100,
                         "use_percent": 90, "mount": "/"}, power=_parsed("power-dev-vm.json"))
    checks = evaluate(resolve("raspberry-pi-5"), facts)
    assert _by_name(checks, "memory")[0].status == "warn" and _by_name(checks, "disk")[0].status == "warn"
    assert _by_name(checks, "power")[0].status == "warn"


def test_deployed_release_for_another_target_warns() -> None:
    facts = _facts("cpuinfo-x86-xeon-6972p-avx512-vnni.json", deployed=_parsed("deployed-tiny-x86-avx2.json"))
    checks = evaluate(resolve("x86-avx512-vnni"), facts)
    assert _by_name(checks, "release")[0].status == "warn" and "x86-avx2" in _by_name(checks, "release")[0].message


# ----------------------------------------------------------------------------------------------
# doctor end to end: local device (this machine) and a real sshd
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def project(tmp_path: Path) -> Path:
    bare = tmp_path / "bare-python"
    bare.write_text(f'#!/bin/sh\nexec "{PY}" -S "$@"\n')  # an interpreter without site-packages
    bare.chmod(bare.stat().st_mode | stat.S_IXUSR)
    return write_project(tmp_path / "proj", [
        {"name": "here", "target": "x86-avx512-vnni", "path": "dev", "python": PY},
        {"name": "bare", "target": "x86-avx2", "path": "dev2", "python": str(bare)},
    ])


def test_doctor_local_device(project: Path, tmp_path: Path) -> None:
    make_tiny_bundle(tmp_path / "dist")
    lay_out_release(tmp_path / "dist", project.parent / "dev")
    report = doctor_device(load(project), "here")
    facts = report.facts
    assert facts["cpuinfo"]["cores"] == os.cpu_count() and facts["meminfo"]["total_mb"] > 0
    assert facts["disk"]["available_mb"] > 0 and facts["python"]["numpy"]["version"]
    assert facts["deployed"]["target"] == "x86-avx2"
    isa = [c for c in report.checks if c.name == "isa"][0]
    # this host (AMD EPYC, AVX2 only) has no VNNI: doctor must warn; a VNNI host must not
    assert (isa.status == "warn") == ("avx512_vnni" not in host_cpu_flags())
    assert report.ok  # warnings only


def test_doctor_interpreter_without_numpy(project: Path) -> None:
    report = doctor_device(load(project), "bare")
    assert {c.name for c in report.failures} >= {"numpy", "runtime"}
    cli = CliRunner().invoke(main, ["doctor", "--device", "bare", "--config", str(project)])
    assert cli.exit_code == DeviceError.exit_code and "numpy" in cli.output


def test_doctor_cli_table_and_json(project: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(main, ["doctor", "--device", "here", "--config", str(project)])
    assert table.exit_code == 0, table.output
    assert "isa" in table.output and "memory" in table.output
    out = runner.invoke(main, ["doctor", "--device", "here", "--config", str(project), "--json"])
    data = json.loads(out.output)
    assert data["device"] == "here" and data["facts"]["cpuinfo"]["flags"] and data["checks"]


def test_doctor_over_ssh(tmp_path: Path, sshd: Any, trust_hosts: Callable[..., Path],
                         ssh_device: Callable[..., Dict[str, object]]) -> None:
    trust_hosts(sshd)
    cfg = write_project(tmp_path / "proj", [ssh_device(sshd, "board", target="x86-avx512-vnni")])
    report = doctor_device(load(cfg), "board")
    assert report.transport == "ssh" and report.facts["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert report.facts["cpuinfo"]["flags"] and report.facts["disk"]["available_mb"] > 0
    assert report.facts["deployed"] is None  # nothing deployed: an absence, not an error
    # power.py was uploaded beside the probe and asked over SSH (the estimate is always there)
    assert isinstance(report.facts["power"], list) and "estimate" in report.facts["power"]


def test_device_side_probe_scripts_parse_under_python_3_8(tmp_path: Path) -> None:
    import subprocess

    for name in ("PYTHON_PROBE", "POWER_PROBE"):
        (tmp_path / f"{name.lower()}.py").write_text(getattr(P, name))
    vermin = Path(PY).parent / "vermin"
    proc = subprocess.run([str(vermin), "-t=3.8-", "--no-tips", "--violations", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
