"""The build's side of ``--tune-on``: what the device needs to score (the reference outputs it will
ship, per-candidate subset bars), the tuning itself, and the QuantizeResult for the candidate the
device chose. build.py calls :func:`tune_quantized` between quantizing and writing the bundle."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import artifact
from .tune import TuneOptions, tune
from .tune_choose import host_choice


def tune_quantized(config: Any, profile: Any, q: Any, val: List[Dict[str, np.ndarray]],
                   reference: List[List[np.ndarray]], labels: Optional[np.ndarray], starts: Optional[List[bool]],
                   metric: Any, guard: Dict[str, Any], io: Dict[str, Any], work: Path, out_dir: Path,
                   opts: TuneOptions, say: Callable[[str], None]) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
    """(the QuantizeResult to ship, the manifest's ``tuning`` section, the run's cost for the build record)."""
    from .build import run_model

    from .tune import tunable
    from .tune_prune import add_variants, original

    q0, variants = q, []
    out_names = [o["name"] for o in io["outputs"]]
    if opts.prune:  # group reverts of the int8 candidates, timed in the same device invocation
        k = metric.output_index(out_names)

        def score(path: Path) -> Dict[str, float]:
            outs = run_model(path, val, metric.stream_plan)
            return metric.score([o[k] for o in outs], [r[k] for r in reference], val)
        q, variants = add_variants(q, [c.name for c in tunable(q)], work, score, metric.passes, say)
    v = config.validation
    idx = artifact.reference_subset(val, reference, v.reference_samples, v.reference_max_mb, starts)
    sub_starts = None if starts is None else [starts[i] for i in idx]
    ref_path = Path(work) / "tune-reference.npz"
    artifact.write_reference(ref_path, [val[i] for i in idx], [reference[i] for i in idx], out_names,
                             None if labels is None else np.asarray(labels)[idx], sub_starts)
    subset = {"samples": len(idx), "of": len(val)}
    bars: Dict[str, float] = {}
    if len(idx) < len(val):  # the device scores a subset: each candidate's own host score on it is its bar
        k = metric.output_index(out_names)
        stream = (metric.stream, tuple(sub_starts or ())) if metric.stream else None
        for name, path in q.candidate_files.items():
            mine = run_model(Path(path), [val[i] for i in idx], stream)
            bars[name] = metric.score([m[k] for m in mine], [reference[i][k] for i in idx], [val[i] for i in idx])["value"]
    manifest = {"inputs": io["inputs"], "outputs": io["outputs"], "metric": metric.to_manifest(), "guard": guard,
                "reference": subset, "target_profile": profile.model_dump(mode="json")}
    chosen, section, run = tune(q, profile, config, manifest, ref_path, out_dir, opts, say, bars, variants)
    return original(q0, apply_choice(q, chosen, profile, section["reason"]), chosen), section, run


def apply_choice(q: Any, name: str, profile: Any, reason: str) -> Any:
    """``q`` shipping candidate ``name`` instead of the host's choice (its file, precision, method,
    scores, preset and kept-float list); ``q`` itself when the device chose what the host did."""
    from .quantize import registry
    from .quantize.presets import DISABLED_OPTIMIZERS, runtime_level_for
    from .quantize.result import KeptFloat

    if name == host_choice(q):
        return q
    c = next(c for c in q.candidates if c.name == name)
    extra = q.candidate_extras.get(name, {})
    return q.model_copy(update={
        "model_path": Path(q.candidate_files[name]), "precision": c.precision, "method": c.method,
        "preset": extra.get("preset", {}), "kept_float": [KeptFloat(**k) for k in extra.get("kept_float", [])],
        "metric_after": dict(c.metric or {}), "reason": f"chosen on the device: {reason}",
        "runtime_graph_optimization": runtime_level_for(c.method, profile),
        "disabled_optimizers": list(DISABLED_OPTIMIZERS) if registry.is_integer(c.precision) else [],
        "guard": dict(c.guard or {"passed": True, "findings": [], "outputs": [], "note": "FP32 is the reference"}),
    })
