"""edgekit as an installed package: a wheel carries its target profiles and device files, installs
into a fresh virtualenv, lists its targets and builds the digits sample from there."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: build with this environment's setuptools (no download); -v shows the
    # backend's own warnings, which the test below reads.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "-v", "--no-deps", "--no-build-isolation",
                           "-w", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (out / "build.log").write_text(proc.stdout + proc.stderr)
    (whl,) = out.glob("edgekit-*.whl")
    return whl


def test_wheel_holds_the_profiles_and_device_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (ROOT / "edgekit" / "profiles").glob("*.toml")}
    assert shipped and {f"edgekit/profiles/{n}" for n in shipped} <= names
    device_dir = ROOT / "edgekit" / "device"
    device = {p.relative_to(device_dir).as_posix() for p in device_dir.rglob("*.py") if "__pycache__" not in p.parts}
    assert {"runner.py", "power.py", "metrics/top1.py", "sensors/rapl.py"} <= device
    assert {f"edgekit/device/{n}" for n in device} <= names
    assert "edgekit/py.typed" in names
    assert not any(n.startswith(("tests/", "samples/", "bench/")) for n in names)


def test_metadata_is_spdx_and_the_build_warns_about_nothing(wheel: Path) -> None:
    meta = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info/METADATA")
    assert b"License-Expression: Apache-2.0" in meta
    log = (wheel.parent / "build.log").read_text()
    bad = [line for line in log.splitlines() if "Deprecat" in line or "license" in line.lower() and "warn" in line.lower()]
    assert not bad, bad


def test_the_installed_wheel_lists_targets_and_builds_digits(wheel: Path, digits_project: Path,
                                                             tmp_path: Path) -> None:
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The wheel is installed on its own; its dependencies (torch, onnxruntime, ...) come from this
    # environment's site-packages, appended after it, as an install "with its dependencies" would
    # provide them, without downloading gigabytes. The test's own edgekit checkout is not on the path.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
                   check=True, capture_output=True)
    Path(site, "deps-from-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGEKIT_TARGETS_DIR")}
    edgekit = [str(py), "-c", "from edgekit.cli import run; run()"]

    where = subprocess.run([str(py), "-c", "import edgekit; print(edgekit.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(site), where  # the wheel's copy, not the checkout

    listed = subprocess.run([*edgekit, "targets", "list", "--json"], cwd=tmp_path, env=env, capture_output=True,
                            text=True)
    assert listed.returncode == 0, listed.stderr
    import json

    profiles = json.loads(listed.stdout)
    assert set(profiles) == {p.stem for p in (ROOT / "edgekit" / "profiles").glob("*.toml")}
    assert all(p["source"] == "built-in" for p in profiles.values())

    built = subprocess.run([*edgekit, "build", "--target", "x86-avx2", "--config", str(digits_project / "edgekit.toml"),
                            "--out", str(tmp_path / "dist"), "--json"], cwd=tmp_path, env=env, capture_output=True,
                           text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    bundle = tmp_path / "dist" / "digits" / "x86-avx2"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"] == "x86-avx2" and (bundle / "runner.py").is_file() and (bundle / "model.onnx").is_file()
