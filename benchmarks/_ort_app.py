"""The strongest simple alternative to Triton: the same model.onnx in onnxruntime behind a multi-worker server.

What a user who has an ONNX file and no Triton would write: one onnxruntime session per worker
process, one image per request, no batching. The same file is a WSGI app (gunicorn) and an ASGI
app (uvicorn), so benchmarks/serving.py can run either server without a framework in between:

    MD_ORT_MODEL=model.onnx MD_ORT_SHAPE=1,8,8 MD_ORT_THREADS=1 gunicorn -w 2 benchmarks._ort_app:wsgi
    MD_ORT_MODEL=model.onnx MD_ORT_SHAPE=1,8,8 MD_ORT_THREADS=1 uvicorn --workers 2 benchmarks._ort_app:asgi

Request body: one image as raw little-endian float32 bytes (as for the Flask baseline); answer: the
first output's logits as JSON. The session is made on first use, so each forked worker has its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

_session: dict[str, Any] = {}


def _model() -> tuple[Any, str, tuple[int, ...]]:
    """This worker's session, input name and image shape (made once per process, after the fork)."""
    if "session" not in _session:
        import onnxruntime as ort

        options = ort.SessionOptions()
        threads = int(os.environ.get("MD_ORT_THREADS", "0"))
        if threads:  # 0: onnxruntime's default (one intra-op thread per physical core)
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(os.environ["MD_ORT_MODEL"], options, providers=["CPUExecutionProvider"])
        _session.update(session=session, input=session.get_inputs()[0].name,
                        shape=tuple(int(d) for d in os.environ["MD_ORT_SHAPE"].split(",")))
    return _session["session"], _session["input"], _session["shape"]


def predict(body: bytes) -> bytes:
    """One image in, its logits out as JSON bytes."""
    session, name, shape = _model()
    x = np.frombuffer(body, dtype=np.float32).reshape((1, *shape))
    (logits, *_) = session.run(None, {name: x})
    return json.dumps(logits[0].tolist()).encode()


def wsgi(environ: dict[str, Any], start_response: Callable[..., object]) -> Iterable[bytes]:
    """gunicorn's entry point: POST any path with the image, GET for a health check."""
    if environ["REQUEST_METHOD"] != "POST":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    out = predict(environ["wsgi.input"].read(length))
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]


async def asgi(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """uvicorn's entry point: the same contract as `wsgi`; inference runs on the event loop (one at a time)."""
    if scope["type"] != "http":  # run with --lifespan off; nothing else is served
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    out = predict(b"".join(chunks)) if scope["method"] == "POST" else b"ok"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})
