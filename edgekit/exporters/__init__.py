"""The exporter registry: one self-registering class per ``model.source``.

Adding a source (say Keras) is one file: a subclass of ``Exporter`` in ``edgekit/exporters/``
(found automatically) or in a plugin (``edgekit.plugins``: entry-point group ``edgekit.exporters``,
or a file named in ``EDGEKIT_PLUGINS``)::

    class KerasExporter(Exporter):
        source = "keras"                      # model.source in edgekit.toml
        needs = "path"                        # the [model] field it reads: "path" or "factory"
        description = "a Keras .keras file, through tf2onnx"

        def export(self, config, out, feed):  # write `out` (an ONNX file), check it against the framework
            ...
            return ExportResult(out, "keras", config.model.opset, inputs, outputs, max_abs_diff)

``ModelSpec.source`` in the project schema, the README table (``markdown_table``) and the coverage
test (tests/test_build_targets.py: every source has an end-to-end build test) derive from it.
This module imports nothing heavy: the config schema imports it.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Dict, Literal, Optional, Type

from pydantic import AfterValidator

from .. import plugins

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..config import ModelSpec, ProjectConfig
    from ..export import ExportResult

PLUGIN_GROUP = "edgekit.exporters"


class Exporter:
    """Base of every exporter; a subclass that sets ``source`` registers itself."""

    registry: ClassVar[Dict[str, Type["Exporter"]]] = {}
    source: ClassVar[str] = ""
    needs: ClassVar[Literal["path", "factory"]] = "path"
    description: ClassVar[str] = ""
    """One line for the README table."""
    order: ClassVar[int] = 100

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("source")
        if not name:
            return
        plugins.register(Exporter.registry, name, cls, "model source")

    @classmethod
    def check_fields(cls, spec: "ModelSpec") -> Optional[str]:
        """What ``[model]`` lacks for this source (None when complete)."""
        if cls.needs == "factory":
            if not spec.factory or ":" not in spec.factory:
                return f"source '{cls.source}' needs factory = 'path/to/file.py:function'"
        elif spec.path is None:
            return f"source '{cls.source}' needs path"
        return None

    def export(self, config: "ProjectConfig", out: Path, feed: Dict[str, "np.ndarray"]) -> "ExportResult":
        """Write the FP32 model to ``out`` and check it on ``feed``, one real sample."""
        raise NotImplementedError


_catalog: plugins.Catalog[Type[Exporter]] = plugins.Catalog(
    Exporter.registry, PLUGIN_GROUP, lambda: sys.modules[__name__], order=lambda e: (e.order, e.source),
    name=lambda e: e.source, what="model source")
ensure_loaded = _catalog.ensure_loaded
exporters = _catalog.entries
names = _catalog.names
get = _catalog.get


SourceName = Annotated[str, AfterValidator(_catalog.check)]
"""A registered ``model.source``: the project schema's type."""


def markdown_table() -> str:
    rows = ["| `source` | `[model]` field | what it does |", "|---|---|---|"]
    rows += [f"| `{e.source}` | `{e.needs}` | {e.description} |" for e in exporters()]
    return "\n".join(rows)
