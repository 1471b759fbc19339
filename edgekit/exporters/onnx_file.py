"""onnx: an existing .onnx file (external data included), brought into the build as it is."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import List

from ..config import ProjectConfig
from ..errors import ConfigError, ExportError
from ..export import ExportResult, Feed
from . import Exporter


def _external_locations(model: "onnx.ModelProto") -> List[str]:  # type: ignore[name-defined]  # noqa: F821
    """The external data files the model's initializers point at (relative to the model file)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    return sorted({ExternalDataInfo(t).location for t in model.graph.initializer
                   if t.data_location == onnx.TensorProto.EXTERNAL})


class OnnxFileExporter(Exporter):
    source = "onnx"
    order = 30
    description = ("`path` is an existing `.onnx` file (with its external data files beside it); checked by "
                   "onnx's checker, copied byte for byte when self-contained")

    def export(self, config: ProjectConfig, out: Path, feed: Feed) -> ExportResult:
        """Bring an existing .onnx into the work directory as ``out``.

        A model whose weights live in ONNX external data (``model.onnx`` + ``model.onnx.data``) is loaded
        with its data from the source directory and saved again: as one self-contained file when it fits
        under the protobuf limit, else with ``<out>.data`` beside it (location relative to the file), so
        every later step and the bundle see a complete model. A self-contained file is copied byte for byte.
        """
        import onnx

        from ..optimize import save_model

        src = config.resolve(config.model.path)
        assert src is not None
        if not src.is_file():
            raise ConfigError(f"{config.path}: field 'model.path': model file not found: {src}")
        try:
            header = onnx.load(str(src), load_external_data=False)
        except Exception as exc:
            raise ExportError(f"{src}: not a valid ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
        external = _external_locations(header)
        missing = [loc for loc in external if not (src.parent / loc).is_file()]
        if missing:
            raise ExportError(f"{src}: its weights are stored as ONNX external data in '{missing[0]}', "
                              f"which is not beside it ({src.parent / missing[0]} not found)",
                              hint="keep the .data file(s) in the same directory as the .onnx file")
        try:
            # By path: the checker then also accepts models over 2 GB and checks the external data files.
            onnx.checker.check_model(str(src), full_check=False)
            model = onnx.load(str(src)) if external else header  # external data from src's directory
        except Exception as exc:
            raise ExportError(f"{src}: not a valid ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
        for stale in (out, out.parent / (out.name + ".data")):
            stale.unlink(missing_ok=True)
        if external:
            save_model(model, out)  # one file under the protobuf limit, else out.name + ".data" beside it
        else:
            shutil.copyfile(src, out)
        opset = next((o.version for o in header.opset_import if o.domain in ("", "ai.onnx")), 0)
        return ExportResult(out, "onnx", opset, [i.name for i in header.graph.input],
                            [o.name for o in header.graph.output], None)
