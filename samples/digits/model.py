"""The digits sample: a small CNN for scikit-learn's bundled 8x8 digits (the PyTorch path)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(os.environ.get("EDGEKIT_DIGITS_WEIGHTS", Path(__file__).resolve().parent / "data" / "digits.pt"))


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixels))


def build_model() -> nn.Module:
    """The factory edgekit.toml names: the trained network, in eval mode."""
    if not WEIGHTS.is_file():
        raise FileNotFoundError(f"{WEIGHTS} not found; run: python samples/digits/train.py")
    model = DigitsCNN()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()
