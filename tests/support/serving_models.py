"""Tiny models built in the test itself (no torch needed): an ONNX linear classifier, a python model."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

ECHO_MODEL_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", (x * 2).astype(np.float32))]))
        return out
'''

# The echo model failing (Triton counts a BACKEND failure) on negative input: a model with errors.
FAILING_ECHO_MODEL_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            if (x < 0).any():
                raise pb_utils.TritonModelException("negative input")
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", (x * 2).astype(np.float32))]))
        return out
'''

ECHO_CONFIG = '''name: "whatever-the-user-called-it"
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
'''


def linear_onnx(path: Path, features: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x[batch, features] -> logits[batch, classes] = x @ w + b, with a dynamic batch axis."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((features, classes)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))
    return w, b


def failing_onnx(path: Path, features: int = 4) -> Path:
    """x[batch, features] -> y[batch, 1] that fails inside onnxruntime on every run: Gather of
    column 10 of a 4-column input (out of bounds, found only when the model runs)."""
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "idx"], ["y"], axis=1)],
        "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array([10], dtype=np.int64), "idx")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))
    return path


def lookup_onnx(path: Path, table: int = 4) -> Path:
    """x[batch, 4] -> y[batch, 1] = TABLE[int(x[:, 0])]: answers when x[:, 0] < `table`, and fails
    inside onnxruntime (index out of range) for any other request, alone or batched with others."""
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "zero"], ["first"], axis=1),
         helper.make_node("Cast", ["first"], ["idx"], to=TensorProto.INT64),
         helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
         numpy_helper.from_array(np.arange(table, dtype=np.float32).reshape(table, 1) * 10, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))
    return path


def echo_tarball(with_config: bool = True) -> bytes:
    """A user's Triton python model as a .tar.gz: <dir>/config.pbtxt + <dir>/1/model.py."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        files = {"echo/1/model.py": ECHO_MODEL_PY}
        if with_config:
            files["echo/config.pbtxt"] = ECHO_CONFIG
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
