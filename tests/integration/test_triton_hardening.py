"""The serving pods' Triton command, run for real: its restricted APIs are refused, inference is not.

A real tritonserver 2.51 (the CPU image's, from the nvidia-pytriton wheel) is started exactly as a
serving pod starts it: the generated `TRITON_COMMAND` (a /bin/sh script that makes the per-start
key and execs tritonserver) with the generated `triton_args()`, only the repository, backend
directory, ports and the loopback address replaced. The model is what the loader writes for the
CPU image (python backend + onnxruntime). Then, through real HTTP and gRPC requests:
- every shared-memory (system and CUDA), trace, model-repository, logging and statistics request
  is refused without the admin header, and with a wrong key;
- health, metadata, model config and inference answer over both protocols;
- with the key (read from the server's own command line, where only the container can see it)
  the same APIs answer: the refusals are the header check, not broken endpoints, and a real
  shared-memory region the test created registers only with it;
- every flag was accepted by 2.51 (it started and serves), and the flags 2.51 lacks
  (--http-max-input-size, --allow-client-shm) were left out by the script's probe.
No mocks: real processes, real sockets.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import pytest

from localcluster.process import free_port
from modeldeploy.loader.cli import main as loader_main
from modeldeploy.resources.deployment import ADMIN_HEADER, OPTIONAL_ARGS, RESTRICTED_APIS, TRITON_COMMAND, triton_args
from tests.support import serving
from tests.support import triton_hardening as th
from tests.support.serving_models import linear_onnx

pytestmark = pytest.mark.integration

MODEL = "linear"
# What this test sets itself instead of the pod's values (paths, ports).
_REPLACED = frozenset({"--model-repository", "--http-port", "--grpc-port", "--metrics-port"})


@dataclass
class Hardened:
    server: serving.TritonServer
    argv: list[str]  # tritonserver's own command line, as the shell exec'ed it
    key: str  # the per-start admin key, read back from that command line
    expected: list[float]  # the model's answer to x = 0, 1, 2, 3

    @property
    def base(self) -> str:
        return f"http://{self.server.http_url}"


def _tritonserver_argv(shell_pid: int) -> list[str]:
    """The command line of the process the pod's shell exec'ed into (same pid)."""
    raw = Path(f"/proc/{shell_pid}/cmdline").read_bytes()
    return [a.decode() for a in raw.split(b"\0") if a]


@contextlib.contextmanager
def _pod_command(repo: Path, log_path: Path) -> Iterator[tuple[serving.TritonServer, list[str]]]:
    install = serving.triton_install()
    http, grpc, metrics = free_port(), free_port(), free_port()
    args = [a for a in triton_args() if a.split("=", 1)[0] not in _REPLACED]
    args += [f"--model-repository={repo}", f"--backend-directory={install.backend_dir}",
             f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
             "--http-address=127.0.0.1", "--grpc-address=127.0.0.1"]
    env = dict(os.environ)
    env["PATH"] = f"{Path(install.tritonserver).parent}:{env['PATH']}"  # the image has it on PATH
    env["LD_LIBRARY_PATH"] = install.lib_dir
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([*TRITON_COMMAND, *args], stdout=logf, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    server = serving.TritonServer(proc, http, grpc, metrics, log_path)
    started = time.monotonic()
    try:
        while not serving._ready(http):
            if proc.poll() is not None:
                raise AssertionError(f"tritonserver exited with {proc.returncode}:\n{server.log()[-4000:]}")
            if time.monotonic() - started > serving.READY_TIMEOUT_S:
                raise AssertionError(f"not ready after {serving.READY_TIMEOUT_S}s:\n{server.log()[-4000:]}")
            time.sleep(0.1)
        yield server, _tritonserver_argv(proc.pid)
    finally:
        serving.stop(server)


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hardened]:
    work = tmp_path_factory.mktemp("hardening")
    w, b = linear_onnx(work / "linear.onnx")
    term = work / "termination-log"
    code = loader_main([], {
        "MD_SOURCE_URI": f"file://{work / 'linear.onnx'}", "MD_MODEL_NAME": MODEL, "MD_MODEL_VERSION": "1",
        "MD_REPOSITORY": str(work / "repo"), "MD_TERMINATION_LOG": str(term), "MD_BACKEND": "python-onnx",
        "MD_RUNNER_SYS_PATH": serving.triton_install().stub_site, "MD_MAX_BATCH_SIZE": "8", "MD_WARMUP": "true",
    })
    assert code == 0, term.read_text() if term.exists() else "loader failed"
    x = th.infer_body()["inputs"][0]["data"]
    expected = [float(v) for v in (x @ w + b)]
    with _pod_command(work / "repo", work / "triton.log") as (server, argv):
        prefix = "--http-restricted-api="
        restricted = next(a for a in argv if a.startswith(prefix))[len(prefix):]
        key = restricted.rsplit(f"{ADMIN_HEADER}=", 1)[1]
        yield Hardened(server, argv, key, expected)


def test_command_restricts_every_api_on_both_protocols_with_one_random_key(hardened: Hardened) -> None:
    value = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={hardened.key}"
    assert f"--http-restricted-api={value}" in hardened.argv
    assert f"--grpc-restricted-protocol={value}" in hardened.argv
    assert set(RESTRICTED_APIS) == {"shared-memory", "trace", "model-repository", "logging", "statistics"}
    assert len(hardened.key) == 36 and hardened.key.count("-") == 4, hardened.key  # a fresh UUID
    # 2.51 has neither optional flag: the probe left them out, and every flag passed was accepted.
    install = serving.triton_install()
    assert hardened.argv[0] == "tritonserver"  # the shell exec'ed it from PATH, as in the image
    help_text = subprocess.run([install.tritonserver, "--help"], capture_output=True, text=True,
                               env={**os.environ, "LD_LIBRARY_PATH": install.lib_dir})
    for flag, _ in OPTIONAL_ARGS:
        assert flag not in help_text.stdout + help_text.stderr
        assert not any(a.startswith(flag) for a in hardened.argv)
    assert hardened.server.process.poll() is None


@pytest.mark.parametrize("call", th.HTTP_CALLS, ids=lambda c: f"{c.method} {c.path}")
def test_http_refuses_restricted_api_without_the_key(hardened: Hardened, call: th.HttpCall) -> None:
    for headers in ({}, {ADMIN_HEADER: "not-the-key"}):
        status, body = th.http_request(hardened.base, call.method, call.url_path(MODEL), call.body, headers)
        assert status == 403 and th.HTTP_REFUSAL in body, (headers, status, body)


def test_grpc_refuses_restricted_protocols_without_the_key(hardened: Hardened) -> None:
    for headers in (None, {th.grpc_header(ADMIN_HEADER): "not-the-key"}):
        answers = th.grpc_refusals(hardened.server.grpc_url, MODEL, headers)
        assert set(answers) == set(th.grpc_calls(MODEL))
        wrong = {k: v for k, v in answers.items()
                 if not (v.startswith("StatusCode.UNAVAILABLE") and th.GRPC_REFUSAL in v)}
        assert not wrong, (headers, wrong)


def test_inference_and_model_metadata_stay_open(hardened: Hardened) -> None:
    import json

    assert th.http_request(hardened.base, "GET", "/v2/health/ready")[0] == 200
    assert th.http_request(hardened.base, "GET", f"/v2/models/{MODEL}")[0] == 200
    assert th.http_request(hardened.base, "GET", f"/v2/models/{MODEL}/config")[0] == 200  # the validation Job's
    status, body = th.http_request(hardened.base, "POST", f"/v2/models/{MODEL}/infer", th.infer_body())
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == pytest.approx(hardened.expected, rel=1e-5)
    assert th.grpc_infer(hardened.server.grpc_url, MODEL) == pytest.approx(hardened.expected, rel=1e-5)
    assert "nv_inference_request_success" in hardened.server.metrics()  # :8002, what the operator reads


def test_the_key_opens_them_so_the_refusal_is_the_header_check(hardened: Hardened) -> None:
    admin = {ADMIN_HEADER: hardened.key}
    for path in ("/v2/models/stats", "/v2/trace/setting", "/v2/logging", "/v2/systemsharedmemory/status"):
        status, body = th.http_request(hardened.base, "GET", path, headers=admin)
        assert status == 200, (path, status, body)
    status, body = th.http_request(hardened.base, "POST", "/v2/repository/index", {}, admin)
    assert status == 200 and MODEL in body, body
    answers = th.grpc_refusals(hardened.server.grpc_url, MODEL, {th.grpc_header(ADMIN_HEADER): hardened.key})
    for name in ("statistics: ModelStatistics (model)", "trace: TraceSetting (read)", "logging: LogSettings (read)",
                 "model-repository: RepositoryIndex", "shared-memory: SystemSharedMemoryStatus"):
        assert answers[name] == "ok", (name, answers[name])


def test_a_real_shared_memory_region_registers_only_with_the_key(hardened: Hardened) -> None:
    """The RCE chain's step: register a region by its /dev/shm name. Refused without the key even
    when the region exists; with the key the same request succeeds (and is undone)."""
    region = shared_memory.SharedMemory(name=th.SHM_BODY["key"].lstrip("/"), create=True, size=64)
    path = f"/v2/systemsharedmemory/region/{th.SHM_REGION}"
    try:
        status, body = th.http_request(hardened.base, "POST", f"{path}/register", th.SHM_BODY)
        assert status == 403 and th.HTTP_REFUSAL in body, (status, body)
        admin = {ADMIN_HEADER: hardened.key}
        status, body = th.http_request(hardened.base, "POST", f"{path}/register", th.SHM_BODY, admin)
        assert status == 200, (status, body)
        status, body = th.http_request(hardened.base, "GET", "/v2/systemsharedmemory/status", headers=admin)
        assert th.SHM_REGION in body, body
        assert th.http_request(hardened.base, "POST", f"{path}/unregister", {}, admin)[0] == 200
    finally:
        region.close()
        region.unlink()
