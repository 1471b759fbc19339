"""torch: a factory function returning a torch.nn.Module, exported with the TorchScript exporter."""
from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import ProjectConfig
from ..errors import ConfigError, ExportError
from ..export import ExportResult, Feed, check_outputs
from . import Exporter


def _load_factory(config: ProjectConfig) -> Callable[[], object]:
    spec = config.model.factory
    assert spec is not None
    file_part, _, func = spec.rpartition(":")
    path = config.resolve(file_part)
    assert path is not None
    if not path.is_file():
        raise ConfigError(f"{config.path}: field 'model.factory': file not found: {path}")
    mod_spec = importlib.util.spec_from_file_location(f"edgekit_user_model_{path.stem}", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    sys.path.insert(0, str(path.parent))
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:
        raise ExportError(f"{path}: importing the model factory failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(str(path.parent))
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ConfigError(f"{config.path}: field 'model.factory': {path} has no function '{func}'")
    return fn


class TorchExporter(Exporter):
    source = "torch"
    needs = "factory"
    order = 10
    description = ("`factory = \"model.py:build_model\"` returns a `torch.nn.Module`; exported with the TorchScript "
                   "exporter (`dynamo=False`: stable bytes) and checked against PyTorch's outputs")

    def export(self, config: ProjectConfig, out: Path, feed: Feed) -> ExportResult:
        import torch

        try:
            model = _load_factory(config)()
        except (ConfigError, ExportError):
            raise
        except Exception as exc:  # the user's factory failed: say which and why, without a traceback
            raise ExportError(f"model factory {config.model.factory} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(model, torch.nn.Module):
            raise ExportError(f"{config.model.factory}: expected a torch.nn.Module, got {type(model).__name__}")
        model.eval()
        names = [i.name for i in config.inputs]
        args = tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names)
        with torch.no_grad():
            expected = model(*args)
        expected_list = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        out_names = ["output"] if len(expected_list) == 1 else [f"output_{i}" for i in range(len(expected_list))]
        dynamic = {i.name: {int(k): v for k, v in i.dynamic_axes.items()} for i in config.inputs if i.dynamic_axes}
        if dynamic and 0 in next(iter(dynamic.values())):
            for n in out_names:
                dynamic[n] = {0: next(iter(dynamic.values()))[0]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            try:
                # dynamo=False: the TorchScript exporter needs no onnxscript and gives stable bytes
                torch.onnx.export(model, args, str(out), input_names=names, output_names=out_names,
                                  dynamic_axes=dynamic or None, opset_version=config.model.opset, dynamo=False)
            except Exception as exc:
                raise ExportError(f"torch.onnx.export failed for {config.model.factory}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        diff = check_outputs(out, feed, [t.numpy() for t in expected_list], config.model.export_tolerance)
        return ExportResult(out, "torch", config.model.opset, names, out_names, diff)
