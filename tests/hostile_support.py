"""Shared by the deploy attack tests (test_hostile_deploy.py, test_deploy_locks.py): real tmpfs
mounts that fail rather than skip under CI, crafted bundles, and looks at a device directory."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from click.testing import CliRunner
from sshd_fixtures import write_project

from edgekit import artifact
from edgekit.config import ProjectConfig, load
from edgekit.transport import Transport, connect

ROOT = Path(__file__).resolve().parent.parent


def unavailable(what: str) -> None:
    """Skip on a developer machine; fail under CI, where every mechanism must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is unavailable, and CI must run this test (CI runs as root)")
    pytest.skip(f"{what} is unavailable here (needs root); CI runs it")


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    ok = not os.environ.get("EDGEKIT_TEST_NO_TMPFS") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0
    if not ok:
        unavailable("mounting a tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_blocks(where: Path) -> Path:
    """Fill the filesystem until a write of one more page fails (ENOSPC)."""
    filler = where / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing is left to fail at close
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def fill_inodes(where: Path) -> Path:
    """Use up every inode: creating a file, a directory or a symlink then fails with ENOSPC."""
    d = where / "inodes"
    d.mkdir()
    i = 0
    try:
        while True:
            (d / str(i)).touch()
            i += 1
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    return d


def open_device(tmp_path: Path, spec: Dict[str, object], **deploy: object) -> Tuple[ProjectConfig, Transport]:
    config = load(write_project(tmp_path / "proj", [spec], deploy=deploy, bundles={}))
    return config, connect(config.device("dev"), config)


def releases_of(spec: Dict[str, object]) -> List[str]:
    return sorted(os.listdir(Path(str(spec["path"])) / "releases"))


def current_of(spec: Dict[str, object]) -> str:
    return os.readlink(Path(str(spec["path"])) / "current")


def tree_digest(path: Path) -> Dict[str, str]:
    return {str(p.relative_to(path)): artifact.sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


def rewrite_manifest(src: Path, dest: Path, change: Callable[[Dict[str, Any]], None]) -> Path:
    """A copy of bundle ``src`` whose manifest.json was edited by ``change`` (the attacker's bundle)."""
    shutil.copytree(src, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    change(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return dest


def cli(args: List[str]) -> Any:
    from edgekit.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


def dist_for(bundle: Path, where: Path) -> Path:
    """A --dist directory holding ``bundle`` as dist/tiny/x86-avx2."""
    (where / "tiny").mkdir(parents=True)
    os.symlink(bundle, where / "tiny" / "x86-avx2")
    return where


def assert_one_error_line(output: str) -> None:
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in output and "unexpected" not in output, output
