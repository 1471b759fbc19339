"""Helpers shared by the runner/validate/doctor/report tests (no tests here).

``lay_out_release`` stands in for ``edgekit deploy`` (owned elsewhere): it copies a bundle into
``<device>/releases/<id>`` and points ``<device>/current`` at it, the layout deploy produces.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
TFLITE_SAMPLE = ROOT / "samples" / "tflite"
PY = sys.executable


def lay_out_release(bundle: Path, device_root: Path) -> Path:
    manifest = json.loads((bundle / "manifest.json").read_text())
    release = device_root / "releases" / manifest["release_id"]
    shutil.copytree(bundle, release)
    current = device_root / "current"
    if current.is_symlink() or current.exists():
        current.unlink()
    os.symlink(os.path.relpath(release, device_root), current)
    return release


def make_tflite_bundle(bundle: Path, threshold: float = 0.99, threads: Optional[int] = 1) -> Dict[str, Any]:
    """A bundle around samples/tflite/tiny.tflite, its LiteRT reference outputs and runner.py."""
    from edgekit import artifact
    from edgekit.targets import resolve

    bundle.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TFLITE_SAMPLE / "tiny.tflite", bundle / "model.tflite")
    shutil.copyfile(TFLITE_SAMPLE / "reference.npz", bundle / "reference.npz")
    artifact.copy_device_files(bundle)
    profile = resolve("raspberry-pi-5")
    return artifact.write_manifest(bundle, {
        "model": "tiny-tflite", "target": profile.name, "target_profile": profile.model_dump(mode="json"),
        "artifact": "model.tflite", "runtime": {"name": "tflite", "num_threads": threads},
        "inputs": [{"name": "x", "shape": [1, 16], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 4], "dtype": "float32"}],
        "metric": {"name": "top1", "threshold": threshold, "k": 5, "output": None, "pooling": "none",
                   "mask_input": "attention_mask"},
        "quantization": {"precision": "fp32", "method": "fp32"},
    })


def run_runner(release: Path, out: Path, *args: str, env: Optional[Dict[str, str]] = None,
               python: Optional[List[str]] = None) -> subprocess.CompletedProcess:
    argv = (python or [PY]) + [str(release / "runner.py"), "validate", "--release", str(release),
                               "--out", str(out), "--duration", "0.05", "--warmup", "1", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def shim_env(tmp: Path, module: str, message: str) -> Dict[str, str]:
    """An environment where ``import <module>`` raises ImportError(message) (a missing runtime)."""
    shim = tmp / f"shim-{module}"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / f"{module}.py").write_text(f"raise ImportError({message!r})\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(shim) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def write_project(root: Path, devices: List[Dict[str, Any]], metric: str = "top1", threshold: float = 0.99) -> Path:
    """A minimal edgekit.toml with local devices; returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ['[model]', 'name = "tiny"', 'source = "onnx"', 'path = "model.onnx"', '',
             '[[inputs]]', 'name = "x"', 'shape = [1, 16]', '',
             '[calibration]', 'data = "calib.npz"', '',
             '[validation]', 'data = "calib.npz"', f'metric = "{metric}"', f'threshold = {threshold}', '',
             '[power]', 'idle_s = 0.2', '']  # sampling stays on (auto); a short baseline keeps tests quick
    for d in devices:
        lines.append("[[devices]]")
        for key, value in d.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    path = root / "edgekit.toml"
    path.write_text("\n".join(lines))
    return path
