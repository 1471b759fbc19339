"""Calibration and validation images for EfficientNet-Lite0, made from real photographs that ship
inside PyPI packages (scikit-image's bundled images and scikit-learn's sample images), so nothing
is downloaded. Each set is a different, deterministic draw of 224x224 crops (random scale and
position, half of them mirrored), normalized as the model was trained (ImageNet mean and std):

    data/calib.npz  200 crops   (quantization calibration)
    data/val.npz    100 crops   (held out: the build's accuracy check and on-device validation)
    data/val2.npz   100 crops   (a second unseen set, for benchmarks: never seen by the build)

    python samples/efficientnet-lite0/make_data.py [--out DIR] [--seed 0]
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import List

import numpy as np

SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
SETS = (("calib", 200, 1), ("val", 100, 2), ("val2", 100, 3))
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                  "camera")


def photographs() -> List[np.ndarray]:
    """RGB uint8 photographs, as the packages ship them (grey ones repeated to three channels)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    images = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in SKIMAGE_PHOTOS:
            img = np.asarray(getattr(skimage.data, name)())
            images.append(np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3])
    images.extend(np.asarray(i)[..., :3] for i in load_sample_images().images)
    return images


def crops(images: List[np.ndarray], count: int, seed: int) -> np.ndarray:
    """``count`` crops, [count, 3, 224, 224] float32: axis 0 is the sample axis, which stands for the
    model input's batch axis (declared [1, 3, 224, 224])."""
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, SIZE, SIZE), np.float32)
    for i in range(count):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        patch = img[y:y + side, x:x + side]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        rgb = resize(patch, (SIZE, SIZE), order=1, anti_aliasing=True, preserve_range=True).astype(np.float32) / 255.0
        out[i] = ((rgb - MEAN) / STD).transpose(2, 0, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    images = photographs()
    for name, count, offset in SETS:
        np.savez(args.out / f"{name}.npz", image=crops(images, count, args.seed * 1000 + offset))
    print(f"wrote {', '.join(f'{n}.npz ({c})' for n, c, _ in SETS)} to {args.out} from {len(images)} photographs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
