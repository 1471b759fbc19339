"""hf: a Hugging Face model directory, exported through optimum-onnx and checked against transformers."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from ..config import ProjectConfig
from ..errors import ConfigError, ExportError
from ..export import ExportResult, Feed, check_outputs
from . import Exporter


class HuggingFaceExporter(Exporter):
    source = "hf"
    order = 20
    description = ("`path` is a Hugging Face model directory (`task`, default feature-extraction); exported "
                   "offline through optimum-onnx and checked against transformers' outputs")

    def export(self, config: ProjectConfig, out: Path, feed: Feed) -> ExportResult:
        import onnx
        import torch
        from optimum.exporters.onnx import main_export
        from transformers import AutoModel

        model_dir = config.resolve(config.model.path)
        assert model_dir is not None
        if not (model_dir / "config.json").is_file():
            raise ConfigError(f"{config.path}: field 'model.path': {model_dir} is not a Hugging Face model directory (no config.json)")
        tmp = out.parent / "hf-export"
        shutil.rmtree(tmp, ignore_errors=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                main_export(str(model_dir), output=tmp, task=config.model.task, opset=config.model.opset,
                            local_files_only=True, do_validation=False, library_name="transformers")
            except Exception as exc:
                raise ExportError(f"optimum-onnx export of {model_dir} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        exported = tmp / "model.onnx"
        shutil.move(str(exported), str(out))
        if (tmp / "model.onnx_data").exists():
            shutil.move(str(tmp / "model.onnx_data"), str(out.parent / "model.onnx_data"))
        shutil.rmtree(tmp, ignore_errors=True)
        graph = onnx.load(str(out), load_external_data=False).graph
        in_names = [i.name for i in graph.input]
        out_names = [o.name for o in graph.output]
        missing = [i.name for i in config.inputs if i.name not in in_names]
        if missing:
            raise ConfigError(f"{config.path}: field 'inputs': the exported model has no input '{missing[0]}' (it has {', '.join(in_names)})")
        hf_model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
        with torch.no_grad():
            ref = hf_model(**{k: torch.from_numpy(v) for k, v in feed.items() if k in in_names})
        expected = [ref[0].numpy()] + [ref[k].numpy() for k in out_names[1:] if k in ref]
        diff = check_outputs(out, feed, expected, config.model.export_tolerance)
        return ExportResult(out, "hf", config.model.opset, in_names, out_names, diff)
