"""tflite: a converted .tflite model, shipped as it is (its converter chose the precision)."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..config import ProjectConfig
from ..errors import ConfigError
from ..export import ExportResult, Feed, tflite_io
from . import Exporter


class TfliteExporter(Exporter):
    source = "tflite"
    order = 40
    description = ("`path` is a converted `.tflite` model: not re-quantized, its reference outputs come from "
                   "the real LiteRT interpreter on the host")

    def export(self, config: ProjectConfig, out: Path, feed: Feed) -> ExportResult:
        """A converted .tflite model ships as it is: its converter already chose the precision."""
        src = config.resolve(config.model.path)
        assert src is not None
        if not src.is_file():
            raise ConfigError(f"{config.path}: field 'model.path': model file not found: {src}")
        io = tflite_io(src)  # errors name the user's file, not our copy
        out = out.with_suffix(".tflite")
        shutil.copyfile(src, out)
        return ExportResult(out, "tflite", 0, [str(i["name"]) for i in io["inputs"]],
                            [str(o["name"]) for o in io["outputs"]], None)
