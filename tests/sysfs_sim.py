"""Simulated power sensors driven by a known power trace, for the power sampler tests and bench.

A ``PowerTrace`` is piecewise linear (steps and ramps) with an exact integral. A ``SimulatedBoard``
builds the sysfs tree a sensor family exposes under a temporary root and runs a thread that
rewrites the files from the trace (atomically, as sysfs never shows a half-written number), or
answers commands (tegrastats, vcgencmd) and NVML calls from the trace at the time of the call.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

SIMULATED_FAMILIES = ("ina3221x", "ina3221-hwmon", "tegrastats", "rpi5-pmic", "rapl", "nvml")
"""Every registered sampler but ``estimate`` (which has no sensor) has a simulated board."""


class PowerTrace:
    """Piecewise-linear power (W): segments of (duration, w_from, w_to) that play from ``start()``
    on; a step is a jump between segments, a ramp a segment with w_from != w_to. Before ``start()``
    the power is the first segment's, after the last segment it holds the last value. The workload
    starts the trace (the inference causes the power), so the idle baseline is idle and the window's
    edges sit at idle power however late the measurement began."""

    def __init__(self, segments: Sequence[Tuple[float, float, float]], t_start: Optional[float] = None) -> None:
        self.segments = list(segments)
        self.t_start = t_start

    def start(self, t: Optional[float] = None) -> None:
        self.t_start = time.monotonic() if t is None else t

    def power(self, t: float) -> float:
        """Power at absolute monotonic time ``t``."""
        if self.t_start is None or t < self.t_start:
            return self.segments[0][1]
        x = t - self.t_start
        for dur, a, b in self.segments:
            if x < dur:
                return a + (b - a) * x / dur
            x -= dur
        return self.segments[-1][2]

    def energy(self, ta: float, tb: float) -> float:
        """Exact integral of the power between absolute times ``ta`` and ``tb`` (joules)."""
        if self.t_start is None:
            return self.segments[0][1] * (tb - ta)
        return self._cum(tb - self.t_start) - self._cum(ta - self.t_start)

    def _cum(self, x: float) -> float:
        if x <= 0:
            return self.segments[0][1] * x
        acc = 0.0
        for dur, a, b in self.segments:
            if x < dur:
                return acc + a * x + (b - a) * x * x / (2 * dur)
            acc += (a + b) * dur / 2
            x -= dur
        return acc + self.segments[-1][2] * x


def standard_trace(idle_w: float = 1.5, lead_s: float = 0.05) -> PowerTrace:
    """Idle until started; then ``lead_s`` of idle, 0.6 s of steps and ramps, and idle again.

    A sensor that lags the truth by L seconds shifts the integral over [t0, t1] by
    L * (P(t0) - P(t1)); a window that starts and ends at the same idle power keeps the
    comparison about the integration, not about the simulator's (or a real sensor's) latency.
    """
    return PowerTrace([
        (lead_s, idle_w, idle_w),
        (0.10, 5.0, 5.0),    # step up
        (0.15, 5.0, 9.0),    # ramp up
        (0.10, 9.0, 9.0),
        (0.10, 7.0, 7.0),    # step down
        (0.15, 7.0, idle_w),  # ramp down
        (60.0, idle_w, idle_w),
    ])


@contextlib.contextmanager
def fast_tmpdir() -> Iterator[Path]:
    """A temporary directory on tmpfs when there is one: a disk-backed /tmp can take
    milliseconds per file replace, which would make the simulated sensor lag."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="edgekit-sysfs-", dir=base)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class FakeNvmlError(Exception):
    def __init__(self, value: int, text: str) -> None:
        super().__init__(text)
        self.value = value


class FakeNvml:
    """The slice of pynvml the nvml sampler uses, answering from the board's trace."""

    NVML_ERROR_NOT_SUPPORTED = 3

    def __init__(self, board: "SimulatedBoard", supported: bool = True, gpus: int = 1) -> None:
        self.board, self.supported, self.gpus = board, supported, gpus
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if not self.supported:
            raise FakeNvmlError(3, "Not Supported")
        if self.board.vanished:
            raise FakeNvmlError(15, "GPU is lost")
        # the trace is split evenly between the GPUs; 1 mJ resolution like NVML
        return int(self.board.counter_j() * 1000.0 / self.gpus) + 1_000_000


