"""A MobileNetV2-shaped CNN (inverted residuals, depthwise convs, ReLU6, width 1.0, 224x224) with
random weights, for the benchmark: quality is top-1 agreement with its own FP32 outputs.

torchvision is not a dependency, so the architecture is written out here (Sandler et al. 2018,
table 2). Nothing is downloaded. Two things make a random network a fair stand-in for a trained one:

* BatchNorm statistics come from a forward pass over synthetic images (data-dependent init), so
  activations keep a sane scale through all 17 blocks;
* the data has classes: every image is a perturbed copy of one of ``PROTOTYPES`` prototype images,
  and the classifier's first ``PROTOTYPES`` rows point at the prototypes' (centred) features. A
  trained network is confident on in-distribution inputs; a purely random 1000-way head has top-1
  margins so thin that any perturbation flips them, which would measure nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

# (expansion t, output channels c, repeats n, first stride s)
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
SIZE = 224
PROTOTYPES = 100


def build(seed: int = 0) -> "torch.nn.Module":  # noqa: F821
    import torch
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout, momentum=None)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        return nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
            super().__init__()
            hidden = cin * t
            layers = [] if t == 1 else [conv_bn(cin, hidden, 1, 1)]
            layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, 1, act=False)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            return x + self.body(x) if self.residual else self.body(x)

    class MobileNetV2(nn.Module):
        def __init__(self, classes: int = 1000) -> None:
            super().__init__()
            layers: List[nn.Module] = [conv_bn(3, 32, 3, 2)]
            cin = 32
            for t, c, n, s in SETTINGS:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers.append(conv_bn(cin, 1280, 1, 1))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(1280, classes)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            x = self.features(x)
            return self.classifier(x.mean(dim=(2, 3)))

    torch.manual_seed(seed)
    model = MobileNetV2()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            # Random affine terms so channels differ, as in a trained network.
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
    model.train()  # cumulative BatchNorm statistics (momentum=None) from synthetic images
    with torch.no_grad():
        model(torch.from_numpy(images(32, seed=10_000 + seed)))
    model.eval()
    with torch.no_grad():
        protos = torch.from_numpy(np.stack([_prototype(k) for k in range(PROTOTYPES)]))
        feats = torch.cat([model.features(protos[i:i + 25]).mean(dim=(2, 3)) for i in range(0, PROTOTYPES, 25)])
        mu = feats.mean(dim=0)
        centred = feats - mu
        w = torch.zeros(1000, 1280)
        w[:PROTOTYPES] = centred / centred.norm(dim=1, keepdim=True) ** 2 * 10.0  # logit 10 at the prototype
        w[PROTOTYPES:] = torch.randn(1000 - PROTOTYPES, 1280) * (0.5 / centred.norm(dim=1).mean())
        model.classifier.weight.copy_(w)
        model.classifier.bias.copy_(-(w @ mu))
    return model


def _waves(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    img = np.zeros((3, SIZE, SIZE), np.float32)
    for c in range(3):
        for _ in range(4):  # low-frequency waves
            fx, fy, ph = rng.uniform(0.5, 6.0), rng.uniform(0.5, 6.0), rng.uniform(0, 2 * np.pi)
            img[c] += rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    for _ in range(rng.integers(2, 6)):  # blobs
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        mask = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img += mask[None] * rng.uniform(-2, 2, size=(3, 1, 1)).astype(np.float32)
    return img


def _prototype(k: int) -> np.ndarray:
    img = _waves(np.random.default_rng(1_000_000 + k))
    return (img - img.mean()) / (img.std() + 1e-6)


def images(n: int, seed: int) -> np.ndarray:
    """``n`` synthetic 224x224 RGB images (ImageNet-like normalization), each a perturbed copy of a
    random prototype: a different wave/blob pattern mixed in at 35%, plus pixel noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, SIZE, SIZE), np.float32)
    for i in range(n):
        img = _prototype(int(rng.integers(PROTOTYPES))) + 0.35 * _waves(rng)
        img += 0.2 * rng.standard_normal(img.shape).astype(np.float32)
        out[i] = (img - img.mean()) / (img.std() + 1e-6)
    return out


def export(path: Path, seed: int = 0, opset: int = 17) -> Path:
    import torch

    model = build(seed)
    x = torch.from_numpy(images(1, seed=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["logits"], opset_version=opset,
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


def feeds(n: int, seed: int) -> List[Dict[str, np.ndarray]]:
    return [{"image": img[None]} for img in images(n, seed)]
