"""``edgekit build``: export -> check -> optimize -> quantize -> reference -> bundle.

Each stage is its own module; this one only wires them together and returns a BuildResult.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from pydantic import BaseModel

from . import artifact, build_record, data
from .config import ProjectConfig
from .errors import ConfigError, ExportError
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
    guard: Dict[str, Any] = {}
    """The shipped model's guard report: passed, findings (output, slice, check, message)."""
    guard_refused: Dict[str, str] = {}
    """Candidates the guards refused: name -> the findings in one line."""
    record: Optional[Path] = None
    """``dist/<model>/<target>.build.json``: host timings and duration, outside the release."""
    timing_note: str = ""
    """Whether the timing comparisons were measured or reused from the previous build record."""
    tuning: Dict[str, Any] = {}
    """``--tune-on``: the manifest's tuning section plus this run's cost ('run'); empty otherwise."""


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


def _check_data_matches_model(model_path: Path, io: Dict[str, List[Dict[str, Any]]], config: ProjectConfig,
                              calib: List[Dict[str, np.ndarray]], val: List[Dict[str, np.ndarray]]) -> None:
    """[[inputs]] against the model's own inputs (ConfigError naming the declaration that fits), then
    every calibration and validation feed against them: the one feed check of a build (the quantizer
    is told it was done)."""
    import onnx

    from .quantize.calibration import check_feeds

    declared = {i.name: i for i in config.inputs}
    for s in io["inputs"]:
        if s["name"] in declared:
            _check_declared_input(declared[s["name"]], s, config)
    header = onnx.load(str(model_path), load_external_data=False)
    for spec, feeds, what in ((config.calibration, calib, "calibration"), (config.validation, val, "validation")):
        check_feeds(header, feeds, f"{config.resolve(spec.data or spec.text)}: {what}")
    stream = config.validation.stream
    outs = [o["name"] for o in io["outputs"]]
    for i, pair in enumerate(stream.state if stream else []):
        if pair.output not in outs:
            raise ConfigError(f"{config.path}: field 'validation.stream.state.{i}.output': '{pair.output}' is not an "  # type: ignore[union-attr]
                              f"output of the model (outputs: {', '.join(outs)})")


def _check_declared_input(spec: Any, model: Dict[str, Any], config: Any) -> None:
    """[[inputs]] against the model's own declaration: rank and fixed sizes, and a batch axis that
    the model keeps symbolic. The message gives the declaration that would fit."""
    dims = model["shape"]
    b = spec.batch
    fixed_ok = len(dims) == len(spec.shape) and all(
        not isinstance(d, int) or d == w or (i == b and d == 1) for i, (d, w) in enumerate(zip(dims, spec.shape)))
    # a feed holds one sample along the batch axis, so the model must take a batch of one there
    if fixed_ok and (b is None or not isinstance(dims[b], int) or dims[b] == 1):
        if spec.dtype != model["dtype"]:
            raise ConfigError(f"{config.path}: field 'inputs' ('{spec.name}'): edgekit.toml declares dtype "
                              f"{spec.dtype}, but the model takes {model['dtype']}: declare dtype = \"{model['dtype']}\"")
        return
    symbolic = [i for i, d in enumerate(dims) if not isinstance(d, int)]
    shape = [d if isinstance(d, int) else 1 for d in dims]
    default = 0 if dims else "none"
    batch = symbolic[0] if symbolic else (spec.batch if spec.batch is not None and spec.batch < len(dims) else default)
    fix = f"shape = {shape}" + (f", batch_axis = {batch}" if batch != default else "")
    shown = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
    rule = ("each input's samples lie on its batch_axis (axis 0 unless batch_axis says otherwise; "
            "\"none\" for an input without one)")
    raise ConfigError(f"{config.path}: field 'inputs' ('{spec.name}'): edgekit.toml declares shape {spec.shape} "
                      f"(batch_axis = {spec.batch_axis}), but the model declares {shown}; {rule}: declare {fix}")


def _carried_feeds(model_path: Path, feeds: List[Dict[str, np.ndarray]], pairs: List[Tuple[str, str]],
                   starts: List[bool]) -> List[Dict[str, np.ndarray]]:
    """Calibration chunks with the FP32 model's own carried state in each state input, so the
    calibrated state ranges are those of a running stream rather than of the initial state."""
    import onnxruntime as ort

    from .device import runner

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    carry = runner.stream_carry({"state": [{"input": i, "output": o} for i, o in pairs]}, starts, out_names, len(feeds))
    fed, prev = [], None
    for i, feed in enumerate(feeds):
        f = carry(feed, i, prev)
        prev = sess.run(None, f)
        fed.append(f)
    return fed


