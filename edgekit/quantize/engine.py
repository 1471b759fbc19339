"""``quantize_for_target``: presets -> calibration -> int8 variants with fallback -> latency pruning
(``prune.py``, matching hosts only) -> candidates -> choice.

Determinism: every decision that shapes the model bytes depends on metric values computed with a
fixed thread count, never on wall time. Timing only overrides the profile's order when a difference
is consistent across interleaved rounds: large between candidates (``LATENCY_MARGIN``), any size when
float beats int8 (``INT8_VS_FLOAT_MARGIN``); running out of ``budget_s`` is an error rather than
a silently different (partial) search.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from .. import guard as _guard
from .. import targets as _targets
from ..errors import QuantizationError
from ..metrics import MetricSpec
from ..optimize import is_large, save_model, upgrade_opset
from ..targets import TargetProfile
from . import calibration as cal
from . import registry
from .candidates import build_fp32, file_size
from .choose import choose
from .evaluate import make_session, run_outputs
from .graph import SUBGRAPH_OPS, iter_nodes, name_nodes, op_counts
from .presets import DISABLED_OPTIMIZERS, model_family, runtime_level_for
from .registry import BuildContext
from .result import Candidate, KeptFloat, QuantizeResult

SENSITIVITY_SAMPLES = 8
"""Calibration feeds (not validation ones) used to rank nodes; the threshold is checked on validation."""

def _prepare_base(model_path: Path, work_dir: Path) -> Path:
    """The FP32 model every candidate starts from: opset >= 13 and every node named. A build hands
    in ``optimize.prepare``'s output, already upgraded (upgrade_opset then converts nothing); a
    direct caller may hand in an older opset."""
    import onnx

    model = onnx.load(str(model_path))
    upgraded = upgrade_opset(model)
    renamed = name_nodes(upgraded)
    base = work_dir / "fp32.onnx"
    if upgraded is model and not renamed:
        return build_fp32(model_path, base)
    return save_model(upgraded, base)


def quantize_for_target(
    model_path: Path,
    work_dir: Path,
    profile: TargetProfile,
    calibration: List[Dict[str, np.ndarray]],
    validation: List[Dict[str, np.ndarray]],
    metric: MetricSpec,
    precision: str = "auto",
    budget_s: float = 300.0,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
    measure: Optional[Callable[..., Dict[str, List[float]]]] = None,
    calibration_cap: Optional[int] = None,
    guard: Optional[Dict[str, object]] = None,
    feeds_checked: bool = False,
) -> QuantizeResult:
    """Build the candidates ``profile`` allows and keep the fastest that meets ``metric``.

    Raises QuantizationError for unusable inputs (a calibration sample that does not fit the model,
    an unknown precision) and AccuracyError when no allowed candidate meets the threshold, or when
    ``budget_s`` runs out before the search ends. ``measure`` replaces host timing
    (``evaluate.measure_latency``'s signature) for latency pruning and the choice; tests inject one.
    ``calibration_cap`` (``[calibration] max_samples``) replaces the default cap on calibration samples.
    ``guard``: edgekit.toml's [validation.guard] settings; every candidate but FP32 must pass them
    on every output (see ``edgekit.guard``). ``feeds_checked``: the caller (the build) has already
    checked every feed against the model's inputs (``calibration.check_feeds``), so it is not done twice.
    The result's ``reference_outputs`` are the FP32 outputs on ``validation``, computed once here.
    """
    import onnx

    say = progress or (lambda _msg: None)
    deadline = time.monotonic() + float(budget_s)
    known = registry.names()
    if precision != "auto" and precision not in known:
        raise QuantizationError(f"unknown precision '{precision}' (known: auto, {', '.join(known)})")
    wanted = list(profile.quantization.precisions) if precision == "auto" else [precision]
    if precision != "auto" and registry.get(precision).applies_to(profile):
        raise QuantizationError(f"--precision {precision}: {registry.get(precision).applies_to(profile)}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    if not feeds_checked:
        header = onnx.load(str(model_path), load_external_data=False)
        cal.check_feeds(header, calibration, "calibration")
        cal.check_feeds(header, validation, "validation")
    say("preparing the FP32 base")
    base = _prepare_base(Path(model_path), work_dir)
    graph = onnx.load(str(base))
    family = model_family(op_counts(graph))
    index = metric.output_index([o.name for o in graph.graph.output])
    fp32_level = runtime_level_for("fp32", profile)
    fp32_session = make_session(base, fp32_level)
    # every FP32 output on the validation set, once per build: the metric's references, the guards'
    # and the bundle's reference.npz
    all_refs = _guard.all_outputs(fp32_session, validation, metric.stream_plan)
    refs = [o[index] for o in all_refs]
    guard_conf = _guard.arithmetic.settings(guard)
    out_names = [o.name for o in graph.graph.output]
    guard_refs = all_refs if guard_conf["enabled"] else []
    cap = int(calibration_cap) if calibration_cap else cal.MAX_CALIBRATION_SAMPLES
    calib = cal.select_samples(calibration, cap, seed)
    cal_note = cal.describe_selection(len(calib), len(calibration), cap, calibration_cap is not None)
    say(cal_note)
    sens_feeds = calib[:SENSITIVITY_SAMPLES]
    arch_ok = profile.arch == _targets.host_arch()
    host_ok = arch_ok and not profile.is_gpu and set(profile.isa_features) <= _targets.host_cpu_flags()
    ctx = BuildContext(work_dir=work_dir, profile=profile, metric=metric, deadline=deadline, say=say, base=base,
                       host_ok=host_ok, measure=measure, graph=graph, family=family, index=index, large=is_large(base),
                       calib=calib, validation=validation, refs=refs, sens_feeds=sens_feeds,
                       sens_refs=run_outputs(fp32_session, sens_feeds, index), caches={},
                       guard_conf=guard_conf, guard_refs=guard_refs, out_names=out_names)
    del fp32_session

    cands: List[Candidate] = []
    built: Dict[str, registry.Built] = {}
    metric_before: Dict[str, float] = {}
    for prec in wanted:
        builder = registry.get(prec)
        why_not = builder.applies_to(profile)
        if why_not:  # a profile listing a precision its target cannot run: said, never silently built
            say(f"skipping {prec}: {why_not}")
            continue
        for b in builder().build(ctx):
            metric_before = metric_before or dict(b.metric_before or {})
            cands.append(b.candidate)
            built[b.candidate.name] = b
    files = {name: b.path for name, b in built.items()}

    latency: Dict[str, object] = {"host_matches_target": host_ok}
    say("choosing")
    chosen, reason = choose(cands, files, wanted, precision, profile, metric, arch_ok, host_ok, latency,
                            validation[0], deadline, measure=measure)
    shipped = built[chosen.name]
    kept = [KeptFloat(**k) for k in shipped.kept_float] + _subgraph_notes(graph, chosen)
    _cleanup(work_dir, keep=set(files.values()) | {base}, patterns=_scratch(wanted))
    return QuantizeResult(
        model_path=files[chosen.name], target=profile.name, precision=chosen.precision, method=chosen.method,
        preset=dict(shipped.recipe), kept_float=kept,
        metric_before=metric_before or dict(chosen.metric or {}), metric_after=dict(chosen.metric or {}),
        latency_ms=latency, candidates=cands,
        latency_pruning={n: b.latency_pruning for n, b in built.items() if b.latency_pruning is not None},
        reason=reason, fallback_search={n: b.fallback_search for n, b in built.items() if b.fallback_search},
        runtime_graph_optimization=runtime_level_for(chosen.method, profile), family=family,
        disabled_optimizers=list(DISABLED_OPTIMIZERS) if registry.is_integer(chosen.precision) else [],
        guard=dict(chosen.guard or {"passed": True, "findings": [], "outputs": [], "note": "FP32 is the reference"}),
        calibration={"method": profile.quantization.calibration_method, "samples": len(calib),
                     "given": len(calibration), "cap": cap, "note": cal_note, "digest": cal.feeds_digest(calib),
                     "used_by_chosen": chosen.method.startswith("static")},
        seed=seed, fp32_size_bytes=file_size(base), reference_outputs=all_refs,
        methods_skipped=getattr(ctx, "method_skips", {}),
        candidate_files=dict(files), candidate_extras=_tuning_extras(built),
    )


def _tuning_extras(built: Dict[str, registry.Built]) -> Dict[str, Dict[str, object]]:
    """What on-device tuning (edgekit/tune_build.py, tune_prune.py) needs to ship another candidate
    than the host's choice, or to build its group reverts: kept in memory, never serialised."""
    return {n: {"preset": dict(b.recipe), "kept_float": list(b.kept_float),
                **({"variant": b.variant} if b.variant is not None else {})} for n, b in built.items()}


def _subgraph_notes(graph, chosen: Candidate) -> List[KeptFloat]:
    if not registry.is_integer(chosen.precision):
        return []
    return [KeptFloat(node=node.name, op_type=node.op_type,
                      reason="control flow: its subgraph bodies stay float (int8 quantizes the main graph)")
            for node, depth in iter_nodes(graph.graph) if depth == 0 and node.op_type in SUBGRAPH_OPS]



def _scratch(wanted: List[str]) -> List[str]:
    return [p for name in wanted for p in registry.get(name).scratch]


def _cleanup(work_dir: Path, keep: set, patterns: List[str]) -> None:
    """Drop the builders' intermediate files (their ``scratch`` patterns); the candidate files stay."""
    keep_names = {p.name for p in keep} | {p.name + ".data" for p in keep}
    for pattern in patterns:
        for p in work_dir.glob(pattern):
            if p.name not in keep_names:
                p.unlink(missing_ok=True)
