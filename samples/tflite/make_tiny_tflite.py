"""Write samples/tflite/tiny.tflite and its reference outputs, without TensorFlow.

The model is one FULLY_CONNECTED op (16 inputs -> 4 logits), the same weights as the tiny ONNX
classifier in tests/bundles.py (seed 0), serialised with the TFLite flatbuffer schema that
ai_edge_litert ships (``ai_edge_litert.schema_py_generated`` + ``tools.flatbuffer_utils``).
The reference outputs come from the real LiteRT interpreter, and are checked against numpy.

    .venv/bin/python samples/tflite/make_tiny_tflite.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_IN, N_OUT, N_SAMPLES = 16, 4, 8


def weights(seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)  # the draw order of tests/bundles.py: w then b
    w = rng.standard_normal((N_IN, N_OUT)).astype(np.float32)
    b = rng.standard_normal((N_OUT,)).astype(np.float32)
    return w, b


def build(path: Path, seed: int = 0) -> None:
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    w, b = weights(seed)
    model = fb.ModelT()
    model.version = 3
    model.description = "edgekit tiny classifier (FULLY_CONNECTED 16->4)"
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    model.operatorCodes = [code]
    # Buffer 0 is the schema's mandatory empty sentinel; activations use it too.
    bufs = [fb.BufferT(), fb.BufferT(), fb.BufferT(), fb.BufferT(), fb.BufferT()]
    bufs[2].data = list(np.ascontiguousarray(w.T).tobytes())  # TFLite FC weights are [out, in]
    bufs[3].data = list(b.tobytes())
    model.buffers = bufs

    def tensor(name: str, shape: list, buffer: int) -> "fb.TensorT":
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, fb.TensorType.FLOAT32, buffer
        return t

    sub = fb.SubGraphT()
    sub.name = "main"
    sub.tensors = [tensor("x", [1, N_IN], 1), tensor("w", [N_OUT, N_IN], 2), tensor("b", [N_OUT], 3),
                   tensor("y", [1, N_OUT], 4)]
    sub.inputs, sub.outputs = [0], [3]
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType = fb.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = fb.FullyConnectedOptionsT()
    sub.operators = [op]
    model.subgraphs = [sub]
    flatbuffer_utils.write_model(model, str(path))


def reference(path: Path, model: Path, seed: int = 0) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model), num_threads=1)
    interp.allocate_tensors()
    x_idx = interp.get_input_details()[0]["index"]
    y_idx = interp.get_output_details()[0]["index"]
    rng = np.random.default_rng(seed + 1)
    xs = np.stack([rng.standard_normal((1, N_IN)).astype(np.float32) for _ in range(N_SAMPLES)])
    ys = []
    for x in xs:
        interp.set_tensor(x_idx, x)
        interp.invoke()
        ys.append(interp.get_tensor(y_idx).copy())
    ys = np.stack(ys)
    w, b = weights(seed)
    np.testing.assert_allclose(ys, xs @ w + b, rtol=1e-5, atol=1e-5)  # the interpreter computed x.W + b
    with open(path, "wb") as f:
        np.savez(f, **{"input/x": xs, "output/y": ys})


if __name__ == "__main__":
    build(HERE / "tiny.tflite")
    reference(HERE / "reference.npz", HERE / "tiny.tflite")
    print(f"wrote {HERE / 'tiny.tflite'} ({(HERE / 'tiny.tflite').stat().st_size} bytes) and reference.npz")
