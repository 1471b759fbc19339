"""Task metrics (detections, sequences) and top-k ties: the same arithmetic on the host and in the
device runner, which is run here as a subprocess on a real bundle, as on a board."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.device import guard as G
from edgekit.device import runner
from edgekit.metrics import MetricSpec


def yolo(boxes_xywh: List[List[float]], scores: List[List[float]], anchors: int = 12) -> np.ndarray:
    """A [1, 4+C, anchors] YOLOv8-style output with the given rows first and empty anchors after."""
    c = len(scores[0])
    out = np.zeros((1, 4 + c, anchors), np.float32)
    out[0, :4] = np.array([[300, 300, 10, 10]], np.float32).T  # empty anchors: a box with no score
    for i, (b, s) in enumerate(zip(boxes_xywh, scores)):
        out[0, :4, i] = b
        out[0, 4:, i] = s
    return out


def test_identical_detections_score_one_and_lost_scores_zero() -> None:
    ref = yolo([[50, 50, 20, 20], [120, 80, 30, 40]], [[0.9, 0.1], [0.05, 0.8]])
    assert G.detections_score([ref], [ref]) == {"value": 1.0, "recall": 1.0, "precision": 1.0, "n": 1.0,
                                                 "fp32_detections": 2.0, "detections": 2.0}
    lost = ref.copy()
    lost[0, 4:] = 0.0  # the scores rounded away, the boxes intact
    got = G.detections_score([lost], [ref])
    assert got["recall"] == 0.0 and got["value"] == 0.0


def test_matching_by_class_and_iou_gives_recall_and_precision() -> None:
    ref = yolo([[50, 50, 20, 20], [120, 80, 30, 40]], [[0.9, 0.1], [0.05, 0.8]])
    out = yolo([[52, 50, 20, 20],      # IoU ~0.82 with the first: a match
                [170, 80, 30, 40],     # moved off the second: no overlap
                [10, 10, 8, 8]],       # a detection FP32 does not have
               [[0.85, 0.1], [0.05, 0.7], [0.6, 0.0]])
    got = G.detections_score([out], [ref])
    assert got["recall"] == pytest.approx(1 / 2) and got["precision"] == pytest.approx(1 / 3)
    assert got["value"] == pytest.approx(1 / 3)  # the lower of the two
    wrong_class = yolo([[50, 50, 20, 20]], [[0.1, 0.9]])
    assert G.detections_score([wrong_class], [yolo([[50, 50, 20, 20]], [[0.9, 0.1]])])["recall"] == 0.0


def test_nms_and_layouts() -> None:
    # two near-identical boxes of one class: NMS keeps the stronger one only
    dup = yolo([[50, 50, 20, 20], [51, 50, 20, 20]], [[0.9], [0.8]])
    boxes, classes, scores = G.decode_detections(dup)
    assert len(classes) == 1 and scores[0] == pytest.approx(0.9)
    np.testing.assert_allclose(boxes[0], [40, 40, 60, 60])
    # the same detections in the other layouts decode alike
    anchors_first = np.transpose(dup, (0, 2, 1))
    assert G.decode_detections(anchors_first, {"layout": "anchors-first"})[2].tolist() == scores.tolist()
    xyxy = anchors_first.copy()
    xyxy[0, :, :4] = np.concatenate([dup[0, :2].T - dup[0, 2:4].T / 2, dup[0, :2].T + dup[0, 2:4].T / 2], axis=1)
    np.testing.assert_allclose(G.decode_detections(xyxy, {"layout": "anchors-first", "box": "xyxy"})[0], boxes)
    v5 = np.concatenate([anchors_first[..., :4], np.full(anchors_first.shape[:2] + (1,), 0.5, np.float32),
                         anchors_first[..., 4:]], axis=-1)  # objectness 0.5 halves every score
    assert G.decode_detections(v5, {"layout": "yolov5", "score_threshold": 0.3})[2].tolist() == pytest.approx([0.45])
    # below the score threshold nothing is a detection, on either side: vacuously equal
    faint = yolo([[50, 50, 20, 20]], [[0.1]])
    assert G.detections_score([faint], [faint])["value"] == 1.0


def ctc(path: List[int], classes: int = 5) -> np.ndarray:
    """[1, T, C] logits whose argmax per step is ``path``."""
    out = np.zeros((1, len(path), classes), np.float32)
    out[0, np.arange(len(path)), path] = 5.0
    return out


def test_sequences_collapse_repeats_and_drop_blank() -> None:
    assert G.decode_sequences(ctc([0, 3, 3, 0, 3, 2, 2, 0])) == [[3, 3, 2]]
    assert G.decode_sequences(ctc([0, 3, 3, 0, 3]), {"collapse_repeats": False, "blank": None}) == [[0, 3, 3, 0, 3]]
    ref = [ctc([0, 3, 3, 0, 3, 2]), ctc([1, 1, 0, 4])]
    same_text = [ctc([3, 0, 0, 3, 2, 0]), ctc([1, 0, 4, 4])]  # other alignments, the same strings
    assert G.sequences_score(same_text, ref) == {"value": 1.0, "n": 2.0, "symbol_error_rate": 0.0}
    one_off = [ctc([0, 3, 3, 0, 1, 2]), ref[1]]
    got = G.sequences_score(one_off, ref)
    assert got["value"] == 0.5 and got["symbol_error_rate"] == pytest.approx(1 / 5)
    time_major = np.transpose(ref[0], (1, 0, 2))  # [T, N, C], as many CTC exports write it
    assert G.decode_sequences(time_major, {"time_axis": 0, "class_axis": 2}) == G.decode_sequences(ref[0])


def test_task_metrics_through_the_runners_score() -> None:
    ref = [yolo([[50, 50, 20, 20]], [[0.9, 0.1]])]
    spec = MetricSpec(name="detections", threshold=0.9, tasks={"detections": {"score_threshold": 0.5}})
    assert spec.score(ref, ref)["value"] == 1.0 and spec.higher_is_better
    assert spec.to_manifest()["detections"] == {"score_threshold": 0.5}
    assert runner.score("sequences", [ctc([1, 2])], [ctc([2, 1])], options={"blank": None})["value"] == 0.0
    assert runner.metric_key("detections") == "detections"  # the key all_metrics and the report use


def saturated(n: int, classes: int, seed: int) -> np.ndarray:
    """Sigmoid outputs where many classes saturate at exactly 1.0: ties at the top."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 30, (n, 1, classes)).astype(np.float32)
    with np.errstate(over="ignore"):  # exp overflows to inf: the sigmoid is exactly 0 there
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def test_topk_ties_rank_in_index_order() -> None:
    probs = saturated(40, 1000, 0)  # ImageNet-sized: an unstable sort scrambles ties here (measured: top-5 0.05)
    assert all(np.sum(p == 1.0) > 5 for p in probs)  # more tied maxima than k in every sample
    got = runner.score("topk", list(probs), list(probs), k=5)
    assert got["value"] == 1.0
    assert runner.score("top1", list(probs), list(probs))["value"] == 1.0
    top = G.top_indices(np.array([0.5, 1.0, 0.2, 1.0, 1.0]), 2)
    assert top.tolist() == [1, 3]


