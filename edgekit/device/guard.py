"""Built-in output guards and task metrics: the arithmetic shared by the host build and the device.

Shipped beside runner.py in every release (standard library + numpy, Python >= 3.8). The host
imports this same file (``edgekit.device.guard``), so a candidate is judged at build time exactly as
``runner.py validate`` judges the shipped model on the device.

Guards (beside the user's metric, on every output, against the FP32 reference):

* the output's relative error ``||out - ref|| / ||ref||``;
* per slice along the output's *feature axis*: the slice's relative error, and "collapse": a slice
  whose FP32 values vary but whose candidate values keep less than ``min_range_kept`` of that range
  (a score channel rounded to one value by a coarse quantization step);
* where an output looks like scores (at least two slices whose FP32 values all lie in [0, 1]):
  argmax agreement at the most confident positions and top-k rank agreement.

The feature axis is axis 1 when the output has rank >= 3 and axis 1 is smaller than the product of
the later axes ([N, C, anchors], [N, C, H, W]); otherwise the last axis ([N, classes], [N, T, hidden],
[N, anchors, 4+C]). The build resolves it from the model's declared shapes (a dynamic axis 1 is a
sequence, so [batch, sequence, hidden] uses the last axis) and records it in the manifest;
``feature_axis = {output = axis}`` overrides it.

Positions an input mask marks as padding (``mask_input``, e.g. ``attention_mask`` shaped like the
output's first two axes) are not compared: a transformer's padded tokens carry no meaning. Such an
output's axis 1 holds positions, so without an override its feature axis is the last one, whatever
the sizes ([1, 16, 384] is 16 tokens; judged as features, padding would look like damage).
"""
from __future__ import annotations

import math

import numpy as np

DEFAULTS = {
    "enabled": True,
    "max_rel_error": 0.5,
    "max_slice_rel_error": 0.75,
    "min_range_kept": 0.25,
    "min_argmax_agreement": 0.5,
    "min_rank_agreement": 0.5,
    "feature_axis": {},
    "skip": [],
    "mask_input": "attention_mask",
}
"""Threshold defaults, each overridable in edgekit.toml's [validation.guard]."""
REL_FLOOR = 1e-3
"""A slice's relative error is taken against at least 0.1% of the whole output's RMS, so a slice
that is ~0 in FP32 (a class never seen) does not turn float noise into a huge ratio."""
COLLAPSE_FLOOR = 1e-4
"""Only slices whose FP32 range is at least 0.01% of the output's widest slice can collapse."""
TOP_POSITIONS = 10
"""Argmax and rank agreement look at each sample's 10 most confident FP32 positions / values."""
MAX_FINDINGS = 20
"""Findings kept per output (the count of the rest is recorded): results stay small."""


def settings(given=None):
    """DEFAULTS overlaid with ``given`` (unknown keys ignored: a newer manifest on an older runner)."""
    out = dict(DEFAULTS)
    for key, value in (given or {}).items():
        if key in out and value is not None:
            out[key] = value
    return out


def feature_axis(shape, override=None):
    """The axis whose slices are checked one by one (see the module docstring)."""
    rank = len(shape)
    if rank == 0:
        return None
    if override is not None:
        axis = int(override)
        return axis + rank if axis < 0 else axis
    if rank >= 3 and shape[1] < int(np.prod(shape[2:])):
        return 1
    return rank - 1


def _matrices(arrays, axis, masks=None):
    """Per-sample arrays -> per-sample [F, positions] float64 matrices (F: the feature axis), keeping
    only the positions ``masks`` (per sample, shaped like the first two axes) mark as real."""
    out = []
    for i, a in enumerate(arrays):
        a = np.asarray(a, dtype=np.float64)
        if axis is None or a.ndim == 0:
            out.append(a.reshape(1, -1))
            continue
        f = np.moveaxis(a, axis, -1)
        mask = masks[i] if masks is not None else None
        if mask is not None and axis >= 2 and np.shape(mask) == a.shape[:2]:
            f = f.reshape((-1,) + f.shape[2:])[np.asarray(mask).reshape(-1) != 0]
        out.append(f.reshape(-1, a.shape[axis]).T)
    return out


def _finding(output, check, value, threshold, message, slice_index=None, axis=None):
    return {"output": output, "check": check, "slice": slice_index, "axis": axis, "value": float(value),
            "threshold": threshold, "message": message}


def _where(output, axis, s):
    return "%s slice %d on axis %d" % (output, s, axis) if axis is not None else output


