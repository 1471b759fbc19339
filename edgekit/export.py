"""Export stage: a PyTorch factory, a Hugging Face directory (optimum-onnx) or an existing .onnx
file becomes one FP32 ONNX file, checked against the framework's own outputs."""
from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from .config import ProjectConfig
from .errors import ConfigError, ExportError

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


def _load_factory(config: ProjectConfig) -> Callable[[], object]:
    spec = config.model.factory
    assert spec is not None
    file_part, _, func = spec.rpartition(":")
    path = config.resolve(file_part)
    assert path is not None
    if not path.is_file():
        raise ConfigError(f"{config.path}: field 'model.factory': file not found: {path}")
    mod_spec = importlib.util.spec_from_file_location(f"edgekit_user_model_{path.stem}", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    sys.path.insert(0, str(path.parent))
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:
        raise ExportError(f"{path}: importing the model factory failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(str(path.parent))
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ConfigError(f"{config.path}: field 'model.factory': {path} has no function '{func}'")
    return fn


def _check(onnx_path: Path, feed: Feed, expected: List[np.ndarray], tolerance: float) -> float:
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


def _export_torch(config: ProjectConfig, out: Path, feed: Feed) -> ExportResult:
    import torch

    try:
        model = _load_factory(config)()
    except (ConfigError, ExportError):
        raise
    except Exception as exc:  # the user's factory failed: say which and why, without a traceback
        raise ExportError(f"model factory {config.model.factory} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"{config.model.factory}: expected a torch.nn.Module, got {type(model).__name__}")
    model.eval()
    names = [i.name for i in config.inputs]
    args = tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names)
    with torch.no_grad():
        expected = model(*args)
    expected_list = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    out_names = ["output"] if len(expected_list) == 1 else [f"output_{i}" for i in range(len(expected_list))]
    dynamic = {i.name: {int(k): v for k, v in i.dynamic_axes.items()} for i in config.inputs if i.dynamic_axes}
    if dynamic and 0 in next(iter(dynamic.values())):
        for n in out_names:
            dynamic[n] = {0: next(iter(dynamic.values()))[0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            # dynamo=False: the TorchScript exporter needs no onnxscript and gives stable bytes
            torch.onnx.export(model, args, str(out), input_names=names, output_names=out_names,
                              dynamic_axes=dynamic or None, opset_version=config.model.opset, dynamo=False)
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed for {config.model.factory}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    diff = _check(out, feed, [t.numpy() for t in expected_list], config.model.export_tolerance)
    return ExportResult(out, "torch", config.model.opset, names, out_names, diff)


def _export_hf(config: ProjectConfig, out: Path, feed: Feed) -> ExportResult:
    import onnx
    import torch
    from optimum.exporters.onnx import main_export
    from transformers import AutoModel

    model_dir = config.resolve(config.model.path)
    assert model_dir is not None
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{config.path}: field 'model.path': {model_dir} is not a Hugging Face model directory (no config.json)")
    tmp = out.parent / "hf-export"
    shutil.rmtree(tmp, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            main_export(str(model_dir), output=tmp, task=config.model.task, opset=config.model.opset,
                        local_files_only=True, do_validation=False, library_name="transformers")
        except Exception as exc:
            raise ExportError(f"optimum-onnx export of {model_dir} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    exported = tmp / "model.onnx"
    shutil.move(str(exported), str(out))
    if (tmp / "model.onnx_data").exists():
        shutil.move(str(tmp / "model.onnx_data"), str(out.parent / "model.onnx_data"))
    shutil.rmtree(tmp, ignore_errors=True)
    graph = onnx.load(str(out), load_external_data=False).graph
    in_names = [i.name for i in graph.input]
    out_names = [o.name for o in graph.output]
    missing = [i.name for i in config.inputs if i.name not in in_names]
    if missing:
        raise ConfigError(f"{config.path}: field 'inputs': the exported model has no input '{missing[0]}' (it has {', '.join(in_names)})")
    hf_model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    with torch.no_grad():
        ref = hf_model(**{k: torch.from_numpy(v) for k, v in feed.items() if k in in_names})
    expected = [ref[0].numpy()] + [ref[k].numpy() for k in out_names[1:] if k in ref]
    diff = _check(out, feed, expected, config.model.export_tolerance)
    return ExportResult(out, "hf", config.model.opset, in_names, out_names, diff)


def _external_locations(model: "onnx.ModelProto") -> List[str]:  # type: ignore[name-defined]  # noqa: F821
    """The external data files the model's initializers point at (relative to the model file)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    return sorted({ExternalDataInfo(t).location for t in model.graph.initializer
                   if t.data_location == onnx.TensorProto.EXTERNAL})


def _passthrough(config: ProjectConfig, out: Path) -> ExportResult:
    """Bring an existing .onnx into the work directory as ``out``.

    A model whose weights live in ONNX external data (``model.onnx`` + ``model.onnx.data``) is loaded
    with its data from the source directory and saved again: as one self-contained file when it fits
    under the protobuf limit, else with ``<out>.data`` beside it (location relative to the file), so
    every later step and the bundle see a complete model. A self-contained file is copied byte for byte.
    """
    import onnx

    from .optimize import save_model

    src = config.resolve(config.model.path)
    assert src is not None
    if not src.is_file():
        raise ConfigError(f"{config.path}: field 'model.path': model file not found: {src}")
    try:
        header = onnx.load(str(src), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{src}: not a valid ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    external = _external_locations(header)
    missing = [loc for loc in external if not (src.parent / loc).is_file()]
    if missing:
        raise ExportError(f"{src}: its weights are stored as ONNX external data in '{missing[0]}', "
                          f"which is not beside it ({src.parent / missing[0]} not found)",
                          hint="keep the .data file(s) in the same directory as the .onnx file")
    try:
        # By path: the checker then also accepts models over 2 GB and checks the external data files.
        onnx.checker.check_model(str(src), full_check=False)
        model = onnx.load(str(src)) if external else header  # external data from src's directory
    except Exception as exc:
        raise ExportError(f"{src}: not a valid ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    for stale in (out, out.parent / (out.name + ".data")):
        stale.unlink(missing_ok=True)
    if external:
        save_model(model, out)  # one file under the protobuf limit, else out.name + ".data" beside it
    else:
        shutil.copyfile(src, out)
    opset = next((o.version for o in header.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ExportResult(out, "onnx", opset, [i.name for i in header.graph.input],
                        [o.name for o in header.graph.output], None)


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


def _passthrough_tflite(config: ProjectConfig, out: Path) -> ExportResult:
    """A converted .tflite model ships as it is: its converter already chose the precision."""
    src = config.resolve(config.model.path)
    assert src is not None
    if not src.is_file():
        raise ConfigError(f"{config.path}: field 'model.path': model file not found: {src}")
    io = tflite_io(src)  # errors name the user's file, not our copy
    out = out.with_suffix(".tflite")
    shutil.copyfile(src, out)
    return ExportResult(out, "tflite", 0, [str(i["name"]) for i in io["inputs"]],
                        [str(o["name"]) for o in io["outputs"]], None)


def export(config: ProjectConfig, work_dir: Path, check_feed: Feed) -> ExportResult:
    """Write ``work_dir/model.fp32.onnx``; ``check_feed`` is one real sample used for the check."""
    work_dir.mkdir(parents=True, exist_ok=True)
    return EXPORTERS[config.model.source](config, work_dir / "model.fp32.onnx", check_feed)


EXPORTERS: Dict[str, Callable[[ProjectConfig, Path, Feed], ExportResult]] = {
    "torch": _export_torch,
    "hf": _export_hf,
    "onnx": lambda config, out, _feed: _passthrough(config, out),
    "tflite": lambda config, out, _feed: _passthrough_tflite(config, out),
}
"""One exporter per ``model.source``; tests/test_build_targets.py checks each has an end-to-end test."""
