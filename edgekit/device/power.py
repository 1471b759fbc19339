#!/usr/bin/env python3
"""edgekit power sampling and energy per inference.

One file, standard library only, Python >= 3.8. It is copied into every release beside runner.py
(as ``power.py``) and imported by the runner on the board; the host imports it as
``edgekit.device.power``.

Every sampler is a read plus a pure ``parse()``: ``read()`` fetches raw text (sysfs files or a
command's output) and ``parse(raw)`` turns it into numbers without touching the system, so tests
feed ``parse`` captured real output (``tests/power_cases/*.json``). Each sampler declares:

- ``scope``: what the number covers -- one of SCOPES;
- ``method``: how energy is obtained -- one of METHODS;
- ``reading``: ``"power"`` (instantaneous watts, integrated by the trapezoidal rule) or
  ``"energy"`` (a cumulative counter, differenced).

``measure(run_window, ...)`` takes an idle baseline, samples in a background thread while
``run_window()`` runs, and returns ``(window_result, power_dict)``; see its docstring.
"""
from __future__ import print_function

import argparse
import bisect
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

SCOPES = ("module rails", "board input", "wall", "cpu package")
"""module rails: a sum of on-module supply rails; board input: the module's (or card's) input rail;
wall: measured at the plug; cpu package: the CPU package(s) only."""

METHODS = ("energy counter", "power integral", "estimate")

DEFAULT_GRID_G_PER_KWH = 481.0
# World-average carbon intensity of electricity generation in 2023: 481 gCO2/kWh (Ember, "Global
# Electricity Review 2024", as charted by Statista from Ember data, July 2024; Ember reported 436 g
# for 2022). Grids differ by more than 10x (Norway ~30 g, India ~713 g in 2023), so pass the figure
# for the grid where the device runs: measure(grid_g_per_kwh=...), the runner's --grid-intensity.

DEFAULT_WATTS_PER_CORE = 2.0
"""Used by the ``estimate`` sampler when no target profile says otherwise (TargetProfile's default)."""

MIN_RATE_HZ = 1.0
MAX_RATE_HZ = 100.0

TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "5V_IN")
# The rail that carries the whole module's input, when the module has one. Its siblings
# (VDD_CPU_GPU_CV, VDD_SOC, POM_5V_GPU...) are branches of it, so they are never added to it
# (NVIDIA forum "power consumption monitoring" 73608, and jetson-stats issue #51).

NOT_SUMMED = ("VDDQ_VDD2_1V8AO",)
# Modules without a VDD_IN rail (AGX Xavier, AGX Orin) are totalled as the sum of their rails. On AGX
# Orin, VDDQ_VDD2_1V8AO (the DRAM/always-on rail) is fed from VIN_SYS_5V0, which is already counted.

SKIPPED_LABELS = ("sum of shunt voltages",)
# The INA3221 hwmon driver exposes channel 7 as the sum of shunt voltages: not a rail.

THROTTLE_BITS = (
    (0, "under_voltage"),
    (1, "arm_freq_capped"),
    (2, "throttled"),
    (3, "soft_temp_limit"),
    (16, "under_voltage_occurred"),
    (17, "arm_freq_capped_occurred"),
    (18, "throttled_occurred"),
    (19, "soft_temp_limit_occurred"),
)
# vcgencmd get_throttled bits (raspberrypi.com/documentation/computers/os.html#get_throttled): bits
# 0-3 are the state now, bits 16-19 latch "has occurred since boot".

Reading = Dict[str, Any]
CommandRunner = Callable[[Sequence[str]], str]
Opener = Callable[[str], str]


class SamplerUnavailable(Exception):
    """The sensor is absent or unreadable here; ``reason`` says which file or command, and why."""

    def __init__(self, reason):
        # type: (str) -> None
        Exception.__init__(self, reason)
        self.reason = reason


class SensorError(Exception):
    """A read failed (a command exited non-zero, a file held no number...)."""


def read_text(path):
    # type: (str) -> str
    """Read a small file (a sysfs attribute is at most a page) with open, read, close and no text-IO
    wrapper: at 100 Hz over six files this is most of a sampler's cost."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, 8192)]
        while len(chunks[-1]) == 8192:
            chunks.append(os.read(fd, 8192))
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def run_command(argv, timeout=5.0):
    # type: (Sequence[str], float) -> str
    """Run a command to completion and return its standard output."""
    try:
        proc = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout)
    except OSError as exc:
        raise SensorError("cannot run %s: %s" % (argv[0], exc.strerror or exc))
    except subprocess.TimeoutExpired:
        raise SensorError("%s did not answer within %.0f s" % (" ".join(argv), timeout))
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise SensorError("%s exited with %d%s" % (" ".join(argv), proc.returncode,
                                                  (": " + detail[0]) if detail else ""))
    return proc.stdout


def _profile_get(profile, key, default=None):
    # type: (Any, str, Any) -> Any
    if profile is None:
        return default
    if isinstance(profile, dict):
        value = profile.get(key, default)
    else:
        value = getattr(profile, key, default)
    return default if value is None else value


def _int(text, what):
    # type: (str, str) -> int
    try:
        return int(str(text).strip().split()[0])
    except (ValueError, IndexError):
        raise ValueError("%s holds %r, not an integer" % (what, str(text)[:40]))


def jetson_total(rails):
    # type: (Dict[str, float]) -> Tuple[float, Optional[str], str]
    """(total watts, the rail used as the total or None, scope) for a Jetson's rail readings."""
    for name in TOTAL_RAILS:
        if name in rails:
            return rails[name], name, "board input"
    total = sum(w for name, w in rails.items() if name not in NOT_SUMMED)
    return total, None, "module rails"


def counter_delta(prev, cur, max_range):
    # type: (int, int, Optional[int]) -> int
    """Increase of a counter that wraps to 0 after ``max_range`` (RAPL's max_energy_range_uj).

    One wrap between two reads is assumed; at 1 Hz or more that holds for any real CPU (the usual
    range, 262143328850 uJ, lasts over 20 minutes at 200 W).
    """
    if cur >= prev:
        return cur - prev
    if max_range and max_range > prev:
        return (max_range - prev) + cur
    return cur  # the counter was reset (or its range is unknown): count from zero


