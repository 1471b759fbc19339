"""Host side of power measurement: formatting and comparison of the ``power`` dicts that come back in
result JSON (``carbon.py``).

The samplers are the device package's sensor registry (``edgekit/device/sensors/``) and the
measurement is ``edgekit/device/power.py``; the host imports those directly.
"""
from __future__ import annotations

from .carbon import check_grid_intensity, compare_energy, format_carbon, format_energy_mj, format_grams, summary_rows

__all__ = ["check_grid_intensity", "compare_energy", "format_carbon", "format_energy_mj", "format_grams", "summary_rows"]
