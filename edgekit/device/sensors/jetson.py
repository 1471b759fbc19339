"""Jetson's INA3221 power monitors, through either kernel driver: the legacy iio driver
(``ina3221x``, JetPack <= 4) and hwmon (``ina3221-hwmon``, JetPack 5+). Also the rail arithmetic
tegrastats shares (which rail is the module's total)."""
import glob
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from . import Reading, Sampler, SamplerUnavailable, int_of

TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "5V_IN")
# The rail that carries the whole module's input, when the module has one. Its siblings
# (VDD_CPU_GPU_CV, VDD_SOC, POM_5V_GPU...) are branches of it, so they are never added to it
# (NVIDIA forum "power consumption monitoring" 73608, and jetson-stats issue #51).

NOT_SUMMED = ("VDDQ_VDD2_1V8AO",)
# Modules without a VDD_IN rail (AGX Xavier, AGX Orin) are totalled as the sum of their rails. On AGX
# Orin, VDDQ_VDD2_1V8AO (the DRAM/always-on rail) is fed from VIN_SYS_5V0, which is already counted.

SKIPPED_LABELS = ("sum of shunt voltages",)
# The INA3221 hwmon driver exposes channel 7 as the sum of shunt voltages: not a rail.


def jetson_total(rails):
    # type: (Dict[str, float]) -> Tuple[float, Optional[str], str]
    """(total watts, the rail used as the total or None, scope) for a Jetson's rail readings."""
    for name in TOTAL_RAILS:
        if name in rails:
            return rails[name], name, "board input"
    total = sum(w for name, w in rails.items() if name not in NOT_SUMMED)
    return total, None, "module rails"


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
        self.scope_note = jetson_scope_note(reading)

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
    auto_rank = 20
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
            rails[label.strip()] = int_of(raw[pkey], pkey) / 1000.0
        if not rails:
            raise ValueError("no rail_name_N / in_powerN_input pairs")
        return rails_reading(rails)


_HWMON_LABEL = re.compile(r"in(\d+)_label$")


class Ina3221HwmonSampler(_JetsonIna3221):
    """Jetson INA3221 hwmon driver (JetPack 5+, Orin and Xavier): ``in{N}_label``, ``in{N}_input``
    (mV) and ``curr{N}_input`` (mA), P = V x I. The hwmon index and the channel numbers vary by
    board, so the channels are found by their labels."""

    name = "ina3221-hwmon"
    auto_rank = 10
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
            rails[label.strip()] = int_of(raw[vkey], vkey) * int_of(raw[ckey], ckey) / 1e6
        if not rails:
            raise ValueError("no labelled channel with inN_input and currN_input")
        return rails_reading(rails)


def _readable(smp, paths):
    # type: (Sampler, Sequence[str]) -> bool
    """True when every path reads as an integer. A permission error is fatal (it holds for every
    channel); other errors (a disabled channel answers EINVAL) drop just this channel."""
    for path in paths:
        try:
            int_of(smp._open(path), path)
        except (OSError, ValueError) as exc:  # _open turns PermissionError into SamplerUnavailable
            smp.notes.append("%s: skipped %s (%s)" % (smp.name, path, exc))
            return False
    return True


def _skip_label(label):
    # type: (str) -> bool
    return label in SKIPPED_LABELS or label.upper() == "NC" or label.upper().startswith("NC ")


def rails_reading(rails):
    # type: (Dict[str, float]) -> Reading
    total, total_rail, scope = jetson_total(rails)
    return {"power_w": total, "rails": rails, "total_rail": total_rail, "scope": scope}


def jetson_scope_note(reading):
    # type: (Reading) -> str
    if reading["total_rail"]:
        return ("%s: the Jetson module's input rail (the carrier board, fan and USB devices are "
                "outside it); the other rails are branches of it" % reading["total_rail"])
    used = [n for n in sorted(reading["rails"]) if n not in NOT_SUMMED]
    return ("sum of the module's rails (%s): this module has no input-rail monitor, so regulator "
            "losses and the carrier board are outside it" % " + ".join(used))
