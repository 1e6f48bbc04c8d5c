"""TorchScript and torch.export (.pt2) models to ONNX, with a dynamic batch axis, checked against torch.

torch is optional (it is ~3 GB; only the converter image has it) and imported only here. A
conversion counts only if ONNX Runtime gives the same answers as torch on the same random
inputs, at two batch sizes, within a tolerance: an export that silently changes results (an
unsupported op traced as a constant, a batch axis baked in) is refused.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from .errors import ConfigError, ConversionError, FormatError
from .onnx_meta import session
from .report import log
from .settings import InputShape

CHECK_BATCHES: Final = (1, 3)
ATOL: Final = 1e-4
RTOL: Final = 1e-3


@dataclass(frozen=True)
class TorchInput:
    """One model input: name, torch dtype, shape (per sample when batched) and the allowed batch sizes."""

    name: str
    dtype: Any
    shape: tuple[int, ...]
    batch_range: tuple[int, int] = (1, 1 << 30)
    batched: bool = True


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ConfigError("this format needs torch to convert to ONNX: use the converter image") from None
    return torch


def _dtype(torch: Any, name: str) -> Any:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"unknown input dtype {name!r}")
    return dtype


def _example(torch: Any, inputs: Sequence[TorchInput], batch: int, seed: int) -> tuple[Any, ...]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in inputs:
        b = min(max(batch, t.batch_range[0]), t.batch_range[1])
        shape = (b, *t.shape) if t.batched else t.shape
        if t.dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen).to(t.dtype))
        elif t.dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=gen).bool())
        else:
            out.append(torch.randint(0, 10, shape, generator=gen).to(t.dtype))
    return tuple(out)


def _flatten(torch: Any, out: Any) -> list[np.ndarray]:
    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return [a for o in out for a in _flatten(torch, o)]
    raise ConversionError(f"model returned {type(out).__name__}; only tensors (or tuples/dicts of them) convert")


def _check(torch: Any, model: Any, onnx_path: Path, inputs: Sequence[TorchInput], max_batch_size: int) -> float:
    """Largest |torch - onnxruntime| over the check inputs; ConversionError beyond tolerance."""
    sess = session(onnx_path)
    names = [i.name for i in sess.get_inputs()]
    worst = 0.0
    batches = [b for b in CHECK_BATCHES if b <= max_batch_size] if max_batch_size else [1]
    for seed, batch in enumerate(batches):
        args = _example(torch, inputs, batch, seed + 1)
        with torch.no_grad():
            want = _flatten(torch, model(*args))
        got = sess.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})
        if len(got) != len(want):
            raise ConversionError(f"ONNX model has {len(got)} outputs, torch returned {len(want)}")
        for w, g in zip(want, got, strict=True):
            if w.shape != g.shape:
                raise ConversionError(f"ONNX output shape {g.shape} differs from torch's {w.shape} at batch {batch}")
            diff = float(np.max(np.abs(w.astype(np.float64) - g.astype(np.float64)))) if w.size else 0.0
            limit = ATOL + RTOL * float(np.max(np.abs(w))) if w.size else ATOL
            if not diff <= limit:
                raise ConversionError(f"ONNX model disagrees with torch: max abs diff {diff:.3g} > {limit:.3g}")
            worst = max(worst, diff)
    return worst


def _torchscript_inputs(torch: Any, module: Any, shapes: Sequence[InputShape], batched: bool) -> list[TorchInput]:
    args = [a.name for a in module.forward.schema.arguments][1:]  # skip self
    if not shapes:
        raise ConfigError(
            "a TorchScript model does not record its input shapes: set MD_INPUT_SHAPES "
            '(e.g. [{"name": "x", "dtype": "float32", "shape": [1, 8, 8]}]) or give validation data'
        )
    if len(shapes) != len(args):
        raise ConfigError(f"MD_INPUT_SHAPES names {len(shapes)} inputs, the model's forward takes {len(args)}")
    return [TorchInput(s.name, _dtype(torch, s.dtype), s.shape, batched=batched) for s in shapes]


def _export_inputs(program: Any, max_batch_size: int) -> list[TorchInput]:
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    out = []
    for name in program.graph_signature.user_inputs:
        val = nodes[name].meta.get("val")
        if val is None or not hasattr(val, "shape"):
            raise FormatError(f"exported program input {name!r} is not a tensor")
        dims = [d if isinstance(d, int) else int(d.node.hint or 1) for d in val.shape]
        if max_batch_size == 0:
            out.append(TorchInput(name, val.dtype, tuple(dims), batched=False))
            continue
        if not val.shape or isinstance(val.shape[0], int):
            raise FormatError(
                f"exported program input {name!r} has a static batch dimension: export with "
                "dynamic_shapes={0: torch.export.Dim('batch')} or set maxBatchSize 0"
            )
        lo, hi = 1, 1 << 30
        if (vr := program.range_constraints.get(val.shape[0].node.expr)) is not None:
            lo, hi = max(1, int(vr.lower)), int(min(vr.upper, 1 << 30))
        out.append(TorchInput(name, val.dtype, tuple(dims[1:]), (lo, hi)))
    return out


def _first_line(e: Exception, limit: int = 300) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else e.__class__.__name__)[:limit]


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an exporter without its progress chatter on stdout (the log says what happened)."""
    torch_onnx_log = logging.getLogger("torch.onnx")
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    finally:
        torch_onnx_log.setLevel(level)


def convert(src: Path, fmt: str, dest: Path, max_batch_size: int, shapes: Sequence[InputShape]) -> Path:
    """Write `dest` (model.onnx) from a TorchScript or torch.export file and check it against torch."""
    torch = _torch()
    names_out: list[str]
    if fmt == "torchscript":
        try:
            model = torch.jit.load(str(src), map_location="cpu").eval()
        except Exception as e:
            raise FormatError(f"not a TorchScript model: {_first_line(e, 200)}") from None
        inputs = _torchscript_inputs(torch, model, shapes, batched=max_batch_size > 0)
        with torch.no_grad():
            n_out = len(_flatten(torch, model(*_example(torch, inputs, 2, 0))))
        names_out = [f"output_{i}" for i in range(n_out)]
        axes = {n: {0: "batch"} for n in [i.name for i in inputs] + names_out} if max_batch_size else None
        try:
            _quiet(torch.onnx.export, model, _example(torch, inputs, 2, 0), str(dest),
                   input_names=[i.name for i in inputs], output_names=names_out, dynamic_axes=axes, dynamo=False)
        except Exception as e:
            raise ConversionError(f"TorchScript to ONNX export failed: {_first_line(e)}") from None
    elif fmt == "pytorch-export":
        try:
            program = torch.export.load(str(src))
        except Exception as e:
            raise FormatError(f"not a torch.export (.pt2) program: {_first_line(e, 200)}") from None
        inputs = _export_inputs(program, max_batch_size)
        model = program.module()
        try:
            names_out = [f"output_{i}" for i in range(len(program.graph_signature.user_outputs))]
            _quiet(torch.onnx.export, program, _example(torch, inputs, 2, 0), str(dest), dynamo=True,
                   output_names=names_out, external_data=False, verbose=False)
        except Exception as e:
            raise ConversionError(f"torch.export to ONNX export failed: {_first_line(e)}") from None
    else:
        raise ConfigError(f"format {fmt!r} needs no conversion")
    worst = _check(torch, model, dest, inputs, max_batch_size)
    log.info("converted %s to ONNX; max abs diff vs torch %.2g", fmt, worst)
    return dest
