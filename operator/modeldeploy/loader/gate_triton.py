"""The int8 gates measured through Triton: the serving image, on the serving device.

The build Job of an int8 revision runs the serving image's tritonserver beside the builder (a
native sidecar, resources/build_job.py) with the serving container's GPUs, on loopback, in
explicit model-control mode, its model repository the builder's own repository volume (read-only
for Triton). The builder then writes the fp32 model and the int8 candidate there as two models
with the config.pbtxt the serving pods get (same backend, instance groups, batching, warm-up),
loads them through Triton's repository API, and both gates (agreement and speed) run through
Triton's HTTP inference: on a GPU node that is the onnxruntime backend on the GPU, on the CPU
cluster the python-onnx backend on the CPU. onnxruntime on the builder's CPU measures neither.

Stdlib HTTP (one keep-alive connection, the binary tensor extension): the builder image needs no
Triton client library, and the timing is not a client library's overhead.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from .errors import LoaderError, QuantizationRejected
from .report import log
from .settings import GateTarget

TIMED_BY: Final = "triton"
LIVE_WAIT_S: Final = 600.0  # the sidecar starts while the builder fetches and converts; rarely waited on
LOAD_TIMEOUT_S: Final = 600.0  # a model load on a GPU (TensorRT-free onnxruntime) with warm-up
REQUEST_TIMEOUT_S: Final = 120.0
MAX_REQUEST_BYTES: Final = 32 * 2**20  # NVIDIA's Triton refuses HTTP bodies over 64 MiB (25.07 onward)
GATE_MODELS: Final = ("modeldeploy-gate-fp32", "modeldeploy-gate-int8")

# numpy dtype name -> the HTTP/JSON protocol's datatype (model config's TYPE_* without the prefix)
NUMPY_TO_TRITON: Final[dict[str, str]] = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
TRITON_TO_NUMPY: Final[dict[str, str]] = {v: k for k, v in NUMPY_TO_TRITON.items()}


class GateUnavailable(LoaderError):
    """The gate's Triton could not be reached or answered nonsense: worth a retry (exit 75)."""

    exit_code = 75


def gate_names(model_name: str) -> tuple[str, str]:
    """The two gate models' names: fixed, and never the served model's own name."""
    fp32, int8 = GATE_MODELS
    if model_name in GATE_MODELS:
        return f"{fp32}-x", f"{int8}-x"
    return fp32, int8


# ---------------------------------------------------------------- the wire format


