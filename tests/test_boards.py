"""The emulated ARM boards tier: builds for the Raspberry Pi targets, deployed over SSH to aarch64
userlands under qemu-user (tools/boards) and validated there by onnxruntime's ARM kernels.

``make boards`` (as root) starts emu-pi5 (bookworm, Cortex-A76), emu-pi4 (bookworm, Cortex-A72)
and emu-bullseye (bullseye: Python 3.9, onnxruntime 1.19, tflite-runtime). Under CI a board that is
not up fails this tier; on a developer machine it skips with the command to run. Emulated latency
is qemu's, so no test asserts on it beyond its label.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main

from conftest import ROOT, SAMPLES

sys.path.insert(0, str(ROOT / "tools" / "boards"))
import boards as emu  # noqa: E402
from emu_project import write_project  # noqa: E402
from emu_recipe import BOARDS, CPUS, cpuinfo, rootfs_key, ROOTFS  # noqa: E402

CACHE = emu.cache_dir()  # resolved from the real user's home: the tests' HOME is a throwaway one
EMULATED = "emulated, not representative"
SESSION = uuid.uuid4().hex[:8]
DEVICE_BASE = f"/root/edgekit-tests/{SESSION}"
RUNTIME = {"emu-pi5": ("ai_edge_litert", "1.32.0"), "emu-pi4": ("ai_edge_litert", "1.32.0"),
           "emu-bullseye": ("tflite_runtime", "1.19.2")}


def boards_down_reason(cache: Path) -> str:
    """Why the boards cannot be used ('' when all of them answer)."""
    state = emu.load_state(cache)
    if state is None:
        return f"the emulated boards are not up (no {emu.run_dir(cache) / 'state.json'})"
    for name in BOARDS:
        b = (state.get("boards") or {}).get(name)
        if b is None:
            return f"board {name} is not in {emu.run_dir(cache) / 'state.json'}"
        if emu.mount_ns(int(b["pid"])) != b.get("mnt_ns"):
            return f"board {name}'s sshd (pid {b['pid']}) is not running"
    return ""


def require_boards(cache: Path = CACHE) -> Dict[str, Any]:
    reason = boards_down_reason(cache)
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the emulated-board tier (.ci/run starts them with make boards)",
                        pytrace=False)
        pytest.skip(f"{reason}: run `make boards` as root (and `make boards-down` after)")
    return emu.load_state(cache)  # type: ignore[return-value]


@pytest.fixture(scope="session")
def boards() -> Iterator[Dict[str, Any]]:
    state = require_boards()
    yield state
    for name in BOARDS:  # this session's device directories, on every board
        subprocess.run(["ssh", "-F", state["ssh_config"], "-o", "BatchMode=yes", name, "rm", "-rf", DEVICE_BASE],
                       capture_output=True, timeout=120)


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def _ok(*args: str) -> Dict[str, Any]:
    res = _cli(*args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _project(src: Path, dest: Path, state: Dict[str, Any], max_samples: int = 0) -> str:
    """A copy of a sample project with the boards as devices (the config `make demo-arm` uses)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("dist", ".device", "runs", "reports", "__pycache__"))
    if max_samples:  # fewer held-out samples: each one is a qemu-emulated inference on the board
        toml = dest / "edgekit.toml"
        text = toml.read_text()
        text = re.sub(r"(\[validation\][^\[]*?)max_samples = \d+", rf"\g<1>max_samples = {max_samples}", text, flags=re.S)
        toml.write_text(text)
    return str(write_project(dest, state, device_path=f"{DEVICE_BASE}/{dest.name}"))


