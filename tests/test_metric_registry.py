"""The metric registry (edgekit/device/metrics/): every registered metric has a hand-computed case
here (the coverage test fails until a new one does), and what derives from the registry (config
names, direction, result keys, the report's columns) follows it."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from edgekit.config import ConfigError, load
from edgekit.device import metrics as M
from edgekit.metrics import MetricSpec
from test_task_metrics import ctc, yolo

A = np.array


def _case(outputs: List[Any], references: List[Any], value: float, higher: bool, key: str,
          settings: Dict[str, Any] = {}, **extra: float) -> Dict[str, Any]:
    return dict(outputs=outputs, references=references, value=value, higher=higher, key=key, settings=settings,
                extra=extra)


CASES = {
    # sample 1 agrees (argmax 1), sample 2 does not (0 vs 1)
    "top1": _case([A([[0.1, 0.9]]), A([[0.8, 0.2]])], [A([[0.0, 1.0]]), A([[0.0, 1.0]])], 0.5, True, "top1", n=2),
    # k = 2: class 2 is outside [0, 1] in sample 1, inside [1, 2] in sample 2; the key carries k
    "topk": _case([A([[0.5, 0.3, 0.2]]), A([[0.1, 0.5, 0.4]])], [A([[0, 0, 1.0]]), A([[0, 0, 1.0]])], 0.5, True,
                  "top2", {"k": 2}),
    # cos 1 and cos 0: mean 0.5, min 0
    "cosine": _case([A([1.0, 0.0]), A([1.0, 0.0])], [A([1.0, 0.0]), A([0.0, 1.0])], 0.5, True, "cosine", min=0.0),
    # mse 0.5 on a peak of 2: 10 log10(4 / 0.5)
    "psnr": _case([A([1.0, 0.0])], [A([2.0, 0.0])], 10 * math.log10(8.0), True, "psnr_db", mse=0.5),
    "max_abs": _case([A([1.0, 2.5])], [A([1.0, 2.0])], 0.5, False, "max_abs"),
    "max_rel": _case([A([2.0, 3.0])], [A([1.0, 3.0])], 1.0 / (1.0 + 1e-6), False, "max_rel"),
    # one of two detections found at the same place (recall 1/2), nothing extra (precision 1)
    "detections": _case([yolo([[50, 50, 20, 20]], [[0.9, 0.1]])],
                        [yolo([[50, 50, 20, 20], [120, 80, 30, 40]], [[0.9, 0.1], [0.05, 0.8]])], 0.5, True,
                        "detections", recall=0.5, precision=1.0),
    # the same string through another alignment, and a swapped one
    "sequences": _case([ctc([3, 0, 0, 3, 2, 0]), ctc([2, 1])], [ctc([0, 3, 3, 0, 3, 2]), ctc([1, 2])], 0.5, True,
                       "sequences", n=2.0),
}


def test_every_registered_metric_has_a_case() -> None:
    assert set(CASES) == set(M.REGISTRY), "a registered metric without a case here (or a case without a metric)"


@pytest.mark.parametrize("name", list(CASES))
def test_metric_on_its_hand_computed_case(name: str) -> None:
    case = CASES[name]
    settings = dict(case["settings"])
    got = M.score(name, case["outputs"], case["references"], k=settings.get("k", 5))
    assert got["value"] == pytest.approx(case["value"], rel=1e-9, abs=1e-12)
    for field, want in case["extra"].items():
        assert got[field] == pytest.approx(want), field
    metric = M.get(name)
    assert metric.name == name and M.HIGHER_IS_BETTER[name] is case["higher"]
    assert M.metric_key(name, settings.get("k", 5)) == case["key"]
    # the direction decides passes(): the value itself passes, a stricter bar does not
    stricter = case["value"] + (0.01 if case["higher"] else -0.01)
    assert M.passes(name, case["value"], case["value"]) and not M.passes(name, case["value"], stricter)


def test_all_metrics_files_every_metric_and_task_metrics_only_when_used() -> None:
    out, ref = [A([[0.1, 0.9, 0.0]])], [A([[0.0, 1.0, 0.0]])]
    found = M.all_metrics(out, ref, [None], {"name": "top1", "k": 3})
    assert set(found) == {"top1", "top3", "cosine", "psnr_db", "max_abs", "max_rel"}
    found = M.all_metrics(out, ref, [None], {"name": "top1", "k": 3, "also": {"sequences": 0.9}})
    assert "sequences" in found and "detections" not in found


def test_an_unknown_metric_is_one_config_line_listing_the_known(tmp_path: Path) -> None:
    from test_runner_support import write_project

    cfg = write_project(tmp_path / "p", [], metric="top3")
    with pytest.raises(ConfigError) as exc:
        load(cfg)
    message = exc.value.message
    assert "\n" not in message and "validation.metric" in message and "unknown metric 'top3'" in message
    assert all(name in message for name in M.REGISTRY)
    cfg.write_text(cfg.read_text().replace('threshold = 0.99', 'threshold = 0.99\nalso = { psnr = 30, cosin = 0.9 }'))
    cfg.write_text(cfg.read_text().replace('metric = "top3"', 'metric = "top1"'))
    with pytest.raises(ConfigError, match=r"validation.also.*unknown metric 'cosin'"):
        load(cfg)


def test_the_host_spec_takes_its_direction_from_the_registry() -> None:
    assert MetricSpec(name="max_rel", threshold=0.1).better(0.05, 0.2)
    assert MetricSpec(name="cosine", threshold=0.9).better(0.95, 0.9)


def test_a_name_registered_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="metric 'top1' is registered twice"):
        type("Impostor", (M.Metric,), {"name": "top1", "score": lambda self, *a: {"value": 1.0}})
    assert type(M.REGISTRY["top1"]).__name__ == "Top1"


def _record(tmp_path: Path, device: str, metrics: Dict[str, Any]) -> Any:
    from edgekit.report.runs import RunRecord

    return RunRecord.model_construct(device=device, metrics=metrics, path=tmp_path / f"{device}.json")


def test_report_columns_come_from_the_registry(tmp_path: Path) -> None:
    """k = 3 gives a top3 column (the report used to hard-code top5 and drop it); task metrics only
    when computed; a key no registered metric claims (a device's plugin) still gets its column."""
    from edgekit.report.render import metric_columns

    runs = [_record(tmp_path, "a", {"top1": 1.0, "top3": 1.0, "cosine": 0.99, "psnr_db": 40.0, "max_abs": 0.1,
                                    "max_rel": 0.2, "sequences": None, "mean_abs": 0.01}),
            _record(tmp_path, "b", {"top1": 1.0, "top10": 1.0, "detections": 0.9})]
    assert metric_columns(runs) == ["top1", "top3", "top10", "cosine", "psnr_db", "max_abs", "max_rel", "detections",
                                    "mean_abs"]
