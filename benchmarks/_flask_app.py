"""The seed baseline: Flask (threaded dev server) + eager PyTorch, one image per request.

Started as a subprocess by benchmarks/serving.py:
    python benchmarks/_flask_app.py MODEL.pth PORT C,H,W
Request body: one image as raw little-endian float32 bytes; answer: the logits as JSON.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from flask import Flask, jsonify, request


def create_app(model_path: str, shape: tuple[int, ...]) -> Flask:
    model = torch.load(model_path, weights_only=False).eval()
    app = Flask(__name__)

    @app.get("/health")
    def health():
        return "ok"

    @app.post("/predict")
    def predict():
        x = np.frombuffer(request.get_data(), dtype=np.float32).reshape((1, *shape))
        with torch.no_grad():
            logits = model(torch.from_numpy(x.copy()))
        return jsonify(logits[0].tolist())

    return app


if __name__ == "__main__":
    path, port, dims = sys.argv[1], int(sys.argv[2]), tuple(int(d) for d in sys.argv[3].split(","))
    create_app(path, dims).run(host="127.0.0.1", port=port, threaded=True)
