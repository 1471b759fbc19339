"""Intel/AMD RAPL energy counters through the powercap sysfs interface."""
import glob
import os
from typing import Dict, List, Optional, Tuple

from . import Reading, Sampler, SamplerUnavailable, int_of, uid

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


class RaplSampler(Sampler):
    """Intel/AMD RAPL via powercap: ``energy_uj`` counters of the package zones, differenced with
    wrap-around at ``max_energy_range_uj``. Sub-zones (core, uncore, dram) and ``psys`` are not
    added, so nothing is counted twice."""

    name = "rapl"
    auto_rank = 40
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
                    % (energy_path, uid()))
            except OSError as exc:
                raise SamplerUnavailable("cannot read %s: %s" % (energy_path, exc.strerror or exc))
            try:
                self._max[zone] = int_of(self.opener(os.path.join(d, "max_energy_range_uj")), "max_energy_range_uj")
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
        counters = {zone: int_of(text, zone + "/energy_uj") for zone, text in raw.items()}
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