def check_output(name, outputs, references, conf=None, masks=None):
    """(summary, findings) for one output; ``outputs``/``references`` are per-sample arrays, ``masks``
    the per-sample padding masks (or None)."""
    conf = settings(conf)
    shape = np.shape(references[0])
    override = (conf["feature_axis"] or {}).get(name)
    if override is None and masks is not None and len(shape) >= 3 and np.shape(masks[0]) == tuple(shape[:2]):
        # the padding mask is [batch, positions]: axis 1 holds positions (tokens), not features,
        # however few of them there are ([1, 17, 384] is 17 tokens of 384 features)
        override = len(shape) - 1
    axis = feature_axis(shape, override)
    outs, refs = _matrices(outputs, axis, masks), _matrices(references, axis, masks)
    if any(o.shape[0] != r.shape[0] for o, r in zip(outs, refs)) or len(set(r.shape[0] for r in refs)) != 1:
        axis = None  # the feature axis changes size between samples: check the output as a whole
        outs, refs = [np.asarray(o, np.float64).reshape(1, -1) for o in outputs], [np.asarray(r, np.float64).reshape(1, -1) for r in references]
    O, R = np.concatenate(outs, axis=1), np.concatenate(refs, axis=1)
    findings = []
    summary = {"output": name, "axis": axis, "slices": int(R.shape[0]), "passed": True}
    if O.shape != R.shape:
        findings.append(_finding(name, "shape", 0, None, "%s: shape %s differs from FP32's %s" % (name, list(O.shape), list(R.shape))))
        summary["passed"] = False
        return summary, findings
    bad = ~np.isfinite(O)
    if bad.any():
        findings.append(_finding(name, "nonfinite", int(bad.sum()), 0, "%s: %d value(s) are NaN or infinite" % (name, int(bad.sum()))))
        O = np.where(bad, 0.0, O)
    diff = O - R
    total = float(np.linalg.norm(R))
    rel = float(np.linalg.norm(diff)) / max(total, 1e-12)
    summary["rel_error"] = rel
    if rel > conf["max_rel_error"]:
        findings.append(_finding(name, "rel_error", rel, conf["max_rel_error"],
                                 "%s: relative error %.3g > %.3g" % (name, rel, conf["max_rel_error"])))
    if axis is not None:
        findings += _slice_checks(name, axis, O, R, diff, total, conf, summary)
        findings += _score_checks(name, axis, outs, refs, R, conf, summary)
    summary["findings"] = len(findings)
    summary["passed"] = not findings
    if len(findings) > MAX_FINDINGS:
        summary["findings_omitted"] = len(findings) - MAX_FINDINGS
        findings = findings[:MAX_FINDINGS]
    return summary, findings


def _slice_checks(name, axis, O, R, diff, total, conf, summary):
    findings = []
    n = R.shape[1]
    floor = REL_FLOOR * total / math.sqrt(max(R.size, 1)) * math.sqrt(n)
    rel = np.linalg.norm(diff, axis=1) / np.maximum(np.maximum(np.linalg.norm(R, axis=1), floor), 1e-12)
    worst = int(np.argmax(rel))
    summary["worst_slice"] = {"slice": worst, "rel_error": float(rel[worst])}
    for s in np.nonzero(rel > conf["max_slice_rel_error"])[0]:
        findings.append(_finding(name, "slice_rel_error", rel[s], conf["max_slice_rel_error"],
                                 "%s: relative error %.3g > %.3g" % (_where(name, axis, s), rel[s], conf["max_slice_rel_error"]),
                                 int(s), axis))
    r_range = R.max(axis=1) - R.min(axis=1)
    o_range = O.max(axis=1) - O.min(axis=1)
    varies = (r_range > 0) & (r_range >= COLLAPSE_FLOOR * float(r_range.max() if r_range.size else 0.0))
    kept = np.where(varies, o_range / np.where(varies, r_range, 1.0), 1.0)
    collapsed = np.nonzero(varies & (kept < conf["min_range_kept"]))[0]
    summary["collapsed"] = int(collapsed.size)
    for s in collapsed:
        findings.append(_finding(name, "collapse", kept[s], conf["min_range_kept"],
                                 "%s collapsed: FP32 range %.4g, candidate range %.4g (kept %.0f%% < %.0f%%)"
                                 % (_where(name, axis, s), r_range[s], o_range[s], 100 * kept[s], 100 * conf["min_range_kept"]),
                                 int(s), axis))
    return findings


