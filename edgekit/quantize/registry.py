"""The candidate registry: every precision ``edgekit build`` can build is one class that registers itself.

Adding a precision (say int4 weight-only) is one file: a subclass of ``CandidateBuilder`` in
``edgekit/quantize/builders/`` (found automatically), or in a plugin module (``edgekit.plugins``:
the ``edgekit.candidates`` entry-point group, or a file named in ``EDGEKIT_PLUGINS``)::

    from edgekit.quantize.registry import Built, CandidateBuilder
    from edgekit.quantize.result import Candidate

    class Int4WeightOnly(CandidateBuilder):
        precision = "int4"            # the name profiles, --precision and the manifest use
        family = "integer"            # integer: judged as int8 is (never shipped slower than float,
                                      # guards, disabled_optimizers); float: as fp16/fp32
        order = 15                    # where it sorts in --precision's choices and the README table
        description = "int4 weight-only MatMulNBits (CPU)"
        runs_on = "cpu"               # any | cpu | gpu; isa_features = (...) for CPU flags it needs

        def build(self, ctx):
            path = ...                # write a file under ctx.work_dir from ctx.base
            score = ctx.score(path, "all")
            cand = Candidate(name="int4", precision="int4", method="int4-matmulnbits", metric=score,
                             passed=ctx.metric.passes(score["value"]), size_bytes=file_size(path),
                             guard=ctx.guard(path, "all"))
            yield Built(cand, path, recipe={"method": "int4-matmulnbits", "block_size": 32})

Defining the class registers it (``__init_subclass__``, as Olive's ``Pass.registry``); everything
else derives from the registry: the profile schema's ``quantization.precisions``, ``Candidate``
and ``QuantizeResult``'s ``precision``, the CLI's ``--precision`` choices, how ``choose`` treats a
candidate (``family``; the ``reference`` builder is FP32), which precisions TensorRT may drop to
(``engine_precisions``), and the README table (``markdown_table``; tests/test_registry.py checks it).
A profile lists the new name in ``[quantization] precisions`` for ``--precision auto`` to try it.

Builders get a ``BuildContext`` (the engine fills it once per build): the prepared FP32 base model,
its FP32 reference outputs, the validation and calibration feeds, and helpers to score and guard a
file. This module imports nothing heavy: the targets schema and the CLI import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import (TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Dict, FrozenSet, Iterable, List, Literal,
                    Optional, Sequence, Tuple, Type)

from pydantic import AfterValidator

from .. import plugins

if TYPE_CHECKING:  # pragma: no cover
    from ..targets import TargetProfile
    from .result import Candidate

PLUGIN_GROUP = "edgekit.candidates"
"""The entry-point group (and ``edgekit.plugins`` group) a third-party candidate registers under."""
Family = Literal["integer", "float"]


@dataclass
class Built:
    """One built and scored candidate, as a builder yields it."""

    candidate: "Candidate"
    path: Path
    recipe: Dict[str, Any] = field(default_factory=dict)
    """How the file was made, for the manifest's ``quantization.preset`` when it ships."""
    kept_float: List[Dict[str, str]] = field(default_factory=list)
    """Nodes left in float and why ({node, op_type, reason})."""
    latency_pruning: Optional[Dict[str, Any]] = None
    fallback_search: Optional[Dict[str, Any]] = None
    metric_before: Optional[Dict[str, float]] = None
    """The first full quantization's score, before any fallback (the manifest's metric_before)."""
    variant: Optional[Tuple[Callable[[Sequence[str], Path], Path], List[Tuple[str, str]]]] = None
    """(build, nodes): ``build(extra_float_nodes, out)`` writes this candidate with those nodes also
    float, and ``nodes`` ({name, op_type} pairs still quantized) are what it may revert; on-device
    latency pruning (``--tune-on``) builds its group reverts with it. None: no such variants."""


