"""Raspberry Pi 5's PMIC ADC through ``vcgencmd``, and the board's throttling flags."""
import re
import shutil
from typing import Any, Dict

from . import Reading, Sampler, SamplerUnavailable, SensorError

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


_PMIC_LINE = re.compile(r"^\s*(\S+?)_([AV])\s+(?:current|volt)\(\d+\)=(-?[0-9.]+)([AV])\s*$")


class RpiPmicSampler(Sampler):
    """Raspberry Pi 5 PMIC ADC via ``vcgencmd pmic_read_adc``: each rail's current (``X_A``) and
    voltage (``X_V``) are paired and P = V x I summed. EXT5V (the 5 V input) has a voltage only,
    so the sum covers the PMIC's rails, not the power at the wall."""

    name = "rpi5-pmic"
    auto_rank = 30
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
