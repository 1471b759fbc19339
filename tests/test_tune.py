"""``edgekit build --tune-on``: the device scores, times and meters the candidates, and the objective
chooses. Real timing on the local device (this host, real onnxruntime sessions, the real digits
model); the choice and the result checks on their own; energy through a simulated RAPL sensor
(hardware we don't have), everything else real."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List

import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.errors import AccuracyError, DeviceError
from edgekit.quantize.result import Candidate
from edgekit.tune import TuneOptions
from edgekit.tune_check import checked_result
from edgekit.tune_choose import choose

from conftest import SAMPLES


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def project(digits_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits with two local devices: 'local' and 'twin', the same machine (an identical board)."""
    dest = tmp_path_factory.mktemp("tune") / "digits"
    shutil.copytree(digits_project, dest, ignore=shutil.ignore_patterns("dist", ".device", "runs"))
    toml = dest / "edgekit.toml"
    toml.write_text(toml.read_text() + '\n[[devices]]\nname = "twin"\ntarget = "x86-avx2"\ntransport = "local"\n'
                    'path = ".device/twin"\n')
    return dest


def _manifest(bundle: Path) -> Dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def _record(bundle: Path) -> Dict[str, Any]:
    return json.loads(bundle.with_name(bundle.name + ".build.json").read_text())


# ------------------------------------------------------------------------------------------------
# Mistakes: one line each, before anything is built
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--objective", "energy"], "--objective only applies with --tune-on DEVICE"),
    (["--retune"], "--retune only applies with --tune-on DEVICE"),
    (["--tune-on", "local", "--max-p50-ms", "5"], "--max-p50-ms constrains the energy objective"),
    (["--tune-on", "local", "--objective", "p99", "--max-p99-ms", "5"], "--max-p99-ms constrains the latency"),
    (["--tune-on", "local", "--max-p99-ms", "-1"], "--max-p99-ms: expected a positive number"),
    (["--tune-on", "nosuch"], "no device named 'nosuch'"),
])
def test_bad_tune_options_are_one_line(args: List[str], words: str) -> None:
    res = _cli("build", "--config", str(SAMPLES / "digits" / "edgekit.toml"), "--target", "x86", *args)
    assert res.exit_code == 2, res.output
    assert words in res.output and "Traceback" not in res.output
    assert len([ln for ln in res.output.splitlines() if ln.startswith("error:")]) == 1


def _device_code() -> Dict[str, int]:
    """{sha256: size} of the device package's files: one blob per distinct content (the launcher
    runner.py is a copy of edgekit/device/__main__.py, and goes up once)."""
    from edgekit.tune_device import device_code, sha256_file

    with device_code() as code:
        return {sha256_file(path): path.stat().st_size for path in code.values()}


def test_the_device_runs_the_shipped_package_and_refuses_another(tmp_path: Path) -> None:
    """``-m`` from the run directory imports the package shipped there; run from anywhere else (here
    the checkout, where PYTHONPATH's edgekit would be found) the command refuses with one line."""
    from edgekit import artifact

    run = tmp_path / "run"
    artifact.copy_device_files(run)
    argv = [sys.executable, "-B", "-m", "edgekit.device.tune", "facts", "--package-root", str(run)]
    ok = subprocess.run(argv, cwd=run, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[-1])["runtime"]["name"] == "onnxruntime"
    assert not list(run.rglob("__pycache__"))
    other = subprocess.run(argv, cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=120)
    assert other.returncode == 4 and other.stdout == ""
    assert other.stderr.strip().splitlines() == [
        f"tune: running edgekit from {Path(__file__).parent.parent}, not the package shipped to {run}; run it with "
        "that directory as the working directory"]


