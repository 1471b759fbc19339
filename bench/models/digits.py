"""The digits CNN (scikit-learn's 8x8 digits) for the benchmark.

Uses the sample's own model and data (samples/digits: model.py, data/digits.pt, calib.npz, val.npz)
when they are there; otherwise trains the same architecture here, deterministically, in seconds.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "digits"


def _architecture() -> type:
    sys.path.insert(0, str(SAMPLE))
    try:
        from model import DigitsCNN  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(SAMPLE))
    return DigitsCNN


def _train(epochs: int = 30, seed: int = 0) -> Tuple["torch.nn.Module", dict]:  # noqa: F821
    import torch
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    model = _architecture()()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x[:1197]), torch.from_numpy(y[:1197])
    for epoch in range(epochs):
        perm = torch.from_numpy(np.random.default_rng(seed + epoch).permutation(len(xt)))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval(), {"calib": x[1197:1397], "val": x[1397:], "labels": y[1397:]}


def load() -> Tuple["torch.nn.Module", np.ndarray, np.ndarray, np.ndarray]:  # noqa: F821
    """(model in eval mode, calibration images, held-out images, held-out labels)."""
    import torch

    weights = SAMPLE / "data" / "digits.pt"
    if weights.is_file() and (SAMPLE / "data" / "val.npz").is_file():
        model = _architecture()()
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        calib = np.load(SAMPLE / "data" / "calib.npz")["pixels"]
        val = np.load(SAMPLE / "data" / "val.npz")
        return model.eval(), calib, val["pixels"], val["labels"]
    model, d = _train()
    return model, d["calib"], d["val"], d["labels"]


def export(path: Path, opset: int = 17) -> Tuple[Path, List[Dict[str, np.ndarray]], List[Dict[str, np.ndarray]], np.ndarray]:
    import torch

    model, calib, val, labels = load()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.from_numpy(calib[:1]),), str(path), input_names=["pixels"], output_names=["logits"],
                      opset_version=opset, dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path, [{"pixels": c[None]} for c in calib], [{"pixels": v[None]} for v in val], labels
