"""Host side of power measurement.

The samplers, ``measure()`` and the energy arithmetic live in ``edgekit/device/power.py``, one
standard-library file that also ships to the boards beside ``runner.py``; this package re-exports
them for host code and adds what only the host needs: registry look-ups with edgekit errors, and
formatting and comparison of the ``power`` dicts that come back in result JSON.
"""
from __future__ import annotations

from edgekit.device.power import (
    DEFAULT_GRID_G_PER_KWH,
    DEFAULT_WATTS_PER_CORE,
    MAX_RATE_HZ,
    METHODS,
    MIN_RATE_HZ,
    REGISTRY,
    SCOPES,
    Sampler,
    SamplerUnavailable,
    available_samplers,
    carbon,
    counter_delta,
    cumulative_energy,
    describe_samplers,
    energy_over,
    measure,
    open_sampler,
    parse_throttled,
)

from .carbon import check_grid_intensity, compare_energy, format_carbon, format_energy_mj, format_grams, summary_rows
from .registry import get_sampler_class, sampler_names, sampler_table

__all__ = [
    "DEFAULT_GRID_G_PER_KWH", "DEFAULT_WATTS_PER_CORE", "MAX_RATE_HZ", "METHODS", "MIN_RATE_HZ", "REGISTRY",
    "SCOPES", "Sampler", "SamplerUnavailable", "available_samplers", "carbon", "check_grid_intensity",
    "compare_energy", "counter_delta", "cumulative_energy", "describe_samplers", "energy_over",
    "format_carbon", "format_energy_mj", "format_grams", "get_sampler_class", "measure", "open_sampler",
    "parse_throttled", "sampler_names", "sampler_table", "summary_rows",
]