def _deploy_validate(cfg: str, board: str, runs: Path, duration: str = "0.3") -> Dict[str, Any]:
    """Deploy the bundle for the board's target and validate it there; returns the stored run JSON.
    The validate table is checked for the emulated label on the way."""
    _ok("deploy", "--device", board, "--config", cfg)
    res = _cli("validate", "--device", board, "--config", cfg, "--duration", duration, "--power", "none",
               "--runs-dir", str(runs))
    assert res.exit_code == 0, res.output
    assert f"ms ({EMULATED})" in res.output  # the latency rows of the table
    run = json.loads(sorted(runs.glob(f"*-{board}.json"))[-1].read_text())
    return run


def _check_device_facts(run: Dict[str, Any], board: str) -> None:
    facts, cpu = run["device"], CPUS[BOARDS[board].cpu]
    assert facts["machine"] == "aarch64"
    assert facts["cpu_core"] == {"cortex-a76": "Cortex-A76", "cortex-a72": "Cortex-A72"}[cpu.qemu]
    assert facts["cpu_features"] == list(cpu.features)
    assert facts["emulated"]["board"] == board and facts["emulated"]["qemu_cpu"] == cpu.qemu
    assert run["latency"]["representative"] is False and run["latency"]["note"] == EMULATED
    assert run["versions"]["onnxruntime" if run["runtime"]["name"] == "onnxruntime" else "tflite"] == \
        run["runtime"]["version"]


# ------------------------------------------------------------------------------------------------
# Without boards: the recipe and the refusals
# ------------------------------------------------------------------------------------------------
def test_cpuinfo_matches_qemu_cpu() -> None:
    """The cpuinfo onnxruntime reads must agree with the CPU qemu emulates (else int8 kernels die
    on illegal instructions): dot product on the A76 only, and no SVE/i8mm/bf16 anywhere."""
    a76, a72 = cpuinfo(CPUS["cortex-a76"]), cpuinfo(CPUS["cortex-a72"])
    assert "asimddp" in a76.split() and "asimddp" not in a72.split()
    assert "CPU part\t: 0xd0b" in a76 and "CPU part\t: 0xd08" in a72
    for text in (a76, a72):
        assert not {"sve", "i8mm", "bf16"} & set(text.split())
        assert text.count("processor\t:") == 4


def test_recipe_change_changes_the_cache_key() -> None:
    from dataclasses import replace

    base = ROOTFS["bookworm"]
    assert rootfs_key(base) == rootfs_key(replace(base))
    assert rootfs_key(base) != rootfs_key(replace(base, wheels=base.wheels[:-1] + ("ai-edge-litert==2.2.0",)))


def test_tier_fails_in_ci_and_skips_elsewhere_without_boards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not up.*CI must run"):
        require_boards(tmp_path)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="make boards"):
        require_boards(tmp_path)


def test_boards_refuse_without_root(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root (to drop to an unprivileged user) and setpriv")
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                          str(ROOT / "tools" / "boards" / "boards.py"), "up"],
                         capture_output=True, text=True, env={**os.environ, "EDGEKIT_BOARDS_CACHE": str(tmp_path)})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "boards: error: must run as root (debootstrap, chroot, mounts and binfmt_misc need it); try: sudo make boards"]


def test_project_file_adds_the_boards_as_devices(tmp_path: Path) -> None:
    """`boards.py project` (what make demo-arm uses): the sample's file plus every board, loadable."""
    from edgekit import config

    state = {"identity_file": "/k/id_ed25519", "known_hosts": "/k/known_hosts",
             "boards": {name: {"host": "127.0.0.1", "port": 52251 + i, "user": "root", "path": "/root/edgekit",
                               "python": "/usr/bin/python3", "target": b.target} for i, (name, b) in enumerate(BOARDS.items())}}
    shutil.copy(SAMPLES / "minilm" / "edgekit.toml", tmp_path / "edgekit.toml")
    (tmp_path / "edgekit.toml").write_text((tmp_path / "edgekit.toml").read_text() + "\n[deploy]\nkeep_releases = 2\n")
    cfg = config.load(write_project(tmp_path, state))
    assert cfg.deploy.keep_releases == 2 and str(cfg.deploy.known_hosts) == "/k/known_hosts"
    pi4 = cfg.device("emu-pi4")
    assert (pi4.transport, pi4.port, pi4.target, pi4.identity_file) == ("ssh", 52252, "raspberry-pi-4", "/k/id_ed25519")
    assert cfg.device("local").transport == "local"  # the sample's own devices stay
    with pytest.raises(emu.BoardsError, match="make boards"):
        write_project(tmp_path, None)


