"""Export stage: the exporter registered for ``model.source`` (``edgekit/exporters/``: a PyTorch
factory, a Hugging Face directory, an existing .onnx or .tflite) writes one FP32 model, checked
against the framework's own outputs; this module holds what they share."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .config import ProjectConfig
from .errors import ExportError

log = logging.getLogger(__name__)
Feed = Dict[str, np.ndarray]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    source: str
    opset: int
    input_names: List[str]
    output_names: List[str]
    max_abs_diff: Optional[float]
    """Largest |framework - onnx| on the check sample; None for an ONNX passthrough."""


def check_outputs(onnx_path: Path, feed: Feed, expected: List[np.ndarray], tolerance: float) -> float:
    """Largest |onnx - framework| over the outputs the framework returned (pooler outputs may be absent)."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"{onnx_path}: the exported model does not load in onnxruntime: {str(exc).splitlines()[0]}") from None
    got = sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})[: len(expected)]
    diff = max(float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(e, np.float64)))) for g, e in zip(got, expected))
    if not diff <= tolerance:
        raise ExportError(f"{onnx_path}: ONNX outputs differ from the framework's by {diff:.3g} (tolerance {tolerance:g})",
                          hint="raise model.export_tolerance or check for training-mode layers (call model.eval())")
    return diff


def tflite_io(path: Path) -> Dict[str, List[Dict[str, object]]]:
    """Input/output specs of a .tflite model, read by the real LiteRT interpreter."""
    from .device import runner

    try:
        Interpreter = runner._import_tflite()[0]
        interp = Interpreter(model_path=str(path))
        interp.allocate_tensors()
    except runner.RunnerError as exc:
        raise ExportError(f"{path}: {exc.message}") from None
    except Exception as exc:
        raise ExportError(f"{path}: not a valid TFLite model ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None

    def spec(d: Dict[str, object]) -> Dict[str, object]:
        return {"name": d["name"], "shape": [int(x) for x in d["shape"]], "dtype": np.dtype(d["dtype"]).name}  # type: ignore[arg-type]

    return {"inputs": [spec(d) for d in interp.get_input_details()],
            "outputs": [spec(d) for d in interp.get_output_details()]}


def export(config: ProjectConfig, work_dir: Path, check_feed: Feed) -> ExportResult:
    """Write ``work_dir/model.fp32.onnx`` through the exporter registered for ``model.source``
    (``edgekit.exporters``); ``check_feed`` is one real sample used for the check."""
    from . import exporters

    work_dir.mkdir(parents=True, exist_ok=True)
    return exporters.get(config.model.source)().export(config, work_dir / "model.fp32.onnx", check_feed)