def run_model(model_path: Path, feeds: List[Dict[str, np.ndarray]],
              stream: Optional[Tuple[Any, Any]] = None) -> List[List[np.ndarray]]:
    import onnxruntime as ort

    from .device import runner
    from .quantize.presets import DISABLED_OPTIMIZERS

    # the session the device opens (runtime.disabled_optimizers), so kept-float nodes stay float here too
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))
    names = [i.name for i in sess.get_inputs()]
    pairs, starts = stream if stream else ((), ())
    carry = runner.stream_carry({"state": [{"input": i, "output": o} for i, o in pairs]}, list(starts),
                                [o.name for o in sess.get_outputs()], len(feeds))
    outs: List[List[np.ndarray]] = []
    for i, f in enumerate(feeds):
        outs.append(sess.run(None, carry({n: f[n] for n in names}, i, outs[-1] if outs else None)))
    return outs


def _manifest_runtime(profile: TargetProfile, name: str, graph_optimization: str, precision: str,
                      disabled_optimizers: Sequence[str] = ()) -> Dict[str, Any]:
    from .quantize.presets import provider_options_for

    runtime = {"name": name, "providers": profile.runtime.providers if name == "onnxruntime" else ["cpu"],
               "provider_options": provider_options_for(profile, precision) if name == "onnxruntime" else {},
               "graph_optimization": graph_optimization, "intra_op_threads": profile.intra_op_threads}
    if disabled_optimizers:
        runtime["disabled_optimizers"] = list(disabled_optimizers)
    return runtime


def _bundle_tflite(config: ProjectConfig, profile: TargetProfile, model: Path, bundle: Path,
                   val: List[Dict[str, np.ndarray]], labels: Optional[np.ndarray], t0: float,
                   say: Progress, starts: Optional[List[bool]] = None) -> BuildResult:
    """A converted .tflite model ships as it is; its reference outputs come from the real LiteRT
    interpreter on this host, so the device check catches runtime or delegate divergence."""
    from .device import runner
    from .export import tflite_io

    io = tflite_io(model)
    specs = {"artifact": model.name, "inputs": io["inputs"], "outputs": io["outputs"]}
    say("computing reference outputs with LiteRT on this host")
    try:
        run, info, _ = runner.open_tflite(str(model.parent), specs, profile.intra_op_threads or None)
        metric = MetricSpec.from_config(config.validation)
        carry = runner.stream_carry(metric.to_manifest().get("stream"), starts, [str(o["name"]) for o in io["outputs"]],
                                    len(val))
        reference = runner.run_feeds(run, val, carry)
    except runner.RunnerError as exc:
        raise ExportError(f"{model}: {exc.message}") from None
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{config.path}: validation samples do not fit {model.name}'s inputs ({exc})") from None
    say("writing the bundle")
    artifact.clean_dir(bundle)
    shutil.copyfile(model, bundle / "model.tflite")
    out_names = [str(o["name"]) for o in io["outputs"]]
    shipped = _write_reference_subset(config, bundle, val, reference, out_names, labels, starts)
    artifact.copy_device_files(bundle, config.plugin_files())
    size = (bundle / "model.tflite").stat().st_size
    quantized = bool(info.get("quantized_io"))
    reason = "a converted .tflite model ships as it is (its converter chose the precision); the device is checked against LiteRT's outputs on this host"
    manifest = artifact.write_manifest(bundle, {
        "model": config.model.name, "target": profile.name, "target_profile": profile.model_dump(mode="json"),
        "artifact": "model.tflite", "runtime": _manifest_runtime(profile, "tflite", "basic", "as-converted"),
        "inputs": io["inputs"], "outputs": io["outputs"], "metric": metric.to_manifest(),
        "export": {"source": "tflite", "opset": None, "max_abs_diff": None},
        "quantization": {"precision": "int8" if quantized else "as-converted", "method": "tflite-passthrough",
                         "reason": reason},
        "build_metrics": {"size_bytes": size, "fp32_size_bytes": size, "host_metric": {}},
        "reference": shipped,
    })
    seconds = time.perf_counter() - t0
    record = build_record.write(bundle, manifest["release_id"], seconds, {}, None)
    return BuildResult(model=config.model.name, target=profile.name, bundle=bundle, release_id=manifest["release_id"],
                       precision="int8" if quantized else "as-converted", method="tflite-passthrough", reason=reason,
                       size_bytes=size, fp32_size_bytes=size, metric={}, seconds=seconds, record=record)


