"""The on-device runner, run as the device runs it: a subprocess on a laid-out release."""
from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from bundles import make_tiny_bundle
from edgekit.device import runner
from edgekit.targets import resolve
from test_runner_support import PY, ROOT, lay_out_release, make_tflite_bundle, run_runner, shim_env



@pytest.fixture
def release(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    make_tiny_bundle(bundle)
    return lay_out_release(bundle, tmp_path / "device")


def _result(out: Path) -> dict:
    # parse_constant refuses NaN/Infinity: the runner must write strict JSON.
    return json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_validate_onnx_end_to_end(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "result.json"
    proc = run_runner(release.parent.parent / "current", out, "--repeat", "3")
    assert proc.returncode == 0, proc.stderr
    r = _result(out)
    assert r["ok"] is True and "error" not in r and r["exit_code"] == 0
    assert r["release_id"] == release.name and r["target"] == "x86-avx2"
    assert {"python", "numpy", "onnxruntime", "runner_schema", "edgekit"} <= set(r["versions"])
    assert {"hostname", "machine", "cpu_count", "python"} <= set(r["device"])
    assert r["metric"]["name"] == "top1" and r["metric"]["value"] == 1.0 and r["metric"]["passed"] is True
    assert r["metrics"]["top1"] == 1.0 and r["metrics"]["top5"] == 1.0 and r["metrics"]["cosine"] == pytest.approx(1.0)
    assert r["metrics"]["psnr_db"] == "inf" and r["metrics"]["max_abs"] == 0.0  # identical outputs
    lat = r["latency"]
    assert lat["repeat"] == 3 and len(lat["windows"]) == 3
    assert lat["first_load_ms"] >= lat["session_create_ms"] > 0
    assert lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert lat["p50_ms"] == pytest.approx(statistics.median(w["p50_ms"] for w in lat["windows"]))
    assert lat["iterations"] == sum(w["iterations"] for w in lat["windows"]) == lat["samples_total"]
    assert 0 < len(lat["samples_ms"]) <= runner.MAX_SAMPLES
    assert all(w["window_s"] >= 0.05 for w in lat["windows"])
    assert r["memory"]["peak_rss_mb"] > 0
    rt = r["runtime"]
    assert rt["name"] == "onnxruntime" and rt["provider"] == "CPUExecutionProvider"
    assert rt["node_providers"] and set(rt["node_providers"]) == {"CPUExecutionProvider"}
    assert r["power"] is None


def test_threshold_miss_exits_3_with_a_result(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    make_tiny_bundle(bundle, corrupt_reference=True)
    release = lay_out_release(bundle, tmp_path / "device")
    out = tmp_path / "r.json"
    proc = run_runner(release, out)
    assert proc.returncode == runner.EXIT_METRIC
    r = _result(out)
    assert r["ok"] is False and "error" not in r
    assert r["metric"]["passed"] is False and r["metric"]["value"] < 0.99
    assert r["latency"]["iterations"] > 0  # latency is still measured on a metric miss


def _assert_failure(proc: subprocess.CompletedProcess, out: Path, kind: str, *words: str) -> dict:
    assert proc.returncode == runner.EXIT_FAILURE
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    r = _result(out)
    assert r["ok"] is False and r["error"]["kind"] == kind, r.get("error")
    assert "traceback" not in r["error"]
    for w in words:
        assert w in r["error"]["message"]
    assert r["error"]["message"] in proc.stderr  # the device's own message, one line
    return r


def test_missing_runtime_is_a_message(release: Path, tmp_path: Path) -> None:
    env = shim_env(tmp_path, "onnxruntime", "libonnxruntime.so.1: cannot open shared object file")
    out = tmp_path / "r.json"
    r = _assert_failure(run_runner(release, out, env=env), out, "runtime", "onnxruntime cannot be imported",
                        "libonnxruntime.so.1")
    assert "pip install" in r["error"]["hint"]


def test_missing_numpy_is_a_message(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = _assert_failure(run_runner(release, out, python=[PY, "-S"]), out, "runtime", "numpy cannot be imported")
    assert r["versions"]["python"]


def test_corrupt_model(release: Path, tmp_path: Path) -> None:
    (release / "model.onnx").write_bytes(b"this is not an onnx protobuf")
    out = tmp_path / "r.json"
    _assert_failure(run_runner(release, out), out, "model", "onnxruntime could not load", "model.onnx")


def test_the_provider_reported_is_the_one_that_ran_most_kernels(tmp_path: Path) -> None:
    """onnxruntime's profile format (events with cat "Node", name "<node>_kernel_time" and
    args.provider): TensorRT registered first, but most nodes fell back to CUDA."""
    events = [{"cat": "Session", "name": "model_loading_uri", "args": {}}]
    placed = [("trt_subgraph", "TensorrtExecutionProvider"), ("conv1", "CUDAExecutionProvider"),
              ("conv2", "CUDAExecutionProvider"), ("nms", "CPUExecutionProvider")]
    for _ in range(3):  # three profiled runs repeat each node
        events += [{"cat": "Node", "name": f"{n}_kernel_time", "args": {"provider": p}} for n, p in placed]
        events += [{"cat": "Node", "name": f"{n}_fence_before", "args": {}} for n, _ in placed]
    prof = tmp_path / "profile.json"
    prof.write_text(json.dumps(events))
    counts = runner._node_providers(str(prof))
    assert counts == {"TensorrtExecutionProvider": 1, "CUDAExecutionProvider": 2, "CPUExecutionProvider": 1}
    assert runner.main_provider(counts, "TensorrtExecutionProvider") == "CUDAExecutionProvider"
    assert runner.main_provider({}, "TensorrtExecutionProvider") == "TensorrtExecutionProvider"


def test_out_of_memory_is_a_message(release: Path, tmp_path: Path) -> None:
    """A model whose output onnxruntime cannot allocate (Expand to 2^36 x 16 floats: 4 TiB): a real
    allocation failure inside the run, reported as kind 'memory', not a traceback."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([1 << 36, 16], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Expand", ["x", "shape"], ["y"])], "oom",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(release / "model.onnx"))
    out = tmp_path / "r.json"
    r = _assert_failure(run_runner(release, out), out, "memory", "allocate")
    assert "\n" not in r["error"]["message"]


def test_threads_option_and_the_profile_default(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert run_runner(release, out, "--threads", "2").returncode == 0
    assert _result(out)["runtime"]["threads"] == 2
    # Without --threads: the manifest's runtime setting (the tiny bundle pins 1)
    assert json.loads((release / "manifest.json").read_text())["runtime"]["intra_op_threads"] == 1
    assert run_runner(release, out).returncode == 0
    assert _result(out)["runtime"]["threads"] == 1


def test_missing_reference(release: Path, tmp_path: Path) -> None:
    (release / "reference.npz").unlink()
    out = tmp_path / "r.json"
    _assert_failure(run_runner(release, out), out, "release", "reference outputs", "missing")


def test_truncated_reference(release: Path, tmp_path: Path) -> None:
    (release / "reference.npz").write_bytes(b"PK\x03\x04 truncated")
    out = tmp_path / "r.json"
    _assert_failure(run_runner(release, out), out, "release", "cannot read reference outputs")


def test_bad_arguments_are_a_message(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    _assert_failure(run_runner(release, out, "--repeat", "0"), out, "usage", "--repeat")


def test_tflite_end_to_end(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    make_tflite_bundle(bundle, threads=1)
    release = lay_out_release(bundle, tmp_path / "device")
    out = tmp_path / "r.json"
    proc = run_runner(release, out, "--repeat", "2")
    assert proc.returncode == 0, proc.stderr
    r = _result(out)
    assert r["ok"] is True
    assert r["runtime"]["name"] == "tflite" and r["runtime"]["module"] in ("tflite_runtime", "ai_edge_litert")
    assert r["runtime"]["threads"] == 1 and r["versions"]["tflite"]
    # The reference was computed by the same LiteRT interpreter: exact agreement.
    assert r["metric"]["value"] == 1.0 and r["metrics"]["max_abs"] == 0.0
    assert r["latency"]["iterations"] > 0 and len(r["latency"]["windows"]) == 2


def test_tflite_missing_runtime(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    make_tflite_bundle(bundle)
    release = lay_out_release(bundle, tmp_path / "device")
    env = shim_env(tmp_path, "ai_edge_litert", "no LiteRT here")
    shim_env(tmp_path, "tflite_runtime", "no tflite_runtime here")
    env["PYTHONPATH"] = f"{tmp_path / 'shim-tflite_runtime'}:{env['PYTHONPATH']}"
    out = tmp_path / "r.json"
    _assert_failure(run_runner(release, out, env=env), out, "runtime", "tflite_runtime", "ai_edge_litert")


def test_tflite_sample_matches_numpy() -> None:
    """The shipped sample really is x @ W + b with the tiny ONNX model's weights (tests/bundles.py)."""
    import numpy as np

    ref = np.load(ROOT / "samples" / "tflite" / "reference.npz")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 4)).astype(np.float32)
    b = rng.standard_normal((4,)).astype(np.float32)
    np.testing.assert_allclose(ref["output/y"], ref["input/x"] @ w + b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Power hook: the release's own edgekit/device/power.py
# ----------------------------------------------------------------------------------------------
STUB_POWER = '''
def measure(run_window, sampler, rate_hz, idle_s, root, profile, grid_g_per_kwh, requests_per_s):
    window = run_window()
    assert "iterations" in window
    return window, {"available": True, "sampler": sampler, "rate_hz": rate_hz, "idle_s": idle_s, "root": root,
                    "profile": profile["name"], "grid_g_per_kwh": grid_g_per_kwh, "requests_per_s": requests_per_s,
                    "iterations": window["iterations"],
                    "energy_j": 1.5, "trace": [[-0.1, 2.0], [0.0, 3.0], [0.05, 3.5]], "window": [0.0, 0.05]}
'''


def test_power_hook_passes_the_contract(release: Path, tmp_path: Path) -> None:
    (release / "edgekit" / "device" / "power.py").write_text(STUB_POWER)
    out = tmp_path / "r.json"
    proc = run_runner(release, out, "--power", "ina3221-hwmon", "--power-rate", "25", "--idle", "0.5",
                      "--sysfs-root", str(tmp_path), "--grid-intensity", "120", "--requests-per-s", "7.5")
    assert proc.returncode == 0, proc.stderr
    r = _result(out)
    p = r["power"]
    assert p["sampler"] == "ina3221-hwmon" and p["rate_hz"] == 25 and p["idle_s"] == 0.5
    assert p["root"] == str(tmp_path) and p["grid_g_per_kwh"] == 120 and p["profile"] == "x86-avx2"
    assert p["requests_per_s"] == 7.5
    assert p["iterations"] == r["latency"]["iterations"]  # the window power saw is the one reported
    assert p["trace"][0] == [-0.1, 2.0] and p["window"] == [0.0, 0.05]


def test_power_absent_is_recorded(release: Path, tmp_path: Path) -> None:
    (release / "edgekit" / "device" / "power.py").unlink()
    out = tmp_path / "r.json"
    proc = run_runner(release, out, "--power", "rapl")
    assert proc.returncode == 0, proc.stderr
    r = _result(out)
    assert r["power"]["available"] is False and "the power module failed to import" in r["power"]["reason"]
    assert r["latency"]["iterations"] > 0 and r["ok"] is True


def test_power_failure_is_recorded(release: Path, tmp_path: Path) -> None:
    (release / "edgekit" / "device" / "power.py").write_text("def measure(run_window, **kw):\n    raise OSError('no INA3221 under /sys')\n")
    out = tmp_path / "r.json"
    proc = run_runner(release, out, "--power", "ina3221x")
    assert proc.returncode == 0, proc.stderr
    r = _result(out)
    assert r["power"]["available"] is False and "no INA3221 under /sys" in r["power"]["reason"]
    assert r["latency"]["iterations"] > 0


def test_power_with_the_real_power_module(release: Path, tmp_path: Path) -> None:
    """The shipped power module through the runner's hook: the estimate always works."""
    out = tmp_path / "r.json"
    proc = run_runner(release, out, "--power", "estimate", "--idle", "0.1", "--power-rate", "20")
    assert proc.returncode == 0, proc.stderr
    p = _result(out)["power"]
    assert p["sampler"] == "estimate" and p["is_estimate"] is True
    assert p["trace"] and len(p["window"]) == 2


# ----------------------------------------------------------------------------------------------
# Pure parts: provider plan (TensorRT options), timing windows
# ----------------------------------------------------------------------------------------------
def test_tensorrt_plan_on_jetson(tmp_path: Path) -> None:
    runtime = resolve("jetson-orin-nano").runtime.model_dump()
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers, options, skipped = runner.provider_plan(runtime, available, str(tmp_path / "rel"))
    assert providers == available and skipped == []
    trt = options[0]
    assert trt["trt_fp16_enable"] == "True" and trt["trt_int8_enable"] == "True"  # 'True', as ORT's binding wants
    assert trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "rel" / "trt_cache")  # inside the release


def test_provider_plan_falls_back_to_cpu(tmp_path: Path) -> None:
    runtime = resolve("jetson-nano").runtime.model_dump()
    providers, options, skipped = runner.provider_plan(runtime, ["CPUExecutionProvider"], str(tmp_path))
    assert providers == ["CPUExecutionProvider"] and options == [{}]
    assert skipped == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]


def test_time_window_plans_iterations_to_fill_the_duration() -> None:
    calls = []

    def run(feed: object) -> None:
        calls.append(1)
        time.sleep(0.002)

    stats, samples = runner.time_window(run, None, 0.1)
    assert stats["window_s"] >= 0.1 and len(samples) == stats["iterations"] == len(calls)
    assert stats["iterations"] < 0.1 / 0.002 + 10  # planned, not run open-ended
    assert 1.5 < stats["p50_ms"] < 20


def test_stride_keeps_at_most_the_limit_in_time_order() -> None:
    kept = runner.stride([float(i) for i in range(10_000)], limit=100)
    assert len(kept) == 100 and kept == sorted(kept) and kept[0] == 0.0


def test_time_window_stops_at_max_iterations_before_the_duration() -> None:
    """A 0.04 ms model must not spin for the whole --duration: the window ends at whichever of the
    iteration cap and the duration comes first."""
    stats, samples = runner.time_window(lambda feed: None, None, 5.0, max_iterations=2000)
    assert stats["iterations"] == len(samples) == 2000
    assert stats["window_s"] < 2.0  # far below the 5 s duration (a functional bound, not a timing claim)
    stats, _ = runner.time_window(lambda feed: time.sleep(0.002), None, 0.1, max_iterations=10_000)
    assert 0.1 <= stats["window_s"] < 1.0 and stats["iterations"] < 10_000  # the duration came first


def test_time_window_checks_the_clock_between_chunks() -> None:
    """Runs that slow down after a fast start cannot stretch the window by a whole plan."""
    calls = []

    def run(feed: object) -> None:
        calls.append(1)
        if len(calls) > 10:
            time.sleep(0.001)  # 10 fast first runs, then slow ones

    stats, _ = runner.time_window(run, None, 0.2)
    assert 0.2 <= stats["window_s"] < 0.2 + runner.CHUNK_S * 30, stats["window_s"]