# ----------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------
class Sampler(object):
    """Base class. A sampler is constructed cheaply; ``probe()`` finds the sensor or raises
    SamplerUnavailable; ``sample()`` = ``parse(read())`` (+ counter bookkeeping for counters)."""

    name = ""
    scope = ""
    method = ""
    reading = "power"  # or "energy"
    is_estimate = False
    reads = ""  # what it reads, for humans

    def __init__(self, root="/", command_runner=None, opener=None, profile=None):
        # type: (str, Optional[CommandRunner], Optional[Opener], Any) -> None
        self.root = root or "/"
        self.command_runner = command_runner or run_command
        self.injected_runner = command_runner is not None
        self.opener = opener or read_text
        self.profile = profile
        self.scope_note = ""
        self.total_rail = None  # type: Optional[str]
        self.notes = []  # type: List[str]
        self.rate_hz = 10.0

    def path(self, *parts):
        # type: (str) -> str
        return os.path.join(self.root, *parts)

    def probe(self):
        # type: () -> None
        raise NotImplementedError

    def read(self):
        # type: () -> Any
        raise NotImplementedError

    @staticmethod
    def parse(raw):
        # type: (Any) -> Reading
        raise NotImplementedError

    def sample(self):
        # type: () -> Reading
        return self.parse(self.read())

    def health(self):
        # type: () -> Optional[Dict[str, Any]]
        return None

    def close(self):
        # type: () -> None
        pass

    def describe(self):
        # type: () -> Dict[str, Any]
        return {"name": self.name, "scope": self.scope, "method": self.method,
                "is_estimate": self.is_estimate, "reads": self.reads}

    def _open(self, path):
        # type: (str) -> str
        try:
            return self.opener(path)
        except PermissionError:
            raise SamplerUnavailable("cannot read %s: permission denied (running as uid %s)"
                                     % (path, _uid()))


def _uid():
    # type: () -> str
    try:
        return str(os.getuid())
    except AttributeError:  # pragma: no cover - not on Linux
        return "?"


class _JetsonIna3221(Sampler):
    """What both Jetson INA3221 drivers share: labelled channel files found once in probe(), read
    together, and the total taken from the board-input rail (see jetson_total)."""

    scope = "board input"
    method = "power integral"
    BASE = ""

    def __init__(self, *args, **kwargs):
        Sampler.__init__(self, *args, **kwargs)
        self._labels = {}  # type: Dict[str, str]  # "<dir>/<label file>" -> rail name
        self._inputs = []  # type: List[str]  # "<dir>/<value file>", read on every sample

    def _finish_probe(self):
        reading = self.sample()
        self.scope, self.total_rail = reading["scope"], reading["total_rail"]
        self.scope_note = _jetson_scope_note(reading)

    def read(self):
        base = self.path(self.BASE)
        files = dict(self._labels)
        for key in self._inputs:
            files[key] = self.opener(os.path.join(base, key))
        return files


class Ina3221xSampler(_JetsonIna3221):
    """Jetson legacy INA3221 iio driver (JetPack <= 4): ``in_power{N}_input`` in mW, named by
    ``rail_name_{N}``."""

    name = "ina3221x"
    reads = "/sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power{0,1,2}_input (mW), rail_name_{0,1,2}"
    BASE = "sys/bus/i2c/drivers/ina3221x"

    def probe(self):
        base = self.path(self.BASE)
        devices, seen = [], set()
        # iio:deviceN, or the iio_device link some L4T 28/32 kernels add beside it
        for dev in sorted(glob.glob(os.path.join(base, "*", "iio:device*")) +
                          glob.glob(os.path.join(base, "*", "iio_device"))):
            if os.path.realpath(dev) not in seen:
                seen.add(os.path.realpath(dev))
                devices.append(dev)
        if not devices:
            raise SamplerUnavailable("no INA3221 iio devices under %s (not a Jetson on JetPack 4 or "
                                     "older; JetPack 5+ uses ina3221-hwmon)" % base)
        for dev in devices:
            rel = os.path.relpath(dev, base)
            for n in (0, 1, 2):
                label_path = os.path.join(dev, "rail_name_%d" % n)
                power_path = os.path.join(dev, "in_power%d_input" % n)
                if not (os.path.exists(label_path) and os.path.exists(power_path)):
                    continue
                label = self._open(label_path).strip()
                if not _readable(self, [power_path]):
                    continue
                self._labels["%s/rail_name_%d" % (rel, n)] = label
                self._inputs.append("%s/in_power%d_input" % (rel, n))
        if not self._inputs:
            raise SamplerUnavailable("INA3221 iio devices under %s have no readable "
                                     "rail_name_N/in_powerN_input pair" % base)
        self._finish_probe()


    @staticmethod
    def parse(raw):
        # type: (Dict[str, str]) -> Reading
        """``raw``: {"<dir>/rail_name_N": label, "<dir>/in_powerN_input": mW}; <dir>/ may be empty."""
        rails = {}  # type: Dict[str, float]
        for key, label in raw.items():
            head, _, fname = key.rpartition("/")
            if not fname.startswith("rail_name_"):
                continue
            m = re.match(r"rail_name_(\d+)$", fname)
            if not m:
                continue
            pkey = (head + "/" if head else "") + "in_power%s_input" % m.group(1)
            if pkey not in raw:
                continue
            rails[label.strip()] = _int(raw[pkey], pkey) / 1000.0
        if not rails:
            raise ValueError("no rail_name_N / in_powerN_input pairs")
        return _rails_reading(rails)


_HWMON_LABEL = re.compile(r"in(\d+)_label$")


