"""Train the digits CNN deterministically (seconds on a CPU) and write the sample's data files:
data/digits.pt (weights), data/calib.npz (calibration split), data/val.npz (held-out split with labels).

    python samples/digits/train.py [--out samples/digits/data] [--epochs 30]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import DigitsCNN  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # thread count changes float summation order, hence the weights
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(args.seed).permutation(len(x))
    x, y = x[order], y[order]
    # 1197 train / 200 calibration / 400 held-out validation
    train, calib, val = slice(0, 1197), slice(1197, 1397), slice(1397, None)

    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    for epoch in range(args.epochs):
        perm = torch.from_numpy(np.random.default_rng(args.seed + epoch).permutation(len(xt)))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x[val])).argmax(1).numpy() == y[val]).mean()

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "digits.pt")
    np.savez(args.out / "calib.npz", pixels=x[calib])
    np.savez(args.out / "val.npz", pixels=x[val], labels=y[val])
    print(f"digits: trained {args.epochs} epochs, held-out top-1 {acc * 100:.1f}% -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
