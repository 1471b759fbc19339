"""The bundle: ``dist/<model>/<target>/`` holding the model, manifest.json, reference.npz,
runner.py (and power.py, guard.py beside it).

manifest.json lists the sha256 of every other file; the release id is derived from those hashes,
so an unchanged bundle has an unchanged id and a redeploy can skip it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional

if TYPE_CHECKING:  # numpy loads only when a reference is written, so deploy starts fast
    import numpy as np

from . import __version__
from .errors import DeployError

MANIFEST = "manifest.json"
REFERENCE = "reference.npz"
RUNNER = "runner.py"
POWER = "power.py"
GUARD = "guard.py"
"""The guards and task metrics the runner imports (edgekit/device/guard.py)."""
SCHEMA = 1
DEVICE_DIR = Path(__file__).resolve().parent / "device"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def release_id(files: Dict[str, str]) -> str:
    """Content address of a bundle: the same files give the same id."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()[:16]


def check_file_name(name: str) -> str:
    """Refuse names that could escape the release directory on the device."""
    p = Path(name)
    if (not name or p.is_absolute() or ".." in p.parts or name.startswith("~") or "\\" in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise DeployError(f"artifact file name '{name}' is not allowed (absolute path, '..' or a control character)")
    return name


def write_reference(path: Path, feeds: List[Dict[str, np.ndarray]], outputs: List[List[np.ndarray]],
                    output_names: List[str], labels: Optional[np.ndarray] = None) -> None:
    """Stack per-sample inputs and FP32 outputs (axis 0 = sample) as input/<name>, output/<name>."""
    import numpy as np

    arrays: Dict[str, np.ndarray] = {}
    for name in feeds[0]:
        arrays[f"input/{name}"] = np.stack([f[name] for f in feeds])
    for i, name in enumerate(output_names):
        arrays[f"output/{name}"] = np.stack([o[i] for o in outputs])
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    # np.savez writes zip entries with a fixed timestamp, so equal arrays give equal bytes.
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def copy_device_files(bundle: Path) -> None:
    for name in (RUNNER, POWER, GUARD):
        src = DEVICE_DIR / name
        if src.exists():
            shutil.copyfile(src, bundle / name)


def write_manifest(bundle: Path, fields: Dict[str, Any]) -> Dict[str, Any]:
    """Hash every file in the bundle (but the manifest) and write manifest.json deterministically."""
    files = {}
    for p in sorted(bundle.rglob("*")):
        rel = p.relative_to(bundle).as_posix()
        if p.is_file() and rel != MANIFEST:
            files[check_file_name(rel)] = sha256_file(p)
    manifest = {"schema": SCHEMA, "edgekit_version": __version__, **fields, "files": files,
                "release_id": release_id(files)}
    (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(bundle: Path) -> Dict[str, Any]:
    path = Path(bundle) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DeployError(f"{path}: no manifest; run 'edgekit build' first") from None
    except ValueError as exc:
        raise DeployError(f"{path}: not valid JSON ({exc})") from None
    for key in ("files", "release_id", "target", "artifact"):
        if key not in manifest:
            raise DeployError(f"{path}: field '{key}' missing; rebuild with this edgekit version")
    for name in manifest["files"]:
        check_file_name(name)
    return manifest


def verify_bundle(bundle: Path, manifest: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    manifest = manifest or read_manifest(bundle)
    for name, digest in manifest["files"].items():
        p = Path(bundle) / name
        if not p.is_file():
            raise DeployError(f"{bundle}: file '{name}' listed in the manifest is missing")
        if sha256_file(p) != digest:
            raise DeployError(f"{bundle}: file '{name}' does not match its sha256 in the manifest")
    return manifest


def bundle_dir(out: Path, model: str, target: str) -> Path:
    return Path(out) / model / target


def iter_files(manifest: Dict[str, Any]) -> Iterable[str]:
    return sorted(manifest["files"])


def clean_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