def test_device_side_parses_under_python_38() -> None:
    import edgekit.device.tune as T

    vermin = Path(sys.executable).parent / "vermin"
    proc = subprocess.run([str(vermin), "-t=3.8-", "--no-tips", "--violations", T.__file__], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------
# The choice, on given numbers
# ------------------------------------------------------------------------------------------------
def _q(names: List[str], host: str) -> Any:
    cands = [Candidate(name=n, precision="fp32" if n == "fp32" else "int8", method="fp32" if n == "fp32" else "dynamic",
                       metric={"value": 0.995}, passed=True) for n in names]
    files = {n: Path(f"/w/{n}.onnx") for n in names}
    return SimpleNamespace(candidates=cands, candidate_files=files, model_path=files[host])


def _res(rows: Dict[str, Dict[str, Any]], aa: List[float]) -> Dict[str, Any]:
    cands = {}
    for name, r in rows.items():
        rounds = r["rounds"]
        cands[name] = {"loaded": True, "provider": "CPUExecutionProvider", "metric": {"value": 0.99, "passed": True},
                       "guard": r.get("guard"), "p50_ms": sorted(rounds)[len(rounds) // 2], "p99_ms": r["p99"],
                       "rounds_ms": rounds, "runs": 200,
                       "energy": r.get("energy") or {"measured": False, "reason": "no sensor"}}
    return {"candidates": cands, "timing": {"control": "fp32", "rounds": len(aa)}, "aa_rounds_ms": aa}


def _opts(**kw: Any) -> TuneOptions:
    o = TuneOptions(device="dev", **kw)
    o.check()
    return o


def test_latency_objective_needs_a_gain_beyond_the_aa_floor() -> None:
    q = _q(["int8", "fp32"], host="int8")
    fast = _res({"int8": {"rounds": [1.0] * 10, "p99": 1.5}, "fp32": {"rounds": [2.0] * 10, "p99": 2.5}}, [2.02] * 10)
    assert choose(q, q.candidates, fast, _opts())[0] == "int8"
    # fp32 faster by 3%, but the control against its twin already differs by 9.1%: noise, the host's choice holds
    close = _res({"int8": {"rounds": [1.03] * 10, "p99": 1.5}, "fp32": {"rounds": [1.0] * 10, "p99": 2.5}},
                 [1.1] * 10)
    name, reason, _ = choose(q, q.candidates, close, _opts())
    assert name == "int8" and "within the A/A noise floor of 9.1%" in reason
    slow = _res({"int8": {"rounds": [2.0] * 10, "p99": 3.0}, "fp32": {"rounds": [1.0] * 10, "p99": 1.2}}, [1.01] * 10)
    name, reason, _ = choose(q, q.candidates, slow, _opts())
    assert name == "fp32" and "the host had chosen int8" in reason


def test_p99_constraint_and_objective() -> None:
    q = _q(["int8", "fp32"], host="int8")
    res = _res({"int8": {"rounds": [1.0] * 10, "p99": 9.0}, "fp32": {"rounds": [2.0] * 10, "p99": 2.5}}, [2.0] * 10)
    assert choose(q, q.candidates, res, _opts())[0] == "int8"  # p50 alone
    name, reason, _ = choose(q, q.candidates, res, _opts(max_p99_ms=5.0))
    assert name == "fp32" and "p99 <= 5 ms" in reason
    assert choose(q, q.candidates, res, _opts(objective="p99"))[0] == "fp32"
    with pytest.raises(AccuracyError, match=r"has p99 <= 1 ms: the lowest was 2.5 ms \(fp32\)"):
        choose(q, q.candidates, res, _opts(max_p99_ms=1.0))


def test_energy_objective_and_device_refusals() -> None:
    q = _q(["int8", "fp32"], host="int8")
    res = _res({"int8": {"rounds": [1.0] * 10, "p99": 2.0}, "fp32": {"rounds": [2.0] * 10, "p99": 3.0}}, [2.0] * 10)
    with pytest.raises(DeviceError, match="needs a power sensor"):
        choose(q, q.candidates, res, _opts(objective="energy"))
    for name, mj in (("int8", 0.9), ("fp32", 0.5)):
        res["candidates"][name]["energy"] = {"measured": True, "energy_per_inference_above_idle_mj": mj}
    assert choose(q, q.candidates, res, _opts(objective="energy"))[0] == "fp32"
    assert choose(q, q.candidates, res, _opts(objective="energy", max_p50_ms=1.5))[0] == "int8"
    # a guard failure on the device takes a candidate out, whatever its speed
    res["candidates"]["int8"]["guard"] = {"passed": False, "findings": ["output0 slice 3 collapsed"]}
    name, _, rows = choose(q, q.candidates, res, _opts())
    assert name == "fp32"
    assert rows[0]["refused"] == "the guards refused it on the device: output0 slice 3 collapsed"
    res["candidates"]["fp32"]["metric"]["passed"] = False
    with pytest.raises(AccuracyError, match="no candidate passed on device 'dev'"):
        choose(q, q.candidates, res, _opts())


@pytest.mark.parametrize("patch, field", [
    (lambda r: r["candidates"]["a"]["latency"].update(p50_ms=float("nan")), "candidates.a.latency.p50_ms"),
    (lambda r: r["candidates"]["a"]["metric"].update(value="0.99"), "candidates.a.metric.value"),
    (lambda r: r["candidates"]["a"].update(rounds_ms=[1.0] * 5000), "candidates.a.rounds_ms"),
    (lambda r: r["candidates"].pop("b"), "'b' is missing"),
    (lambda r: r["timing"].update(control="zzz"), "timing.control"),
    (lambda r: r["candidates"]["a"]["guard"].update(passed="yes"), "candidates.a.guard.passed"),
])
def test_hostile_tuning_results_are_refused_by_field(patch: Any, field: str) -> None:
    def entry() -> Dict[str, Any]:
        return {"loaded": True, "provider": "CPU", "metric": {"value": 0.99, "passed": True},
                "guard": {"passed": True, "findings": []}, "rounds_ms": [1.0, 1.1],
                "latency": {"p50_ms": 1.0, "p90_ms": 1.1, "p99_ms": 1.2, "mean_ms": 1.0, "min_ms": 0.9, "runs": 10}}
    raw = {"ok": True, "seconds": 1.0, "candidates": {"a": entry(), "b": entry()},
           "timing": {"rounds": 2, "stopped": "stable", "control": "b", "aa_rounds_ms": [1.0, 1.0]}}
    assert checked_result(json.loads(json.dumps(raw)), ["a", "b"], "dev")["candidates"]["a"]["p50_ms"] == 1.0
    patch(raw)
    with pytest.raises(DeviceError) as exc:
        checked_result(raw, ["a", "b"], "dev")
    assert field in exc.value.message and "\n" not in exc.value.message


# ------------------------------------------------------------------------------------------------
# Real timing on the local device
# ------------------------------------------------------------------------------------------------
def test_tune_on_local_digits_then_reuse_and_retune(project: Path) -> None:
    cfg = str(project / "edgekit.toml")
    res = _cli("build", "--config", cfg, "--target", "x86", "--tune-on", "local")
    assert res.exit_code == 0, res.output
    assert re.search(r"local: \[1/\d\] \S+: top1 \d\.\d{4} \(pass\)", res.output)  # a live line per candidate
    assert "tuning on local" in res.output and "x86-avx2: tuned: " in res.output
    bundle = project / "dist" / "digits" / "x86-avx2"
    m = _manifest(bundle)
    t = m["tuning"]
    host_cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name"))
    assert t["device"] == "local" and t["facts"]["cpu_model"] == host_cpu and t["facts"]["emulated"] is False
    assert "avx2" in t["facts"]["cpu_features"] and t["facts"]["runtime_version"]
    assert t["objective"] == "latency (p50)"
    names = [c["name"] for c in t["candidates"]]
    assert "fp32" in names and any(n.startswith("int8") for n in names)
    for c in t["candidates"]:
        assert c["provider"] == "CPUExecutionProvider" and c["metric_passed"] is True
        assert 0 < c["p50_ms"] <= c["p99_ms"] and c["runs"] >= 200
        assert c["guard"] == (None if c["name"] == "fp32" else "pass")
    assert t["method"]["allow_spinning"] is False and t["method"]["rounds"] >= 9
    assert t["method"]["noise_floor"] is not None
    pruning = t["latency_pruning"]  # int8 groups reverted to float, timed in the same invocation
    assert pruning and all(p["variant"] in names and p["int8_p50_ms"] > 0 and p["float_p50_ms"] > 0 for p in pruning)
    assert {p["op_type"] for p in pruning} >= {"Conv"} and all(isinstance(p["int8_pays"], bool) for p in pruning)
    chosen = next(c for c in t["candidates"] if c["name"] == t["chosen"])
    assert t["reason"].startswith(t["chosen"] + ":")
    assert m["quantization"]["precision"] == chosen["precision"]  # the bundle ships the device's choice
    run = _record(bundle)["tuning"]  # cost and reuse vary between builds: the build record, not the manifest
    code = _device_code()  # the device package, laid out as a release holds it, one blob per content
    assert run["reused"] is False and run["files_sent"] == len(code) + len(names) + 1 and run["files_reused"] == 0
    assert run["bytes_sent"] > sum(code.values())

    # a rebuild reuses the measurement: the same choice, the same manifest bytes
    before = (bundle / "manifest.json").read_bytes()
    res = _cli("build", "--config", cfg, "--target", "x86", "--tune-on", "local")
    assert res.exit_code == 0, res.output
    assert "reused the measurement of 'local'" in res.output
    assert (bundle / "manifest.json").read_bytes() == before

    # an identical board: the cache answers, and says whose measurement it was
    res = _cli("build", "--config", cfg, "--target", "x86", "--tune-on", "twin", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["tuning"]["run"]["reused"] is True and out["tuning"]["measured"]["device"] == "local"
    assert out["tuning"]["run"]["files_sent"] == len(code)  # the device code only (tune facts); no model sent

    # --retune measures on the twin; its code is already there, so only models and reference go
    res = _cli("build", "--config", cfg, "--target", "x86", "--tune-on", "twin", "--retune", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["tuning"]["run"]["reused"] is False and out["tuning"]["measured"]["device"] == "twin"
    assert out["tuning"]["run"]["files_reused"] == 0 and out["tuning"]["run"]["files_sent"] == len(names) + 1

    # and once more: everything is on the twin now, nothing is sent again
    res = _cli("build", "--config", cfg, "--target", "x86", "--tune-on", "twin", "--retune", "--json")
    assert res.exit_code == 0, res.output
    run = json.loads(res.stdout)["tuning"]["run"]
    assert run["files_sent"] == 0 and run["bytes_sent"] == 0 and run["files_reused"] == len(names) + 1


def test_energy_is_refused_where_only_the_estimate_exists(project: Path) -> None:
    res = _cli("build", "--config", str(project / "edgekit.toml"), "--target", "x86", "--tune-on", "local",
               "--objective", "energy")
    assert res.exit_code == 8, res.output
    assert "has no power sensor, only the CPU-time estimate" in res.output and "Traceback" not in res.output


def test_energy_objective_with_a_simulated_rapl_sensor(project: Path) -> None:
    from sysfs_sim import PowerTrace, SimulatedBoard, fast_tmpdir

    from edgekit import config, targets
    from edgekit.build import build

    cfg = config.load(project / "edgekit.toml")
    with fast_tmpdir() as root, SimulatedBoard(root, "rapl", PowerTrace([(1e6, 3.0, 3.0)]), tick_s=0.002):
        res = build(cfg, targets.resolve("x86"), project / "dist-energy",
                    tune=TuneOptions(device="local", objective="energy", sysfs_root=str(root), retune=True))
    t = res.tuning
    assert t["objective_name"] == "energy" and t["facts"]["power_sensors"] == ["rapl"]
    for c in t["candidates"]:
        assert c["energy_mj"] is not None and c["energy_note"] == ""
        assert abs(c["energy_mj"]) < 1.0  # constant 3 W: nothing above idle but noise
    assert t["chosen"] in [c["name"] for c in t["candidates"] if c["eligible"]]
    assert _manifest(res.bundle)["tuning"]["chosen"] == t["chosen"]


def test_deploy_tunes_on_the_canary_and_the_fleet_gets_its_choice(digits_project: Path, tmp_path: Path) -> None:
    project = tmp_path / "digits"
    shutil.copytree(digits_project, project, ignore=shutil.ignore_patterns("dist", ".device", "runs"))
    toml = project / "edgekit.toml"
    text = toml.read_text().replace('path = ".device/local"', 'path = ".device/local"\ngroups = ["fleet"]')
    toml.write_text(text.replace('target = "x86-avx512-vnni"', 'target = "x86-avx2"') + '\n[[devices]]\nname = "b"\n'
                    'target = "x86-avx2"\ntransport = "local"\npath = ".device/b"\ngroups = ["fleet"]\n')
    cfg = str(toml)
    res = _cli("deploy", "--config", cfg, "--group", "fleet", "--tune-on-canary")
    assert res.exit_code == 2 and "--tune-on-canary needs --canary N" in res.output, res.output
    res = _cli("deploy", "--config", cfg, "--group", "fleet", "--canary", "1", "--tune-on-canary", "--duration", "0.2")
    assert res.exit_code == 0, res.output
    assert "tuning x86-avx2 on canary 'local' before the rollout" in res.output and "tuned on the canary: " in res.output
    m = _manifest(project / "dist" / "digits" / "x86-avx2")
    assert m["tuning"]["device"] == "local"
    for dev in ("local", "b"):  # every device runs the release the canary measured
        assert (project / ".device" / dev / "current").resolve().name == m["release_id"]


def test_tune_on_local_minilm(tmp_path: Path) -> None:
    project = tmp_path / "minilm"
    shutil.copytree(SAMPLES / "minilm", project, ignore=shutil.ignore_patterns("dist", ".device", "runs"))
    res = _cli("build", "--config", str(project / "edgekit.toml"), "--target", "x86", "--tune-on", "local",
               "--tune-budget", "20", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    t = _manifest(Path(out["bundle"]))["tuning"]
    assert {c["name"] for c in t["candidates"]} >= {"fp32"} and len(t["candidates"]) >= 2
    for c in t["candidates"]:
        assert c["metric_passed"] is True and c["metric"] >= 0.99 and 0 < c["p50_ms"] <= c["p99_ms"]
    assert out["precision"] == next(c["precision"] for c in t["candidates"] if c["name"] == t["chosen"])


def test_hostile_device_facts_are_bounded() -> None:
    from edgekit.tune_check import checked_facts

    raw = {"device": {"cpu_model": "\x1b]0;pwned\x07" + "A" * 5000, "cpu_features": ["avx2"] * 10000 + [7, None],
                      "machine": {"x": 1}, "emulated": "yes"},
           "runtime": {"version": "1.32.0", "providers": ["CPUExecutionProvider"] * 100},
           "power_sensors": "rapl"}
    f = checked_facts(raw, "dev")
    assert len(f["device"]["cpu_model"]) == 200 and "\x1b" not in f["device"]["cpu_model"]
    assert len(f["device"]["cpu_features"]) == 512 and f["device"]["machine"] == ""
    assert f["device"]["emulated"] == {"qemu_cpu": ""}  # anything truthy there means emulated
    assert len(f["runtime"]["providers"]) == 16 and f["power_sensors"] == []
    with pytest.raises(DeviceError, match="onnxruntime cannot be imported there: No module named"):
        checked_facts({"device": {}, "runtime": {"error": "No module named 'onnxruntime'"}}, "dev")


def test_device_timing_interleaves_until_stable_with_enough_runs() -> None:
    import time

    from edgekit.device import tune as T

    order: List[str] = []

    def sleeper(name: str, s: float) -> Any:
        def run(_feed: Any) -> None:
            order.append(name)
            time.sleep(s)
        return run

    runs = {"a": sleeper("a", 0.0004), "b": sleeper("b", 0.0008), "a" + T.AA_SUFFIX: sleeper("a~", 0.0004)}
    timing = {"warmup": 2, "per_round": 3, "min_rounds": 5, "max_rounds": 40, "budget_s": 20.0, "rel_tol": 0.5,
              "window": 2, "min_samples": 60}
    rounds, samples, n, why = T.time_interleaved(runs, {}, timing, None)
    assert why == "stable" and 5 <= n < 40
    assert all(len(s) >= 60 for s in samples.values()) and all(len(r) == n for r in rounds.values())
    blocks = [x for i, x in enumerate(order[6:]) if i == 0 or order[6 + i - 1] != x]  # one per session and round
    assert len(blocks) == 3 * n
    assert [blocks[3 * r] for r in range(3)] == ["a", "b", "a~"]  # the order rotates every round
    assert T._median(rounds["b"]) > T._median(rounds["a"])


def test_cache_key_follows_the_device_runtime_and_files_not_the_objective() -> None:
    from edgekit.tune import cache_key

    facts = {"device": {"cpu_model": "Cortex-A76", "cpu_features": ["asimd", "asimddp"], "machine": "aarch64"},
             "runtime": {"version": "1.32.0", "providers": ["CPUExecutionProvider"]}, "power_sensors": []}
    plan = {"threads": 4, "runtime": {}, "timing": {}, "power": {}, "candidates": [{"name": "fp32", "path": "/x"}],
            "manifest": {"metric": {"name": "top1"}}}
    base = cache_key(facts, plan, {"fp32": "aa"})
    assert cache_key(json.loads(json.dumps(facts)), dict(plan, candidates=[{"name": "fp32", "path": "/elsewhere"}]),
                     {"fp32": "aa"}) == base  # another board's paths: the same measurement
    other = json.loads(json.dumps(facts))
    other["device"]["cpu_features"] = ["asimd"]
    assert cache_key(other, plan, {"fp32": "aa"}) != base
    other = json.loads(json.dumps(facts))
    other["runtime"]["version"] = "1.19.2"
    assert cache_key(other, plan, {"fp32": "aa"}) != base
    assert cache_key(facts, plan, {"fp32": "bb"}) != base
