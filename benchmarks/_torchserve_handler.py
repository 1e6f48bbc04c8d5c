"""TorchServe handler for benchmarks/serving.py: eager PyTorch, TorchServe's own batching.

Packed into the .mar with `shape.json` (the image shape) and `model.pth` (the pickled module).
Each request body is one image as raw float32 bytes; the batch TorchServe hands over is stacked,
run once, and split back into one JSON list of logits per request.
"""

import json
import os

import numpy as np
import torch

_state = {}


def _load(context):
    model_dir = context.system_properties.get("model_dir")
    with open(os.path.join(model_dir, "shape.json")) as f:
        _state["shape"] = tuple(json.load(f))
    _state["model"] = torch.load(os.path.join(model_dir, "model.pth"), weights_only=False).eval()


def handle(data, context):
    if "model" not in _state:
        _load(context)
    if data is None:
        return None
    shape = _state["shape"]
    xs = [np.frombuffer(bytes(row.get("body") or row.get("data")), dtype=np.float32).reshape(shape) for row in data]
    with torch.no_grad():
        out = _state["model"](torch.from_numpy(np.stack(xs))).numpy()
    return [o.tolist() for o in out]
