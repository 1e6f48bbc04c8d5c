"""Inputs to check a converted or quantized model with: the user's validation data, or generated ones.

Validation data is an .npz with `x` (inputs, first axis = samples) and optionally `y` (labels); a
model with several inputs takes one array per input name instead of `x`. Without it, seeded random
inputs of the model's shapes are used, so every check is repeatable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from .errors import ConfigError, FormatError
from .onnx_meta import OnnxSignature, OnnxTensor

GENERATED_SAMPLES: Final = 256
MAX_CHUNK: Final = 64


@dataclass(frozen=True)
class CheckData:
    """Named input arrays sharing a first (sample) axis, optional labels, and where they came from."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    origin: str  # "validation data" | "generated inputs"

    @property
    def samples(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, n: int) -> CheckData:
        """The first n samples."""
        labels = None if self.labels is None else self.labels[:n]
        return CheckData({k: v[:n] for k, v in self.inputs.items()}, labels, self.origin)


def _check_shape(t: OnnxTensor, arr: np.ndarray) -> np.ndarray:
    want = t.shape[1:]
    got = arr.shape[1:]
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=True)):
        shown = tuple("?" if w is None else w for w in want)
        raise ConfigError(f"validation data for input {t.name!r} has sample shape {got}, the model wants {shown}")
    try:
        return arr.astype(t.dtype, copy=False)
    except (TypeError, ValueError):
        raise ConfigError(f"validation data for input {t.name!r} cannot be cast to {t.dtype}") from None


def load_npz(path: Path, sig: OnnxSignature) -> CheckData:
    """Validation data from an .npz file, checked against the model's inputs."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise FormatError(f"validation data is not a readable .npz file: {e}") from None
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(sig.inputs):
        key = t.name if t.name in arrays else ("x" if i == 0 and len(sig.inputs) == 1 else None)
        if key is None or key not in arrays:
            raise ConfigError(f"validation data has no array for input {t.name!r} (keys: {sorted(arrays)})")
        inputs[t.name] = _check_shape(t, arrays[key])
    sizes = {len(v) for v in inputs.values()}
    labels = arrays.get("y")
    if len(sizes) != 1 or 0 in sizes or (labels is not None and len(labels) not in sizes):
        raise ConfigError("validation data arrays must be non-empty and have the same number of samples")
    return CheckData(inputs, labels, "validation data")


def generate(sig: OnnxSignature, samples: int = GENERATED_SAMPLES, seed: int = 0) -> CheckData:
    """Seeded random inputs for every model input (symbolic dimensions become 1)."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for t in sig.inputs:
        shape = (samples, *(1 if d is None else d for d in t.shape[1:]))
        if t.dtype.startswith(("float", "bfloat")):
            arr: Any = rng.standard_normal(shape).astype("float32").astype(t.dtype)
        elif t.dtype == "bool":
            arr = rng.integers(0, 2, shape).astype(bool)
        elif t.dtype == "object":
            raise ConfigError(f"input {t.name!r} is a string tensor: checks need validation data (MD_VALIDATION_URI)")
        else:
            arr = rng.integers(0, 10, shape).astype(t.dtype)
        inputs[t.name] = arr
    return CheckData(inputs, None, "generated inputs")


def chunks(data: CheckData, sig: OnnxSignature, most: int = MAX_CHUNK) -> Iterator[dict[str, np.ndarray]]:
    """Feeds for the model: a fixed first dimension is honoured, a symbolic one takes up to `most`."""
    fixed = sig.inputs[0].shape[0] if sig.inputs and sig.inputs[0].shape else None
    step = fixed or most
    usable = data.samples - data.samples % step if fixed else data.samples
    for start in range(0, usable, step):
        yield {k: v[start : start + step] for k, v in data.inputs.items()}


def run(session: Any, data: CheckData, sig: OnnxSignature) -> np.ndarray:
    """The model's first output over all samples (concatenated along the sample axis)."""
    outs = [session.run([sig.outputs[0].name], feed)[0] for feed in chunks(data, sig)]
    if not outs:
        raise ConfigError("not enough check samples for the model's fixed batch size")
    return np.concatenate(outs, axis=0)
