"""A project's own metric and power sensor, each one file listed in edgekit.toml's ``plugins``: they
register on the host when the project loads, ship in the release's plugins/, and the device runner
(a separate process, run from the release directory) scores and samples with them."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from bundles import tiny_model, tiny_project
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.device import metrics as M
from edgekit.device import plugins
from edgekit.device import sensors

TOY_METRIC = '''"""mean_abs: the mean absolute difference from the FP32 reference (lower is better)."""
import numpy as np

from edgekit.device.metrics import Metric


class MeanAbs(Metric):
    name = "mean_abs"
    higher_is_better = False

    def score(self, outputs, references, feeds, settings):
        o = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in outputs])
        r = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in references])
        return {"value": float(np.mean(np.abs(o - r)))}
'''

TOY_SENSOR = '''"""toy-shunt: a board's shunt monitor that writes its power in milliwatts to one file."""
from edgekit.device.sensors import Sampler, SamplerUnavailable, int_of

SOURCE = {source!r}


class ToyShunt(Sampler):
    name = "toy-shunt"
    scope = "board input"
    method = "power integral"
    reads = SOURCE + " (mW)"

    def probe(self):
        try:
            self.sample()
        except (OSError, ValueError) as exc:
            raise SamplerUnavailable("cannot read %s: %s" % (SOURCE, exc))
        self.scope_note = "the toy shunt on the board's input"

    def read(self):
        return self.opener(SOURCE)

    @staticmethod
    def parse(raw):
        return {{"power_w": int_of(raw, SOURCE) / 1000.0}}
'''

PROJECT = tiny_project(plugins=["plugins/mean_abs.py", "plugins/toy_shunt.py"], name="toy", metric="mean_abs",
                       threshold=0.5, power='sampler = "toy-shunt"\nidle_s = 0.2\nrate_hz = 50')
DEVICE = """
[[devices]]
name = "local"
target = "x86-avx512-vnni"
transport = "local"
path = ".device/local"
python = {python}
"""


@pytest.fixture
def clean_registries() -> Iterator[None]:
    """The plugins register into this process's registries; put them back as they were after."""
    saved = (dict(M.REGISTRY), dict(M.HIGHER_IS_BETTER), dict(sensors.REGISTRY), dict(plugins._LOADED))
    yield
    for live, old in zip((M.REGISTRY, M.HIGHER_IS_BETTER, sensors.REGISTRY, plugins._LOADED), saved):
        live.clear()
        live.update(old)


def _project(root: Path) -> Path:
    (root / "plugins").mkdir(parents=True)
    tiny_model(root / "model.onnx")
    rng = np.random.default_rng(1)
    np.savez(root / "calib.npz", x=rng.normal(0, 1, (32, 16)).astype(np.float32))
    np.savez(root / "val.npz", x=rng.normal(0, 1, (24, 16)).astype(np.float32))
    (root / "shunt").write_text("2500\n")  # 2.5 W, steady
    (root / "plugins" / "mean_abs.py").write_text(TOY_METRIC)
    (root / "plugins" / "toy_shunt.py").write_text(TOY_SENSOR.format(source=str(root / "shunt")))
    cfg = root / "edgekit.toml"
    cfg.write_text(PROJECT + DEVICE.format(python=json.dumps(sys.executable)))
    return cfg


def test_a_toy_metric_and_sensor_work_end_to_end(tmp_path: Path, clean_registries: None) -> None:
    root = tmp_path / "toy"
    cfg = _project(root)
    cli = CliRunner()
    res = cli.invoke(main, ["build", "-t", "x86", "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    built = json.loads(res.stdout)
    assert 0 <= built["metric"]["value"] <= 0.5  # the host scored the candidates with the toy metric
    manifest = json.loads((Path(built["bundle"]) / "manifest.json").read_text())
    assert {"plugins/mean_abs.py", "plugins/toy_shunt.py"} <= set(manifest["files"])
    assert manifest["metric"]["name"] == "mean_abs"
    res = cli.invoke(main, ["deploy", "--device", "local", "--config", str(cfg), "--target", built["target"]])
    assert res.exit_code == 0, res.output
    res = cli.invoke(main, ["validate", "--device", "local", "--config", str(cfg), "--duration", "0.3", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    run = json.loads(Path(out["result_path"]).read_text())  # the runner's own result JSON, as stored
    # the metric: scored on the device with the shipped file, as on the host (lower is better)
    assert run["metric"]["name"] == "mean_abs" and run["metric"]["passed"] is True
    assert run["metric"]["value"] == pytest.approx(built["metric"]["value"], rel=1e-3, abs=1e-6)
    assert run["metrics"]["mean_abs"] == run["metric"]["value"] and "top1" in run["metrics"]
    # the sensor: its samples, integrated over the window, give the energy (2.5 W x the window)
    power = run["power"]
    assert power["sampler"] == "toy-shunt" and power["available"] is True and power["is_estimate"] is False
    assert power["mean_power_w"] == pytest.approx(2.5) and power["idle_power_w"] == pytest.approx(2.5)
    assert power["energy_j"] == pytest.approx(2.5 * power["window_s"], rel=0.02)
    iterations = run["latency"]["iterations"]
    assert power["energy_per_inference_mj"] == pytest.approx(2500.0 * power["window_s"] / iterations, rel=0.02)
    assert power["samples"] >= 5
    # the report: the toy metric is a column of the agreement table, with the device's value
    res = cli.invoke(main, ["report", "--runs-dir", str(root / "runs"), "--out", str(root / "reports")])
    assert res.exit_code == 0, res.output
    page = (root / "reports" / "report.html").read_text()
    head = page.split("Agreement with the reference", 1)[1].split("</thead>", 1)[0]
    assert "<th>mean_abs</th>" in head and "<th>top5</th>" in head
    assert "toy-shunt" in page


def test_a_missing_or_broken_plugin_is_one_config_line(tmp_path: Path, clean_registries: None) -> None:
    root = tmp_path / "toy"
    cfg = _project(root)
    (root / "plugins" / "toy_shunt.py").unlink()
    res = CliRunner().invoke(main, ["build", "-t", "x86", "--config", str(cfg)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.splitlines()[0] == f"error: {cfg}: field 'plugins.1': plugin {root / 'plugins' / 'toy_shunt.py'}: no such file"
    (root / "plugins" / "toy_shunt.py").write_text("from edgekit.device.sensors import Sampler\n\n"
                                                  "class Clash(Sampler):\n    name = 'rapl'\n")
    res = CliRunner().invoke(main, ["build", "-t", "x86", "--config", str(cfg)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "failed to import: ValueError: power sensor 'rapl' is registered twice" in res.output.splitlines()[0]
    assert sensors.REGISTRY["rapl"].__name__ == "RaplSampler"
