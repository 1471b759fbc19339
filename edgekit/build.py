"""``edgekit build``: export -> check -> optimize -> quantize -> reference -> bundle.

Each stage is its own module; this one only wires them together and returns a BuildResult.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from pydantic import BaseModel

from . import artifact, data
from .config import ProjectConfig
from .errors import ConfigError, ExportError, QuantizationError
from .metrics import MetricSpec
from .targets import TargetProfile

Progress = Callable[[str], None]


class BuildResult(BaseModel):
    model: str
    target: str
    bundle: Path
    release_id: str
    precision: str
    method: str
    reason: str
    size_bytes: int
    fp32_size_bytes: int
    metric: Dict[str, Any]
    seconds: float
    calibration: str = ""
    """How many calibration samples were used and why (e.g. the max_samples cap)."""


def _io_specs(model_path: Path) -> Dict[str, List[Dict[str, Any]]]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}

    def spec(v: Any) -> Dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": [spec(v) for v in model.graph.input if v.name not in init],
            "outputs": [spec(v) for v in model.graph.output]}


def _check_feeds_match_model(model_path: Path, feeds: List[Dict[str, np.ndarray]], source: str) -> None:
    """Catch calibration data that disagrees with the model (not only with [[inputs]])."""
    specs = _io_specs(model_path)["inputs"]
    for s in specs:
        arr = feeds[0].get(s["name"])
        if arr is None:
            raise QuantizationError(f"{source}: the model's input '{s['name']}' has no data (have: {', '.join(feeds[0])})")
        fixed = [(i, d) for i, d in enumerate(s["shape"]) if isinstance(d, int) and d > 0]
        if len(s["shape"]) != arr.ndim or any(arr.shape[i] != d for i, d in fixed) or arr.dtype.name != s["dtype"]:
            raise QuantizationError(f"{source}: input '{s['name']}' expects {s['shape']} {s['dtype']}, "
                                    f"got {list(arr.shape)} {arr.dtype.name}")


def run_model(model_path: Path, feeds: List[Dict[str, np.ndarray]]) -> List[List[np.ndarray]]:
    import onnxruntime as ort

    from .quantize.presets import DISABLED_OPTIMIZERS

    # the session the device opens (runtime.disabled_optimizers), so kept-float nodes stay float here too
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))
    names = [i.name for i in sess.get_inputs()]
    return [sess.run(None, {n: f[n] for n in names}) for f in feeds]


def _manifest_runtime(profile: TargetProfile, name: str, graph_optimization: str,
                      disabled_optimizers: Sequence[str] = ()) -> Dict[str, Any]:
    runtime = {"name": name, "providers": profile.runtime.providers if name == "onnxruntime" else ["cpu"],
               "provider_options": profile.runtime.provider_options if name == "onnxruntime" else {},
               "graph_optimization": graph_optimization, "intra_op_threads": profile.intra_op_threads}
    if disabled_optimizers:
        runtime["disabled_optimizers"] = list(disabled_optimizers)
    return runtime


def _bundle_tflite(config: ProjectConfig, profile: TargetProfile, model: Path, bundle: Path,
                   val: List[Dict[str, np.ndarray]], labels: Optional[np.ndarray], t0: float,
                   say: Progress) -> BuildResult:
    """A converted .tflite model ships as it is; its reference outputs come from the real LiteRT
    interpreter on this host, so the device check catches runtime or delegate divergence."""
    from .device import runner
    from .export import tflite_io

    io = tflite_io(model)
    specs = {"artifact": model.name, "inputs": io["inputs"], "outputs": io["outputs"]}
    say("computing reference outputs with LiteRT on this host")
    try:
        run, info, _ = runner.open_tflite(str(model.parent), specs, profile.intra_op_threads or None)
        reference = [run(f) for f in val]
    except runner.RunnerError as exc:
        raise ExportError(f"{model}: {exc.message}") from None
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{config.path}: validation samples do not fit {model.name}'s inputs ({exc})") from None
    metric = MetricSpec.from_config(config.validation)
    say("writing the bundle")
    artifact.clean_dir(bundle)
    shutil.copyfile(model, bundle / "model.tflite")
    out_names = [str(o["name"]) for o in io["outputs"]]
    artifact.write_reference(bundle / artifact.REFERENCE, val, reference, out_names, labels)
    artifact.copy_device_files(bundle)
    size = (bundle / "model.tflite").stat().st_size
    quantized = bool(info.get("quantized_io"))
    reason = "a converted .tflite model ships as it is (its converter chose the precision); the device is checked against LiteRT's outputs on this host"
    manifest = artifact.write_manifest(bundle, {
        "model": config.model.name, "target": profile.name, "target_profile": profile.model_dump(mode="json"),
        "artifact": "model.tflite", "runtime": _manifest_runtime(profile, "tflite", "basic"),
        "inputs": io["inputs"], "outputs": io["outputs"], "metric": metric.to_manifest(),
        "export": {"source": "tflite", "opset": None, "max_abs_diff": None},
        "quantization": {"precision": "int8" if quantized else "as-converted", "method": "tflite-passthrough",
                         "reason": reason},
        "build_metrics": {"size_bytes": size, "fp32_size_bytes": size, "host_metric": {}},
    })
    return BuildResult(model=config.model.name, target=profile.name, bundle=bundle, release_id=manifest["release_id"],
                       precision="int8" if quantized else "as-converted", method="tflite-passthrough", reason=reason,
                       size_bytes=size, fp32_size_bytes=size, metric={}, seconds=time.perf_counter() - t0)


def build(config: ProjectConfig, profile: TargetProfile, out_dir: Path, precision: str = "auto",
          budget_s: float = 300.0, progress: Optional[Progress] = None) -> BuildResult:
    from . import export, optimize
    from .quantize import quantize_for_target
    from .quantize.candidates import file_size

    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    bundle = artifact.bundle_dir(out_dir, config.model.name, profile.name)
    work = Path(out_dir) / ".work" / config.model.name / profile.name
    artifact.clean_dir(work)

    say("loading calibration and validation data")
    calib, _ = data.load_samples(config.calibration, config, "calibration")
    val, labels = data.load_samples(config.validation, config, "validation")
    if not val:
        raise ConfigError(f"{config.path}: field 'validation': no samples")

    say(f"exporting {config.model.source} model '{config.model.name}' to ONNX")
    exported = export.export(config, work, check_feed=val[0])
    if exported.source == "tflite":
        return _bundle_tflite(config, profile, exported.path, bundle, val, labels, t0, say)
    _check_feeds_match_model(exported.path, calib, str(config.resolve(config.calibration.data or config.calibration.text)))

    say(f"optimizing the graph ({profile.graph_optimization})")
    prepared = optimize.prepare(exported.path, work / "model.prepared.onnx", profile)

    say("computing FP32 reference outputs")
    reference = run_model(exported.path, val)
    metric = MetricSpec.from_config(config.validation)

    say(f"quantizing for {profile.name}")
    # An explicit [calibration] max_samples is also the quantizer's cap (it otherwise caps at its default).
    cap = config.calibration.max_samples if "max_samples" in config.calibration.model_fields_set else None
    q = quantize_for_target(prepared, work / "quantize", profile, calib, val, metric,
                            precision=precision, budget_s=budget_s, seed=config.seed, progress=say,
                            calibration_cap=cap)

    say("writing the bundle")
    artifact.clean_dir(bundle)
    optimize.copy_model(q.model_path, bundle / "model.onnx")  # keeps external data of >2 GB models
    io = _io_specs(exported.path)
    artifact.write_reference(bundle / artifact.REFERENCE, val, reference, [o["name"] for o in io["outputs"]], labels)
    artifact.copy_device_files(bundle)
    out_idx = metric.output_index([o["name"] for o in io["outputs"]])
    host_metric: Dict[str, Any] = {"int8_vs_fp32" if q.precision == "int8" else f"{q.precision}_vs_fp32": q.metric_after}
    if labels is not None:
        chosen = run_model(bundle / "model.onnx", val)
        host_metric["task_accuracy"] = {
            "fp32": float(np.mean([np.argmax(r[out_idx]) == l for r, l in zip(reference, labels)])),
            q.precision: float(np.mean([np.argmax(c[out_idx]) == l for c, l in zip(chosen, labels)])),
        }
    size = file_size(bundle / "model.onnx")  # external data (models over 2 GB) included
    fp32_size = file_size(exported.path)
    manifest = artifact.write_manifest(bundle, {
        "model": config.model.name,
        "target": profile.name,
        "target_profile": profile.model_dump(mode="json"),
        "artifact": "model.onnx",
        # the level the chosen model was measured at: int8 fusions need "extended"/"all"
        "runtime": _manifest_runtime(profile, "onnxruntime", q.runtime_graph_optimization, q.disabled_optimizers),
        "inputs": io["inputs"],
        "outputs": io["outputs"],
        "metric": metric.to_manifest(),
        "export": {"source": exported.source, "opset": exported.opset, "max_abs_diff": exported.max_abs_diff},
        "quantization": q.model_dump(mode="json", exclude={"model_path"}),
        "build_metrics": {"size_bytes": size, "fp32_size_bytes": fp32_size, "host_metric": host_metric},
    })
    return BuildResult(model=config.model.name, target=profile.name, bundle=bundle, release_id=manifest["release_id"],
                       precision=q.precision, method=q.method, reason=q.reason, size_bytes=size,
                       fp32_size_bytes=fp32_size, metric=q.metric_after, seconds=time.perf_counter() - t0,
                       calibration=str(q.calibration.get("note", "")))
