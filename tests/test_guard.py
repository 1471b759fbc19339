"""The promotion guards: a detector-shaped model that cosine alone would ship broken.

The model is the shape of a YOLOv8 export: one output [1, 4+C, anchors], pixel boxes (hundreds)
concatenated with sigmoid class scores in [0, 1]. onnxruntime's static quantization puts one Q/DQ
pair on that output, whose step (~1.3) rounds every score to 0 while cosine stays 0.9999. Everything
here is real: onnxruntime sessions, onnxruntime's quantizer, edgekit's build, deploy and validate.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.device import guard as G

CLASSES, SIZE = 3, 32
ANCHORS = (SIZE // 4) ** 2

PROJECT = """
[model]
name = "det"
source = "onnx"
path = "det.onnx"

[[inputs]]
name = "images"
shape = [1, 3, {size}, {size}]

[calibration]
data = "calib.npz"

[validation]
data = "val.npz"
metric = "cosine"
threshold = 0.99
{extra}

[[devices]]
name = "local"
target = "x86-avx512-vnni"
transport = "local"
path = ".device/local"
python = "{python}"

[power]
sampler = "none"
"""


def detector(path: Path, tail: bool = False, seed: int = 0) -> Path:
    """Conv backbone -> box head (sigmoid x 320 + offset: pixels) and class head (sigmoid scores),
    concatenated on axis 1. ``tail`` adds a per-row rescale after the concatenation, so int8 would
    quantize the mixed-scale tensor inside the graph, not only on the output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    arrays = {
        "w1": rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3,
        "w2": rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.15,
        "wb": rng.standard_normal((4, 16, 1, 1)).astype(np.float32) * 0.2,
        "wc": rng.standard_normal((CLASSES, 16, 1, 1)).astype(np.float32),
        "bc": np.full((CLASSES,), -3.0, np.float32),
        "shape_b": np.array([1, 4, ANCHORS], np.int64),
        "shape_c": np.array([1, CLASSES, ANCHORS], np.int64),
        "scale": np.array([[[SIZE * 10.0], [SIZE * 10.0], [SIZE * 5.0], [SIZE * 5.0]]], np.float32),
        "offset": np.array([[[SIZE * 10.0], [SIZE * 10.0], [SIZE * 3.0], [SIZE * 3.0]]], np.float32),
    }
    node = helper.make_node
    nodes = [
        node("Conv", ["images", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv1"),
        node("Relu", ["c1"], ["r1"], name="relu1"),
        node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv2"),
        node("Relu", ["c2"], ["r2"], name="relu2"),
        node("Conv", ["r2", "wb"], ["box_raw"], name="box_head"),
        node("Reshape", ["box_raw", "shape_b"], ["box_flat"], name="box_reshape"),
        node("Sigmoid", ["box_flat"], ["box_sig"], name="box_sigmoid"),
        node("Mul", ["box_sig", "scale"], ["box_mul"], name="box_scale"),
        node("Add", ["box_mul", "offset"], ["boxes"], name="box_offset"),
        node("Conv", ["r2", "wc", "bc"], ["cls_raw"], name="cls_head"),
        node("Reshape", ["cls_raw", "shape_c"], ["cls_flat"], name="cls_reshape"),
        node("Sigmoid", ["cls_flat"], ["scores"], name="cls_sigmoid"),
        node("Concat", ["boxes", "scores"], ["cat" if tail else "output0"], axis=1, name="concat"),
    ]
    if tail:
        arrays["gain"] = np.ones((1, 4 + CLASSES, 1), np.float32)
        nodes.append(node("Mul", ["cat", "gain"], ["output0"], name="rescale"))
    graph = helper.make_graph(
        nodes, "detector", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + CLASSES, ANCHORS])],
        initializer=[numpy_helper.from_array(a, n) for n, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def images(n: int, seed: int) -> np.ndarray:
    """Dim noise with a few bright square 'objects' per image: [n, 3, SIZE, SIZE]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.2, (n, 3, SIZE, SIZE)).astype(np.float32)
    for i in range(n):
        for _ in range(3):
            cy, cx = rng.integers(4, SIZE - 4, 2)
            x[i, :, cy - 3:cy + 3, cx - 3:cx + 3] += rng.uniform(0.5, 1.0, (3, 1, 1)).astype(np.float32)
    return x


def project(root: Path, tail: bool = False, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    detector(root / "det.onnx", tail=tail)
    np.savez(root / "calib.npz", images=images(64, 2))
    np.savez(root / "val.npz", images=images(40, 1))
    cfg = root / "edgekit.toml"
    cfg.write_text(PROJECT.format(size=SIZE, extra=extra, python=sys.executable))
    return cfg


def run_all(model: Path, x: np.ndarray) -> List[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return [sess.run(None, {"images": a[None]})[0] for a in x]


def build(cfg: Path, *args: str) -> Dict:
    res = CliRunner().invoke(main, ["build", "--target", "x86-avx512-vnni", "--config", str(cfg), *args])
    assert res.exit_code == 0, res.output
    return json.loads((cfg.parent / "dist" / "det" / "x86-avx512-vnni" / "manifest.json").read_text()) | {"_out": res.output}


def test_textbook_int8_fools_cosine_but_not_the_guards(tmp_path: Path) -> None:
    """onnxruntime's quantize_static on its own: cosine 0.9999, no detection left, and the guards
    name the output and the collapsed score slices."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from edgekit.metrics import MetricSpec

    root = tmp_path / "p"
    project(root)
    calib = images(64, 2)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"images": a[None]} for a in calib])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    quantize_static(str(root / "det.onnx"), str(root / "naive.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv", "Mul", "Add", "Concat", "Reshape"])
    x = images(40, 1)
    fp32, naive = run_all(root / "det.onnx", x), run_all(root / "naive.onnx", x)
    want = G.detections_score(fp32, fp32)
    assert want["fp32_detections"] >= 20 and want["value"] == 1.0  # the FP32 model does detect things
    assert MetricSpec(name="cosine", threshold=0.99).score(naive, fp32)["value"] > 0.999  # cosine alone: ship it
    assert G.detections_score(naive, fp32)["recall"] == 0.0  # yet not one detection survives
    report = G.check_outputs(["output0"], [[o] for o in naive], [[r] for r in fp32])
    assert not report["passed"]
    collapsed = {f["slice"] for f in report["findings"] if f["check"] == "collapse"}
    assert collapsed == {4, 5, 6}  # exactly the class-score rows, on axis 1; the boxes are fine
    assert all(f["output"] == "output0" and f["axis"] == 1 for f in report["findings"])
    assert {"argmax", "rank"} <= {f["check"] for f in report["findings"]}
    assert "output0 slice 6 on axis 1 collapsed" in G.describe(report)


