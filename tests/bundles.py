"""Small real bundles for transport/deploy/validate tests: a tiny ONNX classifier built with
onnx.helper, its FP32 reference outputs from a real onnxruntime session, runner.py and manifest."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np


def tiny_project(*, plugins: Sequence[str] = (), name: str = "tiny", metric: str = "top1", threshold: float = 0.9,
                 power: str = "idle_s = 0.2") -> str:
    """edgekit.toml for the tiny model (an ONNX passthrough); tests append [[devices]] as they need.
    ``power`` holds the [power] table's lines: by default sampling stays on (sampler auto), with a
    short idle baseline to keep the suite quick."""
    head = f"plugins = {json.dumps(list(plugins))}\n" if plugins else ""
    return head + f"""
[model]
name = "{name}"
source = "onnx"
path = "model.onnx"

[[inputs]]
name = "x"
shape = [1, 16]

[calibration]
data = "calib.npz"

[validation]
data = "val.npz"
metric = "{metric}"
threshold = {threshold}

[power]
{power}
"""


TINY_PROJECT = tiny_project()


def tiny_model(path: Path, seed: int = 0, n_in: int = 16, n_out: int = 4) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((n_in, n_out)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((n_out,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.save(model, str(path))


def make_tiny_bundle(bundle: Path, seed: int = 0, target: str = "x86-avx2", metric: str = "top1",
                     threshold: float = 0.99, n_samples: int = 8, extra_fields: Optional[Dict[str, Any]] = None,
                     corrupt_reference: bool = False) -> Dict[str, Any]:
    """Write a complete, valid bundle into ``bundle`` and return its manifest."""
    import onnxruntime as ort

    from edgekit import artifact
    from edgekit.targets import resolve

    bundle.mkdir(parents=True, exist_ok=True)
    tiny_model(bundle / "model.onnx", seed=seed)
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed + 1)
    feeds = [{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(n_samples)]
    outputs = [sess.run(["y"], f) for f in feeds]
    if corrupt_reference:  # references that the model cannot match: validation must fail
        outputs = [[-o[0]] for o in outputs]
    artifact.write_reference(bundle / artifact.REFERENCE, feeds, outputs, ["y"])
    artifact.copy_device_files(bundle)
    profile = resolve(target)
    fields = {
        "model": "tiny",
        "target": profile.name,
        "target_profile": profile.model_dump(mode="json"),
        "artifact": "model.onnx",
        "runtime": {"name": "onnxruntime", "providers": profile.runtime.providers,
                    "provider_options": profile.runtime.provider_options,
                    "graph_optimization": profile.graph_optimization, "intra_op_threads": 1},
        "inputs": [{"name": "x", "shape": [1, 16], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 4], "dtype": "float32"}],
        "metric": {"name": metric, "threshold": threshold, "k": 5, "output": None, "pooling": "none",
                   "mask_input": "attention_mask"},
        "quantization": {"precision": "fp32", "method": "fp32"},
    }
    fields.update(extra_fields or {})
    return artifact.write_manifest(bundle, fields)
