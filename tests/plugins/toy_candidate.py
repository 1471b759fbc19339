"""A toy precision, registered from this one file (EDGEKIT_PLUGINS=tests/plugins/toy_candidate.py).

``toy-int8fc``: dynamic int8 on the fully connected layers only (MatMul/Gemm), weights per tensor.
tests/test_registry.py builds the digits sample with a profile that lists it first and checks it is
built, guarded, timed and chosen, end to end.
"""
from __future__ import annotations

from edgekit.quantize.candidates import build_dynamic, file_size
from edgekit.quantize.presets import runtime_level_for
from edgekit.quantize.registry import Built, CandidateBuilder
from edgekit.quantize.result import Candidate, quantized_node_count

OPS = ("MatMul", "Gemm")


class ToyInt8FC(CandidateBuilder):
    precision = "toy-int8fc"
    family = "integer"
    order = 90
    description = "toy: dynamic int8 on MatMul/Gemm only, weights per tensor (a test plugin)"
    runs_on = "cpu"
    scratch = ("toy-*.onnx",)

    def build(self, ctx):
        ctx.say("building the toy int8 FC candidate")
        path = build_dynamic(ctx.base, ctx.work_dir / "toy-int8fc.onnx", OPS, per_channel=False, reduce_range=False)
        level = runtime_level_for("toy-dynamic-fc", ctx.profile)
        score = ctx.score(path, level)
        report = ctx.guard(path, level)
        cand = Candidate(name="toy-int8fc", precision=self.precision, method="toy-dynamic-fc", metric=score,
                         passed=ctx.metric.passes(score["value"]), size_bytes=file_size(path), guard=report,
                         quantized_nodes=quantized_node_count(path))
        if not report["passed"]:
            cand.refused = "guard: toy candidate failed the built-in guards"
        yield Built(cand, path, recipe={"method": "toy-dynamic-fc", "op_types": list(OPS), "per_channel": False})