def _write_reference_subset(config: ProjectConfig, bundle: Path, val: List[Dict[str, np.ndarray]],
                            reference: List[List[np.ndarray]], out_names: List[str], labels: Optional[np.ndarray],
                            starts: Optional[List[bool]]) -> Dict[str, Any]:
    """reference.npz gets a bounded, deterministic subset of the validation set (whole streams), so a
    bundle stays small beside its model; the build's own metric still covers every sample."""
    v = config.validation
    idx = artifact.reference_subset(val, reference, v.reference_samples, v.reference_max_mb, starts)
    sub_starts = None if starts is None else [starts[i] for i in idx]
    artifact.write_reference(bundle / artifact.REFERENCE, [val[i] for i in idx], [reference[i] for i in idx], out_names,
                             None if labels is None else np.asarray(labels)[idx], sub_starts)
    shipped: Dict[str, Any] = {"samples": len(idx), "of": len(val), "max_samples": v.reference_samples,
                               "max_mb": v.reference_max_mb, "bytes": (bundle / artifact.REFERENCE).stat().st_size}
    model = bundle / "model.onnx"
    if len(idx) < len(val) and model.is_file():
        # The threshold was met on the whole set; on a subset a rate such as top-1 is coarse (one miss
        # in 32 is 3%), so the host's own score of the shipped file on these samples is recorded: the
        # device must reproduce it where the subset alone misses the threshold (see runner.validate).
        metric = MetricSpec.from_config(v)
        k = metric.output_index(out_names)
        stream = (metric.stream, tuple(sub_starts or ())) if metric.stream else None
        mine = run_model(model, [val[i] for i in idx], stream)
        shipped["host_value"] = metric.score([m[k] for m in mine], [reference[i][k] for i in idx],
                                             [val[i] for i in idx])["value"]
    return shipped


