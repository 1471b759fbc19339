"""Building one candidate file: static QDQ int8 (with excluded nodes), dynamic int8, FP16, FP32.

Every builder writes a file inside ``work_dir`` and is deterministic: the same inputs give the same
bytes (onnxruntime's quantizer names tensors from node names; we never add random or time-based
names). Large models (> 2 GB protobuf) are written with external data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import QuantizationError
from ..guard import strip_output_qdq
from ..optimize import copy_model, quiet, save_model
from .presets import QuantPreset


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def build_static(model_path: Path, out_path: Path, preset: QuantPreset, calibration_cache: Path,
                 nodes_to_exclude: Sequence[str] = (), large: bool = False) -> Path:
    """Static int8 with ranges read from ``calibration_cache`` (no calibration pass here)."""
    from onnxruntime.quantization import quantize_static

    kwargs: Dict[str, Any] = preset.ort_kwargs()
    try:
        with quiet():
            quantize_static(str(model_path), str(out_path), calibration_data_reader=None,
                            nodes_to_exclude=sorted(nodes_to_exclude), use_external_data_format=large,
                            calibrate_method=_method(preset.calibration_method),
                            calibration_cache_path=str(calibration_cache), **kwargs)
    except Exception as exc:
        raise QuantizationError(f"static quantization ({preset.name}) failed: {_first_line(exc)}") from None
    # Graph outputs are produced in float: one per-tensor step on an output that concatenates
    # values of different scales (boxes in pixels beside [0, 1] scores) destroys the small ones.
    strip_output_qdq(out_path)
    return out_path


def _method(name: str) -> "CalibrationMethod":  # type: ignore[name-defined]  # noqa: F821
    from onnxruntime.quantization import CalibrationMethod

    return getattr(CalibrationMethod, name)


def build_dynamic(model_path: Path, out_path: Path, op_types: Sequence[str], per_channel: bool,
                  reduce_range: bool, nodes_to_exclude: Sequence[str] = (), large: bool = False) -> Path:
    """Dynamic int8: weights s8 offline, activations quantized per run (DynamicQuantizeLinear).

    Runs on the CPU EP only. ``MatMulConstBOnly`` keeps activation x activation MatMuls float, as in
    the static transformer preset.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with quiet():
            quantize_dynamic(str(model_path), str(out_path), op_types_to_quantize=list(op_types),
                             per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                             nodes_to_exclude=sorted(nodes_to_exclude), use_external_data_format=large,
                             extra_options={"MatMulConstBOnly": True})
    except Exception as exc:
        raise QuantizationError(f"dynamic quantization failed: {_first_line(exc)}") from None
    return out_path


def build_fp16(model_path: Path, out_path: Path, node_block_list: Optional[List[str]] = None) -> Path:
    """FP16 weights and compute with FP32 inputs/outputs (``keep_io_types``), as TensorRT/CUDA run it.

    onnxconverter-common is not a dependency; onnxruntime ships the same converter.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        model = onnx.load(str(model_path))
        with quiet():
            half = convert_float_to_float16(model, keep_io_types=True, node_block_list=node_block_list or None)
    except Exception as exc:
        raise QuantizationError(f"FP16 conversion failed: {_first_line(exc)}") from None
    return save_model(half, out_path)


def build_fp32(model_path: Path, out_path: Path) -> Path:
    return copy_model(model_path, out_path)


def file_size(path: Path) -> int:
    """Bytes on disk, external data included."""
    data = path.parent / (path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
