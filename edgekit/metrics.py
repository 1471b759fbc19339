"""Host-side view of the validation metric. The arithmetic is the device package's metric registry
(``edgekit/device/metrics/``), so host and device score the same way; this module binds it to the
config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .device import metrics as registry


@dataclass(frozen=True)
class MetricSpec:
    name: str
    threshold: float
    k: int = 5
    output: Optional[str] = None
    pooling: str = "none"
    mask_input: str = "attention_mask"
    also: Tuple[Tuple[str, float], ...] = ()
    """(metric, threshold) pairs the device run must meet too (edgekit.toml's validation.also)."""
    tasks: Dict[str, Dict[str, Any]] = field(default_factory=dict, hash=False)
    """Settings of the task metrics in use: {"detections": {...}} / {"sequences": {...}}."""
    stream: Tuple[Tuple[str, str], ...] = ()
    """(state input, state output) pairs of a streaming model (validation.stream.state)."""
    starts: Tuple[bool, ...] = ()
    """Per validation sample: does it start a stream (set by the build once the data is loaded)."""

    @property
    def stream_plan(self) -> Optional[Tuple[Tuple[Tuple[str, str], ...], Tuple[bool, ...]]]:
        """(pairs, starts) for running the validation feeds as streams, or None."""
        return (self.stream, self.starts) if self.stream else None

    @property
    def higher_is_better(self) -> bool:
        return registry.get(self.name).higher_is_better

    @property
    def screenable(self) -> bool:
        """Whether a candidate's scoring may stop once its misses rule the threshold out: a
        share-of-rows metric (top1, topk) on independent samples (not streams)."""
        return bool(registry.get(self.name).share_of_rows) and self.higher_is_better and not self.stream

    def output_index(self, output_names: Sequence[str]) -> int:
        return list(output_names).index(self.output) if self.output else 0

    def score(self, outputs: List[np.ndarray], references: List[np.ndarray],
              feeds: Optional[List[Dict[str, np.ndarray]]] = None) -> Dict[str, float]:
        """Per-sample arrays of the chosen output vs the FP32 references; returns {'value', ...}."""
        return registry.score(self.name, outputs, references, feeds, k=self.k,
                             pooling=self.pooling, mask_input=self.mask_input, options=self.tasks.get(self.name))

    def passes(self, value: float) -> bool:
        return registry.passes(self.name, value, self.threshold)

    def better(self, a: float, b: float) -> bool:
        """True when metric value ``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b

    def to_manifest(self) -> Dict[str, object]:
        out: Dict[str, object] = {"name": self.name, "threshold": self.threshold, "k": self.k, "output": self.output,
                                  "pooling": self.pooling, "mask_input": self.mask_input}
        if self.also:  # only when set, so that releases without it keep their ids
            out["also"] = dict(self.also)
        out.update(self.tasks)  # only the task metrics in use, for the same reason
        if self.stream:
            out["stream"] = {"state": [{"input": i, "output": o} for i, o in self.stream]}
        return out

    @classmethod
    def from_config(cls, v: "object") -> "MetricSpec":
        also = dict(getattr(v, "also", {}) or {})
        tasks = {m: getattr(v, m).model_dump(mode="json") for m, spec in registry.REGISTRY.items()
                 if spec.task and (m == v.metric or m in also) and hasattr(getattr(v, m, None), "model_dump")}  # type: ignore[attr-defined]
        for opts in tasks.values():  # blank = -1 means none, as the runner reads it
            if opts.get("blank") == -1:
                opts["blank"] = None
        return cls(name=v.metric, threshold=v.threshold, k=v.k, output=v.output,  # type: ignore[attr-defined]
                   pooling=v.pooling, mask_input=v.mask_input,  # type: ignore[attr-defined]
                   also=tuple(sorted(also.items())), tasks=tasks,
                   stream=tuple((p.input, p.output) for p in v.stream.state) if getattr(v, "stream", None) else ())