class Ina3221HwmonSampler(_JetsonIna3221):
    """Jetson INA3221 hwmon driver (JetPack 5+, Orin and Xavier): ``in{N}_label``, ``in{N}_input``
    (mV) and ``curr{N}_input`` (mA), P = V x I. The hwmon index and the channel numbers vary by
    board, so the channels are found by their labels."""

    name = "ina3221-hwmon"
    reads = ("/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label, in*_input (mV), "
             "curr*_input (mA)")
    BASE = "sys/bus/i2c/drivers/ina3221"

    def probe(self):
        base = self.path(self.BASE)
        dirs = sorted(glob.glob(os.path.join(base, "*", "hwmon", "hwmon*")))
        if not dirs:
            raise SamplerUnavailable("no INA3221 hwmon directories under %s (not a Jetson on "
                                     "JetPack 5 or newer)" % base)
        for d in dirs:
            rel = os.path.relpath(d, base)
            for label_path in sorted(glob.glob(os.path.join(d, "in*_label"))):
                m = re.match(r"in(\d+)_label$", os.path.basename(label_path))
                if not m:
                    continue
                n = m.group(1)
                label = self._open(label_path).strip()
                if _skip_label(label):
                    continue
                volt = os.path.join(d, "in%s_input" % n)
                curr = os.path.join(d, "curr%s_input" % n)
                if not (os.path.exists(volt) and os.path.exists(curr)) or not _readable(self, [volt, curr]):
                    continue
                self._labels["%s/in%s_label" % (rel, n)] = label
                self._inputs += ["%s/in%s_input" % (rel, n), "%s/curr%s_input" % (rel, n)]
        if not self._inputs:
            raise SamplerUnavailable("INA3221 hwmon directories under %s have no labelled, readable "
                                     "channel with in*_input and curr*_input" % base)
        self._finish_probe()


    @staticmethod
    def parse(raw):
        # type: (Dict[str, str]) -> Reading
        """``raw``: {"<dir>/inN_label": label, "<dir>/inN_input": mV, "<dir>/currN_input": mA}."""
        rails = {}  # type: Dict[str, float]
        for key, label in raw.items():
            if not key.endswith("_label"):
                continue
            head, _, fname = key.rpartition("/")
            m = _HWMON_LABEL.match(fname)
            if not m or _skip_label(label.strip()):
                continue
            prefix = head + "/" if head else ""
            vkey = prefix + "in%s_input" % m.group(1)
            ckey = prefix + "curr%s_input" % m.group(1)
            if vkey not in raw or ckey not in raw:
                continue
            rails[label.strip()] = _int(raw[vkey], vkey) * _int(raw[ckey], ckey) / 1e6
        if not rails:
            raise ValueError("no labelled channel with inN_input and currN_input")
        return _rails_reading(rails)


def _readable(smp, paths):
    # type: (Sampler, Sequence[str]) -> bool
    """True when every path reads as an integer. A permission error is fatal (it holds for every
    channel); other errors (a disabled channel answers EINVAL) drop just this channel."""
    for path in paths:
        try:
            _int(smp._open(path), path)
        except (OSError, ValueError) as exc:  # _open turns PermissionError into SamplerUnavailable
            smp.notes.append("%s: skipped %s (%s)" % (smp.name, path, exc))
            return False
    return True


def _skip_label(label):
    # type: (str) -> bool
    return label in SKIPPED_LABELS or label.upper() == "NC" or label.upper().startswith("NC ")


def _rails_reading(rails):
    # type: (Dict[str, float]) -> Reading
    total, total_rail, scope = jetson_total(rails)
    return {"power_w": total, "rails": rails, "total_rail": total_rail, "scope": scope}


def _jetson_scope_note(reading):
    # type: (Reading) -> str
    if reading["total_rail"]:
        return ("%s: the Jetson module's input rail (the carrier board, fan and USB devices are "
                "outside it); the other rails are branches of it" % reading["total_rail"])
    used = [n for n in sorted(reading["rails"]) if n not in NOT_SUMMED]
    return ("sum of the module's rails (%s): this module has no input-rail monitor, so regulator "
            "losses and the carrier board are outside it" % " + ".join(used))


