"""Latency pruning on the device (issue #3 step 4, measured where it counts): for each int8 candidate
going to the device, one variant per op-type group with that group reverted to float. The variants
travel in the same tuning upload and are scored, guarded and timed in the same device invocation as
the candidates (one round trip for all of them); a variant whose float group ran clearly faster than
its parent's int8 is a candidate like the others, and the record says, per group, whether int8 paid
for itself on the device."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .quantize.prune import PRUNE_MARGIN, clearly_slower_quantized, group_by_op_type

MAX_GROUPS = 4
"""Op-type groups tried per int8 candidate (each one more model to send, score and time)."""
SEP = " -float:"


def add_variants(q: Any, names: List[str], work: Path, score: Callable[[Path], Dict[str, float]],
                 passes: Callable[[float], bool], say: Callable[[str], None]) -> Tuple[Any, List[str]]:
    """(``q`` with the group-revert variants of the int8 candidates in ``names`` added as candidates,
    their names). ``score`` is the host's metric on the whole validation set: a variant is checked
    here before it may go anywhere, like every candidate."""
    from .quantize.candidates import file_size
    from .quantize.result import Candidate

    cands, files, extras, added = list(q.candidates), dict(q.candidate_files), dict(q.candidate_extras), []
    for parent in [c for c in q.candidates if c.name in names and c.precision == "int8"]:
        extra = q.candidate_extras.get(parent.name, {})
        if "variant" not in extra:
            continue
        build, nodes = extra["variant"]
        for op, group in group_by_op_type(nodes)[:MAX_GROUPS]:
            if len(group) == len(nodes):
                continue  # reverting every quantized node is the float model, already a candidate
            name = f"{parent.name}{SEP}{op}"
            say(f"building {name} ({len(group)} node(s) float) for latency pruning on the device")
            path = build(group, Path(work) / f"tune-{parent.name}-float-{op}.onnx")
            s = score(path)
            cands.append(Candidate(name=name, precision="int8", method=parent.method, metric=s, passed=passes(s["value"]),
                                   size_bytes=file_size(path), kept_float=parent.kept_float + len(group),
                                   note=f"{parent.name} with its {op} group float (on-device latency pruning)"))
            files[name] = path
            kept = list(extra.get("kept_float", [])) + [
                {"node": n, "op_type": op, "reason": f"latency: {op} ran faster in float than int8 on the tuning device"}
                for n in group]
            extras[name] = {"preset": extra.get("preset", {}), "kept_float": kept}
            added.append(name)
    return q.model_copy(update={"candidates": cands, "candidate_files": files, "candidate_extras": extras}), added


def record(result: Dict[str, Any], variants: List[str], floor: float) -> List[Dict[str, Any]]:
    """Per group: the parent's and the variant's p50 on the device, and whether int8 paid for itself."""
    out = []
    for name in variants:
        parent, _, op = name.partition(SEP)
        p, v = result["candidates"].get(parent, {}), result["candidates"].get(name, {})
        entry: Dict[str, Any] = {"candidate": parent, "op_type": op, "variant": name}
        if "rounds_ms" not in p or "rounds_ms" not in v:
            entry["result"] = "not timed: " + ((v.get("error") or p.get("error") or {}).get("message") or "failed")
        else:
            slower = clearly_slower_quantized(p["rounds_ms"], v["rounds_ms"], margin=max(PRUNE_MARGIN, floor))
            entry.update(int8_p50_ms=round(p["p50_ms"], 4), float_p50_ms=round(v["p50_ms"], 4),
                         result=(f"float faster by more than {max(PRUNE_MARGIN, floor):.0%}: int8 does not pay for "
                                 "itself here" if slower else "int8 pays for itself (or the gain is inside the noise)"))
            entry["int8_pays"] = not slower
        out.append(entry)
    return out


def original(q_before: Any, q_after: Any, chosen: Optional[str]) -> Any:
    """``q_after`` listing the build's own candidates, plus the variant the device chose (if one was)."""
    keep = [c for c in q_after.candidates if c.name in {x.name for x in q_before.candidates} or c.name == chosen]
    return q_after.model_copy(update={"candidates": keep})
