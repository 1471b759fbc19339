"""The quantization methods as build candidates: each builds one full-int8 file, is scored like the
built-in static candidate (exact int8 arithmetic where this host's kernels are not the target's),
checked by the guards, and then competes in ``choose``: the profile order first, timing overriding
it on a matching host. None of them is assumed to win; the manifest records each recipe.

Which methods a model gets, by family (``presets.model_family``):
* cnn: ``cle`` (cross-layer equalization, then the profile's primary static preset), ``nncf``
  (NNCF PTQ with fast bias correction), and the layouts the profile's preset is not
  (``per-tensor`` weights, ``qoperator`` format);
* transformer: ``nncf-smoothquant`` (NNCF PTQ, transformer patterns, SmoothQuant alpha 0.95), also
  when dynamic int8 passed, if this host can time the target (``due``);
* generic: ``nncf``.
A method that cannot run (NNCF not installed, a GPU target, budget spent) is skipped with the reason
in ``skipped``; that never fails the build.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ...errors import QuantizationError
from ..candidates import build_static, file_size
from ..presets import QuantPreset, presets_for
from ..result import Candidate
from . import cle as _cle
from . import nncf_backend as _nncf

METHODS_BY_FAMILY = {
    "cnn": ("cle", "nncf", "per-tensor", "qoperator"),
    "transformer": ("nncf-smoothquant",),
    "generic": ("nncf",),
}
SMOOTHQUANT_ALPHA = 0.95
"""NNCF's default for ONNX MatMuls; Xiao et al. use 0.5-0.85 for LLMs, BERT-sized models want more
migration because their outliers sit in few channels."""
MIN_SECONDS_LEFT = 30.0
"""A method is started only with this much budget left (one NNCF build on a 250-node CNN: ~30 s here)."""


def methods_for(family: str, is_gpu: bool, large: bool) -> Tuple[List[str], Dict[str, str]]:
    """(methods to build, {method: why skipped})."""
    wanted = list(METHODS_BY_FAMILY.get(family, ()))
    skipped: Dict[str, str] = {}
    keep = []
    for m in wanted:
        if large:
            skipped[m] = "the model is over the 2 GB protobuf limit (methods rewrite it in memory)"
        elif is_gpu and m in ("qoperator", "cle"):
            skipped[m] = "TensorRT imports QDQ only" if m == "qoperator" else "GPU targets keep the profile's presets"
        elif m.startswith("nncf") and not _nncf.available():
            skipped[m] = f"NNCF is not installed (pip install 'edgekit[{_nncf.EXTRA}]')"
        else:
            keep.append(m)
    return keep, skipped


def build_method(method: str, base: Path, work_dir: Path, preset: QuantPreset, calibration_cache: Callable[[Path, QuantPreset], Path],
                 calib: List[Dict[str, Any]], always_float: List[str]) -> Tuple[Path, str, Dict[str, Any]]:
    """Build ``method``'s file. Returns (path, manifest method name, recipe)."""
    if method == "cle":
        eq = work_dir / "fp32-cle.onnx"
        report = _cle.equalize_file(base, eq, relu6_to_relu=False)
        if report.pairs == 0:
            raise QuantizationError("no conv pair joined by a positively homogeneous activation to equalize "
                                    f"(skipped: {report.skipped})")
        path = build_static(eq, work_dir / f"method-cle-{preset.name}.onnx", preset, calibration_cache(eq, preset),
                            nodes_to_exclude=always_float)
        return path, "static-qdq+cle", {**preset.summary(), "equalization": report.as_dict()}
    if method in ("per-tensor", "qoperator"):
        changed = {"per_channel": False} if method == "per-tensor" else {"format": "QOperator"}
        p = preset.model_copy(update={**changed, "name": f"{preset.name}-{method}"})
        path = build_static(base, work_dir / f"method-{p.name}.onnx", p, calibration_cache(base, p),
                            nodes_to_exclude=always_float)
        return path, "static-qoperator" if p.format == "QOperator" else "static-qdq", p.summary()
    if method in ("nncf", "nncf-smoothquant"):
        sq = method == "nncf-smoothquant"
        rec = _nncf.recipe(preset="mixed" if sq else "performance", transformer=sq,
                           smooth_quant_alpha=SMOOTHQUANT_ALPHA if sq else None,
                           ignored=always_float, subset_size=len(calib))
        path = _nncf.build_nncf(base, work_dir / f"method-{method}.onnx", calib, rec)
        return path, "static-qdq-nncf" + ("+smoothquant" if sq else ""), rec
    raise QuantizationError(f"unknown quantization method '{method}'")


