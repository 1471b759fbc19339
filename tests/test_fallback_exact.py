"""Issue 18: the fallback keeps what it says it keeps.

* the in-memory revert used for ranking is the graph a real excluding build gives, on a ReLU6
  (Clip 0..6) network whose Clips onnxruntime's quantizer fuses away (renaming the Conv outputs);
* a node the manifest lists as kept float computes in float in the session the device opens
  (runtime.disabled_optimizers), where onnxruntime's WeightBiasQuantization would re-quantize it;
* the search tries several float sets and, on a host that can time the target, keeps the fastest.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest

from edgekit import artifact, config as cfg, targets
from edgekit.build import build
from edgekit.device import runner
from edgekit.errors import AccuracyError
from edgekit.metrics import MetricSpec
from edgekit.quantize import calibration as cal
from edgekit.quantize.candidates import build_static
from edgekit.quantize.evaluate import make_session, output_error, run_outputs
from edgekit.quantize.fallback import depthwise_blocks, noise_floor, search_float_set
from edgekit.quantize.graph import quantizable_nodes
from edgekit.quantize.presets import CNN_OPS, QuantPreset
from edgekit.quantize.sensitivity import rank_by_leave_one_out, revert_in_memory


def relu6_cnn(path: Path, seed: int = 0) -> Path:
    """x[1,3,16,16] -> stem Conv+Clip(0,6) -> 3 x (depthwise Conv+Clip, pointwise Conv+Clip)
    -> GlobalAveragePool -> Flatten -> Gemm: MobileNet's shape, small enough for a test."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
              numpy_helper.from_array(np.array(6.0, np.float32), "six")]

    def conv(name: str, x: str, cin: int, cout: int, k: int, stride: int, group: int) -> str:
        w = rng.standard_normal((cout, cin // group, k, k)) * 1.5 / np.sqrt(cin // group * k * k)
        b = 0.1 * rng.standard_normal(cout)
        inits.extend([numpy_helper.from_array(w.astype(np.float32), f"{name}.w"),
                      numpy_helper.from_array(b.astype(np.float32), f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.out"], name=f"{name}/Conv",
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group))
        nodes.append(helper.make_node("Clip", [f"{name}.out", "zero", "six"], [f"{name}.act"], name=f"{name}/Clip"))
        return f"{name}.act"

    h = conv("stem", "x", 3, 16, 3, 2, 1)
    widths = [16, 24, 24, 32]
    for i in range(3):
        h = conv(f"b{i}.dw", h, widths[i], widths[i], 3, 1 + (i == 1), widths[i])
        h = conv(f"b{i}.pw", h, widths[i], widths[i + 1], 1, 1, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    wf = (rng.standard_normal((10, 32)) / np.sqrt(32)).astype(np.float32)
    inits += [numpy_helper.from_array(wf, "fc.w"), numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc/Gemm", transB=1))
    graph = helper.make_graph(nodes, "relu6", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def feeds(n: int, seed: int) -> List[Dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(-1.0, 3.0, (1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


PRESET = QuantPreset(name="u8s8-pc", op_types=CNN_OPS)
LEVEL = "all"  # the level the engine ranks at and the manifest names for CPU targets


@pytest.fixture(scope="module")
def relu6(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("relu6")
    fp32 = relu6_cnn(d / "fp32.onnx")
    calib = feeds(16, 1)
    cache = cal.calibrate(fp32, calib, "MinMax", CNN_OPS, d / "cal.json", extra={"symmetric": False})
    q0 = build_static(fp32, d / "q0.onnx", PRESET, cache)
    return d, fp32, cache, q0


def _error(model, fs, refs) -> float:
    return output_error(run_outputs(make_session(model, LEVEL), fs, 0), refs)


def test_in_memory_revert_is_the_real_excluding_build_on_a_relu6_network(relu6) -> None:
    import onnx

    d, fp32, cache, q0 = relu6
    qdq, fmodel = onnx.load(str(q0)), onnx.load(str(fp32))
    # The case this is about: the quantizer fused every Clip away and renamed the Conv outputs.
    assert "Clip" not in {n.op_type for n in qdq.graph.node}
    convs = {n.name: n for n in qdq.graph.node if n.op_type == "Conv"}
    assert convs["b0.dw/Conv"].output[0] == "b0.dw.act"
    names = [n.name for n in quantizable_nodes(fmodel, CNN_OPS)]
    assert len(names) == 9  # 7 Conv, GlobalAveragePool, Gemm
    fs = feeds(8, 7)
    refs = run_outputs(make_session(fp32, "disabled"), fs, 0)
    base = _error(q0, fs, refs)
    mem, real = {}, {}
    for name in names:
        model, exact, why = revert_in_memory(qdq, fmodel, CNN_OPS, [name])
        assert exact, why
        mem[name] = base - _error(model.SerializeToString(), fs, refs)
        real[name] = base - _error(build_static(fp32, d / "x.onnx", PRESET, cache, nodes_to_exclude=[name]), fs, refs)
    # the gains are far apart (the hot tensor's producer and consumer matter), so order is a real test
    assert max(real.values()) - min(real.values()) > 10 * max(abs(mem[n] - real[n]) for n in names)
    for name in names:
        assert mem[name] == pytest.approx(real[name], abs=1e-5), name
        assert np.sign(round(mem[name], 5)) == np.sign(round(real[name], 5)), name
    for a in names:  # the order: every pair that real builds tell apart, the in-memory gains order alike
        for b in names:
            if real[a] - real[b] > 1e-4:
                assert mem[a] > mem[b], (a, b)
    # a depthwise + pointwise pair, and a whole block, revert as one build would too
    for group in (["b1.dw/Conv", "b1.pw/Conv"], ["b0.pw/Conv", "b1.dw/Conv", "b1.pw/Conv"]):
        model, exact, _ = revert_in_memory(qdq, fmodel, CNN_OPS, group)
        assert exact
        assert _error(model.SerializeToString(), fs, refs) == pytest.approx(
            _error(build_static(fp32, d / "x.onnx", PRESET, cache, nodes_to_exclude=group), fs, refs), abs=1e-5)


def test_ranking_checks_itself_against_real_builds(relu6) -> None:
    d, fp32, cache, q0 = relu6
    import onnx

    names = [n.name for n in quantizable_nodes(onnx.load(str(fp32)), CNN_OPS)]
    fs = feeds(8, 7)
    refs = run_outputs(make_session(fp32, "disabled"), fs, 0)
    built: List[List[str]] = []

    def one(excluded: Sequence[str]) -> Path:
        built.append(list(excluded))
        return build_static(fp32, d / "r.onnx", PRESET, cache, nodes_to_exclude=excluded)

    record: Dict[str, object] = {}
    ranked = rank_by_leave_one_out(q0, fp32, names, fs, refs, 0, LEVEL, time.monotonic() + 300, op_types=CNN_OPS,
                                   build=one, record=record)
    assert record["method"] == "in-memory reverts"
    checked = record["checked"]
    assert len(checked) == 2 and built == [c["nodes"] for c in checked]  # type: ignore[union-attr]
    for c in checked:  # type: ignore[union-attr]
        assert c["in_memory"] == pytest.approx(c["real_build"], abs=1e-5)
    gains = [g for _, g in ranked]
    assert gains == sorted(gains, reverse=True) and ranked[0][0] == built[0][0]


def test_a_structure_the_revert_does_not_know_ranks_by_real_builds(relu6) -> None:
    """A mismatching check (here: a build function that is not the graph's real build) must switch
    the ranking to real builds, never keep an in-memory ranking that disagrees with them."""
    d, fp32, cache, q0 = relu6
    import onnx

    names = [n.name for n in quantizable_nodes(onnx.load(str(fp32)), CNN_OPS)]
    fs = feeds(4, 7)
    refs = run_outputs(make_session(fp32, "disabled"), fs, 0)
    fp32_only = lambda excluded: fp32  # noqa: E731  every "build" is the float model
    record: Dict[str, object] = {}
    ranked = rank_by_leave_one_out(q0, fp32, names, fs, refs, 0, LEVEL, time.monotonic() + 300, op_types=CNN_OPS,
                                   build=fp32_only, record=record)
    assert record["method"] == "real builds" and "real build" in str(record["why"])
    assert len(ranked) == len(names)


def _expose(model_path: Path, out: Path, tensors: Sequence[str]) -> Path:
    import onnx

    m = onnx.load(str(model_path))
    for t in tensors:
        m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    onnx.save(m, str(out))
    return out


def _float_conv(fp32: Path, name: str, x: np.ndarray) -> np.ndarray:
    """The node alone, in float, with its FP32 weights, in a session with every optimization off."""
    import onnx
    from onnx import helper

    m = onnx.load(str(fp32))
    node = next(n for n in m.graph.node if n.name == name)
    inits = [i for i in m.graph.initializer if i.name in node.input[1:]]
    g = helper.make_graph([node], "one", [helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)], inits)
    one = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    one.ir_version = 8
    return make_session(one.SerializeToString(), "disabled").run(None, {node.input[0]: x})[0]


@pytest.mark.parametrize("target", ["x86-avx512-vnni", "raspberry-pi-5"])
def test_excluded_node_runs_in_float_in_the_session_the_manifest_describes(relu6, tmp_path: Path, target: str) -> None:
    """The shipped file for 'b1.dw kept float' is quantize_static(nodes_to_exclude=[b1.dw]); the
    device opens it with the manifest's runtime settings through runner.py. The node's output must
    be its float computation on its (dequantized) input, at the level the manifest names."""
    from edgekit.build import _manifest_runtime
    from edgekit.quantize.presets import DISABLED_OPTIMIZERS, runtime_level_for

    d, fp32, cache, _ = relu6
    name = "b1.dw/Conv"
    shipped = build_static(fp32, tmp_path / "excl.onnx", PRESET, cache, nodes_to_exclude=[name])
    import onnx

    node = next(n for n in onnx.load(str(shipped)).graph.node if n.name == name)
    release = tmp_path / "release"
    release.mkdir()
    _expose(shipped, release / "probe.onnx", [node.input[0], node.output[0]])
    profile = targets.load_all()[target]
    level = runtime_level_for("static-qdq", profile)
    assert level == "all"  # the level where WeightBiasQuantization (basic and up) runs

    def node_error(runtime: dict) -> float:
        run, info, finish = runner.open_onnxruntime(str(release), {"artifact": "probe.onnx", "runtime": runtime}, 2)
        finish()
        worst = 0.0
        for f in feeds(4, 3):
            outs = dict(zip(info["output_names"], run(f)))
            x, y = outs[node.input[0]], outs[node.output[0]]
            worst = max(worst, float(np.max(np.abs(y - _float_conv(fp32, name, x)))))
        return worst

    runtime = _manifest_runtime(profile, "onnxruntime", level, "int8", DISABLED_OPTIMIZERS)
    runtime["providers"] = ["CPUExecutionProvider"]  # this host's EP; the ISA does not matter here
    assert runtime["disabled_optimizers"] == ["WeightBiasQuantization"]
    assert node_error(runtime) < 1e-5
    # The control: the same session without the manifest's setting re-quantizes the node's weights
    # (per-tensor int8), so the check above is one that can fail.
    assert node_error({k: v for k, v in runtime.items() if k != "disabled_optimizers"}) > 1e-3


def test_runner_refuses_a_hostile_disabled_optimizers_field() -> None:
    with pytest.raises(runner.RunnerError, match="disabled_optimizers"):
        runner.disabled_optimizers({"disabled_optimizers": ["ok", "rm -rf /; x"]})
    with pytest.raises(runner.RunnerError):
        runner.disabled_optimizers({"disabled_optimizers": "WeightBiasQuantization"})
    assert runner.disabled_optimizers({}) == []


def test_a_built_int8_bundle_names_the_optimizers_its_session_needs_off(digits_bundle: Path) -> None:
    manifest = artifact.read_manifest(digits_bundle)
    q = manifest["quantization"]
    if q["precision"] == "int8":
        assert manifest["runtime"]["disabled_optimizers"] == ["WeightBiasQuantization"] == q["disabled_optimizers"]
    else:
        assert "disabled_optimizers" not in manifest["runtime"]


def test_the_search_runs_on_checked_in_memory_reverts_and_ships_a_real_build(tmp_path: Path) -> None:
    """The engine's search builds float sets by the in-memory revert (checked by the ranking), screens
    top-1 candidates that can no longer pass, and rebuilds every passing set with the real
    quantizer: the shipped file is quantize_static(nodes_to_exclude=kept float), scoring what the
    manifest says it scores."""
    import onnx

    from edgekit.quantize import quantize_for_target

    fp32 = relu6_cnn(tmp_path / "fp32.onnx", seed=1)  # full int8: top-1 0.967 on these 60 inputs
    profile = targets.load_all()["raspberry-pi-5"]  # not this host's ISA: untimed, fewest float nodes win
    res = quantize_for_target(fp32, tmp_path / "w", profile, feeds(32, 1), feeds(60, 2), MetricSpec("top1", 0.97),
                              precision="int8", budget_s=600)
    assert res.metric_before["value"] < 0.97 <= res.metric_after["value"]
    (label, rec), = [(k, v) for k, v in res.fallback_search.items() if k.startswith("int8-static")]
    assert rec["ranking"]["method"] == "in-memory reverts"
    assert rec["search_builds"] == "in-memory reverts, passing sets rebuilt"
    assert rec["real_builds"] >= 1 and "screened" in rec  # screening itself: test_fallback_search.py
    kept = [k.node for k in res.kept_float if k.reason.startswith("accuracy")]
    assert kept
    # the shipped file is a real excluding build: no Identity left by an in-memory revert
    shipped = onnx.load(str(res.model_path))
    assert not [n for n in shipped.graph.node if n.name.endswith("__edgekit_float")]
    assert not str(res.model_path).endswith(".mem.onnx")
