"""edgekit/device/ as the package every release ships: Python 3.8 (vermin), standard library +
numpy + runtimes only, modules under ~500 lines, laid out in a bundle under the same import names as
on the host, and run from there with nothing else on the path."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

from edgekit import artifact
from edgekit.device import power

ROOT = Path(__file__).resolve().parent.parent
DEVICE = ROOT / "edgekit" / "device"
MODULES = sorted(p for p in DEVICE.rglob("*.py") if "__pycache__" not in p.parts)
RUNTIMES = {"numpy", "onnxruntime", "tflite_runtime", "ai_edge_litert"}
STDLIB_ONLY = ("power.py", "energy.py", "bounded.py", "errors.py", "plugins.py", "lock_owner.py", "sensors/")
"""Power sampling must work where numpy is broken; the wrapper and the loader need nothing."""


def _vermin(path: Path) -> subprocess.CompletedProcess:
    vermin = Path(sys.executable).parent / "vermin"
    return subprocess.run([str(vermin), "-t=3.8-", "--no-tips", "--violations", str(path)],
                          capture_output=True, text=True, timeout=300)


def test_the_whole_package_parses_under_python_3_8(tmp_path: Path) -> None:
    assert len(MODULES) > 20 and DEVICE / "sensors" / "rapl.py" in MODULES and DEVICE / "metrics" / "topk.py" in MODULES
    proc = _vermin(DEVICE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    newer = tmp_path / "newer.py"  # the check itself must catch 3.9+ code
    newer.write_text("def f(d: dict[str, int]) -> str:\n    return 'x'.removeprefix('y')\n")
    assert _vermin(newer).returncode != 0


def _absolute_imports(path: Path) -> List[str]:
    tree = ast.parse(path.read_text())
    roots = [(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
    roots += [a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    return [r for r in roots if r != "__future__"]


def test_modules_import_only_the_standard_library_numpy_and_runtimes() -> None:
    for path in MODULES:
        rel = path.relative_to(DEVICE).as_posix()
        outside = set(_absolute_imports(path)) - set(sys.stdlib_module_names)
        if rel == "sensors/nvml.py":  # the one optional import, inside NvmlSampler.probe
            outside -= {"pynvml"}
        if rel == "__main__.py":  # the launcher imports this package, from the release it sits in
            outside -= {"edgekit"}
        if rel == "release.py":  # run as a script (deploy, the Ansible module), it imports its sibling
            outside -= {"release_layout"}
        if rel.startswith(STDLIB_ONLY):
            assert not outside, f"{rel} must stay standard-library only, imports {outside}"
        else:
            assert outside <= RUNTIMES, f"{rel} imports {outside - RUNTIMES}"


def test_no_module_is_over_about_500_lines() -> None:
    long = {p.relative_to(DEVICE).as_posix(): n for p in MODULES if (n := len(p.read_text().splitlines())) > 520}
    assert not long, long


def _bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "release"
    bundle.mkdir()
    artifact.copy_device_files(bundle)
    return bundle


def test_a_bundle_holds_the_package_under_its_own_name_and_the_launcher(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    shipped = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    wanted = {"edgekit/device/" + p.relative_to(DEVICE).as_posix() for p in MODULES}
    assert shipped == wanted | {"runner.py", "edgekit/__init__.py"}
    assert (bundle / "runner.py").read_bytes() == (DEVICE / "__main__.py").read_bytes()


def _bare_env() -> dict:
    """No PYTHONPATH: the device has no edgekit checkout; only the release's own package."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_the_shipped_package_runs_alone(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import edgekit.device.power as p; "
            "print(json.dumps([p.__file__, p.available_samplers(sys.argv[2])]))")
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(bundle), str(tmp_path)], capture_output=True,
                          text=True, timeout=60, env=_bare_env())
    assert proc.returncode == 0, proc.stderr
    where, found = json.loads(proc.stdout)
    assert where == str(bundle / "edgekit" / "device" / "power.py")
    assert found == ["estimate"]  # no sensor under an empty sysfs root; the estimate always answers
    # and the power module's own CLI, as a board check runs it from the release directory
    proc = subprocess.run([sys.executable, "-m", "edgekit.device.power", "probe", "--sysfs-root", str(tmp_path)],
                          cwd=bundle, capture_output=True, text=True, timeout=60, env=_bare_env())
    assert proc.returncode == 0, proc.stderr
    described = {d["name"]: d for d in json.loads(proc.stdout)}
    assert list(described) == list(power.REGISTRY)
    assert described["rapl"]["available"] is False and str(tmp_path) in described["rapl"]["reason"]


def test_the_launcher_refuses_a_release_without_its_package(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    (bundle / "edgekit" / "device" / "__init__.py").unlink()
    (bundle / "edgekit" / "__init__.py").unlink()
    (bundle / "edgekit" / "device" / "runner.py").unlink()
    proc = subprocess.run([sys.executable, str(bundle / "runner.py"), "validate", "--release", str(bundle),
                           "--out", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == f"runner: {bundle} holds no edgekit/device package; deploy the release again"


def test_running_a_release_writes_no_bytecode_into_it(tmp_path: Path) -> None:
    """A switched release is immutable: the launcher's imports must not add __pycache__ to it."""
    bundle = _bundle(tmp_path)
    env = {k: v for k, v in _bare_env().items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run([sys.executable, str(bundle / "runner.py"), "validate", "--release", str(bundle),
                           "--out", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr  # no manifest: one line
    assert json.loads((tmp_path / "r.json").read_text())["error"]["kind"], proc.stderr  # the package did load
    assert not [p for p in bundle.rglob("__pycache__")]
