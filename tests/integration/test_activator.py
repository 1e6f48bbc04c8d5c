"""The activator with real parts: a real tritonserver started late behind it while 100 real clients
(tritonclient HTTP and gRPC) wait; over-cap and timed-out requests refused with Retry-After.

No Kubernetes here: the route's backends are loopback ports where Triton will listen (as a model's
`<name>-stable` Service address is known before its first pod starts), and the routes come from a
file the activator polls (the ConfigMap watch and the demand Lease: test_activator_demand.py).
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from localcluster.process import free_port
from modeldeploy.loader.cli import main as loader_main
from tests.support import serving, serving_digits
from tests.support.activator import running_activator, write_routes

pytestmark = pytest.mark.integration
CLIENTS = 100  # half HTTP, half gRPC
CAP = 100
NS, NAME = "ml", "digits"
LABELS = {"namespace": NS, "name": NAME}


@dataclass
class Digits:
    repo: Path
    x: np.ndarray
    torch_logits: np.ndarray
    work: Path


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    work = tmp_path_factory.mktemp("activator")
    stub_site = serving.triton_install().stub_site
    data = serving_digits.load_digits()
    model = serving_digits.train_cnn(data, epochs=4)
    ts = serving_digits.save_torchscript(model, work / "digits.pt")
    term = work / "termination-log"
    code = loader_main([], {
        "MD_SOURCE_URI": f"file://{ts}", "MD_FORMAT": "torchscript", "MD_MODEL_NAME": NAME, "MD_MODEL_VERSION": "1",
        "MD_REPOSITORY": str(work / "repo"), "MD_TERMINATION_LOG": str(term), "MD_BACKEND": "python-onnx",
        "MD_RUNNER_SYS_PATH": stub_site, "MD_MAX_BATCH_SIZE": "32", "MD_WARMUP": "true",
        "MD_DYNAMIC_BATCHING": '{"maxQueueDelayMicroseconds": 2000}',
        "MD_INPUT_SHAPES": '[{"name": "x", "dtype": "float32", "shape": [1, 8, 8]}]'})
    assert code == 0, term.read_text() if term.exists() else "loader failed"
    x = data.x_test[:CLIENTS]
    return Digits(work / "repo", x, serving_digits.predict(model, x), work)


def _route(http: int, grpc: int, **extra: object) -> dict[str, object]:
    return {"namespace": NS, "name": NAME, "model": NAME, "clusterIPs": ["127.0.0.1"],
            "http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}", **extra}


@dataclass
class Outcome:
    sent: float = 0.0
    answered: float = 0.0
    logits: np.ndarray | None = None
    error: str = ""


@dataclass
class Clients:
    outcomes: list[Outcome] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)


def _describe(e: BaseException) -> str:
    status = e.status() if callable(getattr(e, "status", None)) else ""  # type: ignore[attr-defined]
    return f"{type(e).__name__}(status={status}, {str(e)[:120]})"


def _http_client(url: str, x: np.ndarray, out: Outcome) -> None:
    import tritonclient.http as httpclient

    try:
        client = httpclient.InferenceServerClient(url, connection_timeout=180, network_timeout=180)
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out.sent = time.monotonic()
        out.logits = client.infer(NAME, [inp]).as_numpy("output_0")
    except Exception as e:
        out.error = f"http: {_describe(e)}"
    out.answered = time.monotonic()


def _grpc_client(url: str, x: np.ndarray, out: Outcome) -> None:
    import tritonclient.grpc as grpcclient

    try:
        client = grpcclient.InferenceServerClient(url)
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out.sent = time.monotonic()
        out.logits = client.infer(NAME, [inp], client_timeout=180).as_numpy("output_0")
    except Exception as e:
        out.error = f"grpc: {_describe(e)}"
    out.answered = time.monotonic()


def _start_clients(http_url: str, grpc_url: str, x: np.ndarray) -> Clients:
    clients = Clients()
    for i in range(len(x)):
        out = Outcome()
        fn = _http_client if i % 2 == 0 else _grpc_client
        t = threading.Thread(target=fn, args=(http_url if fn is _http_client else grpc_url, x[i:i + 1], out),
                             daemon=True)
        clients.outcomes.append(out)
        clients.threads.append(t)
        t.start()
    return clients


def _wait(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _raw_infer(base: str, x: np.ndarray, host: str | None = None) -> tuple[int, dict[str, str], float]:
    import json

    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.flatten().tolist()}]}).encode()
    req = urllib.request.Request(f"http://{base}/v2/models/{NAME}/infer", data=body, method="POST",
                                 headers={"Content-Type": "application/json", **({"Host": host} if host else {})})
    began = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), time.monotonic() - began
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), time.monotonic() - began


@pytest.fixture
def ports() -> tuple[int, int, int]:
    return free_port(), free_port(), free_port()


def test_hundred_clients_held_until_triton_starts_late_none_lost(digits: Digits, ports: tuple[int, int, int],
                                                                  tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    routes = tmp_path / "routes.json"
    write_routes(routes, [_route(ports[0], ports[1])])
    with running_activator(tmp_path / "activator.log", {
        "MD_ACTIVATOR_ROUTES_FILE": str(routes), "MD_ACTIVATOR_MAX_HELD": str(CAP),
        "MD_ACTIVATOR_HOLD_TIMEOUT_SECONDS": "150", "MD_ACTIVATOR_PROBE_INTERVAL_SECONDS": "0.05",
    }) as act:
        _wait(lambda: act.metric("modeldeploy_activator_routes") == 1, 10, "the route to load")
        clients = _start_clients(act.http_url, act.grpc_url, digits.x)
        _wait(lambda: act.metric("modeldeploy_activator_held_requests", **LABELS) == CLIENTS, 60,
              f"{CLIENTS} held requests")

        # Over the cap: refused at once with Retry-After, never held.
        for _ in range(3):
            status, headers, took = _raw_infer(act.http_url, digits.x[:1])
            assert status == 429 and headers.get("Retry-After") == "2" and took < 2.0, (status, headers, took)
        status, headers, _ = _raw_infer(act.http_url, digits.x[:1], host=f"{NAME}.{NS}.svc.cluster.local:8000")
        assert status == 429, status
        client = grpcclient.InferenceServerClient(act.grpc_url)
        inp = grpcclient.InferInput("x", [1, 1, 8, 8], "FP32")
        inp.set_data_from_numpy(digits.x[:1])
        began = time.monotonic()
        with pytest.raises(InferenceServerException) as refused:
            client.infer(NAME, [inp], client_timeout=30)
        assert "RESOURCE_EXHAUSTED" in str(refused.value.status()) and time.monotonic() - began < 2.0
        assert all(not o.answered for o in clients.outcomes), "nothing may be answered before Triton is up"

        triton_began = time.monotonic()
        with serving.running(digits.repo, tmp_path / "triton.log", ports=ports) as server:
            ready_at = triton_began + server.ready_seconds  # as seen by a 0.1 s poll: within 0.1 s late
            for t in clients.threads:
                t.join(timeout=120)
            errors = [o.error for o in clients.outcomes if o.error]
            assert not errors, f"{len(errors)} of {CLIENTS} failed: {errors[:5]}"
            answered = [o for o in clients.outcomes if o.logits is not None]
            assert len(answered) == CLIENTS, "lost requests"
            got = np.concatenate([o.logits for o in clients.outcomes])  # type: ignore[misc]
            np.testing.assert_allclose(got, digits.torch_logits, atol=1e-4, rtol=1e-4)

            after_ready = sorted(o.answered - ready_at for o in clients.outcomes)
            held_for = sorted(o.answered - o.sent for o in clients.outcomes)
            m = act.metrics()
            lbl = f"name={NAME},namespace={NS}"
            print(f"\nTriton started late: ready {server.ready_seconds:.2f}s after start; responses after Ready: "
                  f"first {after_ready[0]:.3f}s, p50 {statistics.median(after_ready):.3f}s, "
                  f"last {after_ready[-1]:.3f}s; client-seen latency p50 {statistics.median(held_for):.2f}s; "
                  f"activator cold start {m[f'modeldeploy_activator_cold_start_seconds_sum{{{lbl}}}']:.2f}s")
            assert after_ready[0] <= 0.5, after_ready[:3]
            assert statistics.median(after_ready) <= 0.5 + 0.5, statistics.median(after_ready)
            assert m[f"modeldeploy_activator_forwarded_total{{{lbl}}}"] == CLIENTS
            assert m[f"modeldeploy_activator_held_total{{{lbl}}}"] == CLIENTS
            assert m[f"modeldeploy_activator_held_requests{{{lbl}}}"] == 0
            assert m.get(f"modeldeploy_activator_timed_out_total{{{lbl}}}", 0) == 0
            assert m['modeldeploy_activator_rejected_total{reason=over_cap}'] == 5
            assert m[f"modeldeploy_activator_cold_start_seconds_count{{{lbl}}}"] == 1

            # The gate is open: later requests go straight through, nothing held.
            status, _, took = _raw_infer(act.http_url, digits.x[:1])
            assert status == 200
            assert act.metric("modeldeploy_activator_held_total", **LABELS) == CLIENTS

        # Triton gone (the model back at zero): the next request is held again, then answered.
        outcome = Outcome()
        t = threading.Thread(target=_http_client, args=(act.http_url, digits.x[:1], outcome), daemon=True)
        t.start()
        _wait(lambda: act.metric("modeldeploy_activator_held_requests", **LABELS) == 1, 30, "a held request")
        with serving.running(digits.repo, tmp_path / "triton2.log", ports=ports):
            t.join(timeout=60)
        assert outcome.logits is not None, outcome.error
        assert act.metric("modeldeploy_activator_cold_start_seconds_count", **LABELS) == 2


def test_refusals_carry_retry_after_and_never_hang(tmp_path: Path, digits: Digits) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    dead_http, dead_grpc = free_port(), free_port()  # nothing will ever listen there
    routes = tmp_path / "routes.json"
    write_routes(routes, [_route(dead_http, dead_grpc)])
    with running_activator(tmp_path / "activator.log", {
        "MD_ACTIVATOR_ROUTES_FILE": str(routes), "MD_ACTIVATOR_HOLD_TIMEOUT_SECONDS": "1.5",
        "MD_ACTIVATOR_RETRY_AFTER_SECONDS": "7",
    }) as act:
        _wait(lambda: act.metric("modeldeploy_activator_routes") == 1, 10, "the route to load")
        status, headers, took = _raw_infer(act.http_url, digits.x[:1])
        assert status == 503 and headers.get("Retry-After") == "7" and 1.4 <= took < 4, (status, headers, took)

        client = grpcclient.InferenceServerClient(act.grpc_url)
        inp = grpcclient.InferInput("x", [1, 1, 8, 8], "FP32")
        inp.set_data_from_numpy(digits.x[:1])
        began = time.monotonic()
        with pytest.raises(InferenceServerException) as timed_out:
            client.infer(NAME, [inp], client_timeout=30)
        assert "UNAVAILABLE" in str(timed_out.value.status()) and 1.4 <= time.monotonic() - began < 4

        # A model nobody registered (by Host, or by the model in the gRPC message): 503 at once.
        status, headers, took = _raw_infer(act.http_url, digits.x[:1], host="other.ml.svc")
        assert status == 503 and headers.get("Retry-After") == "7" and took < 1, (status, took)
        with pytest.raises(InferenceServerException) as unknown:
            client.infer("not-registered", [inp], client_timeout=30)
        assert "UNAVAILABLE" in str(unknown.value.status())

        assert act.metric("modeldeploy_activator_timed_out_total", **LABELS) == 2
        assert act.metric("modeldeploy_activator_rejected_total", reason="unknown_model") == 2
        assert act.metric("modeldeploy_activator_forwarded_total", **LABELS) == 0


def test_grpc_stream_held_on_its_first_message_then_forwarded(digits: Digits, ports: tuple[int, int, int],
                                                              tmp_path: Path) -> None:
    """ModelStreamInfer (bidirectional): held on its first message until Triton is up, then every
    message of the stream goes through and every answer comes back in order."""
    import queue

    import tritonclient.grpc as grpcclient

    routes = tmp_path / "routes.json"
    write_routes(routes, [_route(ports[0], ports[1])])
    with running_activator(tmp_path / "activator.log", {"MD_ACTIVATOR_ROUTES_FILE": str(routes)}) as act:
        _wait(lambda: act.metric("modeldeploy_activator_routes") == 1, 10, "the route to load")
        answers: queue.Queue[tuple[object, object]] = queue.Queue()
        client = grpcclient.InferenceServerClient(act.grpc_url)
        client.start_stream(callback=lambda result, error: answers.put((result, error)), stream_timeout=120)
        for i in range(5):
            inp = grpcclient.InferInput("x", [1, 1, 8, 8], "FP32")
            inp.set_data_from_numpy(digits.x[i:i + 1])
            client.async_stream_infer(NAME, [inp], request_id=str(i))
        _wait(lambda: act.metric("modeldeploy_activator_held_requests", **LABELS) == 1, 30, "the held stream")
        with serving.running(digits.repo, tmp_path / "triton.log", ports=ports):
            got = [answers.get(timeout=60) for _ in range(5)]
            client.stop_stream()
        for i, (result, error) in enumerate(got):
            assert error is None, error
            assert result.get_response().id == str(i)  # type: ignore[attr-defined]
            np.testing.assert_allclose(result.as_numpy("output_0"), digits.torch_logits[i:i + 1],  # type: ignore[attr-defined]
                                       atol=1e-4, rtol=1e-4)


def _held(act, n: int) -> None:  # type: ignore[no-untyped-def]
    _wait(lambda: act.metric("modeldeploy_activator_held_requests", **LABELS) == n, 60, f"{n} held requests")


def _signal(act, sig: int) -> None:  # type: ignore[no-untyped-def]
    import os

    os.killpg(act.process.pid, sig)


def test_sigterm_drains_held_requests_to_a_late_pod_then_refuses_new_ones(digits: Digits, ports: tuple[int, int, int],
                                                                           tmp_path: Path) -> None:
    import signal

    routes = tmp_path / "routes.json"
    write_routes(routes, [_route(ports[0], ports[1])])
    with running_activator(tmp_path / "activator.log", {
        "MD_ACTIVATOR_ROUTES_FILE": str(routes), "MD_ACTIVATOR_DRAIN_SECONDS": "30",
        "MD_ACTIVATOR_UNREADY_SECONDS": "1",
    }) as act:
        clients = _start_clients(act.http_url, act.grpc_url, digits.x[:20])
        _held(act, 20)
        _signal(act, signal.SIGTERM)
        _wait(lambda: not _readyz(act.admin_url), 5, "not ready after SIGTERM")
        late = _start_clients(act.http_url, act.grpc_url, digits.x[20:22])  # within unreadySeconds: still taken
        _held(act, 22)
        time.sleep(1.2)
        status, headers, took = _raw_infer(act.http_url, digits.x[:1])  # draining: refused, never held
        assert status == 503 and headers.get("Retry-After") == "1" and took < 1, (status, headers, took)
        with serving.running(digits.repo, tmp_path / "triton.log", ports=ports):
            for t in clients.threads + late.threads:
                t.join(timeout=60)
        outcomes = clients.outcomes + late.outcomes
        assert [o.error for o in outcomes if o.error] == []
        assert all(o.logits is not None for o in outcomes)
        assert act.process.wait(timeout=30) == 0  # exits once nothing is held


def test_sigterm_with_no_pod_coming_answers_held_requests_503_not_a_reset(digits: Digits, tmp_path: Path) -> None:
    import signal

    routes = tmp_path / "routes.json"
    write_routes(routes, [_route(free_port(), free_port())])
    with running_activator(tmp_path / "activator.log", {
        "MD_ACTIVATOR_ROUTES_FILE": str(routes), "MD_ACTIVATOR_DRAIN_SECONDS": "1",
    }) as act:
        clients = _start_clients(act.http_url, act.grpc_url, digits.x[:6])
        _held(act, 6)
        began = time.monotonic()
        _signal(act, signal.SIGTERM)
        for t in clients.threads:
            t.join(timeout=30)
        errors = [o.error for o in clients.outcomes]
        assert all(("503" in e or "stopping" in e) if e.startswith("http") else "UNAVAILABLE" in e
                   for e in errors), errors
        assert time.monotonic() - began < 5
        assert act.process.wait(timeout=10) == 0


def test_sigkill_while_holding_what_clients_see_and_the_other_replica_answers(digits: Digits,
                                                                               ports: tuple[int, int, int],
                                                                               tmp_path: Path) -> None:
    """A replica killed outright (OOM, node loss) loses its held requests: the clients see their
    connection reset at once (never a hang); a retry (a new connection, which the Service sends to
    the other replica) is held there and answered."""
    import signal

    routes = tmp_path / "routes.json"
    write_routes(routes, [_route(ports[0], ports[1])])
    env = {"MD_ACTIVATOR_ROUTES_FILE": str(routes)}
    with running_activator(tmp_path / "a.log", env) as a, running_activator(tmp_path / "b.log", env) as b:
        clients = _start_clients(a.http_url, a.grpc_url, digits.x[:20])
        _held(a, 20)
        began = time.monotonic()
        _signal(a, signal.SIGKILL)
        for t in clients.threads:
            t.join(timeout=30)
        seen = sorted({o.error.split("(")[0] + ": " + o.error.split("(")[1][:40] for o in clients.outcomes
                       if o.error})
        print(f"\nSIGKILL of the activator holding 20 requests: {sum(1 for o in clients.outcomes if o.error)} "
              f"clients got errors within {max(o.answered for o in clients.outcomes) - began:.2f}s: {seen}")
        assert all(o.error for o in clients.outcomes)
        retries = _start_clients(b.http_url, b.grpc_url, digits.x[:20])
        _held(b, 20)
        with serving.running(digits.repo, tmp_path / "triton.log", ports=ports):
            for t in retries.threads:
                t.join(timeout=60)
        assert [o.error for o in retries.outcomes if o.error] == []
        np.testing.assert_allclose(np.concatenate([o.logits for o in retries.outcomes]),  # type: ignore[misc]
                                   digits.torch_logits[:20], atol=1e-4, rtol=1e-4)


def _readyz(admin_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{admin_url}/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def test_connections_are_not_pinned_to_the_activator(digits: Digits, ports: tuple[int, int, int],
                                                     tmp_path: Path) -> None:
    """kube-proxy picks a backend per connection: the activator closes every HTTP connection after its
    answer and sends gRPC connections GOAWAY after their maximum age, so clients reconnect (through
    the Service, to the pods once it points at them). Neither costs the client an error: a gRPC call
    held across the connection's age is answered, and later calls on the same channel succeed."""
    import http.client
    import json

    import tritonclient.grpc as grpcclient

    routes = tmp_path / "routes.json"
    write_routes(routes, [_route(ports[0], ports[1])])
    with running_activator(tmp_path / "activator.log", {
        "MD_ACTIVATOR_ROUTES_FILE": str(routes), "MD_ACTIVATOR_GRPC_MAX_CONNECTION_AGE_SECONDS": "1",
    }) as act:
        _wait(lambda: act.metric("modeldeploy_activator_routes") == 1, 10, "the route to load")
        client = grpcclient.InferenceServerClient(act.grpc_url)
        held = Outcome()

        def call() -> None:
            inp = grpcclient.InferInput("x", [1, 1, 8, 8], "FP32")
            inp.set_data_from_numpy(digits.x[:1])
            try:
                held.logits = client.infer(NAME, [inp], client_timeout=60).as_numpy("output_0")
            except Exception as e:
                held.error = _describe(e)

        t = threading.Thread(target=call, daemon=True)
        t.start()
        _held(act, 1)
        time.sleep(2.5)  # past the connection's age while the call is held
        with serving.running(digits.repo, tmp_path / "triton.log", ports=ports):
            t.join(timeout=60)
            assert held.error == "" and held.logits is not None
            for _ in range(3):  # the same channel, across more GOAWAYs
                time.sleep(1.2)
                call()
                assert held.error == "", held.error

            conn = http.client.HTTPConnection(act.http_url)  # a keep-alive client
            body = json.dumps({"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                           "data": digits.x[:1].flatten().tolist()}]})
            conn.request("POST", f"/v2/models/{NAME}/infer", body=body, headers={"Connection": "keep-alive"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200 and resp.getheader("Connection") == "close"
            conn.close()


def test_held_bodies_have_a_memory_budget(digits: Digits, tmp_path: Path) -> None:
    routes = tmp_path / "routes.json"
    write_routes(routes, [_route(free_port(), free_port())])
    with running_activator(tmp_path / "activator.log", {
        "MD_ACTIVATOR_ROUTES_FILE": str(routes), "MD_ACTIVATOR_MAX_HELD_BYTES": "1024",
        "MD_ACTIVATOR_HOLD_TIMEOUT_SECONDS": "1",
    }) as act:
        _wait(lambda: act.metric("modeldeploy_activator_routes") == 1, 10, "the route to load")
        status, headers, took = _raw_infer(act.http_url, digits.x[:8])  # 512 floats as JSON: over 1 kB
        assert status == 429 and headers.get("Retry-After") == "2" and took < 1, (status, took)
        assert act.metric("modeldeploy_activator_rejected_model_total", **LABELS, reason="over_cap") == 1
