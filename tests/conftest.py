"""Shared fixtures. The developer's own ~/.ssh is hidden from every test (Fabric's
no_user_ssh_config idea): tests see a fresh, empty HOME."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = ["sshd_fixtures"]


@pytest.fixture(autouse=True)
def no_user_ssh_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / ".ssh").mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("SSH_AGENT_PID", raising=False)
    return home


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    from bundles import make_tiny_bundle

    bundle = tmp_path / "dist" / "tiny" / "x86-avx2"
    make_tiny_bundle(bundle)
    return bundle


SAMPLES = ROOT / "samples"


def _copy_sample(name: str, dest: Path) -> Path:
    import shutil

    shutil.copytree(SAMPLES / name, dest, ignore=shutil.ignore_patterns("dist", ".device", "runs", "data" if name == "digits" else "__nothing__", "__pycache__"))
    return dest


@pytest.fixture(scope="session")
def digits_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of samples/digits with freshly trained weights and data (deterministic)."""
    import subprocess

    project = _copy_sample("digits", tmp_path_factory.mktemp("digits") / "digits")
    subprocess.run([sys.executable, str(project / "train.py"), "--out", str(project / "data")], check=True,
                   capture_output=True)
    return project


@pytest.fixture(scope="session")
def digits_bundle(digits_project: Path) -> Path:
    """The digits sample built for x86-avx512-vnni (once per session): dist/digits/x86-avx512-vnni."""
    from edgekit import config, targets
    from edgekit.build import build

    cfg = config.load(digits_project / "edgekit.toml")
    result = build(cfg, targets.resolve("x86-avx512-vnni"), digits_project / "dist")
    return result.bundle
