"""int8: static QDQ (every preset of the profile, with the accuracy-aware and guard fallbacks and
latency pruning) and dynamic int8 (CPU only), tried in onnxruntime's recommended order per model family.

The int8 candidate builder of the registry (``edgekit.quantize.registry``); the engine prepares the
shared context and ``choose`` decides between this and the other precisions' candidates.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ... import guard as _guard
from ... import targets as _targets
from ...errors import AccuracyError
from .. import calibration as cal
from ..candidates import build_dynamic, build_static, file_size
from ..evaluate import Scorer
from ..fallback import accuracy_fallback, faster_than_fp32, revert_until_within_tolerance, timer
from ..fusion import fuse_transformer
from ..graph import activation_matmuls, initializer_names, quantizable_nodes
from ..presets import QuantPreset, calibration_extra, dynamic_supported, presets_for, runtime_level_for
from ..prune import drop_unprofitable_quantization
from ..registry import Built, BuildContext, CandidateBuilder
from ..result import Candidate, quantized_node_count
from ..sensitivity import rank_by_leave_one_out, rank_by_rebuild

DYNAMIC_OPS = ("MatMul", "Attention", "EmbedLayerNormalization")
EXACT_INT8_LEVEL = "basic"
"""Session level that runs a QDQ model as DQ -> float op -> Q (no int8 kernel fusion): what an int8
kernel without saturation computes. Used to score static int8 for a CPU target this host does not match."""


class Int8(CandidateBuilder):
    """Static QDQ int8 and dynamic int8; the second variant is built only when the first misses."""

    precision = "int8"
    family = "integer"
    order = 10
    description = ("static QDQ per the target's preset (accuracy-aware and guard fallback, latency pruning), "
                   "or dynamic int8 on CPU targets; tried in onnxruntime's recommended order per model family")
    engine_precisions = frozenset({"int8", "fp16"})
    scratch = ("static-*.onnx*", "dynamic-*.onnx*", "method-*.onnx*", "fp32-cle.onnx")

    def build(self, ctx: BuildContext) -> Iterator[Built]:
        from ..methods.candidates import as_built

        cands: List[Candidate] = []
        for cand, path, extra, before in _int8_variants(ctx):
            cands.append(cand)
            yield Built(cand, path, recipe=extra["preset"], kept_float=extra["kept_float"],
                        latency_pruning=extra["latency_pruning"], fallback_search=extra["fallback_search"],
                        metric_before=before, variant=extra["variant"])
        # issue #14: CLE, NNCF (bias correction, SmoothQuant), layouts; each competes in choose()
        yield from as_built(ctx, cands, _calibrated, EXACT_INT8_LEVEL)


def _int8_variants(ctx: BuildContext):
    """Yield int8 candidates in preference order, stopping at the first that meets the threshold.

    onnxruntime's guidance: dynamic quantization for transformers, static for CNNs. On a CPU target a
    transformer therefore tries (fused) dynamic first; static QDQ is built only if dynamic misses,
    and GPU targets get static QDQ only (TensorRT imports nothing else).
    """
    order: List[str] = ["static"]
    if dynamic_supported(ctx.profile):
        if ctx.family == "transformer":
            order = ["dynamic", "static"]
        elif ctx.family == "generic":
            order = ["static", "dynamic"]
    for variant in order:
        out = _static(ctx) if variant == "static" else _dynamic(ctx)
        yield out
        if out[0].passed and not out[0].refused:
            return


def _prune(ctx: BuildContext, note: str, build: Callable[[Sequence[str]], Path], current: Tuple[Path, Dict[str, float]],
           still: List[Tuple[str, str]], scorer: Scorer, level: str):
    """Issue #3 step 4: drop int8 groups that run clearly slower than float on a matching host.
    Returns (path, score, kept_float entries, JSON record)."""
    if note or not ctx.metric.passes(current[1]["value"]):
        return current[0], current[1], [], {"skipped": "not run: this int8 variant does not pass"}
    missing = sorted(set(ctx.profile.isa_features) - _targets.host_cpu_flags())
    if ctx.profile.is_gpu:
        why = "the target's accelerator cannot be timed on this CPU host"
    elif ctx.profile.arch != _targets.host_arch():
        why = f"the target's architecture ({ctx.profile.arch}) is not this host's ({_targets.host_arch()})"
    else:
        why = f"this host lacks the target's {', '.join(missing)}"
    res = drop_unprofitable_quantization(build, current, still, scorer.score, ctx.metric, ctx.host_ok,
                                         ctx.validation[0], level, ctx.profile.intra_op_threads or 2, ctx.deadline,
                                         skip_reason=why, measure=ctx.measure, progress=ctx.say)
    return res.model_path, res.metric, res.dropped, res.record


def _calibrated(ctx: BuildContext, preset: QuantPreset) -> Path:
    key = (preset.calibration_method, preset.symmetric_activations, preset.op_types)
    if key not in ctx.caches:
        ctx.say(f"calibrating ({preset.calibration_method}, {len(ctx.calib)} samples)")
        cache = ctx.work_dir / f"calibration-{len(ctx.caches)}-{preset.calibration_method}.json"
        cache.unlink(missing_ok=True)
        ctx.caches[key] = cal.calibrate(ctx.base, ctx.calib, preset.calibration_method, preset.op_types, cache,
                                        extra=calibration_extra(preset), large=ctx.large)
    return ctx.caches[key]


def _static(ctx: BuildContext):
    """Static int8: every preset of the profile fully quantized, the best kept, then the fallback."""
    metric = ctx.metric
    level = runtime_level_for("static", ctx.profile)
    # Score where the host computes what the target computes: a CPU target's int8 kernels (VNNI,
    # ARM dot product) accumulate u8 x s8 exactly, this host's fused kernels may not (AVX2's
    # VPMADDUBSW saturates: EfficientNet-Lite0 full int8 agreed 0.68 top-1 fused here, 0.90 as
    # exact arithmetic). At 'basic' QDQ runs as DQ -> float op -> Q: the exact int8 arithmetic.
    emulate = not ctx.host_ok and not ctx.profile.is_gpu
    score_level = EXACT_INT8_LEVEL if emulate else level
    scorer = Scorer(metric, ctx.validation, ctx.refs, ctx.index, score_level)
    tried: List[Tuple[QuantPreset, Path, Dict[str, float]]] = []
    presets = presets_for(ctx.profile, ctx.family)
    # MatMulConstBOnly only works in QOperator mode; in QDQ the attention MatMuls go by name.
    always = activation_matmuls(ctx.graph) if presets[0].extra_options.get("MatMulConstBOnly") else []
    for preset in presets:
        ctx.say(f"static int8 {preset.name}")
        path = build_static(ctx.base, ctx.work_dir / f"static-{preset.name}-0.onnx", preset, _calibrated(ctx, preset),
                            nodes_to_exclude=always, large=ctx.large)
        tried.append((preset, path, scorer.score(path)))
    # The better-scoring preset wins (type candidates are alternatives the profile says run alike);
    # a tie keeps the profile's primary preset.
    preset, path0, score0 = tried[0]
    for p, pth, sc in tried[1:]:
        if metric.better(sc["value"], score0["value"]) or (
                sc["value"] == score0["value"] and sc["output_error"] < 0.9 * score0["output_error"]):
            preset, path0, score0 = p, pth, sc
    before = tried[0][2]
    cache = _calibrated(ctx, preset)
    qnodes = quantizable_nodes(ctx.graph, preset.op_types, const_b_only=bool(preset.extra_options.get("MatMulConstBOnly")))
    kept = _const_b_notes(ctx, {n.name for n in qnodes})

    def build(excluded: Sequence[str]) -> Path:
        if not excluded:
            return path0
        # one file per float set: the search keeps several alive and compares them
        return build_static(ctx.base, ctx.work_dir / f"static-{preset.name}-{_set_tag(excluded)}.onnx", preset, cache,
                            nodes_to_exclude=list(always) + list(excluded), large=ctx.large)

    def rank(names: List[str], group: int):
        if ctx.large:  # in-memory reverts need a model under the 2 GB protobuf limit
            rank.record = {"method": "real builds", "why": "the model is over the 2 GB protobuf limit"}  # type: ignore[attr-defined]
            return rank_by_rebuild(build, names, ctx.sens_feeds, ctx.sens_refs, ctx.index, score_level, ctx.deadline,
                                   group_size=max(group, -(-len(names) // 8)), progress=ctx.say)
        return rank_by_leave_one_out(path0, ctx.base, names, ctx.sens_feeds, ctx.sens_refs, ctx.index, score_level,
                                     deadline=ctx.deadline, group_size=group, progress=ctx.say,
                                     op_types=preset.op_types, build=build, record=rank.record)  # type: ignore[attr-defined]
    rank.record = {}  # type: ignore[attr-defined]

    def fast_build() -> Optional[Callable[[Sequence[str]], Path]]:
        # The ranking checked its in-memory reverts against real builds: the search may use them too
        # (one session each instead of a quantize_static: EfficientNet-Lite0, 2.5 s -> 0.03 s).
        if rank.record.get("method") != "in-memory reverts":  # type: ignore[attr-defined]
            return None
        return _in_memory_builder(path0, ctx.base, preset.op_types, ctx.work_dir / f"static-{preset.name}", build)

    path, score, reverted, note, search = accuracy_fallback(ctx, build, scorer, (path0, score0),
                                                             [(n.name, n.op_type) for n in qnodes], rank, level,
                                                             fast_build=fast_build)
    acc = [k["node"] for k in reverted]
    still = [(n.name, n.op_type) for n in ctx.graph.graph.node
             if n.op_type in preset.op_types and n.name not in set(always) | set(acc)]

    def build_lat(extra: Sequence[str]) -> Path:
        return build_static(ctx.base, ctx.work_dir / f"static-{preset.name}-lat{len(acc) + len(extra)}.onnx", preset,
                            cache, nodes_to_exclude=list(always) + acc + list(extra), large=ctx.large)

    path, score, dropped, record = _prune(ctx, note, build_lat, (path, score), still, scorer, level)
    reverted += dropped
    report, repaired = ctx.guard(path, score_level), ""
    if not note and metric.passes(score["value"]) and not report["passed"]:
        done = [k["node"] for k in reverted]

        def build_guard(extra: Sequence[str]) -> Path:
            return build_static(ctx.base, ctx.work_dir / f"static-{preset.name}-g{len(done) + len(extra)}.onnx", preset,
                                cache, nodes_to_exclude=list(always) + done + list(extra), large=ctx.large)

        path, score, report, more, note, repaired = _guard_fallback(
            ctx, build_guard, scorer, score_level, (path, score), report,
            [n.name for n in qnodes if n.name not in set(done)], len(qnodes), len(done))
        reverted += more
    notes = [f"presets tried: {', '.join(t[0].name for t in tried)}"] + [x for x in (note, repaired) if x]
    if emulate:
        notes.append(f"scored as exact int8 arithmetic (onnxruntime '{EXACT_INT8_LEVEL}' level), since this host's "
                     "int8 kernels are not the target's")
    kept += reverted
    cand = _int8_candidate(Candidate(name=f"int8-static-{preset.name}", precision="int8",
                                     method="static-qdq" if preset.format == "QDQ" else "static-qoperator", metric=score,
                                     passed=metric.passes(score["value"]), size_bytes=file_size(path),
                                     kept_float=len(kept), note="; ".join(notes), guard=report,
                                     scored_at=score_level if emulate else ""), path, note)
    gone = [k["node"] for k in reverted]  # on-device latency pruning (edgekit/tune_prune.py) builds group reverts

    def variant(extra: Sequence[str], out: Path) -> Path:
        return build_static(ctx.base, out, preset, cache, nodes_to_exclude=list(always) + gone + list(extra),
                            large=ctx.large)
    return cand, path, {"preset": preset.summary(), "kept_float": kept, "latency_pruning": record,
                        "fallback_search": search, "variant": (variant, [n for n in still if n[0] not in gone])}, before


def _dynamic(ctx: BuildContext):
    """Dynamic int8 (CPU only), on the transformer-fused graph when fusion applies."""
    import onnx

    q = ctx.profile.quantization
    level = runtime_level_for("dynamic", ctx.profile)
    src, fused = ctx.base, None
    if ctx.family == "transformer":
        ctx.say("fusing attention / layer norm for the CPU execution provider")
        fused_path = ctx.work_dir / "fp32-fused.onnx"
        fused = fuse_transformer(ctx.base, fused_path, ctx.sens_feeds, ctx.sens_refs, ctx.index, level, ctx.large)
        if fused:
            src = fused_path
    graph = onnx.load(str(src), load_external_data=False) if src != ctx.base else ctx.graph
    inits = initializer_names(graph)
    nodes = [(n.name, n.op_type) for n in graph.graph.node if n.op_type in DYNAMIC_OPS
             and (n.op_type != "MatMul" or (len(n.input) > 1 and n.input[1] in inits))]
    # Without VNNI, u8 x s8 products can saturate 16-bit sums: 7-bit weights, as the profile says.
    reduce_range = q.reduce_range
    ctx.say("dynamic int8")

    def build(excluded: Sequence[str]) -> Path:
        return build_dynamic(src, ctx.work_dir / f"dynamic-{len(excluded)}.onnx",
                             DYNAMIC_OPS, per_channel=q.per_channel, reduce_range=reduce_range,
                             nodes_to_exclude=excluded, large=ctx.large)

    scorer = Scorer(ctx.metric, ctx.validation, ctx.refs, ctx.index, level)
    path0 = build([])
    score0 = scorer.score(path0)

    def rank(names: List[str], group: int):
        # Each leave-one-out build overwrites the same scratch file; only its score is kept.
        scratch = ctx.work_dir / "dynamic-rank.onnx"

        def one(excluded: Sequence[str]) -> Path:
            if not excluded:
                return path0
            return build_dynamic(src, scratch, DYNAMIC_OPS, per_channel=q.per_channel, reduce_range=reduce_range,
                                 nodes_to_exclude=excluded, large=ctx.large)
        return rank_by_rebuild(one, names, ctx.sens_feeds, ctx.sens_refs, ctx.index, level, ctx.deadline,
                               group_size=max(group, -(-len(names) // 16)), progress=ctx.say)

    path, score, reverted, note, search = accuracy_fallback(ctx, build, scorer, (path0, score0), nodes, rank,
                                                             level, ranked_only=True)
    acc = [k["node"] for k in reverted]

    def build_lat(extra: Sequence[str]) -> Path:
        return build_dynamic(src, ctx.work_dir / f"dynamic-lat{len(acc) + len(extra)}.onnx", DYNAMIC_OPS,
                             per_channel=q.per_channel, reduce_range=reduce_range,
                             nodes_to_exclude=acc + list(extra), large=ctx.large)

    path, score, dropped, record = _prune(ctx, note, build_lat, (path, score),
                                          [n for n in nodes if n[0] not in set(acc)], scorer, level)
    reverted += dropped
    report = ctx.guard(path, level)
    if not report["passed"] and not note:
        note = f"guard: {_guard.describe(report)}"
    preset = {"method": "dynamic", "activation_type": "QUInt8 (per run)", "weight_type": "QInt8",
              "per_channel": q.per_channel, "reduce_range": reduce_range, "op_types": list(DYNAMIC_OPS),
              "extra_options": {"MatMulConstBOnly": True},
              "transformer_fusion": dict(sorted(fused.items())) if fused else {}}
    kept = _const_b_notes(ctx, {n for n, _ in nodes}, graph) + reverted
    cand = _int8_candidate(Candidate(name="int8-dynamic", precision="int8", method="dynamic", metric=score, guard=report,
                                     passed=ctx.metric.passes(score["value"]), size_bytes=file_size(path),
                                     kept_float=len(kept), note="; ".join(x for x in [("fused: " + ", ".join(sorted(fused)))
                                                                                      if fused else "", note] if x)),
                           path, note)
    gone = [k["node"] for k in reverted]

    def variant(extra: Sequence[str], out: Path) -> Path:
        return build_dynamic(src, out, DYNAMIC_OPS, per_channel=q.per_channel, reduce_range=reduce_range,
                             nodes_to_exclude=gone + list(extra), large=ctx.large)
    return cand, path, {"preset": preset, "kept_float": kept, "latency_pruning": record, "fallback_search": search,
                        "variant": (variant, [n for n in nodes if n[0] not in gone])}, score0


def _int8_candidate(cand: Candidate, path: Path, note: str) -> Candidate:
    """Record honestly: ``passed`` is the metric (false when only reverting every node reached it);
    a fallback note that rules the candidate out (too little int8 left) and a file with no quantized
    node at all become ``refused``."""
    cand.quantized_nodes = quantized_node_count(path)
    if note.startswith("every quantized node had to be reverted"):
        cand.passed = False  # int8 cannot reach the threshold: only the float model it became does
    elif note and not note.startswith("unreachable"):
        cand.refused = note
    elif cand.quantized_nodes == 0:
        cand.refused = "no node is quantized (0 QuantizeLinear or int8 nodes): this file is a float model, not int8"
    return cand


def _guard_fallback(ctx: BuildContext, build: Callable[[Sequence[str]], Path], scorer: Scorer, level: str,
                    current: Tuple[Path, Dict[str, float]], report: Dict[str, object], names: List[str],
                    total: int, done: int):
    """The metric passes but a guard fails: revert the quantized nodes nearest the failing outputs
    (shortest passing prefix, as the accuracy fallback does) rather than refusing int8 outright.
    Returns (path, score, report, kept_float entries, note, what was repaired); a non-empty note
    means not repaired."""
    failing = sorted({str(f["output"]) for f in report["findings"]})  # type: ignore[union-attr]
    order = _guard.nearest_first(ctx.graph, failing, names)
    reports: Dict[str, Dict[str, object]] = {str(current[0]): report}
    refused = f"guard: {_guard.describe(report)}"
    if not order:
        return current[0], current[1], report, [], refused, ""

    def score(path: Path) -> Dict[str, float]:
        if str(path) not in reports:
            reports[str(path)] = ctx.guard(path, level)
        found = reports[str(path)]["findings"]
        return {**scorer.score(path), "guard_findings": float(len(found))}  # type: ignore[arg-type]

    ctx.say(f"guard: {len(failing)} output(s) fail; reverting the nodes nearest them")
    first = (current[0], {**current[1], "guard_findings": float(len(report["findings"]))})  # type: ignore[arg-type]
    try:
        fb = revert_until_within_tolerance(build, score, ctx.metric, order, ctx.deadline, first=first, progress=ctx.say,
                                           accept=lambda s: ctx.metric.passes(s["value"]) and s["guard_findings"] == 0)
    except AccuracyError as exc:
        if exc.details.get("budget"):
            raise
        return (current[0], current[1], report, [],
                f"{refused} (still failing with all {len(order)} node(s) upstream reverted)", "")
    ops = {n.name: n.op_type for n in ctx.graph.graph.node}
    kept = [{"node": n, "op_type": ops.get(n, "?"), "reason": "guard: int8 here damaged output "
             + ", ".join(failing) + " (a slice collapsed or diverged from FP32)"} for n in fb.excluded]
    result = {k: v for k, v in fb.metric.items() if k != "guard_findings"}
    left = done + len(fb.excluded)
    # mostly float: kept only where a matching host measures it faster than FP32 (as the accuracy fallback)
    faster = faster_than_fp32(timer(ctx, level), "guarded", fb.model_path) if left * 2 > total else True
    if not faster:
        why = ("this host cannot time the target to show that the int8 left pays for its Q/DQ" if faster is None
               else "the result was not faster than FP32 on this host")
        return fb.model_path, result, reports[str(fb.model_path)], kept, (
            f"{refused}; clearing them left {left} of {total} quantized nodes float, and {why}"), ""
    repaired = f"guards repaired by keeping {len(fb.excluded)} node(s) float; before: {_guard.describe(report, 2)}"
    return fb.model_path, result, reports[str(fb.model_path)], kept, "", repaired


def _const_b_notes(ctx: BuildContext, quantized: set, graph: Optional[object] = None) -> List[dict]:
    if ctx.family != "transformer":
        return []
    g = graph if graph is not None else ctx.graph
    return [{"node": n.name, "op_type": n.op_type,
             "reason": "activation x activation MatMul (attention): ranges change per input, few FLOPs"}
            for n in g.graph.node if n.op_type == "MatMul" and n.name not in quantized]  # type: ignore[attr-defined]


def _in_memory_builder(qdq: Path, fp32: Path, op_types: Sequence[str], stem: Path,
                       real: Callable[[Sequence[str]], Path]) -> Callable[[Sequence[str]], Path]:
    """``build(excluded)`` made by rewriting the full int8 graph in memory
    (``sensitivity.revert_in_memory``) instead of quantizing again; a set the rewrite knows it cannot
    make exactly goes to the real quantizer (``real``). The search still rebuilds every passing set
    for real and scores it again: the rewrite matched real builds on the sets the ranking checked,
    but can differ on others (EfficientNet-Lite0 with all 60 nodes float: the quantizer drops the
    Q/DQ around the final Reshape once both its neighbours are float, the rewrite keeps it; top-1
    0.99 in memory, 1.00 built)."""
    import onnx

    from ..sensitivity import revert_in_memory

    models: Dict[str, object] = {}

    def build(excluded: Sequence[str]) -> Path:
        if not excluded:
            return qdq
        if not models:
            models["qdq"], models["fp32"] = onnx.load(str(qdq)), onnx.load(str(fp32))
        model, exact, _why = revert_in_memory(models["qdq"], models["fp32"], op_types, list(excluded))
        if not exact:
            return real(excluded)
        out = stem.parent / f"{stem.name}-{_set_tag(excluded)}.mem.onnx"
        out.write_bytes(model.SerializeToString())
        return out
    return build


def _set_tag(excluded: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(excluded)).encode()).hexdigest()[:10]
    return f"{len(excluded)}-{digest}"
