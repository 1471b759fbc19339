"""Inputs as real models declare them: a 0-d scalar input, a state with its batch on axis 1,
inputs constant across samples, and a stateful stream whose state output is carried back in.

The model is a small voice-activity-shaped recurrent cell built with onnx.helper (real weights drawn
from a seeded generator); build, deploy and validate run through the CLI with real onnxruntime
sessions on a local device directory."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit import config, data
from edgekit.cli import main
from edgekit.device import runner
from edgekit.errors import ConfigError, QuantizationError

CHUNK, HIDDEN, STREAMS, CHUNKS = 64, 128, 8, 8


def vad_model(path: Path, seed: int = 0) -> None:
    """x [N,64], state [2,N,128] (batch on axis 1), sr [] int64 -> prob [N,1], stateN [2,N,128]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, arr: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(arr, name)

    inits = [
        init("wx", (rng.standard_normal((CHUNK, HIDDEN)) / np.sqrt(CHUNK)).astype(np.float32)),
        init("wh", (rng.standard_normal((HIDDEN, HIDDEN)) * 0.6 / np.sqrt(HIDDEN)).astype(np.float32)),
        init("bias", (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32)),
        init("wo", (rng.standard_normal((HIDDEN, 1)) / np.sqrt(HIDDEN)).astype(np.float32)),
        init("ref_sr", np.array(16000.0, np.float32)), init("half", np.array(0.5, np.float32)),
        init("i0", np.array(0, np.int64)), init("i1", np.array(1, np.int64)), init("ax0", np.array([0], np.int64)),
    ]
    n = helper.make_node
    nodes = [
        n("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT), n("Div", ["srf", "ref_sr"], ["scale"]),
        n("Mul", ["x", "scale"], ["xs"]),
        n("Gather", ["state", "i0"], ["h0"], axis=0), n("Gather", ["state", "i1"], ["c0"], axis=0),
        n("MatMul", ["xs", "wx"], ["a"]), n("MatMul", ["h0", "wh"], ["b"]), n("Add", ["a", "b"], ["ab"]),
        n("Add", ["ab", "bias"], ["z"]), n("Tanh", ["z"], ["h1"]),
        n("Mul", ["c0", "half"], ["c_keep"]), n("Mul", ["h1", "half"], ["c_new"]), n("Add", ["c_keep", "c_new"], ["c1"]),
        n("Unsqueeze", ["h1", "ax0"], ["h1u"]), n("Unsqueeze", ["c1", "ax0"], ["c1u"]),
        n("Concat", ["h1u", "c1u"], ["stateN"], axis=0),
        n("MatMul", ["h1", "wo"], ["logit"]), n("Sigmoid", ["logit"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", CHUNK]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", HIDDEN]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "N", HIDDEN])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


PROJECT = """
[model]
name = "vad"
source = "onnx"
path = "model.onnx"

[[inputs]]
name = "x"
shape = [1, 64]
dynamic_axes = { 0 = "N" }

[[inputs]]
name = "state"
shape = [2, 1, 128]
batch_axis = 1
dynamic_axes = { 1 = "N" }
{state_extra}

[[inputs]]
name = "sr"
shape = []
dtype = "int64"
value = 16000

[calibration]
data = "calib.npz"

[validation]
data = "val.npz"
metric = "max_abs"
output = "prob"
threshold = 0.05
reference_samples = 24

[validation.stream]
state = { input = "state", output = "stateN" }
chunks = 8

[[devices]]
name = "local"
target = "x86-avx2"
path = "device"

[power]
sampler = "none"
"""


def chunks(n: int, seed: int) -> np.ndarray:
    """Speech-like chunks: a sine burst whose loudness drifts from chunk to chunk."""
    rng = np.random.default_rng(seed)
    t = np.arange(CHUNK, dtype=np.float32)
    loud = np.repeat(rng.uniform(0.2, 1.5, n // 4 + 1), 4)[:n, None]
    return (loud * np.sin(t[None, :] * rng.uniform(0.1, 0.6, (n, 1))) + 0.1 * rng.standard_normal((n, CHUNK))).astype(np.float32)


def project(tmp_path: Path, state_extra: str = "constant = true") -> Path:
    """constant = true: one initial state for every stream; otherwise the state is stored per sample
    on its batch axis (axis 1), as the model lays it out."""
    vad_model(tmp_path / "model.onnx")
    n = STREAMS * CHUNKS
    state = np.zeros((2, 1 if state_extra else n, HIDDEN), np.float32)
    np.savez(tmp_path / "calib.npz", x=chunks(n, 1), state=state)
    np.savez(tmp_path / "val.npz", x=chunks(n, 2), state=state)
    (tmp_path / "edgekit.toml").write_text(PROJECT.replace("{state_extra}", state_extra))
    return tmp_path / "edgekit.toml"


def _cli(*args: str) -> dict:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_config_takes_scalars_batch_axes_and_constants(tmp_path: Path) -> None:
    cfg = config.load(project(tmp_path))
    x, state, sr = cfg.inputs
    assert (x.batch, state.batch, sr.batch) == (0, 1, None) and sr.shape == [] and state.constant
    feeds, labels, starts = data.load_stream_samples(cfg.validation, cfg, "validation")
    assert len(feeds) == STREAMS * CHUNKS and labels is None
    assert feeds[5]["x"].shape == (1, CHUNK) and feeds[5]["state"].shape == (2, 1, HIDDEN)
    assert feeds[5]["sr"].shape == () and feeds[5]["sr"].dtype == np.int64 and int(feeds[5]["sr"]) == 16000
    assert starts == [i % CHUNKS == 0 for i in range(STREAMS * CHUNKS)]
    assert feeds[5]["state"] is feeds[6]["state"]  # one array for every sample, not copies


def test_per_sample_state_is_taken_along_axis_1(tmp_path: Path) -> None:
    cfg = config.load(project(tmp_path, state_extra=""))
    n = STREAMS * CHUNKS
    state = np.arange(2 * n * HIDDEN, dtype=np.float32).reshape(2, n, HIDDEN)
    np.savez(tmp_path / "calib.npz", x=chunks(n, 1), state=state)
    calib, _ = data.load_samples(cfg.calibration, cfg, "calibration")
    assert len(calib) == n and calib[3]["state"].shape == (2, 1, HIDDEN)
    np.testing.assert_array_equal(calib[3]["state"][:, 0], state[:, 3])


def test_state_stacked_on_axis_0_states_the_rule_and_the_exact_shape(tmp_path: Path) -> None:
    cfg = config.load(project(tmp_path, state_extra=""))
    n = STREAMS * CHUNKS
    np.savez(tmp_path / "calib.npz", x=chunks(n, 1), state=np.zeros((n, 2, 1, HIDDEN), np.float32))
    with pytest.raises(QuantizationError) as exc:
        data.load_samples(cfg.calibration, cfg, "calibration")
    msg = str(exc.value)
    assert "calib.npz" in msg and "input 'state' has its samples on axis 1 (batch_axis = 1)" in msg
    assert "[2,N,128] float32, got [64,2,1,128] float32" in msg
    cfg = config.load(project(tmp_path))  # constant = true: the rule is one sample
    np.savez(tmp_path / "calib.npz", x=chunks(n, 1), state=np.zeros((2, n, HIDDEN), np.float32))
    with pytest.raises(QuantizationError, match=r"input 'state' is constant across samples \(constant = true\), so "
                                                r"the file must hold one sample shaped \[2,1,128\] float32, got \[2,64,128\]"):
        data.load_samples(cfg.calibration, cfg, "calibration")


def test_sample_counts_must_agree_along_each_batch_axis(tmp_path: Path) -> None:
    cfg = config.load(project(tmp_path, state_extra=""))
    np.savez(tmp_path / "calib.npz", x=chunks(64, 1), state=np.zeros((2, 32, HIDDEN), np.float32))
    with pytest.raises(QuantizationError, match=r"different sample counts along their batch axes: "
                                                r"'state' 32 \(axis 1\), 'x' 64 \(axis 0\)"):
        data.load_samples(cfg.calibration, cfg, "calibration")


def test_scalar_without_value_reads_one_or_per_sample(tmp_path: Path) -> None:
    path = project(tmp_path)
    path.write_text(path.read_text().replace("value = 16000\n", ""))
    cfg = config.load(path)
    n = STREAMS * CHUNKS
    np.savez(tmp_path / "val.npz", x=chunks(n, 2), state=np.zeros((2, 1, HIDDEN), np.float32),
             sr=np.array(8000, np.int64))  # one value for every sample
    feeds, _ = data.load_samples(cfg.validation, cfg, "validation")
    assert int(feeds[9]["sr"]) == 8000 and feeds[9]["sr"].shape == ()
    np.savez(tmp_path / "val.npz", x=chunks(n, 2), state=np.zeros((2, 1, HIDDEN), np.float32),
             sr=np.arange(n, dtype=np.int64))  # one per sample on a new axis 0
    feeds, _ = data.load_samples(cfg.validation, cfg, "validation")
    assert int(feeds[9]["sr"]) == 9 and feeds[9]["sr"].shape == ()
    np.savez(tmp_path / "val.npz", x=chunks(n, 2), state=np.zeros((2, 1, HIDDEN), np.float32),
             sr=np.zeros((n, 2), np.int64))
    with pytest.raises(ConfigError) as exc:
        data.load_samples(cfg.validation, cfg, "validation")
    assert ("input 'sr' has no batch axis (batch_axis = \"none\"), so the file must hold either one value shaped [] "
            "(fed with every sample) or one per sample stacked on a new axis 0: [N] int64, got [64,2] int64") in str(exc.value)


@pytest.mark.parametrize("mutate,needle", [
    (lambda s: s.replace('shape = []\ndtype = "int64"', 'shape = []\nbatch_axis = 0\ndtype = "int64"'),
     "a scalar (shape = []) has no batch axis"),
    (lambda s: s.replace("batch_axis = 1", "batch_axis = 3"), "batch_axis 3 is not an axis of shape [2, 1, 128]"),
    (lambda s: s.replace("value = 16000", "value = [16000, 8000]"), "value has shape [2], but shape = []"),
    (lambda s: s.replace('input = "state"', 'input = "h"'), "'validation.stream.state.0.input': 'h' is not one of"),
    (lambda s: s.replace("chunks = 8", 'chunks = 8\nids = "stream"'), "exactly one of 'chunks'"),
])
def test_bad_input_declarations_are_one_clear_line(tmp_path: Path, mutate, needle: str) -> None:
    path = project(tmp_path)
    path.write_text(mutate(path.read_text()))
    result = CliRunner().invoke(main, ["build", "--target", "x86-avx2", "--config", str(path)])
    assert result.exit_code == ConfigError.exit_code, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert len([ln for ln in result.output.splitlines() if ln.startswith("error:")]) == 1


def test_a_declaration_that_contradicts_the_model_names_the_fitting_one(tmp_path: Path) -> None:
    path = project(tmp_path, state_extra="")
    text = path.read_text().replace("shape = [2, 1, 128]\nbatch_axis = 1\ndynamic_axes = { 1 = \"N\" }",
                                    "shape = [1, 1, 128]")
    path.write_text(text)
    n = STREAMS * CHUNKS
    np.savez(tmp_path / "calib.npz", x=chunks(n, 1), state=np.zeros((n, 1, HIDDEN), np.float32))
    np.savez(tmp_path / "val.npz", x=chunks(n, 2), state=np.zeros((n, 1, HIDDEN), np.float32))
    result = CliRunner().invoke(main, ["build", "--target", "x86-avx2", "--config", str(path)])
    assert result.exit_code == ConfigError.exit_code, result.output
    assert ("edgekit.toml declares shape [1, 1, 128] (batch_axis = 0), but the model declares [2, N, 128]"
            in result.output)
    assert "declare shape = [2, 1, 128], batch_axis = 1" in result.output and "Traceback" not in result.output


def test_a_dtype_that_contradicts_the_model_names_the_one_it_takes(tmp_path: Path) -> None:
    path = project(tmp_path)
    path.write_text(path.read_text().replace('dtype = "int64"\nvalue = 16000', 'dtype = "int32"\nvalue = 16000'))
    result = CliRunner().invoke(main, ["build", "--target", "x86-avx2", "--config", str(path)])
    assert result.exit_code == ConfigError.exit_code, result.output
    assert "('sr'): edgekit.toml declares dtype int32, but the model takes int64: declare dtype = \"int64\"" in result.output


def _fp32_stream(model: Path, feeds: List[Dict[str, np.ndarray]], starts: List[bool], carry: bool) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    probs, state = [], None
    for feed, start in zip(feeds, starts):
        fed = dict(feed)
        if carry and not start:
            fed["state"] = state
        prob, state = sess.run(["prob", "stateN"], fed)
        probs.append(prob)
    return np.stack(probs)


def test_streaming_model_builds_deploys_and_validates_on_streams(tmp_path: Path) -> None:
    cfg_path = project(tmp_path)
    # int8 forced: the quantized model carries its own state, on the host and on the device
    built = _cli("build", "--target", "x86-avx2", "--config", str(cfg_path), "--precision", "int8")
    assert built["precision"] == "int8"
    bundle = Path(built["bundle"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["x", "state", "sr"]
    assert manifest["inputs"][2]["shape"] == [] and manifest["inputs"][1]["shape"] == [2, "N", 128]
    assert manifest["metric"]["stream"] == {"state": [{"input": "state", "output": "stateN"}]}
    # 24 samples at most: whole streams of 8, spread over the 8 streams (0, 4 and 7... as picked evenly)
    assert manifest["reference"]["samples"] == 24 and manifest["reference"]["of"] == 64

    ref = runner.open_reference(str(bundle / "reference.npz"))
    starts = ref["stream/start"].astype(bool).tolist()
    assert starts == [i % CHUNKS == 0 for i in range(24)]
    assert ref["input/sr"].shape == (24,) and ref["input/state"].shape == (24, 2, 1, HIDDEN)
    # The references are the FP32 model run on streams, state carried: not isolated chunks.
    feeds = [{"x": ref["input/x"][i], "state": ref["input/state"][i], "sr": np.asarray(ref["input/sr"][i])}
             for i in range(24)]
    carried = _fp32_stream(cfg_path.parent / "model.onnx", feeds, starts, carry=True)
    isolated = _fp32_stream(cfg_path.parent / "model.onnx", feeds, starts, carry=False)
    np.testing.assert_allclose(ref["output/prob"], carried, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(carried - isolated)) > 0.01  # the carry changes the answer, so it is tested

    _cli("deploy", "--device", "local", "--config", str(cfg_path))
    res = _cli("validate", "--device", "local", "--config", str(cfg_path), "--duration", "0.2")
    assert res["ok"] is True, res
    assert res["metric"]["name"] == "max_abs" and res["metric"]["output"] == "prob" and res["metric"]["value"] <= 0.05
    # the device carried the int8 model's state: its outputs sit far closer to the carried FP32
    # references than isolated chunks would
    assert 0 < res["metric"]["value"] < np.max(np.abs(carried - isolated)) / 2
