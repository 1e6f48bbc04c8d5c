"""Inputs and outputs of an ONNX model, read from the graph, in the shape config.pbtxt wants.

Reading them with onnxruntime also proves the file is an ONNX model this runtime can load, so a
wrong file fails here with a clear reason rather than later inside Triton.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..resources.triton_config import TensorSpec, triton_dtype
from .errors import FormatError

# onnxruntime's type strings -> numpy dtype names
ORT_TO_NUMPY: Final[dict[str, str]] = {
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(string)": "object",
}


@dataclass(frozen=True)
class OnnxTensor:
    """A graph input/output: numpy dtype and full shape (None for a symbolic dimension)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class OnnxSignature:
    """All inputs and outputs of one model."""

    inputs: tuple[OnnxTensor, ...]
    outputs: tuple[OnnxTensor, ...]


def session(path: Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session; FormatError if the file is not a loadable ONNX model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise FormatError(f"not a valid ONNX model: {first[:300]}") from None


def _tensor(arg: Any) -> OnnxTensor:
    if arg.type not in ORT_TO_NUMPY:
        raise FormatError(f"tensor {arg.name!r} has type {arg.type}, which Triton cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or []))
    return OnnxTensor(name=arg.name, dtype=ORT_TO_NUMPY[arg.type], shape=shape)


def read_signature(path: Path) -> OnnxSignature:
    """The model's inputs and outputs as onnxruntime sees them."""
    s = session(path)
    return OnnxSignature(
        inputs=tuple(_tensor(i) for i in s.get_inputs()), outputs=tuple(_tensor(o) for o in s.get_outputs())
    )


def to_triton(sig: OnnxSignature, max_batch_size: int) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Triton tensor specs: with batching, the first dimension must be the (variable) batch axis."""

    def spec(t: OnnxTensor) -> TensorSpec:
        dims = t.shape
        if max_batch_size > 0:
            if not dims:
                raise FormatError(f"tensor {t.name!r} is a scalar, so the model cannot batch: set maxBatchSize 0")
            if dims[0] is not None:
                raise FormatError(
                    f"tensor {t.name!r} has a fixed first dimension {dims[0]}, so it cannot take batches: "
                    "export it with a dynamic batch axis or set maxBatchSize 0"
                )
            dims = dims[1:]
        dims_out = tuple(-1 if d is None else d for d in dims)
        return TensorSpec(name=t.name, data_type=triton_dtype(t.dtype), dims=dims_out)

    return tuple(spec(t) for t in sig.inputs), tuple(spec(t) for t in sig.outputs)