def build(config: ProjectConfig, profile: TargetProfile, out_dir: Path, precision: str = "auto",
          budget_s: float = 300.0, progress: Optional[Progress] = None, remeasure: bool = False,
          tune: Optional[Any] = None) -> BuildResult:
    """``remeasure``: time every comparison afresh instead of reusing the previous build record's
    timings of identical models (which keeps rebuilds byte-identical). ``tune``: a
    ``tune.TuneOptions``; the device it names chooses among the candidates (edgekit/tune.py)."""
    from . import export, optimize
    from .quantize import quantize_for_target
    from .guard import resolve as resolve_guard
    from .quantize.choose import guard_refusal, without_measurements
    from .quantize.candidates import file_size
    from .quantize import registry
    from .quantize.evaluate import measure_latency

    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    bundle = artifact.bundle_dir(out_dir, config.model.name, profile.name)
    work = Path(out_dir) / ".work" / config.model.name / profile.name
    artifact.clean_dir(work)

    say("loading calibration and validation data")
    calib, _, calib_starts = data.load_stream_samples(config.calibration, config, "calibration")
    val, labels, starts = data.load_stream_samples(config.validation, config, "validation")
    if not val:
        raise ConfigError(f"{config.path}: field 'validation': no samples")

    if tune is not None:  # refusals (an emulated board, no power sensor for energy) before the minutes of work
        from .tune import preflight

        preflight(config, profile, tune, say)
    say(f"exporting {config.model.source} model '{config.model.name}' to ONNX")
    exported = export.export(config, work, check_feed=val[0])
    if exported.source == "tflite":
        if tune is not None:
            raise ConfigError(f"{config.path}: a converted .tflite model ships as it is: there are no candidates "
                              "for --tune-on to choose between")
        return _bundle_tflite(config, profile, exported.path, bundle, val, labels, t0, say, starts)
    io = _io_specs(exported.path)
    _check_data_matches_model(exported.path, io, config, calib, val)
    metric = MetricSpec.from_config(config.validation)
    if metric.stream:
        metric = dataclasses.replace(metric, starts=tuple(starts or ()))
        say("carrying FP32 stream state through the calibration chunks")
        calib = _carried_feeds(exported.path, calib, list(metric.stream), list(calib_starts or ()))

    say(f"optimizing the graph ({profile.graph_optimization})")
    prepared = optimize.prepare(exported.path, work / "model.prepared.onnx", profile)

    say(f"quantizing for {profile.name}")
    guard = resolve_guard(config.validation.guard.model_dump(mode="json"), exported.path, config.validation.mask_input)
    memo = build_record.TimingMemo(measure_latency, build_record.read_timings(bundle), fresh=remeasure)
    # An explicit [calibration] max_samples is also the quantizer's cap (it otherwise caps at its default).
    cap = config.calibration.max_samples if "max_samples" in config.calibration.model_fields_set else None
    q = quantize_for_target(prepared, work / "quantize", profile, calib, val, metric, precision=precision,
                            budget_s=budget_s, seed=config.seed, progress=say, measure=memo, guard=guard,
                            calibration_cap=cap, feeds_checked=True)
    reference = q.reference_outputs  # the FP32 outputs the candidates were scored against
    tuning: Dict[str, Any] = {}
    tune_run: Dict[str, Any] = {}
    if tune is not None:  # the device chooses among the candidates that passed here
        from .tune_build import tune_quantized

        q, tuning, tune_run = tune_quantized(config, profile, q, val, reference, labels, starts, metric, guard, io,
                                             work, Path(out_dir), tune, say)

    say("writing the bundle")
    artifact.clean_dir(bundle)
    optimize.copy_model(q.model_path, bundle / "model.onnx")  # keeps external data of >2 GB models
    shipped = _write_reference_subset(config, bundle, val, reference, [o["name"] for o in io["outputs"]], labels, starts)
    artifact.copy_device_files(bundle, config.plugin_files())
    out_idx = metric.output_index([o["name"] for o in io["outputs"]])
    host_metric: Dict[str, Any] = {f"{q.precision}_vs_fp32": q.metric_after}
    if labels is not None:
        # the FP32 model's outputs are the references: not run a second time when it ships
        chosen = reference if registry.is_reference(q.precision) else run_model(bundle / "model.onnx", val,
                                                                                 metric.stream_plan)
        host_metric["task_accuracy"] = {
            "fp32": float(np.mean([np.argmax(r[out_idx]) == l for r, l in zip(reference, labels)])),
            q.precision: float(np.mean([np.argmax(c[out_idx]) == l for c, l in zip(chosen, labels)])),
        }
    size = file_size(bundle / "model.onnx")  # external data (models over 2 GB) included
    fp32_size = q.fp32_size_bytes or file_size(exported.path)  # like for like: the FP32 file this build would ship
    manifest = artifact.write_manifest(bundle, {
        "model": config.model.name,
        "target": profile.name,
        "target_profile": profile.model_dump(mode="json"),
        "artifact": "model.onnx",
        # the level the chosen model was measured at: int8 fusions need "extended"/"all"
        "runtime": _manifest_runtime(profile, "onnxruntime", q.runtime_graph_optimization, q.precision,
                                     q.disabled_optimizers),
        "inputs": io["inputs"],
        "outputs": io["outputs"],
        "metric": metric.to_manifest(),
        "guard": guard,  # the thresholds runner.py validate applies again on the device
        "export": {"source": exported.source, "opset": exported.opset, "max_abs_diff": exported.max_abs_diff},
        # measurements (host latency) vary between builds: they go to the build record, not here
        "quantization": q.model_dump(mode="json", exclude={"model_path": True, "latency_ms": True,
                                                           "candidate_files": True, "candidate_extras": True,
                                                           "latency_pruning": True,
                                                           "candidates": {"__all__": {"p50_ms"}},
                                                           "fallback_search": {"__all__": {"p50_ms", "aa_noise_floor"}}})
        | {"reason": without_measurements(q.reason)},
        "build_metrics": {"size_bytes": size, "fp32_size_bytes": fp32_size, "host_metric": host_metric},
        "reference": shipped,
        **({"tuning": tuning} if tuning else {}),
    })
    seconds = time.perf_counter() - t0
    record = build_record.write(bundle, manifest["release_id"], seconds, {
        **({"tuning": tune_run} if tune_run else {}),
        "latency_ms": q.latency_ms, "latency_pruning": q.latency_pruning, "reason": q.reason,
        "candidates_p50_ms": {c.name: c.p50_ms for c in q.candidates},
        "fallback_search_p50_ms": {n: {k: rec[k] for k in ("p50_ms", "aa_noise_floor") if k in rec}
                                   for n, rec in q.fallback_search.items()},
    }, memo)
    return BuildResult(model=config.model.name, target=profile.name, bundle=bundle, release_id=manifest["release_id"],
                       precision=q.precision, method=q.method, reason=q.reason, size_bytes=size,
                       fp32_size_bytes=fp32_size, metric=q.metric_after, seconds=seconds, record=record,
                       timing_note=memo.summary(), guard=q.guard, calibration=str(q.calibration.get("note", "")),
                       guard_refused={c.name: guard_refusal(c) for c in q.candidates if guard_refusal(c)},
                       tuning={**tuning, "run": tune_run} if tuning else {})