class SimulatedBoard:
    """One sensor family under ``root``, driven by ``trace``. Use as a context manager."""

    def __init__(self, root: Path, family: str, trace: Optional[PowerTrace] = None, tick_s: float = 0.0005,
                 rapl_max_range_uj: int = 262143328850, throttled: str = "0x0", nvml_supported: bool = True) -> None:
        if family not in SIMULATED_FAMILIES:
            raise ValueError(family)
        self.root = Path(root)
        self.family = family
        self.trace = trace or standard_trace()
        self.t_created = time.monotonic()
        self.tick_s = tick_s
        self.rapl_max_range_uj = rapl_max_range_uj
        self.throttled = throttled
        self.vanished = False
        self.writes = 0
        self.nvml = FakeNvml(self, supported=nvml_supported)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._files: List[Tuple[Path, Callable[[float], str]]] = []
        self._sensor_dir: Optional[Path] = None
        self._counter_offset_uj = 5_000_000_000  # a RAPL counter is not zero at boot + a while
        self._build()

    # -- layout ----------------------------------------------------------------------------
    def _build(self) -> None:
        r = self.root
        if self.family == "ina3221x":
            # Jetson Nano, JetPack 4: one INA3221 at 6-0040, rails named as L4T r32 names them
            d = r / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
            d.mkdir(parents=True)
            self._sensor_dir = d.parent
            for n, (name, share) in enumerate([("POM_5V_IN", 1.0), ("POM_5V_GPU", 0.2), ("POM_5V_CPU", 0.35)]):
                (d / f"rail_name_{n}").write_text(name + "\n")
                self._files.append((d / f"in_power{n}_input", lambda t, s=share: "%d\n" % round(self.trace.power(t) * s * 1000)))
        elif self.family == "ina3221-hwmon":
            # Jetson Orin Nano, JetPack 6: hwmon index varies by boot; channel 7 is the shunt sum
            d = r / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
            d.mkdir(parents=True)
            self._sensor_dir = d.parent.parent
            (d / "name").write_text("ina3221\n")
            for n, (name, share, mv) in enumerate([("VDD_IN", 1.0, 5000), ("VDD_CPU_GPU_CV", 0.3, 5000),
                                                   ("VDD_SOC", 0.25, 5000)], start=1):
                (d / f"in{n}_label").write_text(name + "\n")
                (d / f"in{n}_input").write_text("%d\n" % mv)  # bus voltage: constant here
                self._files.append((d / f"curr{n}_input", lambda t, s=share, v=mv: "%d\n" % round(self.trace.power(t) * s / v * 1e6)))
            (d / "in7_label").write_text("sum of shunt voltages\n")
            (d / "in7_input").write_text("40\n")
        elif self.family == "rapl":
            d = r / "sys/class/powercap/intel-rapl:0"
            d.mkdir(parents=True)
            self._sensor_dir = d
            (d / "name").write_text("package-0\n")
            (d / "max_energy_range_uj").write_text(f"{self.rapl_max_range_uj}\n")
            self._files.append((d / "energy_uj", lambda t: "%d\n" % self.rapl_counter_uj(t)))
            sub = r / "sys/class/powercap/intel-rapl:0:0"  # core sub-zone: must not be added
            sub.mkdir(parents=True)
            (sub / "name").write_text("core\n")
            (sub / "energy_uj").write_text("123\n")
            psys = r / "sys/class/powercap/intel-rapl:1"  # platform zone: must not be added
            psys.mkdir(parents=True)
            (psys / "name").write_text("psys\n")
            (psys / "energy_uj").write_text("999999\n")
        for path, fn in self._files:
            write_atomic(path, fn(time.monotonic()))

    def rapl_counter_uj(self, t: float) -> int:
        total = self._counter_offset_uj + int(self.trace.energy(self.t_created, t) * 1e6)
        return total % self.rapl_max_range_uj

    def counter_j(self) -> float:
        return self.trace.energy(self.t_created, time.monotonic())

    # -- the simulator thread --------------------------------------------------------------
    def start(self) -> "SimulatedBoard":
        if self._files:
            self._thread = threading.Thread(target=self._run, name="sysfs-sim", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        # Hardware sensors are never descheduled; a starved simulator thread would add its lag to
        # the comparison. Raise this thread's priority where allowed (tests run as root).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)
        except (AttributeError, OSError):
            pass
        while not self._stop.is_set() and not self.vanished:
            now = time.monotonic()
            for path, fn in self._files:
                if self.vanished:
                    return
                try:
                    write_atomic(path, fn(now))
                except FileNotFoundError:
                    return
            self.writes += 1
            self._stop.wait(self.tick_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def vanish(self) -> None:
        """The sensor goes away (driver unbound, cable pulled): files removed, commands fail."""
        self.vanished = True
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sensor_dir is not None:
            shutil.rmtree(self._sensor_dir, ignore_errors=True)

    def __enter__(self) -> "SimulatedBoard":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- commands --------------------------------------------------------------------------
    def command_runner(self, argv: Sequence[str]) -> str:
        """Answers ``tegrastats`` and ``vcgencmd`` as the real tools would, from the trace now."""
        if self.vanished:
            raise OSError(5, "Input/output error")
        p = self.trace.power(time.monotonic())
        if argv[0] == "tegrastats":
            mw = round(p * 1000)
            return ("RAM 2639/7620MB (lfb 9x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@729,4%@729] "
                    "GR3D_FREQ 0% cpu@44.156C soc2@43.781C gpu@45.968C tj@45.968C "
                    f"VDD_IN {mw}mW/{mw}mW VDD_CPU_GPU_CV {round(mw * 0.3)}mW/{round(mw * 0.3)}mW "
                    f"VDD_SOC {round(mw * 0.25)}mW/{round(mw * 0.25)}mW\n")
        if list(argv[:2]) == ["vcgencmd", "pmic_read_adc"]:
            rails = [("VDD_CORE", 7, 15, 0.8, 0.6), ("3V3_SYS", 1, 9, 3.3, 0.15),
                     ("1V8_SYS", 2, 10, 1.8, 0.15), ("DDR_VDD2", 3, 11, 1.1, 0.1)]
            lines = [f"{name + '_A':>14} current({ci})={p * share / v:.8f}A" for name, ci, _, v, share in rails]
            lines += [f"{name + '_V':>14} volt({vi})={v:.8f}V" for name, _, vi, v, _ in rails]
            lines += ["       EXT5V_V volt(24)=5.11478000V", "        BATT_V volt(25)=0.01880340V"]
            return "\n".join(lines) + "\n"
        if list(argv[:2]) == ["vcgencmd", "get_throttled"]:
            return f"throttled={self.throttled}\n"
        raise OSError(2, f"no such command: {argv[0]}")


def sampler_kwargs(board: SimulatedBoard) -> Dict[str, object]:
    """The measure() arguments that point a sampler at ``board``."""
    kw: Dict[str, object] = {"root": str(board.root)}
    if board.family in ("tegrastats", "rpi5-pmic"):
        kw["command_runner"] = board.command_runner
    return kw