def top_indices(values, k):
    """The k largest values' indices, ties in index order: identical on host and device."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    return np.argsort(-flat, kind="stable")[:k]


def _score_checks(name, axis, outs, refs, R, conf, summary):
    """Argmax and rank agreement over the slices that look like scores (values in [0, 1])."""
    in_unit = (R.min(axis=1) >= 0.0) & (R.max(axis=1) <= 1.0) & (R.max(axis=1) > R.min(axis=1))
    idx = np.nonzero(in_unit)[0]
    summary["score_slices"] = int(idx.size)
    if idx.size < 2:
        return []
    agree, total, overlap = 0, 0, []
    for o, r in zip(outs, refs):
        ob, rb = o[idx], r[idx]
        positions = top_indices(rb.max(axis=0), min(TOP_POSITIONS, rb.shape[1]))
        # argmax over classes, first index on ties (numpy's argmax), at FP32's most confident positions
        agree += int(np.sum(ob[:, positions].argmax(axis=0) == rb[:, positions].argmax(axis=0)))
        total += positions.size
        k = min(TOP_POSITIONS, rb.size)
        overlap.append(len(set(top_indices(ob, k).tolist()) & set(top_indices(rb, k).tolist())) / float(k))
    argmax_agreement = agree / float(max(total, 1))
    rank_agreement = float(np.mean(overlap))
    summary["argmax_agreement"], summary["rank_agreement"] = argmax_agreement, rank_agreement
    found = []
    where = "%s (score slices %d-%d on axis %d)" % (name, int(idx[0]), int(idx[-1]), axis)
    if argmax_agreement < conf["min_argmax_agreement"]:
        found.append(_finding(name, "argmax", argmax_agreement, conf["min_argmax_agreement"],
                              "%s: argmax agreement %.3g < %.3g at the most confident positions"
                              % (where, argmax_agreement, conf["min_argmax_agreement"]), axis=axis))
    if rank_agreement < conf["min_rank_agreement"]:
        found.append(_finding(name, "rank", rank_agreement, conf["min_rank_agreement"],
                              "%s: top-%d rank agreement %.3g < %.3g" % (where, TOP_POSITIONS, rank_agreement,
                                                                         conf["min_rank_agreement"]), axis=axis))
    return found


def check_outputs(names, outputs, references, conf=None, feeds=None):
    """Every output at once. ``outputs``/``references``: per sample, a list with one array per name;
    ``feeds``: the per-sample inputs (for the padding mask).

    Returns {"passed", "findings", "outputs"} (a dict safe to write as JSON).
    """
    conf = settings(conf)
    key = conf.get("mask_input")
    masks = [f.get(key) for f in feeds] if feeds and key and all(key in f for f in feeds) else None
    if not conf["enabled"]:
        return {"passed": True, "enabled": False, "findings": [], "outputs": []}
    findings, summaries = [], []
    for i, name in enumerate(names):
        if name in (conf["skip"] or []):
            continue
        summary, found = check_output(name, [o[i] for o in outputs], [r[i] for r in references], conf, masks)
        summaries.append(summary)
        findings += found
    return {"passed": not findings, "enabled": True, "findings": findings, "outputs": summaries,
            "thresholds": dict((k, conf[k]) for k in ("max_rel_error", "max_slice_rel_error", "min_range_kept",
                                                        "min_argmax_agreement", "min_rank_agreement"))}


def describe(report, limit=3):
    """One line naming the first failing outputs and slices, for tables and reasons."""
    found = report.get("findings") or []
    if not found:
        return "guards passed"
    text = "; ".join(f["message"] for f in found[:limit])
    return text + ("; and %d more" % (len(found) - limit) if len(found) > limit else "")


# ----------------------------------------------------------------------------------------------
# Task metrics: detections and sequences, each compared with what FP32 predicts
# ----------------------------------------------------------------------------------------------
DETECTION_DEFAULTS = {"layout": "yolov8", "box": "xywh", "score_threshold": 0.25, "iou": 0.5, "nms_iou": 0.7,
                      "max_detections": 300}
SEQUENCE_DEFAULTS = {"blank": 0, "collapse_repeats": True, "class_axis": -1, "time_axis": -2}


def _rows(arr, layout):
    """One image's raw output -> (boxes [N, 4], scores [N, C]) for the layout."""
    a = np.asarray(arr, dtype=np.float64)
    a = a.reshape(a.shape[-2], a.shape[-1]) if a.ndim >= 2 else a.reshape(1, -1)
    if layout == "yolov8":  # [4+C, anchors] (Ultralytics YOLOv8/11 export)
        a = a.T
    elif layout not in ("anchors-first", "yolov5"):
        raise ValueError("unknown detection layout '%s' (yolov8, anchors-first, yolov5)" % layout)
    if layout == "yolov5":  # [anchors, 5+C]: box, objectness, class scores
        return a[:, :4], a[:, 4:5] * a[:, 5:]
    return a[:, :4], a[:, 4:]