def method_candidates(ctx: Any, scorer_for: Callable[[], Any], check: Callable[[Path, str], Dict[str, object]],
                      calibration_cache: Callable[[Path, QuantPreset], Path], always_float: List[str],
                      score_level: str, emulate: bool) -> Iterator[Tuple[Candidate, Path, Dict[str, Any]]]:
    """Yield (candidate, file, extra) per method that ran; ``extra['skipped']`` on a final record
    lists the methods that did not run and why."""
    methods, skipped = methods_for(ctx.family, ctx.profile.is_gpu, ctx.large)
    preset = presets_for(ctx.profile, ctx.family)[0]
    if preset.format != "QDQ":
        skipped.setdefault("qoperator", "the profile's preset is already QOperator")
        methods = [m for m in methods if m != "qoperator"]
    if not preset.per_channel:
        skipped.setdefault("per-tensor", "the profile's preset is already per-tensor")
        methods = [m for m in methods if m != "per-tensor"]
    scorer = scorer_for()
    for method in methods:
        if ctx.deadline - time.monotonic() < MIN_SECONDS_LEFT:
            skipped[method] = "the build budget was nearly spent"
            continue
        ctx.say(f"method: {method}")
        try:
            path, name, rec = build_method(method, ctx.base, ctx.work_dir, preset, calibration_cache, ctx.calib,
                                           always_float)
            score = scorer.score(path)
        except QuantizationError as exc:
            skipped[method] = exc.message if hasattr(exc, "message") else str(exc)
            continue
        report = check(path, score_level)
        passed = ctx.metric.passes(score["value"])
        refused = "" if report.get("passed", True) else f"guard: {_guard_text(report)}"
        from ..result import quantized_node_count

        qn = quantized_node_count(path)
        if passed and not refused and qn == 0:
            refused = "no node is quantized: this file is a float model, not int8"
        # no build time here: the recipe must be the same bytes on a rebuild
        note = f"method {method} (full int8, no fallback)"
        if emulate:
            note += f"; scored as exact int8 arithmetic (onnxruntime '{score_level}' level)"
        cand = Candidate(name=f"int8-{method}", precision="int8", method=name, metric=score, passed=passed,
                         refused=refused, quantized_nodes=qn, size_bytes=file_size(path), note=note, guard=report,
                         scored_at=score_level if emulate else "")
        yield cand, path, {"preset": rec, "kept_float": [], "method": method}
    ctx.method_skips = skipped


def due(ctx: Any, built: List[Candidate]) -> bool:
    """Whether to build the methods at all. They cost a build each, so: when the built-in int8 is
    not a clean full-int8 pass (it missed, was refused, or kept nodes float: rescue), and for a
    transformer on a host that can time the target (static int8 after SmoothQuant has no per-run
    activation quantization, so it may beat the dynamic int8 that passed: only timing can say)."""
    clean = any(c.precision == "int8" and c.passed and not c.refused and not c.kept_float for c in built)
    return not clean or (ctx.family == "transformer" and ctx.host_ok)


def as_built(ctx: Any, built: List[Candidate], calibrated: Callable[[Any, QuantPreset], Path],
             exact_level: str) -> Iterator[Any]:
    """The methods as registry ``Built`` candidates of the int8 builder (edgekit/quantize/builders/int8.py):
    scored at the level its static candidate is (exact int8 arithmetic where this host's kernels are
    not the target's), guarded by ``ctx.guard``, calibrated through the builder's cache for the FP32
    base and afresh for a rewritten (equalized) model."""
    if not due(ctx, built):
        return
    from .. import calibration as cal
    from ..evaluate import Scorer
    from ..graph import activation_matmuls
    from ..presets import calibration_extra, runtime_level_for
    from ..registry import Built

    emulate = not ctx.host_ok and not ctx.profile.is_gpu
    level = exact_level if emulate else runtime_level_for("static", ctx.profile)

    def cache(model: Path, preset: QuantPreset) -> Path:
        if model == ctx.base:
            return calibrated(ctx, preset)
        out = ctx.work_dir / f"calibration-{model.stem}-{preset.calibration_method}.json"
        out.unlink(missing_ok=True)
        return cal.calibrate(model, ctx.calib, preset.calibration_method, preset.op_types, out,
                             extra=calibration_extra(preset), large=ctx.large)

    always = activation_matmuls(ctx.graph) if ctx.family == "transformer" else []
    for cand, path, extra in method_candidates(ctx, lambda: Scorer(ctx.metric, ctx.validation, ctx.refs, ctx.index, level),
                                               ctx.guard, cache, always, level, emulate):
        yield Built(cand, path, recipe=extra["preset"])


def _guard_text(report: Dict[str, object]) -> str:
    from ... import guard as _guard

    return _guard.describe(report)