@pytest.mark.parametrize("tail", [False, True], ids=["concat-output", "concat-inside"])
def test_build_ships_a_detector_whose_detections_match_fp32(tmp_path: Path, tail: bool) -> None:
    """edgekit's build with metric cosine: the shipped model keeps the scores. A concatenation on the
    output is repaired by producing the output in float; one inside the graph by the guard fallback,
    which keeps the nodes nearest the output float (named in kept_float)."""
    import onnx

    cfg = project(tmp_path / "p", tail=tail)
    manifest = build(cfg)
    q = manifest["quantization"]
    assert q["precision"] == "int8" and q["guard"]["passed"] is True
    out = q["guard"]["outputs"][0]
    assert out["output"] == "output0" and out["axis"] == 1 and out["collapsed"] == 0 and out["score_slices"] == CLASSES
    shipped = cfg.parent / "dist" / "det" / "x86-avx512-vnni" / "model.onnx"
    model = onnx.load(str(shipped))
    producer = {o: n for n in model.graph.node for o in n.output}["output0"]
    assert producer.op_type != "DequantizeLinear"  # the output is produced in float
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)  # and it is still an int8 model
    x = images(40, 1)
    got = G.detections_score(run_all(shipped, x), run_all(cfg.parent / "det.onnx", x))
    assert got["fp32_detections"] >= 20 and got["recall"] >= 0.9 and got["precision"] >= 0.9, got
    guard_kept = [k["node"] for k in q["kept_float"] if k["reason"].startswith("guard")]
    if tail:
        assert set(guard_kept) == {"rescale", "concat"}, q["kept_float"]
        assert "guards repaired" in q["candidates"][0]["note"] and "output0 slice 5 on axis 1 collapsed" in q["candidates"][0]["note"]
    else:
        assert guard_kept == []
    assert manifest["guard"]["min_range_kept"] == 0.25  # the thresholds the device applies again
    assert "guards" in manifest["_out"] and "pass" in manifest["_out"]  # the build table's column


