"""The host-side power package: formatting and comparison of result power dicts."""
from __future__ import annotations

from typing import Any, Dict

import pytest

import edgekit.power as hp
from edgekit.device import power as device_power
from edgekit.errors import ConfigError


def _power(**over: Any) -> Dict[str, Any]:
    pw: Dict[str, Any] = {
        "sampler": "ina3221-hwmon", "requested": "ina3221-hwmon", "scope": "board input",
        "scope_note": "VDD_IN: the module input", "method": "power integral", "is_estimate": False,
        "mean_power_w": 7.5, "idle_power_w": 4.9, "energy_per_inference_mj": 12.0,
        "energy_per_inference_above_idle_mj": 4.2, "samples": 101, "window_s": 10.0, "rate_hz": 10.0,
        "carbon": device_power.carbon(0.012, 4.9, 0.0042, 481.0, 5.0), "warnings": [],
    }
    pw.update(over)
    return pw


@pytest.mark.parametrize("g,text", [(None, "n/a"), (0, "0 g"), (2.5, "2.5 g"), (2500, "2.5 kg"),
                                    (0.0123, "12.3 mg"), (4.2e-6, "4.2 µg")])
def test_format_grams(g: Any, text: str) -> None:
    assert hp.format_grams(g) == text


@pytest.mark.parametrize("mj,text", [(None, "n/a"), (12.0, "12 mJ"), (2500.0, "2.5 J"), (0.02, "20 µJ")])
def test_format_energy(mj: Any, text: str) -> None:
    assert hp.format_energy_mj(mj) == text


def test_format_carbon_and_estimate_label() -> None:
    line = hp.format_carbon(_power())
    assert "per 1000 inferences" in line and "5 req/s" in line and "481 g/kWh" in line and "ESTIMATE" not in line
    assert "ESTIMATE" in hp.format_carbon(_power(is_estimate=True))
    assert hp.format_carbon(_power(carbon={})).startswith("carbon: n/a")


def test_summary_rows_show_a_fallback_and_warnings() -> None:
    rows = dict(hp.summary_rows(_power(sampler="estimate", requested="rapl", is_estimate=True, method="estimate",
                                       warnings=["rapl unavailable"])))
    assert "requested rapl" in rows["Sampler"] and "ESTIMATE" in rows["Method"]
    assert rows["Warning"] == "rapl unavailable"


def test_compare_energy_only_compares_like_with_like() -> None:
    fp32, int8 = _power(energy_per_inference_mj=12.0), _power(energy_per_inference_mj=4.0)
    int8["carbon"] = device_power.carbon(0.004, 4.9, 0.0010, 481.0, 5.0)
    c = hp.compare_energy(fp32, int8)
    assert c["comparable"] and c["ratio"] == pytest.approx(1 / 3) and c["saving_pct"] == pytest.approx(200 / 3)
    assert c["g_per_day_saved"] > 0
    mixed = hp.compare_energy(fp32, _power(is_estimate=True))
    assert not mixed["comparable"] and "estimate" in mixed["reason"]
    other = hp.compare_energy(fp32, _power(sampler="tegrastats"))
    assert not other["comparable"] and "different sensors" in other["reason"]


@pytest.mark.parametrize("bad", ["lots", -1, 5000, float("nan")])
def test_grid_intensity_is_checked(bad: Any) -> None:
    with pytest.raises(ConfigError):
        hp.check_grid_intensity(bad)


def test_grid_intensity_default() -> None:
    assert hp.check_grid_intensity(None) == device_power.DEFAULT_GRID_G_PER_KWH == 481.0
    assert hp.check_grid_intensity("30") == 30.0


def test_carbon_per_day_in_the_terminal_follows_the_report() -> None:
    """An estimate's idle figure is the sampler's own noise: two runs whose idle differs 60x must
    print the same carbon per day (requests x energy above idle), and say how it was counted."""
    from edgekit.report.energy import carbon_text

    def estimate(idle_w: float) -> Dict[str, Any]:
        return _power(sampler="estimate", is_estimate=True, method="estimate", idle_power_w=idle_w,
                      energy_per_inference_above_idle_mj=2.0, energy_per_inference_mj=2.0,
                      carbon=device_power.carbon(0.002, idle_w, 0.002, 481.0, 1.0))

    quiet, noisy = hp.format_carbon(estimate(5e-5)), hp.format_carbon(estimate(3e-3))
    assert quiet == noisy and "energy above idle per request only" in quiet
    per_day = carbon_text(estimate(3e-3))[1]
    assert per_day in quiet  # the terminal and the report print the same figure
    measured = _power()
    assert f"{hp.format_grams(measured['carbon']['g_per_day_at_rps'])}/day at 5 req/s" in hp.format_carbon(measured)