def _xyxy(boxes, fmt):
    if fmt == "xyxy":
        return boxes
    if fmt != "xywh":
        raise ValueError("unknown box format '%s' (xywh, xyxy)" % fmt)
    cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def iou(box, boxes):
    """IoU of one xyxy box against many."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def decode_detections(arr, opts=None):
    """(boxes xyxy [n, 4], classes [n], scores [n]) after the score threshold and class-wise NMS.

    Each anchor keeps its best class (first on ties); candidates are visited by score, ties in
    anchor order, so the host and the device decode alike.
    """
    o = dict(DETECTION_DEFAULTS)
    o.update(opts or {})
    boxes, scores = _rows(arr, o["layout"])
    if scores.shape[1] == 0:
        raise ValueError("the output has no class-score columns for layout '%s'" % o["layout"])
    cls = scores.argmax(axis=1)
    best = scores[np.arange(scores.shape[0]), cls]
    keep = np.nonzero(best >= o["score_threshold"])[0]
    keep = keep[np.argsort(-best[keep], kind="stable")]
    xyxy = _xyxy(boxes, o["box"])
    chosen = []
    for i in keep:
        if len(chosen) >= int(o["max_detections"]):
            break
        same = [j for j in chosen if cls[j] == cls[i]]
        if same and float(iou(xyxy[i], xyxy[same]).max()) > o["nms_iou"]:
            continue
        chosen.append(int(i))
    chosen = np.asarray(chosen, dtype=np.int64)
    return xyxy[chosen].reshape(-1, 4), cls[chosen], best[chosen]


def match_detections(got, want, iou_threshold):
    """How many of FP32's detections (``want``) the candidate's (``got``) find: same class, IoU >=
    threshold, each candidate detection used once; FP32's most confident matched first."""
    gb, gc, _ = got
    wb, wc, _ = want
    used = np.zeros(len(gc), dtype=bool)
    matched = 0
    for i in range(len(wc)):
        cands = np.nonzero((gc == wc[i]) & ~used)[0]
        if cands.size == 0:
            continue
        ious = iou(wb[i], gb[cands])
        j = int(np.argmax(ious))
        if ious[j] >= iou_threshold:
            used[cands[j]] = True
            matched += 1
    return matched


def detections_score(outputs, references, opts=None):
    """Recall and precision of the candidate's detections against FP32's; ``value`` is the lower."""
    o = dict(DETECTION_DEFAULTS)
    o.update(opts or {})
    matched = n_want = n_got = 0
    for out, ref in zip(outputs, references):
        got, want = decode_detections(out, o), decode_detections(ref, o)
        matched += match_detections(got, want, o["iou"])
        n_want += len(want[1])
        n_got += len(got[1])
    recall = matched / float(n_want) if n_want else 1.0
    precision = matched / float(n_got) if n_got else (1.0 if not n_want else 0.0)
    return {"value": float(min(recall, precision)), "recall": float(recall), "precision": float(precision),
            "n": len(outputs), "fp32_detections": n_want, "detections": n_got}


def decode_sequences(arr, opts=None):
    """Greedy (argmax) decoding, CTC-style: repeats collapsed, the blank class dropped."""
    o = dict(SEQUENCE_DEFAULTS)
    o.update(opts or {})
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError("a sequence output needs a time and a class axis, got shape %s" % list(a.shape))
    a = np.moveaxis(a, [int(o["time_axis"]), int(o["class_axis"])], [-2, -1])
    best = a.reshape(-1, a.shape[-2], a.shape[-1]).argmax(axis=-1)
    seqs = []
    for row in best:
        seq, prev = [], None
        for c in row.tolist():
            if o["collapse_repeats"] and c == prev:
                continue
            prev = c
            if o["blank"] is not None and c == int(o["blank"]):
                continue
            seq.append(c)
        seqs.append(seq)
    return seqs


def edit_distance(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def sequences_score(outputs, references, opts=None):
    """Fraction of decoded sequences equal to FP32's (``value``), and the symbol error rate."""
    equal = total = edits = length = 0
    for out, ref in zip(outputs, references):
        for g, w in zip(decode_sequences(out, opts), decode_sequences(ref, opts)):
            equal += int(g == w)
            total += 1
            edits += edit_distance(g, w)
            length += len(w)
    return {"value": equal / float(max(total, 1)), "n": total,
            "symbol_error_rate": edits / float(max(length, 1))}


