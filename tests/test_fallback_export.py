"""Issue 18 item 5: the PyTorch path exports without onnxscript (the TorchScript exporter), so a
user without the dynamo exporter's extra dependency still builds."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

MODEL = """
import torch


def build_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
"""

PROJECT = """
[model]
name = "tiny-torch"
source = "torch"
factory = "model.py:build_model"

[[inputs]]
name = "x"
shape = [1, 3, 8, 8]

[calibration]
data = "calib.npz"

[validation]
data = "val.npz"
metric = "top1"
threshold = 0.9
"""

# onnxscript (what torch's dynamo exporter imports) made unimportable, whether or not it is installed
SCRIPT = """
import sys
from pathlib import Path

import numpy as np

sys.modules["onnxscript"] = None
from edgekit import config, export

cfg = config.load(Path(sys.argv[1]) / "edgekit.toml")
feed = {"x": np.load(Path(sys.argv[1]) / "val.npz")["x"][:1]}
res = export.export(cfg, Path(sys.argv[1]) / "work", feed)
print("exported", res.source, res.opset, res.max_abs_diff)
"""


def test_torch_export_works_without_onnxscript(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    (tmp_path / "edgekit.toml").write_text(PROJECT)
    rng = np.random.default_rng(0)
    for name in ("calib", "val"):
        np.savez(tmp_path / f"{name}.npz", x=rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exported torch" in proc.stdout
    assert (tmp_path / "work" / "model.fp32.onnx").stat().st_size > 0
