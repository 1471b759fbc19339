"""Graph preparation before quantization: opset upgrade, shape inference, offline graph optimization.

``prepare`` is the build stage's ``optimize`` step. Its output is the FP32 model every later step
(calibration, quantization, the FP32 candidate itself) starts from, so it must be byte-identical for
the same input: we never write timestamps or random names, and ORT's optimizer is deterministic.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import QuantizationError
from .targets import TargetProfile

MIN_QDQ_OPSET = 13
"""Per-channel QuantizeLinear/DequantizeLinear (the ``axis`` attribute) exists from opset 13 on."""

PROTOBUF_LIMIT = 2_000_000_000
"""Protobuf cannot serialize a message over 2 GiB; above ~this size weights go to external data."""

OFFLINE_LEVELS = ("disabled", "basic")
"""Graph optimization levels safe to bake into a shipped file.

ORT's *basic* rewrites (constant folding, redundant-node elimination, Conv+BN/Add/Mul folds) use
only standard ONNX ops and run before execution providers are assigned, so the file stays valid
for TensorRT, CUDA and any CPU. *extended* and *all* produce CPU/CUDA-only contrib ops (FusedMatMul,
Gelu, QLinear*) and, at *all*, an NCHWc layout specific to the build host's ISA; those must be
applied by the session on the device, which is what the manifest's runtime level is for.
"""


LEVELS = ("disabled", "basic", "extended", "all")
"""onnxruntime's graph optimization levels by the names profiles and manifests use."""


def ort_level(level: str) -> "ort.GraphOptimizationLevel":  # type: ignore[name-defined]  # noqa: F821
    """The onnxruntime enum for ``level`` (the host's one map; the device runner keeps its own, as
    the device side imports nothing from the host)."""
    import onnxruntime as ort

    enums = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
             ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    return enums[LEVELS.index(level)]


@contextlib.contextmanager
def inside(directory: Path) -> Iterator[None]:
    """Run with ``directory`` as the working directory.

    onnxruntime's symbolic shape inference, when it gives up (it does on every optimum-exported
    transformer), dumps ``sym_shape_infer_temp.onnx`` plus a weights file into the *current*
    directory. We point it at our temporary directory instead of the user's project.
    """
    previous = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence onnxruntime.quantization's prints and warnings: only the CLI may talk to the user."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        logging.disable(previous)


def ai_onnx_opset(model: "onnx.ModelProto") -> int:  # type: ignore[name-defined]  # noqa: F821
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def upgrade_opset(model: "onnx.ModelProto", minimum: int = MIN_QDQ_OPSET) -> "onnx.ModelProto":  # type: ignore[name-defined]  # noqa: F821
    """Return the model at opset >= ``minimum`` (unchanged when it already is)."""
    import onnx
    from onnx import version_converter

    current = ai_onnx_opset(model)
    if current >= minimum:
        return model
    try:
        upgraded = version_converter.convert_version(model, minimum)
    except Exception as exc:  # onnx raises RuntimeError/ValueError depending on the adapter
        raise QuantizationError(
            f"cannot upgrade the model from opset {current} to {minimum} (needed for per-channel QDQ): "
            f"{str(exc).splitlines()[0]}",
            hint="re-export the model with opset >= 13",
        ) from None
    onnx.checker.check_model(upgraded)
    return upgraded


def model_bytes(model: "onnx.ModelProto") -> int:  # type: ignore[name-defined]  # noqa: F821
    return int(model.ByteSize())


def save_model(model: "onnx.ModelProto", path: Path) -> Path:  # type: ignore[name-defined]  # noqa: F821
    """Save, switching to external data (``<name>.data`` beside the file) past the protobuf limit."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    if model_bytes(model) >= PROTOBUF_LIMIT:
        data = path.name + ".data"
        (path.parent / data).unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


def is_large(path: Path) -> bool:
    """True when the model keeps (or needs) its weights in external data files."""
    import onnx

    size = path.stat().st_size
    if size >= PROTOBUF_LIMIT:
        return True
    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _ort_optimize(src: Path, dst: Path, level: str, large: bool) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort_level(level)
    opts.optimized_model_filepath = str(dst)
    # One thread: the optimizer's output never depends on threads, but a small footprint helps
    # when other builds run beside this one.
    opts.intra_op_num_threads = 1
    if large:
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                      dst.name + ".data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def prepare(model_path: Path, out_path: Path, profile: TargetProfile) -> Path:
    """ORT quantization pre-processing, then the profile's (offline-safe) graph optimization.

    1. Upgrade opsets older than 13 (per-channel QDQ needs it; ``onnx.version_converter``).
    2. ``quant_pre_process``: symbolic shape inference (transformers exported by optimum usually
       defeat it: "Incomplete symbolic shape inference"), so on failure we retry with ONNX shape
       inference only. Shapes matter: the quantizer skips tensors whose type it cannot see.
    3. The profile's graph optimization level, capped at *basic* (see ``OFFLINE_LEVELS``).

    Returns ``out_path``. Raises QuantizationError when the model cannot be read or optimized.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model_path = Path(model_path).resolve()
    out_path = Path(out_path).resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:
        raise QuantizationError(f"{model_path}: not a readable ONNX model: {str(exc).splitlines()[0]}") from None
    level = profile.graph_optimization if profile.graph_optimization in OFFLINE_LEVELS else "basic"

    with tempfile.TemporaryDirectory(prefix="edgekit-prepare-") as tmp:
        tmpdir = Path(tmp)
        src = model_path
        upgraded = upgrade_opset(model)
        large = model_bytes(model) >= PROTOBUF_LIMIT or is_large(model_path)
        if upgraded is not model:
            src = save_model(upgraded, tmpdir / "upgraded.onnx")
        del model, upgraded

        pre = tmpdir / "pre.onnx"
        common = dict(skip_optimization=(level == "disabled"), save_as_external_data=large,
                      all_tensors_to_one_file=True, external_data_location="pre.onnx.data")
        with quiet(), inside(tmpdir):
            try:
                quant_pre_process(str(src), str(pre), **common)
            except Exception:
                # Symbolic shape inference gives up on dynamic reshapes in exported transformers.
                try:
                    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, **common)
                except Exception as exc:
                    raise QuantizationError(
                        f"{model_path}: quantization pre-processing failed: {str(exc).splitlines()[0]}"
                    ) from None

        if level == "disabled":
            final = pre
        else:
            final = tmpdir / "optimized.onnx"
            try:
                with quiet():
                    _ort_optimize(pre, final, level, large)
            except Exception as exc:
                raise QuantizationError(
                    f"{model_path}: onnxruntime could not optimize the model: {str(exc).splitlines()[0]}"
                ) from None

        # Re-serialize through onnx so the bytes depend only on the graph, not on how it was written.
        result = onnx.load(str(final))
        for stale in (out_path, out_path.parent / (out_path.name + ".data")):
            stale.unlink(missing_ok=True)
        save_model(result, out_path)
    return out_path


def copy_model(src: Path, dst: Path) -> Path:
    """Copy a model file with its external data (if any) so it can live in another directory."""
    import onnx

    if is_large(src):
        return save_model(onnx.load(str(src)), dst)
    shutil.copyfile(src, dst)
    return dst
