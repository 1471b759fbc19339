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