def test_runner_marks_qemu_user_as_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.device import runner

    if os.path.exists(runner.EMULATION_MARKER):
        pytest.skip(f"this host carries {runner.EMULATION_MARKER}")
    monkeypatch.delenv("QEMU_CPU", raising=False)
    assert runner.emulation() is None and "emulated" not in runner.device_facts()
    monkeypatch.setenv("QEMU_CPU", "cortex-a72")
    facts = runner.device_facts()
    assert facts["emulated"] == {"marker": None, "qemu_cpu": "cortex-a72", "note": EMULATED}


def test_emulated_latency_is_labelled_in_tables() -> None:
    from edgekit.report.runs import fmt_cell

    row = {"p50_ms": 12.5, "value": 0.99, "emulated": True}
    assert fmt_cell("p50_ms", row) == f"12.500 ({EMULATED})"
    assert fmt_cell("value", row) == "0.990"  # agreement is the board's own result: no label
    assert fmt_cell("p50_ms", dict(row, emulated=False)) == "12.500"


# ------------------------------------------------------------------------------------------------
# On the boards
# ------------------------------------------------------------------------------------------------
MINIMAL = ('[model]\nname = "x"\nsource = "onnx"\npath = "m.onnx"\n\n[[inputs]]\nname = "x"\nshape = [1, 4]\n\n'
           '[calibration]\ndata = "d.npz"\n\n[validation]\ndata = "d.npz"\nthreshold = 0.99\n')
"""A project file doctor accepts: doctor needs the devices, not a model."""


@pytest.mark.parametrize("board", list(BOARDS))
def test_doctor_on_board(board: str, boards: Dict[str, Any], no_user_ssh_config: Path, tmp_path: Path) -> None:
    """doctor through the ssh alias `make boards` writes (the user's ~/.ssh/config, here the test
    HOME's): aarch64, dot product only on the Pi 5, the board's runtimes found."""
    shutil.copy(boards["ssh_config"], no_user_ssh_config / ".ssh" / "config")
    (tmp_path / "edgekit.toml").write_text(
        MINIMAL + f'\n[[devices]]\nname = "{board}"\ntarget = "{BOARDS[board].target}"\ntransport = "ssh"\n'
        f'host = "{board}"\npath = "{DEVICE_BASE}/doctor"\npython = "/usr/bin/python3"\n')
    rep = _ok("doctor", "--device", board, "--config", str(tmp_path / "edgekit.toml"))
    checks = {c["name"]: c for c in rep["checks"]}
    assert rep["facts"]["python"]["machine"] == "aarch64"
    assert checks["arch"]["status"] == "ok" and checks["arch"]["message"].startswith("aarch64")
    dotprod = "yes" if board == "emu-pi5" else "no"
    assert f"dotprod {dotprod}" in checks["cpu flags"]["message"]
    assert checks["isa"]["status"] == "ok"  # each board has what its own target relies on
    litert, ort = RUNTIME[board]
    assert checks["runtime"]["status"] == "ok" and checks["runtime"]["message"].startswith(f"onnxruntime {ort}")
    assert litert in checks["runtimes"]["message"]
    assert rep["facts"]["python"]["version"].startswith("3.9" if board == "emu-bullseye" else "3.11")


