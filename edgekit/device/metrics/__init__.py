"""The metric registry: one module per metric in this folder, shared by the host and the device.

A metric is a subclass of :class:`Metric` with a ``name``; defining the class registers it
(``__init_subclass__``), so adding a metric is one file here (or one plugin file, see
``edgekit/device/plugins.py``) plus its case in ``tests/test_metric_registry.py``. The rest derives
from :data:`REGISTRY`: the config's ``validation.metric`` / ``also`` names, the direction a threshold
is read in, the keys of the result's ``metrics``, the report's columns.

numpy + standard library, Python >= 3.8: this package ships in every release.
"""
import os
from typing import Any, Dict, List, Optional

from ..errors import RunnerError

REGISTRY = {}  # type: Dict[str, Metric]
"""Metric name -> its (stateless) instance, in report-column order (``order``, then name)."""

HIGHER_IS_BETTER = {}  # type: Dict[str, bool]
"""Derived from REGISTRY: kept for callers that only need the direction."""


class Metric(object):
    """One way of comparing a model's outputs with the FP32 reference outputs.

    ``name``: what edgekit.toml's ``validation.metric`` says. ``higher_is_better``: whether the
    threshold is a floor (top1, cosine) or a ceiling (max_abs). ``task``: computed only when the
    project uses it (its own settings; it fails on outputs of another shape), where other metrics
    are all computed on every run. ``slack``: what a device may differ from the host's score on a
    reference subset (float noise; ``relative_slack`` makes it a fraction of the bar), in the
    metric's worse direction. ``order``: its place among the report's columns. ``share_of_rows``:
    the value is the share of rows (one per sample and position) that hit, each hit 0 or 1, and
    ``n`` is the row count (top1, topk): then a build can stop scoring a candidate as soon as its
    misses rule the threshold out (``edgekit.quantize.evaluate.Scorer.screen``).
    """

    name = ""
    higher_is_better = True
    task = False
    slack = 0.0
    relative_slack = False
    order = 100
    share_of_rows = False

    def __init_subclass__(cls, **kwargs):
        super(Metric, cls).__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            register(cls)

    def score(self, outputs, references, feeds, settings):
        # type: (List[Any], List[Any], List[Any], Dict[str, Any]) -> Dict[str, Any]
        """Per-sample outputs (one array per sample, the chosen output) against the references.
        ``feeds``: the inputs of each sample (or None per sample). ``settings``: ``k``,
        ``pooling``, ``mask_input`` and ``options`` (the task metric's table). Returns a dict with
        ``value`` (plus ``min``, ``n``... where they exist)."""
        raise NotImplementedError

    def key(self, k=5):
        # type: (int) -> str
        """The key this metric is filed under in the result's ``metrics``."""
        return self.name

    def columns(self, found):
        # type: (Any) -> List[str]
        """The report's columns for this metric, given the keys the runs' ``metrics`` hold."""
        return [self.key()] if self.key() in found else []

    def passes(self, value, threshold):
        # type: (float, float) -> bool
        return value >= threshold if self.higher_is_better else value <= threshold

    def with_slack(self, bar):
        # type: (float) -> float
        if self.relative_slack:
            return bar * (1.0 + self.slack)
        return bar + self.slack


def _origin(obj):
    # type: (Any) -> str
    cls = obj if isinstance(obj, type) else type(obj)
    return "%s.%s" % (cls.__module__, cls.__qualname__)


def register(cls):
    # type: (type) -> type
    """Add a Metric subclass under its ``name``; a second class under a taken name is refused, so a
    plugin cannot silently replace a built-in metric."""
    old = REGISTRY.get(cls.name)
    if old is not None and _origin(old) != _origin(cls):
        raise ValueError("metric '%s' is registered twice: by %s and by %s" % (cls.name, _origin(old), _origin(cls)))
    REGISTRY[cls.name] = cls()
    ordered = sorted(REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0]))
    REGISTRY.clear()
    REGISTRY.update(ordered)
    HIGHER_IS_BETTER.clear()
    HIGHER_IS_BETTER.update((n, m.higher_is_better) for n, m in REGISTRY.items())
    return cls


def names():
    # type: () -> List[str]
    return list(REGISTRY)


def get(name):
    # type: (str) -> Metric
    try:
        return REGISTRY[name]
    except KeyError:
        raise RunnerError("metric", "unknown metric '%s' (known: %s)" % (name, ", ".join(sorted(REGISTRY))))


def score(metric, outputs, references, feeds=None, k=5, pooling="none", mask_input="attention_mask", options=None):
    """Compare per-sample outputs with references under the named metric (see Metric.score)."""
    if len(outputs) != len(references) or not outputs:
        raise RunnerError("metric", "expected as many outputs as references, got %d and %d" % (len(outputs), len(references)))
    m = get(metric)
    feeds = feeds if feeds is not None else [None] * len(outputs)
    return m.score(outputs, references, feeds, {"k": int(k), "pooling": pooling, "mask_input": mask_input,
                                                "options": options})


def passes(metric, value, threshold):
    return get(metric).passes(value, threshold)


def with_slack(metric, bar):
    """A subset bar loosened by the device-vs-host float difference the metric allows."""
    return get(metric).with_slack(bar)


def metric_key(metric, k=5):
    """The key ``all_metrics`` files a metric under."""
    return get(metric).key(int(k))


def further_checks(spec, metrics):
    """The manifest's ``also`` thresholds against the computed metrics: a list of checks."""
    checks = []
    for name in sorted(spec.get("also") or {}):
        threshold = spec["also"][name]
        value = metrics.get(metric_key(name, spec.get("k", 5)))
        ok = value is not None and passes(name, value, threshold)
        checks.append({"name": name, "value": value, "threshold": threshold, "passed": bool(ok)})
    return checks


def all_metrics(outputs, references, feeds, spec):
    """Every agreement figure at once, so a report can show more than the gating metric: every
    metric but the task ones, which only when the project uses them."""
    used = set([spec.get("name")]) | set(spec.get("also") or {})
    found = {}  # type: Dict[str, Optional[float]]
    for name, m in REGISTRY.items():
        if m.task and name not in used:
            continue
        key = m.key(int(spec.get("k", 5)))
        try:
            found[key] = score(name, outputs, references, feeds, k=int(spec.get("k", 5)),
                               pooling=spec.get("pooling", "none"), mask_input=spec.get("mask_input", "attention_mask"),
                               options=spec.get(name))["value"]
        except Exception:  # e.g. cosine on mismatched shapes: that figure is just absent
            found[key] = None
    return found


def _load_builtin():
    """Import every metric module in this folder: a new file is a new metric, with no list to edit."""
    try:
        import numpy  # noqa: F401
    except ImportError:  # a bare device: the runner reports the missing numpy before a metric is needed
        return
    import importlib

    here = os.path.dirname(os.path.abspath(__file__))
    for fname in sorted(os.listdir(here)):
        if fname.endswith(".py") and not fname.startswith("_"):
            importlib.import_module("." + fname[:-3], __name__)


_load_builtin()