def encode_infer(feed: Mapping[str, np.ndarray], outputs: list[str]) -> tuple[bytes, int]:
    """An inference request body (JSON header, then each input's raw bytes) and the header's length."""
    inputs = []
    blobs = []
    for name, arr in feed.items():
        dtype = NUMPY_TO_TRITON.get(arr.dtype.name)
        if dtype is None:
            raise QuantizationRejected(f"input {name!r} has type {arr.dtype.name}, which the Triton gate cannot send")
        blob = np.ascontiguousarray(arr).tobytes()
        inputs.append({"name": name, "shape": list(arr.shape), "datatype": dtype,
                       "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    header = json.dumps({"inputs": inputs,
                         "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs]},
                        separators=(",", ":")).encode()
    return header + b"".join(blobs), len(header)


def decode_infer(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """The outputs of an inference response: binary data after a JSON header, or JSON data alone."""
    head = json.loads(body[:header_length] if header_length is not None else body)
    out: dict[str, np.ndarray] = {}
    offset = header_length or 0
    for o in head.get("outputs") or []:
        dtype = TRITON_TO_NUMPY.get(o.get("datatype", ""))
        if dtype is None:
            raise GateUnavailable(f"Triton answered output {o.get('name')!r} with type {o.get('datatype')!r}")
        shape = tuple(int(d) for d in o.get("shape") or ())
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[o["name"]] = np.frombuffer(body[offset:offset + size], dtype=dtype).reshape(shape)
            offset += size
        else:
            out[o["name"]] = np.asarray(o.get("data") or [], dtype=dtype).reshape(shape)
    return out


def batches(feed: Mapping[str, np.ndarray], max_batch_size: int,
            max_bytes: int = MAX_REQUEST_BYTES) -> Iterator[dict[str, np.ndarray]]:
    """A feed split into requests Triton accepts: at most max_batch_size samples, and at most
    `max_bytes` of input where a request can be split (NVIDIA's images refuse HTTP bodies over
    64 MiB by default). max_batch_size 0: the model has no batch axis, the feed goes whole."""
    if max_batch_size <= 0 or not feed:
        yield dict(feed)
        return
    n = len(next(iter(feed.values())))
    per_sample = sum(v.nbytes for v in feed.values()) // max(n, 1)
    step = max(1, min(max_batch_size, max_bytes // max(per_sample, 1)))
    if n <= step:
        yield dict(feed)
        return
    for start in range(0, n, step):
        yield {k: v[start:start + step] for k, v in feed.items()}


# ---------------------------------------------------------------- the client


class TritonHTTP:
    """Triton's HTTP API on one keep-alive connection: health, repository load/unload, inference."""

    def __init__(self, url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.url = url
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self._timeout = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None,
                timeout_s: float | None = None) -> tuple[int, bytes, Mapping[str, str]]:
        """One request; a dropped keep-alive connection is reopened once."""
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._conn.timeout = timeout_s or self._timeout  # used when it (re)connects
            if self._conn.sock is not None:
                self._conn.sock.settimeout(self._conn.timeout)
            try:
                self._conn.request(method, path, body=body, headers=dict(headers or {}))
                resp = self._conn.getresponse()
                data = resp.read()
                return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if attempt == 2:
                    raise GateUnavailable(f"the gate's Triton at {self.url} is unreachable: {e}") from None
        raise AssertionError("unreachable")

    def live(self) -> bool:
        try:
            status, _, _ = self.request("GET", "/v2/health/live", timeout_s=5)
        except GateUnavailable:
            return False
        return status == 200

    def wait_live(self, deadline_s: float = LIVE_WAIT_S, sleep: Callable[[float], None] = time.sleep) -> None:
        """Block until Triton answers /v2/health/live; GateUnavailable after `deadline_s`."""
        end = time.monotonic() + deadline_s
        while not self.live():
            if time.monotonic() > end:
                raise GateUnavailable(f"the gate's Triton at {self.url} was not live after {deadline_s:.0f}s")
            sleep(1.0)

    def _repository(self, action: str, name: str, timeout_s: float) -> tuple[int, str]:
        status, body, _ = self.request("POST", f"/v2/repository/models/{urllib.parse.quote(name)}/{action}",
                                       body=b"{}", headers={"Content-Type": "application/json"},
                                       timeout_s=timeout_s)
        return status, _error(body)

    def load(self, name: str) -> None:
        """Load `name` from the repository; QuantizationRejected with Triton's reason if it refuses."""
        status, error = self._repository("load", name, LOAD_TIMEOUT_S)
        if status != 200:
            raise QuantizationRejected(f"Triton could not load the gate's model {name}: {error[:300]}")

    def unload(self, name: str) -> None:
        with contextlib.suppress(GateUnavailable):
            self._repository("unload", name, 60.0)

    def infer(self, name: str, feed: Mapping[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        body, header_length = encode_infer(feed, outputs)
        status, data, headers = self.request(
            "POST", f"/v2/models/{urllib.parse.quote(name)}/infer", body=body,
            headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)})
        if status != 200:
            raise QuantizationRejected(f"Triton failed an inference of the gate's model {name}: {_error(data)[:300]}")
        length = headers.get("inference-header-content-length")
        return decode_infer(data, int(length) if length is not None else None)


def _error(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", "")) or body.decode(errors="replace")
    except (ValueError, AttributeError):
        return body.decode(errors="replace")


class TritonSession:
    """A loaded gate model behind onnxruntime's `run(output_names, feed)`: what the gates call."""

    def __init__(self, client: TritonHTTP, name: str, max_batch_size: int) -> None:
        self.client, self.name, self.max_batch_size = client, name, max_batch_size

    def run(self, output_names: list[str], feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        parts = [self.client.infer(self.name, part, output_names) for part in batches(feed, self.max_batch_size)]
        if len(parts) == 1:
            return [parts[0][o] for o in output_names]
        return [np.concatenate([p[o] for p in parts], axis=0) for o in output_names]


# ---------------------------------------------------------------- the bench


def place(src: Path, dest: Path) -> None:
    """A hard link when src and dest share a filesystem (the pod's repository volume: no copy of a
    large model), a copy otherwise."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


# writes <repository>/<name>/ as the serving pods get it: (model directory, ONNX file, quantized?)
ModelWriter = Callable[[Path, Path, bool], None]


@dataclass(frozen=True)
class TritonBench:
    """Both gates through the gate's Triton: the two models written, loaded, run, then removed."""

    target: GateTarget
    model_name: str
    max_batch_size: int
    write_model: ModelWriter
    timed_by: str = TIMED_BY

    @contextlib.contextmanager
    def open(self, fp32: Path, int8: Path) -> Iterator[tuple[TritonSession, TritonSession]]:
        client = TritonHTTP(self.target.url)
        names = gate_names(self.model_name)
        dirs = [self.target.repository / n for n in names]
        loaded: list[str] = []
        try:
            client.wait_live()
            for name, d, model, quantized in zip(names, dirs, (fp32, int8), (False, True), strict=True):
                shutil.rmtree(d, ignore_errors=True)  # a killed builder's leftovers
                self.write_model(d, model, quantized)
                t0 = time.monotonic()
                loaded.append(name)
                client.load(name)
                log.info("gate model %s loaded in Triton (%s) in %.1fs", name, self.target.url, time.monotonic() - t0)
            yield (TritonSession(client, names[0], self.max_batch_size),
                   TritonSession(client, names[1], self.max_batch_size))
        finally:
            for name in loaded:
                client.unload(name)
            client.close()
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)