_TEGRA_RAIL = re.compile(
    r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?(?=\s|$)")


class TegrastatsSampler(Sampler):
    """Jetson ``tegrastats``: rail fields ``NAME instant/average`` in mW, with or without the
    ``mW`` unit (JetPack 4 prints ``POM_5V_IN 2545/2547``, JetPack 5/6 ``VDD_IN 5263mW/5263mW``,
    Jetson Linux r39 a third figure ``VDD_GPU_SOC 2792mW/2792mW/2792mW``). Only the first,
    instantaneous figure is used: the others are running statistics over tegrastats' lifetime."""

    name = "tegrastats"
    scope = "board input"
    method = "power integral"
    reads = "tegrastats --interval MS (rail fields NAME mW/mW)"

    def __init__(self, *args, **kwargs):
        Sampler.__init__(self, *args, **kwargs)
        self._proc = None  # type: Any
        self._line = None  # type: Optional[str]
        self._line_lock = threading.Lock()
        self._reader = None  # type: Optional[threading.Thread]

    def _argv(self):
        # type: () -> List[str]
        return ["tegrastats", "--interval", str(max(10, int(1000.0 / max(self.rate_hz, 1e-3))))]

    def probe(self):
        if not self.injected_runner:
            if shutil.which("tegrastats") is None:
                raise SamplerUnavailable("tegrastats is not on PATH (it ships with Jetson Linux)")
            self._start_stream()
        try:
            reading = self.sample()
        except (SensorError, ValueError, OSError) as exc:
            self.close()
            raise SamplerUnavailable("tegrastats gives no power rails: %s" % exc)
        self.scope, self.total_rail = reading["scope"], reading["total_rail"]
        self.scope_note = _jetson_scope_note(reading)

    def _start_stream(self):
        # type: () -> None
        try:
            self._proc = subprocess.Popen(self._argv(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          universal_newlines=True, bufsize=1)
        except OSError as exc:
            raise SamplerUnavailable("cannot start tegrastats: %s" % (exc.strerror or exc))
        self._reader = threading.Thread(target=self._pump, name="edgekit-tegrastats", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and self._line is None and self._proc.poll() is None:
            time.sleep(0.01)

    def _pump(self):
        # type: () -> None
        for line in self._proc.stdout:
            if line.strip():
                with self._line_lock:
                    self._line = line

    def read(self):
        if self.injected_runner:
            return self.command_runner(self._argv())
        with self._line_lock:
            line = self._line
        if self._proc is not None and self._proc.poll() is not None:
            raise SensorError("tegrastats exited with %s" % self._proc.returncode)
        if line is None:
            raise SensorError("tegrastats printed nothing")
        return line

    @staticmethod
    def parse(raw):
        # type: (str) -> Reading
        """The last non-empty line of ``raw`` is parsed."""
        lines = [ln for ln in str(raw).splitlines() if ln.strip()]
        if not lines:
            raise ValueError("empty tegrastats output")
        rails = {}  # type: Dict[str, float]
        for m in _TEGRA_RAIL.finditer(lines[-1]):
            rails[m.group(1)] = int(m.group(2)) / 1000.0
        if not rails:
            raise ValueError("no power rail fields in %r" % lines[-1][:80])
        return _rails_reading(rails)

    def close(self):
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()


_PMIC_LINE = re.compile(r"^\s*(\S+?)_([AV])\s+(?:current|volt)\(\d+\)=(-?[0-9.]+)([AV])\s*$")


class RpiPmicSampler(Sampler):
    """Raspberry Pi 5 PMIC ADC via ``vcgencmd pmic_read_adc``: each rail's current (``X_A``) and
    voltage (``X_V``) are paired and P = V x I summed. EXT5V (the 5 V input) has a voltage only,
    so the sum covers the PMIC's rails, not the power at the wall."""

    name = "rpi5-pmic"
    scope = "module rails"
    method = "power integral"
    reads = "vcgencmd pmic_read_adc; vcgencmd get_throttled"

    def probe(self):
        if not self.injected_runner and shutil.which("vcgencmd") is None:
            raise SamplerUnavailable("vcgencmd is not on PATH (Raspberry Pi OS ships it)")
        try:
            reading = self.sample()
        except (SensorError, ValueError, OSError) as exc:
            raise SamplerUnavailable("vcgencmd pmic_read_adc gives no rails (only the Raspberry "
                                     "Pi 5 family's PMIC has this ADC): %s" % exc)
        self.scope_note = ("sum of V x I over %d PMIC rails (SoC core, DRAM, 3V3/1V8...); EXT5V "
                           "has a voltage only, so this is not the wall: the 5 V input's regulator "
                           "losses, USB devices and the fan are outside it" % len(reading["rails"]))

    def read(self):
        return self.command_runner(["vcgencmd", "pmic_read_adc"])

    @staticmethod
    def parse(raw):
        # type: (str) -> Reading
        found = {}  # type: Dict[str, Dict[str, float]]
        for line in str(raw).splitlines():
            m = _PMIC_LINE.match(line)
            if m:
                found.setdefault(m.group(1), {})[m.group(2)] = float(m.group(3))
        rails = {}  # type: Dict[str, float]
        details = {}  # type: Dict[str, Dict[str, float]]
        voltage_only = []
        for name in sorted(found):
            va = found[name]
            if "A" in va and "V" in va:
                rails[name] = va["A"] * va["V"]
                details[name] = {"A": va["A"], "V": va["V"], "W": rails[name]}
            else:
                voltage_only.append(name)
        if not rails:
            raise ValueError("no rail with both a current and a voltage in %r" % str(raw)[:80])
        out = {"power_w": sum(rails.values()), "rails": rails, "details": details,
               "voltage_only": voltage_only, "total_rail": None, "scope": "module rails"}
        if "EXT5V" in found and "V" in found["EXT5V"]:
            out["ext5v_v"] = found["EXT5V"]["V"]
        return out

    def health(self):
        return parse_throttled(self.command_runner(["vcgencmd", "get_throttled"]))


def parse_throttled(text):
    # type: (str) -> Dict[str, Any]
    """``throttled=0x50005`` -> {"raw": "0x50005", "under_voltage": True, ...}."""
    m = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", str(text))
    if not m:
        raise ValueError("no throttled=... in %r" % str(text)[:60])
    value = int(m.group(1), 0)
    flags = {"raw": hex(value)}  # type: Dict[str, Any]
    for bit, name in THROTTLE_BITS:
        flags[name] = bool((value >> bit) & 1)
    return flags


class RaplSampler(Sampler):
    """Intel/AMD RAPL via powercap: ``energy_uj`` counters of the package zones, differenced with
    wrap-around at ``max_energy_range_uj``. Sub-zones (core, uncore, dram) and ``psys`` are not
    added, so nothing is counted twice."""

    name = "rapl"
    scope = "cpu package"
    method = "energy counter"
    reading = "energy"
    reads = "/sys/class/powercap/intel-rapl:*/energy_uj, max_energy_range_uj, name"
    BASE = "sys/class/powercap"

    def __init__(self, *args, **kwargs):
        Sampler.__init__(self, *args, **kwargs)
        self._zones = []  # type: List[Tuple[str, str]]  # (zone dir, name)
        self._max = {}  # type: Dict[str, Optional[int]]
        self._last = {}  # type: Dict[str, int]
        self._total_uj = 0

    def probe(self):
        base = self.path(self.BASE)
        dirs = [d for d in sorted(glob.glob(os.path.join(base, "intel-rapl:*")))
                if os.path.basename(d).count(":") == 1]
        if not dirs:
            raise SamplerUnavailable("no RAPL zones under %s (not an x86 CPU, or the intel_rapl "
                                     "powercap driver is not loaded)" % base)
        for d in dirs:
            try:
                zone = self.opener(os.path.join(d, "name")).strip()
            except OSError:
                zone = os.path.basename(d)
            if zone.startswith("package"):
                self._zones.append((d, zone))
        if not self._zones:
            raise SamplerUnavailable("RAPL zones under %s have no package zone" % base)
        for d, zone in self._zones:
            energy_path = os.path.join(d, "energy_uj")
            try:
                self.opener(energy_path)
            except PermissionError:
                raise SamplerUnavailable(
                    "cannot read %s: permission denied (uid %s). Since Linux 5.10 energy_uj is "
                    "readable by root only (CVE-2020-8694, 'Platypus'); run the runner as root or "
                    "grant read access, e.g. a udev rule running chmod o+r on energy_uj"
                    % (energy_path, _uid()))
            except OSError as exc:
                raise SamplerUnavailable("cannot read %s: %s" % (energy_path, exc.strerror or exc))
            try:
                self._max[zone] = _int(self.opener(os.path.join(d, "max_energy_range_uj")), "max_energy_range_uj")
            except (OSError, ValueError):
                self._max[zone] = None
                self.notes.append("rapl: %s/max_energy_range_uj is unreadable; a counter wrap "
                                  "would be counted as a reset" % d)
        self.sample()
        names = ", ".join(z for _, z in self._zones)
        self.scope_note = ("RAPL %s: the CPU package(s) only; DRAM, the board and accelerators are "
                           "outside it" % names)

    def read(self):
        return {zone: self.opener(os.path.join(d, "energy_uj")) for d, zone in self._zones}

    @staticmethod
    def parse(raw):
        # type: (Dict[str, str]) -> Reading
        """``raw``: {zone name: energy_uj text} -> {"counters_uj": {zone: int}} (package zones)."""
        counters = {zone: _int(text, zone + "/energy_uj") for zone, text in raw.items()}
        if not counters:
            raise ValueError("no RAPL counters")
        return {"counters_uj": counters}

    def sample(self):
        counters = self.parse(self.read())["counters_uj"]
        for zone, value in counters.items():
            if zone in self._last:
                self._total_uj += counter_delta(self._last[zone], value, self._max.get(zone))
            self._last[zone] = value
        return {"energy_j": self._total_uj / 1e6, "counters_uj": counters}


class NvmlSampler(Sampler):
    """NVIDIA GPUs via NVML: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded),
    summed over the GPUs that support it (Volta and newer). Jetson's integrated GPU answers
    NotSupported."""

    name = "nvml"
    scope = "board input"
    method = "energy counter"
    reading = "energy"
    reads = "pynvml: nvmlDeviceGetTotalEnergyConsumption (mJ) per GPU"

    def __init__(self, *args, **kwargs):
        nvml = kwargs.pop("nvml", None)
        Sampler.__init__(self, *args, **kwargs)
        self._nvml = nvml
        self._handles = []  # type: List[Tuple[int, Any]]
        self._started = False

    def probe(self):
        nv = self._nvml
        if nv is None:
            try:
                import pynvml as nv  # type: ignore
            except ImportError:
                raise SamplerUnavailable("pynvml is not importable by %s (pip install nvidia-ml-py)"
                                         % sys.executable)
            self._nvml = nv
        try:
            nv.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded...
            raise SamplerUnavailable("NVML did not start: %s" % exc)
        self._started = True
        refused = []
        for i in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(i)
            try:
                nv.nvmlDeviceGetTotalEnergyConsumption(handle)
            except Exception as exc:
                refused.append("GPU %d: %s" % (i, exc))
                continue
            self._handles.append((i, handle))
        if not self._handles:
            self.close()
            why = "; ".join(refused) or "no GPU found"
            raise SamplerUnavailable("NVML has no total-energy counter here (%s). Jetson's integrated "
                                     "GPU and pre-Volta GPUs answer NotSupported; on Jetson use "
                                     "ina3221-hwmon or tegrastats" % why)
        if refused:
            self.notes.append("nvml: skipped %s" % "; ".join(refused))
        self.scope_note = ("NVML total energy of %d GPU board(s): the accelerator card(s) only, not "
                           "the host CPU, memory or power supply" % len(self._handles))

    def read(self):
        nv = self._nvml
        return {str(i): nv.nvmlDeviceGetTotalEnergyConsumption(h) for i, h in self._handles}

    @staticmethod
    def parse(raw):
        # type: (Dict[str, Any]) -> Reading
        """``raw``: {GPU index: total energy in mJ} -> cumulative joules."""
        per_gpu = {"gpu%s" % i: int(mj) / 1000.0 for i, mj in raw.items()}
        if not per_gpu:
            raise ValueError("no GPU energy counters")
        return {"energy_j": sum(per_gpu.values()), "rails": per_gpu}

    def close(self):
        if self._started:
            self._started = False
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass


def process_cpu_seconds():
    # type: () -> float
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class EstimateSampler(Sampler):
    """Not a measurement: this process's CPU time x the target profile's nominal watts per core.
    Always labelled ``is_estimate: true``, never mixed with measured figures."""

    name = "estimate"
    scope = "cpu package"
    method = "estimate"
    reading = "energy"
    is_estimate = True
    reads = "os.times() (this process's CPU seconds) x profile nominal_watts_per_core"

    def __init__(self, *args, **kwargs):
        cpu_seconds = kwargs.pop("cpu_seconds", None)
        Sampler.__init__(self, *args, **kwargs)
        self.cpu_seconds = cpu_seconds or process_cpu_seconds
        self.watts_per_core = float(_profile_get(self.profile, "nominal_watts_per_core", 0) or 0)

    def probe(self):
        if self.watts_per_core <= 0:
            self.watts_per_core = DEFAULT_WATTS_PER_CORE
            self.notes.append("estimate: no target profile gave nominal_watts_per_core; %.1f W per "
                              "core assumed" % DEFAULT_WATTS_PER_CORE)
        self.scope_note = ("ESTIMATE, not a measurement: this process's CPU seconds x %.2f W per core "
                           "(the profile's nominal_watts_per_core). Idle and static power, memory "
                           "and accelerators are not counted" % self.watts_per_core)

    def read(self):
        return self.cpu_seconds()

    @staticmethod
    def parse(raw):
        # type: (Any) -> Reading
        return {"cpu_s": float(raw)}

    def sample(self):
        cpu_s = self.parse(self.read())["cpu_s"]
        return {"energy_j": cpu_s * self.watts_per_core, "cpu_s": cpu_s}


REGISTRY = {
    "ina3221x": Ina3221xSampler,
    "ina3221-hwmon": Ina3221HwmonSampler,
    "tegrastats": TegrastatsSampler,
    "rpi5-pmic": RpiPmicSampler,
    "rapl": RaplSampler,
    "nvml": NvmlSampler,
    "estimate": EstimateSampler,
}  # type: Dict[str, type]

AUTO_ORDER = ("ina3221-hwmon", "ina3221x", "rpi5-pmic", "rapl", "nvml", "tegrastats", "estimate")
"""``sampler="auto"`` without a profile tries these in order (direct sysfs before commands)."""


def make_sampler(name, root="/", profile=None, command_runner=None, opener=None):
    # type: (str, str, Any, Optional[CommandRunner], Optional[Opener]) -> Sampler
    if name not in REGISTRY:
        raise ValueError("unknown power sampler '%s' (known: %s)" % (name, ", ".join(sorted(REGISTRY))))
    return REGISTRY[name](root=root, command_runner=command_runner, opener=opener, profile=profile)


def describe_samplers(root="/", command_runner=None):
    # type: (str, Optional[CommandRunner]) -> List[Dict[str, Any]]
    """Probe every registered sampler: [{name, available, reason, scope, method, ...}]."""
    out = []
    for name in REGISTRY:
        smp = make_sampler(name, root=root, command_runner=command_runner)
        info = smp.describe()
        try:
            smp.probe()
            info.update(available=True, scope=smp.scope, scope_note=smp.scope_note)
        except SamplerUnavailable as exc:
            info.update(available=False, reason=exc.reason)
        except Exception as exc:  # a probe must never break doctor
            info.update(available=False, reason="%s: %s" % (type(exc).__name__, exc))
        finally:
            smp.close()
        out.append(info)
    return out


def available_samplers(root="/", command_runner=None):
    # type: (str, Optional[CommandRunner]) -> List[str]
    """Names of the samplers that work here (``estimate`` always does); used by ``edgekit doctor``."""
    return [d["name"] for d in describe_samplers(root, command_runner) if d["available"]]


def open_sampler(sampler="estimate", root="/", profile=None, command_runner=None, rate_hz=10.0):
    # type: (Any, str, Any, Optional[CommandRunner], float) -> Tuple[Sampler, str, bool, Optional[str]]
    """Probe the requested sampler (a name, "auto", or a Sampler instance) and fall back to the
    labelled estimate when it is unavailable. Returns (sampler, requested, available, reason)."""
    if isinstance(sampler, Sampler):
        candidates = [sampler]
        requested = sampler.name
    else:
        requested = sampler or "auto"
        if requested == "auto":
            wanted = _profile_get(profile, "power_sensor")
            names = [wanted] if wanted in REGISTRY else list(AUTO_ORDER)
        else:
            if requested not in REGISTRY:
                raise ValueError("unknown power sampler '%s' (known: auto, %s)"
                                 % (requested, ", ".join(sorted(REGISTRY))))
            names = [requested]
        candidates = [make_sampler(n, root, profile, command_runner) for n in names]
    reasons = []
    for smp in candidates:
        smp.rate_hz = rate_hz
        try:
            smp.probe()
            return smp, requested, True, None
        except Exception as exc:  # SamplerUnavailable, or anything a strange board throws
            smp.close()
            why = exc.reason if isinstance(exc, SamplerUnavailable) else "%s: %s" % (type(exc).__name__, exc)
            reasons.append("%s: %s" % (smp.name, why) if len(candidates) > 1 else why)
    fallback = EstimateSampler(root=root, profile=profile)
    fallback.probe()
    return fallback, requested, False, "; ".join(reasons)


# ----------------------------------------------------------------------------------------------
# Energy from samples (pure functions)
# ----------------------------------------------------------------------------------------------
def cumulative_energy(samples, reading):
    # type: (Sequence[Tuple[float, float]], str) -> List[Tuple[float, float]]
    """[(t, value)] -> [(t, joules since the first sample)]: counters are differenced, power is
    integrated by the trapezoidal rule."""
    if not samples:
        return []
    if reading == "energy":
        e0 = samples[0][1]
        return [(t, v - e0) for t, v in samples]
    out = [(samples[0][0], 0.0)]
    acc = 0.0
    for (ta, wa), (tb, wb) in zip(samples, samples[1:]):
        acc += (tb - ta) * (wa + wb) / 2.0
        out.append((tb, acc))
    return out


def energy_over(cum, a, b):
    # type: (Sequence[Tuple[float, float]], float, float) -> Tuple[Optional[float], float]
    """Energy between times a and b, linearly interpolating the cumulative curve; the span is
    clipped to the samples. Returns (joules or None, seconds covered)."""
    if len(cum) < 2:
        return None, 0.0
    lo, hi = max(a, cum[0][0]), min(b, cum[-1][0])
    if hi <= lo:
        return None, 0.0
    return _interp(cum, hi) - _interp(cum, lo), hi - lo


def _interp(cum, t):
    # type: (Sequence[Tuple[float, float]], float) -> float
    times = [p[0] for p in cum]
    i = bisect.bisect_left(times, t)
    if i <= 0:
        return cum[0][1]
    if i >= len(cum):
        return cum[-1][1]
    (ta, ea), (tb, eb) = cum[i - 1], cum[i]
    if tb <= ta:
        return eb
    return ea + (eb - ea) * (t - ta) / (tb - ta)


def power_trace(samples, reading, min_dt):
    # type: (Sequence[Tuple[float, float]], str, float) -> List[Tuple[float, float]]
    """[(t, watts)]: power samples as they are; counters as the mean power between readings at
    least ``min_dt`` apart, placed at the middle of each interval."""
    if reading != "energy":
        return [(t, w) for t, w in samples]
    out = []
    anchor = samples[0] if samples else None
    for t, e in samples[1:]:
        if t - anchor[0] >= min_dt:
            out.append(((t + anchor[0]) / 2.0, (e - anchor[1]) / (t - anchor[0])))
            anchor = (t, e)
    return out


def carbon(energy_per_inference_j, idle_power_w, above_idle_per_inference_j, grid_g_per_kwh, requests_per_s):
    # type: (Optional[float], Optional[float], Optional[float], float, float) -> Dict[str, Any]
    """Grams of CO2 for 1000 inferences (at the measured, saturated throughput) and for a day
    of serving ``requests_per_s``: idle power all day plus the energy above idle per request."""
    g_per_j = grid_g_per_kwh / 3.6e6
    out = {"grid_g_per_kwh": grid_g_per_kwh, "requests_per_s": requests_per_s,
           "g_per_1000_inferences": None, "g_per_day_at_rps": None}  # type: Dict[str, Any]
    if energy_per_inference_j is None:
        return out
    out["g_per_1000_inferences"] = _r(energy_per_inference_j * 1000.0 * g_per_j)
    if idle_power_w is not None and above_idle_per_inference_j is not None:
        daily_j = 86400.0 * (idle_power_w + requests_per_s * max(above_idle_per_inference_j, 0.0))
        out["basis"] = "idle power all day + requests_per_s x energy above idle per inference"
    else:
        daily_j = 86400.0 * requests_per_s * energy_per_inference_j
        out["basis"] = "requests_per_s x energy per inference (no idle baseline)"
    out["g_per_day_at_rps"] = _r(daily_j * g_per_j)
    return out


def _r(x, digits=6):
    # type: (Optional[float], int) -> Optional[float]
    """Round to ``digits`` significant figures; None and non-finite values become None."""
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    if x == 0:
        return 0.0
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


# ----------------------------------------------------------------------------------------------
# Sampling thread and measure()
# ----------------------------------------------------------------------------------------------
class _Recorder(object):
    """Takes samples (from the thread and from the caller at window edges) under one lock, and
    remembers the first failure instead of raising it."""

    def __init__(self, sampler, clock):
        # type: (Sampler, Callable[[], float]) -> None
        self.sampler = sampler
        self.clock = clock
        self.samples = []  # type: List[Tuple[float, float]]
        self.rails = []  # type: List[Tuple[float, Dict[str, float]]]
        self.error = None  # type: Optional[str]
        self.error_t = None  # type: Optional[float]
        self.busy_s = 0.0
        self.cpu_s = 0.0
        self.overruns = 0
        self.retries = 0
        self.fastest = None  # type: Optional[float]
        self.lock = threading.Lock()

    def take(self):
        # type: () -> Optional[float]
        with self.lock:
            if self.error is not None:
                return None
            for attempt in (0, 1):
                ta = self.clock()
                ca = time.thread_time()
                try:
                    r = self.sampler.sample()
                    value = float(r["energy_j"] if self.sampler.reading == "energy" else r["power_w"])
                    if not math.isfinite(value):
                        raise ValueError("non-finite reading %r" % value)
                except Exception as exc:
                    self.error = "%s: %s" % (type(exc).__name__, exc)
                    self.error_t = ta
                    return None
                tb = self.clock()
                self.busy_s += tb - ta
                self.cpu_s += time.thread_time() - ca
                # A read that took far longer than the fastest one was preempted half-way: when the
                # value was taken inside [ta, tb] is unknown, so read once more at once.
                slow = self.fastest is not None and tb - ta > max(0.002, 4.0 * self.fastest)
                self.fastest = tb - ta if self.fastest is None else min(self.fastest, tb - ta)
                if not (slow and attempt == 0):
                    break
                self.retries += 1
            t = (ta + tb) / 2.0
            self.samples.append((t, value))
            if isinstance(r.get("rails"), dict):
                self.rails.append((t, r["rails"]))
            return t

    def loop(self, period, stop):
        # type: (float, threading.Event) -> None
        next_t = self.clock() + period
        while not stop.wait(max(0.0, next_t - self.clock())):
            if self.take() is None and self.error is not None:
                return
            next_t += period
            now = self.clock()
            if next_t < now:  # a read took longer than the period: skip the missed ticks
                self.overruns += int((now - next_t) / period) + 1
                next_t = now + period


def _clamp_rate(rate_hz, warnings):
    # type: (Any, List[str]) -> float
    try:
        rate = float(rate_hz)
    except (TypeError, ValueError):
        rate = float("nan")
    if not math.isfinite(rate) or rate <= 0:
        warnings.append("rate_hz %r is not a positive number; 10 Hz used" % (rate_hz,))
        return 10.0
    clamped = min(MAX_RATE_HZ, max(MIN_RATE_HZ, rate))
    if clamped != rate:
        warnings.append("rate_hz %g is outside %g..%g Hz; %g Hz used" % (rate, MIN_RATE_HZ, MAX_RATE_HZ, clamped))
    return clamped


def measure(run_window, sampler="estimate", rate_hz=10.0, idle_s=2.0, root="/", profile=None,
            grid_g_per_kwh=None, requests_per_s=1.0, command_runner=None):
    # type: (Callable[[], Dict[str, Any]], Any, float, float, str, Any, Optional[float], float, Optional[CommandRunner]) -> Tuple[Dict[str, Any], Dict[str, Any]]
    """1) idle baseline for idle_s; 2) sample in a background thread at rate_hz (bounded 1..100 Hz)
    while run_window() runs; 3) return (window_result, power_dict).

    run_window() returns a dict containing 'iterations' (number of inferences in the window).
    ``sampler`` is a registered name, "auto" (the profile's ``power_sensor``, else the first
    available), or a Sampler instance. An unavailable sampler falls back to the labelled
    ``estimate`` (``available: false`` and ``reason``). ``profile`` is the target profile dict
    from manifest.json (``nominal_watts_per_core``, ``power_sensor``). ``command_runner(argv) ->
    stdout`` replaces running vcgencmd / tegrastats (tests feed captured text through it).

    power_dict (JSON-serialisable): sampler, requested, scope, scope_note, method, is_estimate,
    available, reason, reads, total_rail, energy_j, mean_power_w, idle_power_w,
    energy_per_inference_mj, energy_per_inference_above_idle_mj, iterations, samples,
    idle_samples, window_s, idle_s, coverage, energy_extrapolated, rate_hz, achieved_rate_hz,
    trace ([t_s, W], t from the window start; the idle baseline has negative t), window [0, window_s],
    rails_mean_w, throttling, overhead, carbon {grid_g_per_kwh, g_per_1000_inferences,
    g_per_day_at_rps, requests_per_s, basis}, warnings.
    A failure of run_window() propagates (after the sampling thread is stopped); a sensor that
    disappears mid-run keeps the samples so far and adds a warning.
    """
    warnings = []  # type: List[str]
    rate = _clamp_rate(rate_hz, warnings)
    try:
        idle = max(0.0, float(idle_s or 0.0))
    except (TypeError, ValueError):
        idle = 0.0
    grid = DEFAULT_GRID_G_PER_KWH if grid_g_per_kwh is None else float(grid_g_per_kwh)
    rps = 1.0 if requests_per_s is None else float(requests_per_s)

    smp, requested, available, reason = open_sampler(sampler, root, profile, command_runner, rate)
    if not available:
        warnings.append("power sampler '%s' is unavailable (%s); using the CPU-time estimate "
                        "instead: the figures below are estimates, not measurements" % (requested, reason))
    clock = time.monotonic
    rec = _Recorder(smp, clock)
    period = 1.0 / rate
    health_start = _health(smp, warnings)
    stop = threading.Event()
    thread = threading.Thread(target=rec.loop, args=(period, stop), name="edgekit-power", daemon=True)
    try:
        rec.take()
        thread.start()
        if idle > 0:
            time.sleep(idle)
        rec.take()
        t0 = clock()
        window_result = run_window()
        t1 = clock()
        rec.take()
    finally:
        stop.set()
        if thread.is_alive() or thread.ident is not None:
            thread.join(timeout=5.0)
        health_end = _health(smp, warnings)
        smp.close()

    power = _summarize(rec, smp, t0, t1, period, window_result, warnings)
    power.update({
        "requested": requested,
        "available": available,
        "rate_hz": rate,
        "idle_s": _r(t0 - rec.samples[0][0]) if rec.samples else 0.0,
    })
    if reason:
        power["reason"] = reason
    if health_start is not None or health_end is not None:
        power["throttling"] = {"start": health_start, "end": health_end}
        _throttle_warnings(health_start, health_end, warnings)
    power["carbon"] = carbon(
        None if power["energy_per_inference_mj"] is None else power["energy_per_inference_mj"] / 1000.0,
        power["idle_power_w"],
        None if power["energy_per_inference_above_idle_mj"] is None
        else power["energy_per_inference_above_idle_mj"] / 1000.0,
        grid, rps)
    iters = power["iterations"]
    if iters and power["window_s"] and rps > iters / power["window_s"]:
        warnings.append("requests_per_s %g exceeds the measured throughput (%.3g inferences/s); the "
                        "daily carbon figure assumes the device keeps up" % (rps, iters / power["window_s"]))
    for note in smp.notes:
        warnings.append(note)
    power["warnings"] = warnings
    return window_result, power


def _health(smp, warnings):
    # type: (Sampler, List[str]) -> Optional[Dict[str, Any]]
    try:
        return smp.health()
    except Exception as exc:
        warnings.append("%s: health check failed: %s: %s" % (smp.name, type(exc).__name__, exc))
        return None


def _throttle_warnings(start, end, warnings):
    # type: (Optional[Dict[str, Any]], Optional[Dict[str, Any]], List[str]) -> None
    now = [name for bit, name in THROTTLE_BITS if bit < 16
           and any(h and h.get(name) for h in (start, end))]
    if now:
        warnings.append("the board reported %s during the run (vcgencmd get_throttled %s): energy "
                        "and latency reflect a throttled board" % (", ".join(now), (end or start)["raw"]))
    if start and end:
        new = [name for bit, name in THROTTLE_BITS if bit >= 16 and end.get(name) and not start.get(name)]
        if new:
            warnings.append("new since the run started: %s" % ", ".join(new))


def _summarize(rec, smp, t0, t1, period, window_result, warnings):
    # type: (_Recorder, Sampler, float, float, float, Any, List[str]) -> Dict[str, Any]
    samples = list(rec.samples)
    reading = smp.reading
    cum = cumulative_energy(samples, reading)
    window_s = t1 - t0
    first_t = samples[0][0] if samples else t0
    idle_j, idle_cov = energy_over(cum, first_t, t0)
    idle_power = idle_j / idle_cov if idle_j is not None and idle_cov > 0 else None
    win_j, win_cov = energy_over(cum, t0, t1)
    coverage = (win_cov / window_s) if window_s > 0 else 0.0
    mean_power = win_j / win_cov if win_j is not None and win_cov > 0 else None

    iterations = None
    if isinstance(window_result, dict):
        iterations = window_result.get("iterations")
    try:
        iterations = int(iterations) if iterations is not None else None
    except (TypeError, ValueError):
        iterations = None
    if not iterations:
        warnings.append("run_window() reported no 'iterations'; energy per inference is not computed")

    extrapolated = mean_power is not None and coverage < 0.999
    per_inf = above = None
    if mean_power is not None and iterations:
        per_inf = mean_power * window_s / iterations
        if idle_power is not None:
            above = (mean_power - idle_power) * window_s / iterations
            if above < 0:
                warnings.append("the window's mean power is below the idle baseline: the workload's "
                                "energy is within the sensor's noise")

    if rec.error is not None:
        where = rec.error_t - t0 if rec.error_t is not None else 0.0
        phase = "during the idle baseline" if where < 0 else "%.2f s into the window" % where
        warnings.append("power sensor '%s' stopped answering %s (%s); the samples taken before are "
                        "kept: %.0f%% of the window is covered%s"
                        % (smp.name, phase, rec.error, 100.0 * coverage,
                           ", and per-inference figures extrapolate its mean power" if extrapolated else ""))

    in_window = [t for t, _ in samples if t0 < t < t1]
    achieved = len(in_window) / window_s if window_s > 0 else None
    rate = 1.0 / period
    if achieved is not None and window_s >= 5 * period and rec.error is None and achieved < 0.8 * rate:
        per_read = rec.busy_s / max(len(samples), 1)
        why = ("one read of '%s' takes %.1f ms" % (smp.name, 1000.0 * per_read) if per_read > 0.5 * period
               else "the sampling thread was not scheduled often enough: the CPUs are busy")
        warnings.append("sampled at %.1f Hz instead of %g Hz (%s)" % (achieved, rate, why))

    trace = [[_r(t - t0, 6), _r(w, 6)] for t, w in power_trace(samples, reading, period / 2.0)]
    rails_mean = {}  # type: Dict[str, float]
    win_rails = [r for t, r in rec.rails if t0 <= t <= t1] or [r for _, r in rec.rails]
    if reading == "power" and win_rails:
        for name in win_rails[0]:
            vals = [r[name] for r in win_rails if name in r]
            rails_mean[name] = _r(sum(vals) / len(vals))
    out = {
        "sampler": smp.name,
        "scope": smp.scope,
        "scope_note": smp.scope_note,
        "method": smp.method,
        "is_estimate": bool(smp.is_estimate),
        "reads": smp.reads,
        "total_rail": smp.total_rail,
        "energy_j": _r(win_j),
        "mean_power_w": _r(mean_power),
        "idle_power_w": _r(idle_power),
        "energy_per_inference_mj": _r(per_inf * 1000.0) if per_inf is not None else None,
        "energy_per_inference_above_idle_mj": _r(above * 1000.0) if above is not None else None,
        "iterations": iterations,
        "samples": len([t for t, _ in samples if t >= t0 - period and t <= t1 + period]),
        "idle_samples": len([t for t, _ in samples if t < t0]),
        "window_s": _r(window_s),
        "coverage": _r(coverage, 4),
        "energy_extrapolated": bool(extrapolated),
        "achieved_rate_hz": _r(achieved, 4),
        "trace": trace,
        "window": [0.0, _r(window_s)],
        "overhead": {"sampler_busy_s": _r(rec.busy_s, 4), "sampler_cpu_s": _r(rec.cpu_s, 4),
                     "cpu_fraction": _r(rec.cpu_s / max(t1 - first_t, 1e-9), 4),
                     "reads": len(samples), "overruns": rec.overruns, "reread_after_preemption": rec.retries},
    }
    if rails_mean:
        out["rails_mean_w"] = rails_mean
    return out


# ----------------------------------------------------------------------------------------------
# Command line, for checks on a board: python3 power.py probe | python3 power.py measure
# ----------------------------------------------------------------------------------------------
def main(argv=None):
    # type: (Optional[Sequence[str]]) -> int
    parser = argparse.ArgumentParser(prog="power.py", description="edgekit power samplers")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("probe", help="which samplers work here (JSON)")
    p.add_argument("--sysfs-root", default="/")
    m = sub.add_parser("measure", help="sample while sleeping (JSON power dict)")
    m.add_argument("--power", default="auto", help="sampler name or auto")
    m.add_argument("--seconds", type=float, default=2.0)
    m.add_argument("--power-rate", type=float, default=10.0)
    m.add_argument("--idle", type=float, default=1.0)
    m.add_argument("--sysfs-root", default="/")
    m.add_argument("--grid-intensity", type=float, default=None, help="gCO2 per kWh")
    args = parser.parse_args(argv)
    if args.command == "probe":
        print(json.dumps(describe_samplers(args.sysfs_root), indent=2, sort_keys=True))
        return 0
    if args.command == "measure":
        def window():
            time.sleep(args.seconds)
            return {"iterations": 1}
        _, power = measure(window, sampler=args.power, rate_hz=args.power_rate, idle_s=args.idle,
                           root=args.sysfs_root, grid_g_per_kwh=args.grid_intensity)
        print(json.dumps(power, indent=2, sort_keys=True))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
