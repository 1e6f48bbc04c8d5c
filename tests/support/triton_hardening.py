"""The Triton APIs the serving pods restrict, as real requests: one list for every test tier.

HTTP requests are plain urllib (no client library: the same code runs inside a client pod from
the serving image, see `POD_SCRIPT`); gRPC requests use tritonclient.grpc. Each entry is a request
that would succeed, or fail for a reason of its own, on an unrestricted Triton: the tests expect
Triton's restriction answer (HTTP 403 "This API is restricted", gRPC UNAVAILABLE "This protocol is
restricted"), which Triton gives before looking at the request, so nothing else can explain it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Final

HTTP_REFUSAL: Final = "This API is restricted"
GRPC_REFUSAL: Final = "This protocol is restricted"
SHM_REGION: Final = "md-hardening-probe"
# A register body naming a region the test may really create (/dev/shm/<name>), 64 bytes.
SHM_BODY: Final = {"key": "/md-hardening-probe", "offset": 0, "byte_size": 64}


@dataclass(frozen=True)
class HttpCall:
    """One request: `api` is Triton's restricted-API category it belongs to."""

    api: str
    method: str
    path: str  # {model} is replaced by the model's name
    body: dict[str, Any] | None = None

    def url_path(self, model: str) -> str:
        return self.path.format(model=model)


HTTP_CALLS: Final = (
    HttpCall("shared-memory", "POST", f"/v2/systemsharedmemory/region/{SHM_REGION}/register", SHM_BODY),
    HttpCall("shared-memory", "GET", "/v2/systemsharedmemory/status"),
    HttpCall("shared-memory", "POST", "/v2/systemsharedmemory/unregister"),
    HttpCall("shared-memory", "POST", f"/v2/cudasharedmemory/region/{SHM_REGION}/register",
             {"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 64}),
    HttpCall("shared-memory", "GET", "/v2/cudasharedmemory/status"),
    HttpCall("trace", "GET", "/v2/trace/setting"),
    HttpCall("trace", "POST", "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}),
    HttpCall("trace", "POST", "/v2/models/{model}/trace/setting", {"trace_level": ["TIMESTAMPS"]}),
    HttpCall("model-repository", "POST", "/v2/repository/index", {}),
    HttpCall("model-repository", "POST", "/v2/repository/models/{model}/unload", {}),
    HttpCall("model-repository", "POST", "/v2/repository/models/{model}/load", {}),
    HttpCall("logging", "GET", "/v2/logging"),
    HttpCall("logging", "POST", "/v2/logging", {"log_verbose_level": 1}),
    HttpCall("statistics", "GET", "/v2/models/stats"),
    HttpCall("statistics", "GET", "/v2/models/{model}/stats"),
)


def http_request(base: str, method: str, path: str, body: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, str]:
    """(status, body) of one request to `base` (http://host:port); HTTP errors are answers too."""
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def infer_body(name: str = "x", shape: tuple[int, ...] = (1, 4)) -> dict[str, Any]:
    """One JSON inference request: input `name` of `shape` FP32 values 0, 1, 2, ..."""
    size = 1
    for d in shape:
        size *= d
    return {"inputs": [{"name": name, "shape": list(shape), "datatype": "FP32",
                        "data": [float(i % 17) / 16 for i in range(size)]}]}


def http_refusals(base: str, model: str) -> dict[str, tuple[int, str]]:
    """Every HTTP_CALLS request sent without the admin header: `METHOD path` -> (status, body)."""
    out = {}
    for call in HTTP_CALLS:
        out[f"{call.method} {call.url_path(model)}"] = http_request(base, call.method, call.url_path(model), call.body)
    return out


# Inside a client pod (the serving image: python3, no extra packages): the same requests, one JSON
# line out. argv[1] = base URL, argv[2] = model, argv[3] = JSON list of [method, path, body].
POD_SCRIPT: Final = r'''
import json, sys, urllib.error, urllib.request
base, model, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def send(method, path, body):
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return [r.status, r.read().decode(errors="replace")[:300]]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode(errors="replace")[:300]]
    except Exception as e:
        return [0, repr(e)[:300]]
out = {f"{m} {p}": send(m, p, b) for m, p, b in calls}
print(json.dumps(out))
'''


def pod_calls(model: str, name: str = "x", shape: tuple[int, ...] = (1, 4)) -> str:
    """POD_SCRIPT's argv[3]: every restricted call, then the ones that must stay open."""
    calls: list[list[Any]] = [[c.method, c.url_path(model), c.body] for c in HTTP_CALLS]
    calls += [["GET", "/v2/health/ready", None], ["GET", f"/v2/models/{model}", None],
              ["GET", f"/v2/models/{model}/config", None],
              ["POST", f"/v2/models/{model}/infer", infer_body(name, shape)]]
    return json.dumps(calls)


def grpc_header(header: str) -> str:
    """The gRPC metadata key Triton checks for a restricted protocol's `header`: it prefixes it."""
    return f"triton-grpc-protocol-{header}"


def grpc_calls(model: str) -> dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """Every restricted gRPC method as a tritonclient.grpc call: name -> (method, args, kwargs)."""
    return {
        "shared-memory: RegisterSystemSharedMemory": (
            "register_system_shared_memory", (SHM_REGION, SHM_BODY["key"], SHM_BODY["byte_size"]), {}),
        "shared-memory: SystemSharedMemoryStatus": ("get_system_shared_memory_status", (), {}),
        "shared-memory: UnregisterSystemSharedMemory": ("unregister_system_shared_memory", (), {}),
        "shared-memory: RegisterCudaSharedMemory": ("register_cuda_shared_memory", (SHM_REGION, b"\0" * 64, 0, 64), {}),
        "shared-memory: CudaSharedMemoryStatus": ("get_cuda_shared_memory_status", (), {}),
        "trace: TraceSetting (read)": ("get_trace_settings", (), {}),
        "trace: TraceSetting (update)": ("update_trace_settings", (), {"settings": {"trace_rate": "1"}}),
        "model-repository: RepositoryIndex": ("get_model_repository_index", (), {}),
        "model-repository: RepositoryModelUnload": ("unload_model", (model,), {}),
        "model-repository: RepositoryModelLoad": ("load_model", (model,), {}),
        "logging: LogSettings (read)": ("get_log_settings", (), {}),
        "logging: LogSettings (update)": ("update_log_settings", ({"log_verbose_level": 1},), {}),
        "statistics: ModelStatistics (all)": ("get_inference_statistics", (), {}),
        "statistics: ModelStatistics (model)": ("get_inference_statistics", (model,), {}),
    }


def grpc_refusals(url: str, model: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    """Each restricted gRPC method called on `url` (host:port), with `headers` if given:
    name -> 'ok' or 'STATUS: message'."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    out: dict[str, str] = {}
    try:
        for name, (method, args, kwargs) in grpc_calls(model).items():
            try:
                getattr(client, method)(*args, headers=headers, **kwargs)
                out[name] = "ok"
            except InferenceServerException as e:
                out[name] = f"{e.status()}: {e.message()}"
    finally:
        client.close()
    return out


def grpc_infer(url: str, model: str, name: str = "x", shape: tuple[int, ...] = (1, 4)) -> list[float]:
    """One gRPC inference of infer_body's values; the first output's values."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        x = np.asarray(infer_body(name, shape)["inputs"][0]["data"], dtype=np.float32).reshape(shape)
        inp = grpcclient.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(model, [inp])
        name = result.get_response().outputs[0].name
        return [float(v) for v in result.as_numpy(name).ravel()]
    finally:
        client.close()
