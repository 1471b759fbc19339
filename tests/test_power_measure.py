"""measure() against simulated sensors driven by a known power trace (steps and ramps): the
integrated energy must match the analytic integral, and every failure mode must end in a labelled,
JSON-serialisable power dict rather than a crash."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import pytest

from edgekit.device import power
from sysfs_sim import SIMULATED_FAMILIES, PowerTrace, SimulatedBoard, fast_tmpdir, sampler_kwargs

IDLE_S = 0.3
WINDOW_S = 0.8
# A 100 Hz claim can only be tested when the sampling thread ran at ~100 Hz. On a heavily
# oversubscribed host (measured: 2 cores, 4 extra busy processes, load ~6.7) it was starved to
# 37-80 Hz, measure() said "sampled at ... Hz", and the error reached 3.2 %. Such a run is measured
# again, and if every attempt was starved the test is skipped (visibly), never passed on a looser bound.
STARVED_ATTEMPTS = 3


def make_window(seconds: float = WINDOW_S, iterations: int = 400, midway: Optional[Callable[[], None]] = None,
                on_start: Optional[Callable[[], None]] = None) -> Tuple[Callable[[], Dict[str, Any]], Dict[str, float]]:
    record: Dict[str, float] = {}

    def run() -> Dict[str, Any]:
        record["start"] = time.monotonic()
        if on_start is not None:
            on_start()  # the workload starts: the trace's steps and ramps play from here
        if midway is None:
            time.sleep(seconds)
        else:
            time.sleep(seconds / 2)
            midway()
            time.sleep(seconds / 2)
        record["end"] = time.monotonic()
        return {"iterations": iterations}

    return run, record


def measure_board(board: SimulatedBoard, rate_hz: float = 100.0, **kw: Any) -> Tuple[Dict[str, Any], Dict[str, float], float]:
    run, record = make_window(on_start=board.trace.start,
                              **{k: kw.pop(k) for k in ("seconds", "iterations", "midway") if k in kw})
    args = sampler_kwargs(board)
    args.update(kw)
    if board.family == "nvml":
        args.setdefault("sampler", power.NvmlSampler(nvml=board.nvml))
    else:
        args.setdefault("sampler", board.family)
    t_call = time.monotonic()
    _, pw = power.measure(run, rate_hz=rate_hz, idle_s=IDLE_S, **args)
    json.dumps(pw, allow_nan=False)  # JSON-serialisable, no NaN
    return pw, record, t_call


@pytest.fixture
def sim_root() -> Any:
    with fast_tmpdir() as path:
        yield path


def rel_err(got: float, want: float) -> float:
    return abs(got - want) / abs(want)


@pytest.mark.parametrize("family", SIMULATED_FAMILIES)
def test_energy_matches_the_analytic_trace_within_1_percent(sim_root: Path, family: str) -> None:
    for attempt in range(STARVED_ATTEMPTS):
        with SimulatedBoard(sim_root / str(attempt), family) as board:
            pw, rec, t_call = measure_board(board)
        starved = [w for w in pw["warnings"] if w.startswith("sampled at")]
        if not starved:
            break
    else:
        pytest.skip("100 Hz not testable: the sampling thread was starved in %d attempts (%s)"
                    % (STARVED_ATTEMPTS, starved[0]))
    trace = board.trace
    want = trace.energy(rec["start"], rec["end"])
    assert pw["sampler"] == family and pw["available"] is True and pw["is_estimate"] is False
    allowed = 0.01 * want  # the bound, strict, for every sampler at 100 Hz
    assert abs(pw["energy_j"] - want) <= allowed, (pw["energy_j"], want, allowed)
    window_s = rec["end"] - rec["start"]
    assert abs(pw["mean_power_w"] - want / window_s) <= allowed / window_s
    idle_want = trace.segments[0][1]  # the trace is idle until the window starts it
    # 0.3 s at 1.5 W is only 0.45 J: a few ms of timing noise (or of a starved simulator
    # thread rewriting energy_uj) at each edge is already 1-2 %
    assert rel_err(pw["idle_power_w"], idle_want) < 0.03, (pw["idle_power_w"], idle_want)
    assert t_call <= rec["start"] - pw["idle_s"] + 1e-3  # idle_s: from the first sample to the window
    assert abs(pw["energy_per_inference_mj"] - want / 400 * 1000) <= allowed / 400 * 1000
    above_want = (want - idle_want * window_s) / 400 * 1000
    assert abs(pw["energy_per_inference_above_idle_mj"] - above_want) <= 2 * allowed / 400 * 1000
    assert pw["scope"] in power.SCOPES and pw["method"] in power.METHODS
    assert pw["coverage"] == pytest.approx(1.0) and pw["energy_extrapolated"] is False
    assert pw["warnings"] == [], pw["warnings"]
    # trace: idle baseline at negative t, the window marked, times increasing
    times = [t for t, _ in pw["trace"]]
    assert times == sorted(times) and times[0] < 0 < times[-1]
    assert pw["window"][0] == 0.0 and pw["window"][1] == pytest.approx(window_s, abs=1e-3)
    assert pw["samples"] >= 0.3 * WINDOW_S * 100


def test_jetson_total_is_vdd_in_not_the_sum_of_rails(sim_root: Path) -> None:
    with SimulatedBoard(sim_root, "ina3221-hwmon") as board:
        pw, rec, _ = measure_board(board, seconds=0.3)
    assert pw["total_rail"] == "VDD_IN" and pw["scope"] == "board input"
    rails = pw["rails_mean_w"]
    assert set(rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}  # channel 7 (shunt sum) skipped
    assert pw["mean_power_w"] == pytest.approx(rails["VDD_IN"], rel=0.05)
    assert rails["VDD_CPU_GPU_CV"] + rails["VDD_SOC"] < rails["VDD_IN"]


def test_rapl_counter_wraps_around_max_energy_range(sim_root: Path) -> None:
    # a 1 J range wraps about five times a second at these powers
    with SimulatedBoard(sim_root, "rapl", rapl_max_range_uj=1_000_000) as board:
        pw, rec, _ = measure_board(board, rate_hz=20.0)
    want = board.trace.energy(rec["start"], rec["end"])
    assert want > 3.0  # several wraps inside the window
    assert rel_err(pw["energy_j"], want) < 0.01, (pw["energy_j"], want)
    assert all(w > 0 for _, w in pw["trace"])  # no negative power at a wrap


def test_counter_sampler_is_exact_at_10_hz(sim_root: Path) -> None:
    with SimulatedBoard(sim_root, "rapl") as board:
        pw, rec, _ = measure_board(board, rate_hz=10.0)
    assert rel_err(pw["energy_j"], board.trace.energy(rec["start"], rec["end"])) < 0.01


@pytest.mark.parametrize("family", ["ina3221-hwmon", "rpi5-pmic", "nvml"])
def test_sensor_disappearing_mid_run_keeps_the_samples_and_warns(sim_root: Path, family: str) -> None:
    with SimulatedBoard(sim_root, family) as board:
        pw, rec, _ = measure_board(board, midway=board.vanish)
    assert pw["sampler"] == family and pw["available"] is True
    assert 0.4 < pw["coverage"] < 0.6, pw["coverage"]
    assert pw["energy_extrapolated"] is True
    assert any("stopped answering" in w and "into the window" in w for w in pw["warnings"]), pw["warnings"]
    covered_end = rec["start"] + pw["coverage"] * (rec["end"] - rec["start"])
    # the cut falls on a ramp, so a lagging simulated file adds L * dP/dt: 5% is generous
    assert rel_err(pw["energy_j"], board.trace.energy(rec["start"], covered_end)) < 0.05
    assert pw["energy_per_inference_mj"] > 0 and pw["trace"][-1][0] < WINDOW_S * 0.6


def test_sensor_disappearing_during_idle_gives_no_energy_but_no_crash(sim_root: Path) -> None:
    with SimulatedBoard(sim_root, "ina3221-hwmon") as board:
        threading.Timer(IDLE_S / 2, board.vanish).start()
        pw, rec, _ = measure_board(board, seconds=0.2)
    assert pw["energy_j"] is None and pw["energy_per_inference_mj"] is None
    assert pw["carbon"]["g_per_1000_inferences"] is None
    assert any("during the idle baseline" in w for w in pw["warnings"])


def test_rapl_permission_error_names_the_file_and_falls_back_to_a_labelled_estimate(sim_root: Path) -> None:
    # tests run as root, which ignores file modes: the opener raises as a non-root read would
    def opener(path: str) -> str:
        if path.endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", path)
        return Path(path).read_text()

    with SimulatedBoard(sim_root, "rapl") as board:
        smp = power.RaplSampler(root=str(board.root), opener=opener, profile={"nominal_watts_per_core": 4.0})
        run, _ = make_window(seconds=0.2)
        _, pw = power.measure(run, sampler=smp, idle_s=0.05, profile={"nominal_watts_per_core": 4.0})
    assert pw["requested"] == "rapl" and pw["available"] is False
    assert pw["sampler"] == "estimate" and pw["is_estimate"] is True and pw["method"] == "estimate"
    energy_uj = str(board.root / "sys/class/powercap/intel-rapl:0/energy_uj")
    assert energy_uj in pw["reason"] and "permission denied" in pw["reason"] and "root" in pw["reason"]
    assert any("unavailable" in w and "estimate" in w for w in pw["warnings"])


def test_unavailable_sampler_by_name_falls_back_with_the_reason(tmp_path: Path) -> None:
    run, _ = make_window(seconds=0.1)
    _, pw = power.measure(run, sampler="ina3221-hwmon", idle_s=0.0, root=str(tmp_path))
    assert pw["sampler"] == "estimate" and pw["requested"] == "ina3221-hwmon" and pw["available"] is False
    assert "no INA3221 hwmon directories" in pw["reason"] and str(tmp_path) in pw["reason"]


def test_nvml_not_supported_on_jetson_is_a_clear_unavailability(sim_root: Path) -> None:
    board = SimulatedBoard(sim_root, "nvml", nvml_supported=False)
    smp = power.NvmlSampler(nvml=board.nvml)
    with pytest.raises(power.SamplerUnavailable, match="NotSupported.*Jetson"):
        smp.probe()
    assert board.nvml.shutdowns == 1  # NVML is shut down again after a failed probe


def test_nvml_without_pynvml_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pynvml(name: str, *a: Any, **k: Any) -> Any:
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    with pytest.raises(power.SamplerUnavailable, match="nvidia-ml-py"):
        power.NvmlSampler().probe()


def test_estimate_is_always_labelled_and_scales_cpu_time() -> None:
    state: Dict[str, float] = {}
    t_base = time.monotonic()

    def cpu_seconds() -> float:  # a light idle, then two busy cores during the window
        now = time.monotonic()
        busy = 0.0
        if "start" in state:
            busy = min(now, state.get("end", now)) - state["start"]
        return 0.05 * (now - t_base) + 1.95 * max(busy, 0.0)

    def run() -> Dict[str, Any]:
        state["start"] = time.monotonic()
        time.sleep(0.4)
        state["end"] = time.monotonic()
        return {"iterations": 100}

    profile = {"nominal_watts_per_core": 1.5, "power_sensor": "estimate"}
    smp = power.EstimateSampler(profile=profile, cpu_seconds=cpu_seconds)
    _, pw = power.measure(run, sampler=smp, rate_hz=50, idle_s=0.2, profile=profile)
    assert pw["sampler"] == "estimate" and pw["is_estimate"] is True and pw["method"] == "estimate"
    assert pw["available"] is True and "ESTIMATE" in pw["scope_note"]
    window_s = state["end"] - state["start"]
    assert rel_err(pw["energy_j"], 1.5 * 2.0 * window_s) < 0.01
    assert pw["idle_power_w"] == pytest.approx(1.5 * 0.05, rel=0.05)


def test_real_estimate_without_a_profile_warns_about_the_assumed_watts() -> None:
    def spin() -> Dict[str, Any]:
        t = time.monotonic()
        n = 0
        while time.monotonic() - t < 0.15:
            n += 1
        return {"iterations": n}

    _, pw = power.measure(spin, idle_s=0.05)
    assert pw["is_estimate"] is True and pw["energy_j"] >= 0
    assert any("2.0 W per core assumed" in w for w in pw["warnings"])


def test_rpi_throttling_flags_are_reported_and_warned(sim_root: Path) -> None:
    board = SimulatedBoard(sim_root, "rpi5-pmic", throttled="0x50005")
    pw, _, _ = measure_board(board, seconds=0.2)
    assert pw["throttling"]["start"]["under_voltage"] is True
    assert pw["throttling"]["end"]["throttled_occurred"] is True
    assert any("under_voltage" in w and "0x50005" in w for w in pw["warnings"])
    assert "not the wall" in pw["scope_note"] and pw["scope"] == "module rails"


def test_auto_takes_the_profile_sensor_then_the_first_available(sim_root: Path) -> None:
    board = SimulatedBoard(sim_root / "pi", "rpi5-pmic")
    run, _ = make_window(seconds=0.1)
    _, pw = power.measure(run, sampler="auto", idle_s=0.0, profile={"power_sensor": "rpi5-pmic"},
                          command_runner=board.command_runner)
    assert pw["sampler"] == "rpi5-pmic" and pw["requested"] == "auto"
    with SimulatedBoard(sim_root / "x86", "rapl") as rapl_board:
        _, pw = power.measure(run, sampler="auto", idle_s=0.0, root=str(rapl_board.root))
    assert pw["sampler"] == "rapl"


def test_unknown_sampler_is_a_loud_error() -> None:
    with pytest.raises(ValueError, match="unknown power sampler 'rapll'.*known: auto"):
        power.measure(lambda: {"iterations": 1}, sampler="rapll", idle_s=0)


def test_run_window_failure_propagates_and_stops_the_thread() -> None:
    def boom() -> Dict[str, Any]:
        raise RuntimeError("inference failed")

    with pytest.raises(RuntimeError, match="inference failed"):
        power.measure(boom, idle_s=0.05, rate_hz=100)
    assert not [t for t in threading.enumerate() if t.name == "edgekit-power"]


@pytest.mark.parametrize("asked,used", [(1000.0, 100.0), (0.2, 1.0), (-5, 10.0), ("fast", 10.0)])
def test_rate_is_bounded_to_1_100_hz_with_a_warning(asked: Any, used: float) -> None:
    _, pw = power.measure(lambda: {"iterations": 1}, rate_hz=asked, idle_s=0)
    assert pw["rate_hz"] == used
    assert any("rate_hz" in w for w in pw["warnings"])


def test_carbon_uses_the_given_grid_and_request_rate() -> None:
    def run() -> Dict[str, Any]:
        time.sleep(0.05)
        return {"iterations": 10}

    _, pw = power.measure(run, idle_s=0.0, grid_g_per_kwh=100.0, requests_per_s=1e6)
    c = pw["carbon"]
    assert c["grid_g_per_kwh"] == 100.0 and c["requests_per_s"] == 1e6
    assert c["g_per_1000_inferences"] == pytest.approx(pw["energy_per_inference_mj"] * 100 / 3.6e6, rel=1e-4)
    assert any("exceeds the measured throughput" in w for w in pw["warnings"])
    assert power.DEFAULT_GRID_G_PER_KWH == pytest.approx(481.0)


def test_carbon_arithmetic() -> None:
    c = power.carbon(1.0, 2.0, 0.5, 481.0, 1.0)
    assert c["g_per_1000_inferences"] == pytest.approx(1000 / 3.6e6 * 481)
    assert c["g_per_day_at_rps"] == pytest.approx(86400 * 2.5 / 3.6e6 * 481)
    assert "idle power all day" in c["basis"]
    c = power.carbon(1.0, None, None, 481.0, 2.0)
    assert c["g_per_day_at_rps"] == pytest.approx(86400 * 2.0 / 3.6e6 * 481)
    assert power.carbon(None, 1.0, None, 481.0, 1.0)["g_per_1000_inferences"] is None


def test_missing_iterations_gives_energy_but_no_per_inference_figures() -> None:
    _, pw = power.measure(lambda: {}, idle_s=0)
    assert pw["energy_per_inference_mj"] is None
    assert any("iterations" in w for w in pw["warnings"])


def test_energy_helpers_integrate_and_interpolate() -> None:
    samples = [(0.0, 2.0), (0.5, 2.0), (1.0, 4.0)]
    cum = power.cumulative_energy(samples, "power")
    assert cum[-1] == (1.0, pytest.approx(1.0 + 1.5))
    assert power.energy_over(cum, 0.25, 0.5) == (pytest.approx(0.5), 0.25)
    j, covered = power.energy_over(cum, 0.5, 3.0)  # clipped to the samples
    assert covered == 0.5 and j == pytest.approx(1.5)
    assert power.energy_over(cum, 2.0, 3.0) == (None, 0.0)
    counters = [(0.0, 100.0), (1.0, 103.0), (1.001, 103.01), (2.0, 105.0)]
    assert power.cumulative_energy(counters, "energy")[-1][1] == 5.0
    assert power.power_trace(counters, "energy", 0.5) == [(0.5, 3.0), (pytest.approx(1.5), pytest.approx(2.0))]


def test_trace_matches_the_known_steps(sim_root: Path) -> None:
    trace = PowerTrace([(0.3, 2.0, 2.0), (10.0, 6.0, 6.0)])
    with SimulatedBoard(sim_root, "ina3221x", trace=trace) as board:
        run, rec = make_window(seconds=0.5, on_start=trace.start)
        _, pw = power.measure(run, sampler="ina3221x", root=str(board.root), rate_hz=50, idle_s=0.2)
    watts = [w for _, w in pw["trace"]]
    assert min(watts) == pytest.approx(2.0, abs=0.01) and max(watts) == pytest.approx(6.0, abs=0.01)


def test_a_disabled_channel_is_skipped_not_fatal(sim_root: Path) -> None:
    board = SimulatedBoard(sim_root, "ina3221-hwmon")
    bad = str(board.root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/curr3_input")

    def opener(path: str) -> str:
        if path == bad:
            raise OSError(22, "Invalid argument", path)
        return Path(path).read_text()

    smp = power.Ina3221HwmonSampler(root=str(board.root), opener=opener)
    smp.probe()
    assert set(smp.sample()["rails"]) == {"VDD_IN", "VDD_CPU_GPU_CV"}
    assert any("curr3_input" in n and "Invalid argument" in n for n in smp.notes)


def test_an_unexpected_probe_error_becomes_an_unavailability() -> None:
    class Broken(power.RaplSampler):
        def probe(self) -> None:
            raise RuntimeError("firmware says no")

    _, pw = power.measure(lambda: {"iterations": 1}, sampler=Broken(), idle_s=0)
    assert pw["sampler"] == "estimate" and pw["available"] is False
    assert pw["reason"] == "RuntimeError: firmware says no"


def test_a_preempted_read_is_taken_again() -> None:
    """A read that took far longer than usual was interrupted: its timestamp is uncertain."""
    import itertools

    delays = itertools.chain([0.0, 0.0, 0.03], itertools.repeat(0.0))

    class Jittery(power.Sampler):
        name, scope, method, reading, reads = "jittery", "board input", "power integral", "power", "test"

        def sample(self) -> Dict[str, Any]:
            time.sleep(next(delays))
            return {"power_w": 1.0}

    # Defining a Sampler registers it; a test's own sampler must not outlive the test (the
    # registry coverage tests would then find a sampler without cases or a README row).
    power.REGISTRY.pop("jittery", None)
    rec = power._Recorder(Jittery(), time.monotonic)
    rec.take()
    rec.take()
    t0 = time.monotonic()
    t = rec.take()  # the 30 ms read is repeated; its sample is stamped at the quick re-read
    assert rec.retries >= 1 and t is not None and t - t0 > 0.025
    assert len(rec.samples) == 3