class BuildContext:
    """What one ``quantize_for_target`` call shares with every builder.

    Attributes (set once by the engine): ``work_dir``, ``profile``, ``metric``, ``base`` (the
    prepared FP32 model every candidate starts from), ``graph`` (its onnx.ModelProto), ``family``
    ('cnn', 'transformer', 'generic'), ``index`` (the metric's output), ``validation`` and ``refs``
    (FP32 outputs on it, computed once), ``calib`` (selected calibration feeds), ``sens_feeds`` /
    ``sens_refs``, ``host_ok`` (this host can time the target), ``measure``, ``deadline``, ``say``,
    ``large``, ``caches``, ``guard_conf``, ``guard_refs``, ``out_names``.
    """

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    def score(self, path: Path, level: str) -> Dict[str, float]:
        """The metric of ``path`` against the FP32 references, at onnxruntime level ``level``."""
        from .evaluate import Scorer

        return Scorer(self.metric, self.validation, self.refs, self.index, level).score(path)

    def reference_score(self) -> Dict[str, float]:
        """The score of the FP32 base itself: its outputs are the references (computed once), so
        nothing is run again."""
        result = dict(self.metric.score(self.refs, self.refs, self.validation))
        result["output_error"] = 0.0
        return result

    def guard(self, path: Path, level: str) -> Dict[str, Any]:
        """The built-in guards on every output (summary form); every candidate but the reference
        must pass them to ship."""
        from .. import guard as _guard

        return _guard.summary(_guard.check_model(path, self.validation, self.guard_refs, self.out_names, level,
                                                 self.guard_conf, self.metric.stream_plan))


class CandidateBuilder:
    """Base of every candidate builder; a subclass that sets ``precision`` registers itself."""

    registry: ClassVar[Dict[str, Type["CandidateBuilder"]]] = {}
    precision: ClassVar[str] = ""
    family: ClassVar[Family] = "float"
    reference: ClassVar[bool] = False
    """The FP32 reference every other candidate is scored against (exactly one builder)."""
    order: ClassVar[int] = 100
    description: ClassVar[str] = ""
    """One line for the README table."""
    runs_on: ClassVar[Literal["any", "cpu", "gpu"]] = "any"
    isa_features: ClassVar[Tuple[str, ...]] = ()
    """CPU flags (as /proc/cpuinfo names them) the target must list among its isa_features."""
    engine_precisions: ClassVar[FrozenSet[str]] = frozenset()
    """Lower precisions TensorRT may pick for an artifact of this precision (its trt_*_enable flags)."""
    scratch: ClassVar[Tuple[str, ...]] = ()
    """Glob patterns (in ``ctx.work_dir``) of intermediate files the engine deletes after the choice."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("precision")
        if not name:
            return  # an intermediate base class
        if cls.family not in ("integer", "float"):
            raise TypeError(f"{cls.__qualname__}: family must be 'integer' or 'float', got {cls.family!r}")
        plugins.register(CandidateBuilder.registry, name, cls, "precision")

    @classmethod
    def applies_to(cls, profile: "TargetProfile") -> str:
        """Why this precision cannot be built for ``profile`` ('' when it can)."""
        if cls.runs_on == "gpu" and not profile.is_gpu:
            return f"{cls.precision} needs a GPU target; {profile.name} has none"
        if cls.runs_on == "cpu" and profile.is_gpu:
            return f"{cls.precision} runs on the CPU execution provider only; {profile.name} is a GPU target"
        missing = sorted(set(cls.isa_features) - set(profile.isa_features))
        if missing:
            return f"{cls.precision} needs {', '.join(missing)}, which {profile.name} does not list"
        return ""

    def build(self, ctx: BuildContext) -> Iterable[Built]:
        """Yield candidates in preference order (the engine keeps every one; ``choose`` decides)."""
        raise NotImplementedError


def _builders_package() -> ModuleType:
    from . import builders  # every module of it is one built-in precision; they import this module

    return builders


_catalog: plugins.Catalog[Type[CandidateBuilder]] = plugins.Catalog(
    CandidateBuilder.registry, PLUGIN_GROUP, _builders_package, order=lambda c: (c.order, c.precision),
    name=lambda c: c.precision, what="precision")
ensure_loaded = _catalog.ensure_loaded
builders = _catalog.entries
names = _catalog.names
get = _catalog.get
check_name = _catalog.check


def is_integer(name: str) -> bool:
    """Judged as an integer model (int8 rules); unknown names (e.g. a .tflite 'as-converted') are not."""
    ensure_loaded()
    b = CandidateBuilder.registry.get(name)
    return b is not None and b.family == "integer"


def is_reference(name: str) -> bool:
    ensure_loaded()
    b = CandidateBuilder.registry.get(name)
    return b is not None and b.reference


PrecisionName = Annotated[str, AfterValidator(_catalog.check)]
"""A registered precision name: the schema type for profiles, candidates and results."""


def markdown_table() -> str:
    """The README's precision table, generated from the registry."""
    rows = ["| precision | family | runs on | what it builds |", "|---|---|---|---|"]
    for b in builders():
        where = b.runs_on + (f" ({', '.join(b.isa_features)})" if b.isa_features else "")
        family = b.family + (" (the reference)" if b.reference else "")
        rows.append(f"| `{b.precision}` | {family} | {where} | {b.description} |")
    return "\n".join(rows)
