"""The labelled estimate: this process's CPU time x the profile's nominal watts per core."""
import os
from typing import Any

from . import Reading, Sampler, profile_get

DEFAULT_WATTS_PER_CORE = 2.0
"""Used by the ``estimate`` sampler when no target profile says otherwise (TargetProfile's default)."""


def process_cpu_seconds():
    # type: () -> float
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class EstimateSampler(Sampler):
    """Not a measurement: this process's CPU time x the target profile's nominal watts per core.
    Always labelled ``is_estimate: true``, never mixed with measured figures."""

    name = "estimate"
    auto_rank = 1000
    scope = "cpu package"
    method = "estimate"
    reading = "energy"
    is_estimate = True
    reads = "os.times() (this process's CPU seconds) x profile nominal_watts_per_core"

    def __init__(self, *args, **kwargs):
        cpu_seconds = kwargs.pop("cpu_seconds", None)
        Sampler.__init__(self, *args, **kwargs)
        self.cpu_seconds = cpu_seconds or process_cpu_seconds
        self.watts_per_core = float(profile_get(self.profile, "nominal_watts_per_core", 0) or 0)

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