def test_without_the_guards_the_same_build_ships_a_blind_detector(tmp_path: Path) -> None:
    """The control: guards off, the same inside-the-graph case ships int8 that detects nothing."""
    cfg = project(tmp_path / "p", tail=True, extra="[validation.guard]\nenabled = false")
    manifest = build(cfg)
    assert manifest["quantization"]["precision"] == "int8"
    x = images(40, 1)
    shipped = cfg.parent / "dist" / "det" / "x86-avx512-vnni" / "model.onnx"
    assert G.detections_score(run_all(shipped, x), run_all(cfg.parent / "det.onnx", x))["recall"] < 0.2


def test_guards_that_int8_cannot_meet_refuse_it(tmp_path: Path) -> None:
    """A guard no int8 variant can meet: FP32 ships and the build says which candidate the guards
    refused and on what."""
    cfg = project(tmp_path / "p", extra="[validation.guard]\nmax_slice_rel_error = 1e-9")
    manifest = build(cfg)
    q = manifest["quantization"]
    assert q["precision"] == "fp32"
    int8 = next(c for c in q["candidates"] if c["precision"] == "int8")
    # it met the metric (passed records that), yet the guards refused it
    assert int8["passed"] is True and int8["refused"].startswith("guard: ") and "guard" in int8["note"], int8
    assert int8["guard"] is not None
    # the build says it, naming the output and the slice
    assert f"guards refused {int8['name']}: output0 slice 0 on axis 1: relative error" in manifest["_out"]
    assert "but the guards refused it: output0 slice" in q["reason"]


