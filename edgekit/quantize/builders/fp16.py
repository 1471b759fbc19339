"""fp16: FP16 weights and compute with FP32 inputs/outputs, as TensorRT and CUDA run it."""
from __future__ import annotations

from typing import Iterator

from ... import guard as _guard
from ...errors import QuantizationError
from ..candidates import build_fp16, file_size
from ..registry import Built, BuildContext, CandidateBuilder
from ..result import Candidate


class FP16(CandidateBuilder):
    precision = "fp16"
    family = "float"
    order = 20
    description = ("FP16 weights and compute, FP32 inputs/outputs (`keep_io_types`), scored on the CPU EP: "
                   "the same rounding TensorRT/CUDA do")
    engine_precisions = frozenset({"fp16"})

    def build(self, ctx: BuildContext) -> Iterator[Built]:
        ctx.say("building the FP16 candidate")
        path = build_fp16(ctx.base, ctx.work_dir / "model.fp16.onnx")
        cand = Candidate(name="fp16", precision="fp16", method="fp16", size_bytes=file_size(path))
        try:  # scored on the CPU EP: fp16 rounding is the same arithmetic TensorRT/CUDA do
            cand.metric = ctx.score(path, "basic")
            cand.passed = ctx.metric.passes(cand.metric["value"])
            cand.guard = ctx.guard(path, "basic")
            if not cand.guard["passed"]:  # met or not, it may not ship: say on what
                cand.note = cand.refused = f"guard: {_guard.describe(cand.guard)}"
        except QuantizationError as exc:
            cand.note = f"not scored on this host: {exc.message}"
        yield Built(cand, path)