SEQ_PROJECT = """
[model]
name = "ocr"
source = "onnx"
path = "ocr.onnx"

[[inputs]]
name = "x"
shape = [1, 12, 8]

[calibration]
data = "calib.npz"

[validation]
data = "val.npz"
metric = "sequences"
threshold = 0.9

[validation.sequences]
blank = 0

[[devices]]
name = "local"
target = "x86-avx512-vnni"
transport = "local"
path = ".device/local"
python = "{python}"

[power]
sampler = "none"
"""


def ocr_model(path: Path, classes: int = 6) -> None:
    """[1, T, F] -> MatMul -> [1, T, C] logits, C-style per-step classifier (CTC head)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 1, (8, classes)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"], name="head")], "ocr",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 12, classes])],
                              initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_sequences_metric_builds_and_validates_on_the_device(tmp_path: Path) -> None:
    root = tmp_path / "ocr"
    root.mkdir()
    ocr_model(root / "ocr.onnx")
    rng = np.random.default_rng(1)
    np.savez(root / "calib.npz", x=rng.normal(0, 1, (32, 12, 8)).astype(np.float32))
    np.savez(root / "val.npz", x=rng.normal(0, 1, (24, 12, 8)).astype(np.float32))
    cfg = root / "edgekit.toml"
    cfg.write_text(SEQ_PROJECT.format(python=sys.executable))
    cli = CliRunner()
    # the host's own x86 profile: validate runs on this CPU, so build and device must judge the same kernels
    res = cli.invoke(main, ["build", "-t", "x86", "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    built = json.loads(res.stdout)
    assert built["metric"]["value"] >= 0.9 and "symbol_error_rate" in built["metric"]
    manifest = json.loads((Path(built["bundle"]) / "manifest.json").read_text())
    assert manifest["metric"]["sequences"] == {"blank": 0, "collapse_repeats": True, "class_axis": -1, "time_axis": -2}
    assert cli.invoke(main, ["deploy", "--device", "local", "--config", str(cfg), "--target", built["target"]]).exit_code == 0
    res = cli.invoke(main, ["validate", "--device", "local", "--config", str(cfg), "--duration", "0.05", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["metric"]["name"] == "sequences" and out["metric"]["value"] == pytest.approx(built["metric"]["value"])
    assert out["metrics"]["sequences"] == out["metric"]["value"]


def test_saturated_sigmoid_scores_top5_one_on_host_and_device(tmp_path: Path) -> None:
    """An identical model on a saturated sigmoid output: top-5 is 1.0 on the host and in the runner
    (a subprocess on the bundle, as on a device)."""
    from bundles import make_tiny_bundle

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    bundle = tmp_path / "b"
    manifest = make_tiny_bundle(bundle, metric="topk", threshold=0.99)
    # Replace the model by one ending in a saturating sigmoid and rewrite its references.
    w = numpy_helper.from_array(np.random.default_rng(3).normal(0, 40, (16, 1000)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Sigmoid", ["h"], ["y"])],
                              "sat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1000])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(bundle / "model.onnx"))
    import onnxruntime as ort

    from edgekit import artifact

    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(40)]
    outs = [sess.run(["y"], f) for f in feeds]
    assert sum(int(np.sum(o[0] == 1.0) > 5) for o in outs) >= 20  # ties beyond k in most samples
    artifact.write_reference(bundle / artifact.REFERENCE, feeds, outs, ["y"])
    fields = {k: v for k, v in manifest.items() if k not in ("files", "release_id", "schema", "edgekit_version")}
    fields["outputs"] = [{"name": "y", "shape": [1, 1000], "dtype": "float32"}]
    fields["metric"] = dict(fields["metric"], name="topk", k=5, threshold=0.99)
    artifact.write_manifest(bundle, fields)
    host = MetricSpec(name="topk", threshold=0.99, k=5).score([o[0] for o in outs], [o[0] for o in outs])
    assert host["value"] == 1.0
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(bundle / "runner.py"), "validate", "--release", str(bundle), "--out",
                           str(out), "--duration", "0.05"], capture_output=True, text=True, cwd="/")
    result = json.loads(out.read_text())
    assert proc.returncode == 0, (proc.stderr, result.get("error"))
    assert result["metric"]["value"] == 1.0 == host["value"] and result["metrics"]["top5"] == 1.0


@pytest.mark.parametrize("table, field", [
    ('[validation.detections]\nlayout = "ssd"', "validation.detections.layout"),
    ('[validation.sequences]\nblank = "none"', "validation.sequences.blank"),
    ('[validation.guard]\nmin_range_kept = 2', "validation.guard.min_range_kept"),
    ('[validation.guard]\nmax_slice_error = 1', "validation.guard.max_slice_error"),
])
def test_bad_task_and_guard_settings_are_one_line(tmp_path: Path, table: str, field: str) -> None:
    cfg = tmp_path / "edgekit.toml"
    cfg.write_text(SEQ_PROJECT.format(python=sys.executable).replace("[validation.sequences]\nblank = 0", table))
    res = CliRunner().invoke(main, ["build", "-t", "x86-avx512-vnni", "--config", str(cfg)])
    assert res.exit_code == 2, res.output
    assert res.output.startswith(f"error: {cfg}:") and field in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) <= 2