def test_guards_run_again_on_the_device(tmp_path: Path) -> None:
    """deploy + validate on a local device: the runner imports the guard module its release ships, checks the
    device's outputs, and the findings reach the result, the CLI and the report."""
    cfg = project(tmp_path / "p", extra='[validation.detections]\nscore_threshold = 0.25\n\n[validation.guard]\nskip = []')
    cfg.write_text(cfg.read_text().replace('threshold = 0.99\n', 'threshold = 0.99\nalso = { detections = 0.9 }\n'))
    manifest = build(cfg)
    assert "edgekit/device/guard.py" in manifest["files"] and manifest["metric"]["detections"]["score_threshold"] == 0.25
    runner = CliRunner()
    res = runner.invoke(main, ["deploy", "--device", "local", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["validate", "--device", "local", "--config", str(cfg), "--duration", "0.05", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["guard"]["passed"] is True and out["guard"]["outputs"][0]["score_slices"] == CLASSES
    assert out["metrics"]["detections"] >= 0.9 and out["metric"]["also"][0]["name"] == "detections"

    # The same release against references whose scores moved: the device's guards must fail, and say where.
    release = cfg.parent / ".device" / "local" / "current"
    ref_path = release.resolve() / "reference.npz"
    with np.load(ref_path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["output/output0"][:, :, 4:] = 1.0 - arrays["output/output0"][:, :, 4:]
    ref_path.chmod(0o644)
    np.savez(ref_path, **arrays)
    res = runner.invoke(main, ["validate", "--device", "local", "--config", str(cfg), "--duration", "0.05"])
    assert res.exit_code == 6, res.output  # AccuracyError: the guards failed on the device
    assert "guards failed: output0" in res.output and "FAIL" in res.output
    res = runner.invoke(main, ["report", "--runs-dir", str(cfg.parent / "runs"), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Guards (current release per device)" in html and "output0" in html and "FAIL" in html
    assert "FAIL: output0" in (tmp_path / "rep" / "report.md").read_text()


# ------------------------------------------------------------------------------------------------
# The arithmetic on its own
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, axis", [
    ((1, 84, 8400), 1), ((1, 64, 56, 56), 1), ((1, 10), 1), ((1, 8400, 84), 2), ((1, 128, 384), 1),
    ((10,), 0), ((), None)])
def test_feature_axis(shape, axis) -> None:
    assert G.feature_axis(shape) == axis


def test_feature_axis_override_and_skip() -> None:
    rng = np.random.default_rng(0)
    ref = [rng.uniform(0, 1, (1, 6, 50)) for _ in range(4)]
    bad = [r.copy() for r in ref]
    for b in bad:
        b[0, :, 7] = 0.0  # position 7 dead: a collapse only seen when slicing along axis 2
    assert G.check_outputs(["y"], [[b] for b in bad], [[r] for r in ref])["passed"]  # axis 1: small damage
    rep = G.check_outputs(["y"], [[b] for b in bad], [[r] for r in ref], {"feature_axis": {"y": 2}})
    assert not rep["passed"] and {f["slice"] for f in rep["findings"] if f["check"] == "collapse"} == {7}
    assert G.check_outputs(["y"], [[b] for b in bad], [[r] for r in ref], {"feature_axis": {"y": 2}, "skip": ["y"]})["passed"]


def test_identical_and_slightly_noisy_outputs_pass() -> None:
    rng = np.random.default_rng(1)
    ref = [np.concatenate([rng.uniform(100, 600, (1, 4, 64)), rng.uniform(0, 1, (1, 3, 64))], axis=1) for _ in range(8)]
    assert G.check_outputs(["o"], [[r] for r in ref], [[r] for r in ref])["passed"]
    noisy = [r + rng.normal(0, 0.002, r.shape) * np.abs(r) for r in ref]
    rep = G.check_outputs(["o"], [[n] for n in noisy], [[r] for r in ref])
    assert rep["passed"], rep["findings"]
    assert rep["outputs"][0]["argmax_agreement"] == 1.0


def test_a_near_zero_slice_does_not_raise_a_finding_but_a_diverged_one_does() -> None:
    rng = np.random.default_rng(2)
    ref = [rng.normal(0, 1, (1, 40, 60)) for _ in range(6)]
    for r in ref:
        r[0, 2] *= 1e-7  # a channel that is ~0 in FP32
    out = [r.copy() for r in ref]
    for o in out:
        o[0, 2] = rng.normal(0, 1e-4, 60)  # float noise there, far below the output's scale
    assert G.check_outputs(["h"], [[o] for o in out], [[r] for r in ref])["passed"]
    for o, r in zip(out, ref):
        o[0, 3] = -r[0, 3]  # a real channel with its sign flipped
    rep = G.check_outputs(["h"], [[o] for o in out], [[r] for r in ref])
    assert [(f["check"], f["slice"]) for f in rep["findings"]] == [("slice_rel_error", 3)]
    assert rep["findings"][0]["value"] == pytest.approx(2.0, rel=1e-6)


def test_nonfinite_outputs_are_findings() -> None:
    ref = [np.ones((1, 4)) * i for i in range(1, 4)]
    out = [r.copy() for r in ref]
    out[1][0, 2] = np.inf
    rep = G.check_outputs(["y"], [[o] for o in out], [[r] for r in ref])
    assert not rep["passed"] and rep["findings"][0]["check"] == "nonfinite"


def test_float_graph_outputs_walks_through_value_moving_ops() -> None:
    """Q/DQ in front of a Transpose that feeds the output is removed too; graph inputs keep theirs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.guard import float_graph_outputs

    s, z = numpy_helper.from_array(np.array(2.0, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="qin"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dqin"),
             helper.make_node("Relu", ["xd"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"], name="q"),
             helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"], name="dq"),
             helper.make_node("Transpose", ["rd"], ["y"], perm=[1, 0], name="t")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])], initializer=[s, z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.array([[0.4, 3.0, 7.0], [2.2, 9.0, 1.0]], np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert float_graph_outputs(model) == 1
    assert [n.name for n in model.graph.node] == ["qin", "dqin", "relu", "t"]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    # the input's own Q/DQ stays (step 2), the output's rounding is gone
    np.testing.assert_array_equal(after, np.maximum(np.round(x / 2) * 2, 0).T)
    np.testing.assert_array_equal(before, after)  # on this grid the removed pair was exact: same values


def test_guard_module_parses_under_python_38() -> None:
    import subprocess

    vermin = Path(sys.executable).parent / "vermin"
    path = Path(G.__file__)
    proc = subprocess.run([str(vermin), "-t=3.8-", "--no-tips", "--violations", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_padding_positions_are_not_compared() -> None:
    """A transformer's padded tokens carry no meaning: int8 may change them freely (measured on
    MiniLM-L6: 91% padding, a hidden unit at relative error 1.5 over all tokens, 0.24 over real ones)."""
    rng = np.random.default_rng(5)
    ref = [rng.normal(0, 1, (1, 16, 32)) for _ in range(6)]
    masks = [np.concatenate([np.ones((1, 5), np.int64), np.zeros((1, 11), np.int64)], axis=1) for _ in ref]
    out = [r.copy() for r in ref]
    for o in out:
        o[0, 5:] = rng.normal(0, 3, (11, 32))  # garbage where the mask is 0
    feeds = [{"attention_mask": m} for m in masks]
    conf = {"feature_axis": {"h": 2}}
    assert G.check_outputs(["h"], [[o] for o in out], [[r] for r in ref], conf, feeds)["passed"]
    assert not G.check_outputs(["h"], [[o] for o in out], [[r] for r in ref], conf)["passed"]
    for o in out:
        o[0, 2, 7] += 50.0  # a real token damaged: still found
    rep = G.check_outputs(["h"], [[o] for o in out], [[r] for r in ref], conf, feeds)
    assert {(f["check"], f["slice"]) for f in rep["findings"]} >= {("slice_rel_error", 7)}


def test_a_masked_output_is_judged_along_its_last_axis_without_an_override() -> None:
    """By shape alone [1, 16, 32] would be judged along axis 1 (16 < 32), the tokens. With the
    padding mask in the feeds, axis 1 is positions: padding
    garbage must not fail a slice, and a damaged feature of a real token still must (MiniLM's
    SmoothQuant int8 was refused for "slices 13-16 on axis 1", its padding, by a caller that did
    not pass the build's resolved axes)."""
    rng = np.random.default_rng(6)
    ref = [rng.normal(0, 1, (1, 16, 32)) for _ in range(6)]
    masks = [np.concatenate([np.ones((1, 5), np.int64), np.zeros((1, 11), np.int64)], axis=1) for _ in ref]
    out = [r.copy() for r in ref]
    for o in out:
        o[0, 5:] = rng.normal(0, 3, (11, 32))
    feeds = [{"attention_mask": m} for m in masks]
    rep = G.check_outputs(["h"], [[o] for o in out], [[r] for r in ref], {}, feeds)
    assert rep["passed"], rep["findings"]
    assert rep["outputs"][0]["axis"] == 2
    assert not G.check_outputs(["h"], [[o] for o in out], [[r] for r in ref], {})["passed"]  # no mask: axis 1
    for o in out:
        o[0, 1, 9] += 50.0
    rep = G.check_outputs(["h"], [[o] for o in out], [[r] for r in ref], {}, feeds)
    assert ("slice_rel_error", 9) in {(f["check"], f["slice"]) for f in rep["findings"]}


def test_feature_axes_are_resolved_from_declared_shapes(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from edgekit.guard import resolve

    outs = [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", 384]),
            helper.make_tensor_value_info("det", TensorProto.FLOAT, [1, 84, 8400]),
            helper.make_tensor_value_info("seg", TensorProto.FLOAT, [1, 21, "h", "w"]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])]
    nodes = [helper.make_node("Identity", ["x"], [o.name]) for o in outs]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], outs)
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    conf = resolve({"feature_axis": {"det": 2}}, tmp_path / "m.onnx", "mask")
    assert conf["feature_axis"] == {"det": 2, "hidden": 2, "logits": 1, "seg": 1}  # the user's override kept
    assert conf["mask_input"] == "mask"