def test_doctor_flags_a_pi5_build_on_the_pi4(boards: Dict[str, Any], tmp_path: Path) -> None:
    """The A72's cpuinfo really is what the device reports: a Pi 5 target there lacks asimddp."""
    (tmp_path / "edgekit.toml").write_text(MINIMAL)
    cfg = write_project(tmp_path, boards, device_path=f"{DEVICE_BASE}/doctor")
    cfg.write_text(cfg.read_text().replace('name = "emu-pi4"\ntarget = "raspberry-pi-4"',
                                           'name = "emu-pi4"\ntarget = "raspberry-pi-5"'))
    rep = _cli("doctor", "--device", "emu-pi4", "--config", str(cfg), "--json")
    checks = {c["name"]: c for c in json.loads(rep.stdout)["checks"]}
    assert checks["isa"]["status"] == "warn" and "lacks asimddp" in checks["isa"]["message"]
    assert "raspberry-pi-4 instead" in checks["isa"]["message"]


@pytest.fixture(scope="session")
def arm_digits(boards: Dict[str, Any], digits_project: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """digits built for both Raspberry Pi targets (once per session)."""
    cfg = _project(digits_project, tmp_path_factory.mktemp("arm") / "digits", boards)
    _ok("build", "--config", cfg, "--target", "raspberry-pi-5", "--target", "raspberry-pi-4")
    return cfg


@pytest.mark.parametrize("board", ["emu-pi5", "emu-pi4", "emu-bullseye"])
def test_digits_on_board(board: str, arm_digits: str, tmp_path: Path) -> None:
    run = _deploy_validate(arm_digits, board, tmp_path / "runs")
    assert run["ok"] is True and run["metric"]["name"] == "top1" and run["metric"]["value"] >= 0.99
    assert run["target"] == BOARDS[board].target
    assert run["runtime"]["name"] == "onnxruntime" and run["runtime"]["provider"] == "CPUExecutionProvider"
    assert run["runtime"]["version"] == RUNTIME[board][1]
    _check_device_facts(run, board)
    if board == "emu-bullseye":
        assert run["versions"]["python"].startswith("3.9.")


def test_report_labels_emulated_latency(arm_digits: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _deploy_validate(arm_digits, "emu-pi5", runs)
    res = _cli("report", "--runs-dir", str(runs), "--out", str(tmp_path / "rep"))
    assert res.exit_code == 0, res.output
    assert f"({EMULATED})" in res.output  # the summary table the command prints
    md = (tmp_path / "rep" / "report.md").read_text()
    row = [ln for ln in md.splitlines() if ln.startswith("| emu-pi5 ")]
    # p50 and p99; Markdown escapes the parentheses of every cell (device text is never markup)
    assert len(row) == 1 and row[0].count(f"\\({EMULATED}\\)") == 2
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count(f"({EMULATED})") >= 5  # fleet table (p50, p90, p99, first load) and the all-runs table


@pytest.fixture(scope="session")
def arm_minilm(boards: Dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    cfg = _project(SAMPLES / "minilm", tmp_path_factory.mktemp("arm") / "minilm", boards, max_samples=8)
    _ok("build", "--config", cfg, "--target", "raspberry-pi-5", "--target", "raspberry-pi-4", "--budget", "120")
    return cfg


@pytest.mark.parametrize("board", ["emu-pi5", "emu-pi4"])
def test_minilm_on_board(board: str, arm_minilm: str, tmp_path: Path) -> None:
    run = _deploy_validate(arm_minilm, board, tmp_path / "runs", duration="0.1")
    assert run["ok"] is True and run["metric"]["name"] == "cosine" and run["metric"]["value"] >= 0.99
    assert run["metric"]["n"] == 8
    _check_device_facts(run, board)


@pytest.mark.parametrize("board", ["emu-pi5", "emu-bullseye"])
def test_tflite_on_board(board: str, boards: Dict[str, Any], tmp_path: Path) -> None:
    """The tflite sample through ai_edge_litert (bookworm) and tflite_runtime (bullseye)."""
    project = tmp_path / "tflite"
    project.mkdir()
    with np.load(SAMPLES / "tflite" / "reference.npz") as ref:
        np.savez(project / "val.npz", x=ref["input/x"].reshape(-1, 16))
    (project / "edgekit.toml").write_text(
        f'[model]\nname = "tiny-tflite"\nsource = "tflite"\npath = "{SAMPLES / "tflite" / "tiny.tflite"}"\n\n'
        '[[inputs]]\nname = "x"\nshape = [1, 16]\n\n[calibration]\ndata = "val.npz"\n\n'
        '[validation]\ndata = "val.npz"\nmetric = "max_abs"\nthreshold = 1e-4\n')
    cfg = str(write_project(project, boards, device_path=f"{DEVICE_BASE}/tflite"))
    _ok("build", "--config", cfg, "--target", BOARDS[board].target)
    run = _deploy_validate(cfg, board, tmp_path / "runs")
    assert run["ok"] is True and run["runtime"]["name"] == "tflite"
    assert run["runtime"]["module"] == RUNTIME[board][0] and run["metric"]["value"] <= 1e-4
    _check_device_facts(run, board)


def _x86_optimized_model(folder: Path) -> List[str]:
    """A small CNN saved by onnxruntime at ORT_ENABLE_ALL on this x86 host: its NCHWc transformer
    rewrites the graph into com.microsoft.nchwc kernels, which onnxruntime builds for x86 only
    (compared from the kernel registries: the aarch64 wheel lacks exactly that domain)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)
    b = (rng.standard_normal(16) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["y"])], "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 1, 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plain.ir_version = 8
    onnx.save(plain, str(folder / "plain.onnx"))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(folder / "model.onnx")
    ort.InferenceSession(str(folder / "plain.onnx"), opts, providers=["CPUExecutionProvider"])
    np.savez(folder / "val.npz", x=rng.standard_normal((16, 8, 8, 8)).astype(np.float32))
    return sorted({n.domain for n in onnx.load(str(folder / "model.onnx")).graph.node})


def test_a_failure_only_arm_kernels_have_fails_validate(boards: Dict[str, Any], tmp_path: Path) -> None:
    """A model that builds and validates on this x86 host but that onnxruntime's ARM build cannot
    run: validate on the emulated Pi 5 must fail (exit 8, the device's own message), where the host
    tiers alone would have shipped it."""
    project = tmp_path / "nchwc"
    project.mkdir()
    if _x86_optimized_model(project) != ["com.microsoft.nchwc"]:
        pytest.skip("this host's onnxruntime did not apply the NCHWc layout (no AVX2?)")
    (project / "edgekit.toml").write_text(
        '[model]\nname = "nchwc"\nsource = "onnx"\npath = "model.onnx"\n\n[[inputs]]\nname = "x"\nshape = [1, 8, 8, 8]\n\n'
        '[calibration]\ndata = "val.npz"\n\n[validation]\ndata = "val.npz"\nmetric = "max_abs"\nthreshold = 1e-4\n\n'
        '[[devices]]\nname = "local"\ntarget = "raspberry-pi-5"\ntransport = "local"\npath = "device"\n')
    cfg = str(write_project(project, boards, device_path=f"{DEVICE_BASE}/nchwc"))
    _ok("build", "--config", cfg, "--target", "raspberry-pi-5", "--precision", "fp32")
    _ok("deploy", "--device", "local", "--config", cfg)
    on_x86 = _ok("validate", "--device", "local", "--config", cfg, "--duration", "0.1", "--power", "none")
    assert on_x86["ok"] is True and on_x86["metric"]["value"] <= 1e-4
    _ok("deploy", "--device", "emu-pi5", "--config", cfg)
    on_arm = _cli("validate", "--device", "emu-pi5", "--config", cfg, "--duration", "0.1", "--power", "none")
    assert on_arm.exit_code == 8, on_arm.output
    assert "onnxruntime could not load" in on_arm.output and "ReorderInput" in on_arm.output
    assert "Traceback" not in on_arm.output
