"""fp32: the prepared FP32 graph itself, the reference every other candidate is scored against."""
from __future__ import annotations

from typing import Iterator

from ..candidates import build_fp32, file_size
from ..registry import Built, BuildContext, CandidateBuilder
from ..result import Candidate


class FP32(CandidateBuilder):
    precision = "fp32"
    family = "float"
    reference = True
    order = 30
    description = "the prepared FP32 graph: the reference every other candidate is scored against (no guards)"

    def build(self, ctx: BuildContext) -> Iterator[Built]:
        path = build_fp32(ctx.base, ctx.work_dir / "model.fp32.onnx")  # a copy of the base: same bytes
        score = ctx.reference_score()  # the base's outputs at the FP32 level are the references themselves
        yield Built(Candidate(name="fp32", precision="fp32", method="fp32", metric=score,
                              passed=ctx.metric.passes(score["value"]), size_bytes=file_size(path)), path)
