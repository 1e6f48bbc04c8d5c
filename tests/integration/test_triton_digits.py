"""A real model through the whole data plane: train -> TorchScript/.pt2 -> loader -> tritonserver -> clients.

A CNN is trained in the test on scikit-learn's bundled digits, converted by the loader, served by
a real tritonserver (python backend + onnxruntime, as in the CPU image) and queried over HTTP and
gRPC; answers must match torch's. Under concurrent load Triton must batch requests together.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from modeldeploy.loader.cli import main
from tests.support import serving, serving_digits
from tests.support.serving_models import echo_tarball, failing_onnx, lookup_onnx

pytestmark = pytest.mark.integration
MAX_BATCH = 32


@dataclass
class Served:
    server: serving.TritonServer
    data: serving_digits.Digits
    torch_logits: np.ndarray  # the trained model's answers on the held-out split
    repo: Path
    work: Path


def _load(work: Path, name: str, uri: str, stub_site: str, **env: str) -> tuple[int, str]:
    term = work / f"{name}.termination-log"
    code = main([], {
        "MD_SOURCE_URI": uri, "MD_MODEL_NAME": name, "MD_MODEL_VERSION": "1", "MD_REPOSITORY": str(work / "repo"),
        "MD_TERMINATION_LOG": str(term), "MD_BACKEND": "python-onnx", "MD_RUNNER_SYS_PATH": stub_site,
        "MD_MAX_BATCH_SIZE": str(MAX_BATCH), "MD_WARMUP": "true",
        "MD_DYNAMIC_BATCHING": '{"maxQueueDelayMicroseconds": 2000, "preferredBatchSizes": [8, 16]}', **env,
    })
    return code, term.read_text().strip() if term.exists() else ""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("digits")
    stub_site = serving.triton_install().stub_site
    data = serving_digits.load_digits()
    model = serving_digits.train_cnn(data)
    ts = serving_digits.save_torchscript(model, work / "digits.pt")
    pt2 = serving_digits.save_exported(model, work / "digits.pt2", data.x_test[:4])
    val = serving_digits.save_validation(data, work / "validation.npz")
    tarball = work / "echo.tar.gz"
    tarball.write_bytes(echo_tarball())
    loads = {
        "digits": (f"file://{ts}", {"MD_FORMAT": "torchscript", "MD_VALIDATION_URI": f"file://{val}"}),
        "digits-int8": (f"file://{ts}", {"MD_FORMAT": "torchscript", "MD_QUANTIZE": "int8",
                                         "MD_MIN_AGREEMENT": "0.98", "MD_VALIDATION_URI": f"file://{val}"}),
        "digits-export": (f"file://{pt2}", {"MD_FORMAT": "pytorch-export"}),
        "echo": (f"file://{tarball}", {"MD_FORMAT": "python", "MD_DYNAMIC_BATCHING": "", "MD_MAX_BATCH_SIZE": "8"}),
        # fails inside onnxruntime on every run; no warm-up, or Triton would refuse to load it
        "failing": (f"file://{failing_onnx(work / 'failing.onnx')}", {"MD_FORMAT": "onnx", "MD_WARMUP": "false"}),
        "lookup": (f"file://{lookup_onnx(work / 'lookup.onnx')}", {"MD_FORMAT": "onnx", "MD_WARMUP": "false"}),
    }
    for name, (uri, env) in loads.items():
        code, msg = _load(work, name, uri, stub_site, **env)
        assert code == 0, f"loader failed for {name}: {msg}"
    with serving.running(work / "repo", work / "triton.log") as server:
        yield Served(server, data, serving_digits.predict(model, data.x_test), work / "repo", work)


def _http_infer(url: str, model: str, x: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)  # one client per thread: they are not thread-safe
    name = client.get_model_metadata(model)["inputs"][0]["name"]  # nn.Sequential's forward calls it "input"
    out = []
    for start in range(0, len(x), 16):
        batch = x[start : start + 16]
        inp = httpclient.InferInput(name, list(batch.shape), "FP32")
        inp.set_data_from_numpy(batch)
        out.append(client.infer(model, [inp]).as_numpy("output_0"))
    return np.concatenate(out)


def _metric(text: str, name: str, model: str) -> float:
    pattern = rf'^{name}{{[^}}]*model="{re.escape(model)}"[^}}]*}} ([0-9.e+]+)$'
    return sum(float(m) for m in re.findall(pattern, text, re.MULTILINE))


def test_http_answers_match_torch(served: Served) -> None:
    logits = _http_infer(served.server.http_url, "digits", served.data.x_test)
    np.testing.assert_allclose(logits, served.torch_logits, atol=1e-4, rtol=1e-4)
    accuracy = float(np.mean(logits.argmax(1) == served.data.y_test))
    assert accuracy >= 0.95, accuracy


def test_grpc_answers_match_torch(served: Served) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    x = served.data.x_test[:MAX_BATCH]
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    logits = client.infer("digits", [inp]).as_numpy("output_0")
    np.testing.assert_allclose(logits, served.torch_logits[:MAX_BATCH], atol=1e-4, rtol=1e-4)
    assert client.is_model_ready("digits")


def test_exported_program_is_served_like_torch(served: Served) -> None:
    logits = _http_infer(served.server.http_url, "digits-export", served.data.x_test[:64])
    np.testing.assert_allclose(logits, served.torch_logits[:64], atol=1e-4, rtol=1e-4)


def test_int8_model_serves_within_one_point_of_fp32(served: Served) -> None:
    fp32 = float(np.mean(served.torch_logits.argmax(1) == served.data.y_test))
    logits = _http_infer(served.server.http_url, "digits-int8", served.data.x_test)
    int8 = float(np.mean(logits.argmax(1) == served.data.y_test))
    print(f"\nheld-out accuracy: fp32 {fp32:.4f}, int8 served by Triton {int8:.4f}")
    assert int8 >= fp32 - 0.01, (fp32, int8)
    assert 'string_value: "int8"' in (served.repo / "digits-int8" / "config.pbtxt").read_text()


def test_triton_batches_concurrent_requests(served: Served) -> None:
    before = served.server.metrics()
    x = served.data.x_test
    senders, per_sender = 8, 40
    errors: list[BaseException] = []
    latencies: list[float] = []

    def send(k: int) -> None:
        import tritonclient.http as httpclient

        try:
            client = httpclient.InferenceServerClient(served.server.http_url)
            for i in range(per_sender):
                sample = x[(k * per_sender + i) % len(x)][None]
                inp = httpclient.InferInput("x", list(sample.shape), "FP32")
                inp.set_data_from_numpy(sample)
                t0 = time.perf_counter()
                client.infer("digits", [inp])
                latencies.append(time.perf_counter() - t0)
        except BaseException as e:  # surfaced below, in the test's thread
            errors.append(e)

    started = time.perf_counter()
    threads = [threading.Thread(target=send, args=(k,)) for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    assert not errors, errors[0]
    after = served.server.metrics()
    inferences = _metric(after, "nv_inference_count", "digits") - _metric(before, "nv_inference_count", "digits")
    executions = (_metric(after, "nv_inference_exec_count", "digits")
                  - _metric(before, "nv_inference_exec_count", "digits"))
    print(f"\n{senders * per_sender} requests from {senders} senders in {elapsed:.2f}s "
          f"({senders * per_sender / elapsed:.0f} req/s, p50 {np.percentile(latencies, 50) * 1e3:.1f} ms, "
          f"p99 {np.percentile(latencies, 99) * 1e3:.1f} ms); {inferences:.0f} inferences in {executions:.0f} "
          f"executions; ready in {served.server.ready_seconds:.1f}s")
    assert inferences == senders * per_sender
    assert executions < inferences  # the dynamic batcher put several requests into one execution


def test_users_python_model_is_served_as_is(served: Served) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(served.server.http_url)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("echo", [inp]).as_numpy("y"), x * 2)


def test_a_bad_request_gets_its_own_error(served: Served) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(served.server.http_url)
    inp = httpclient.InferInput("x", [1, 1, 8, 9], "FP32")  # wrong shape: refused, the server keeps serving
    inp.set_data_from_numpy(np.zeros((1, 1, 8, 9), dtype=np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("digits", [inp])
    assert client.is_server_ready()


def test_int8_slower_than_fp32_is_refused(served: Served, tmp_path: Path) -> None:
    """At width 8 the quantize/dequantize overhead outweighs int8 arithmetic: the speed gate says no."""
    small = serving_digits.train_cnn(served.data, width=8, epochs=2)
    ts = serving_digits.save_torchscript(small, tmp_path / "small.pt")
    code, msg = _load(tmp_path, "small", f"file://{ts}", "", MD_FORMAT="torchscript", MD_QUANTIZE="int8",
                      MD_MIN_AGREEMENT="0", MD_INPUT_SHAPES='[{"name": "x", "dtype": "float32", "shape": [1, 8, 8]}]')
    assert code == 1 and msg.startswith("int8 model rejected: slower than fp32"), msg
    assert not (tmp_path / "repo" / "small").exists()


def test_a_model_failing_at_run_time_is_counted_as_failing(served: Served) -> None:
    """Canary analysis reads nv_inference_request_failure: a broken model must show up there, alone
    and inside a dynamic batch, while good requests to other models keep succeeding."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    def send(count: int) -> int:
        client = httpclient.InferenceServerClient(served.server.http_url)
        refused = 0
        for _ in range(count):
            inp = httpclient.InferInput("x", [2, 4], "FP32")
            inp.set_data_from_numpy(np.ones((2, 4), dtype=np.float32))
            try:
                client.infer("failing", [inp])
            except InferenceServerException:
                refused += 1
        return refused

    assert send(5) == 5  # one at a time
    threads = [threading.Thread(target=send, args=(10,)) for _ in range(4)]  # batched by Triton
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = served.server.metrics()
    assert _metric(text, "nv_inference_request_failure", "failing") == 45
    assert _metric(text, "nv_inference_request_success", "failing") == 0


def test_a_bad_request_never_fails_the_good_ones_batched_with_it(served: Served) -> None:
    """A request the model cannot answer gets its error; the requests batched with it get answers.
    Alone, the failing request is counted as a failure (the runner raises when nothing succeeded)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    def ask(first: float) -> float | None:
        client = httpclient.InferenceServerClient(served.server.http_url)
        inp = httpclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.array([[first, 0, 0, 0]], dtype=np.float32))
        try:
            return float(client.infer("lookup", [inp]).as_numpy("y")[0, 0])
        except InferenceServerException:
            return None

    before = _metric(served.server.metrics(), "nv_inference_request_failure", "lookup")
    assert [ask(9) for _ in range(3)] == [None] * 3  # alone: each counted as a failure
    assert _metric(served.server.metrics(), "nv_inference_request_failure", "lookup") == before + 3

    answers: dict[int, float | None] = {}

    def sender(k: int) -> None:
        for j in range(10):
            answers[k * 10 + j] = ask(9 if k % 4 == 0 else (k + j) % 4)

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]  # 2 bad senders of 8
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, got in answers.items():
        k, j = divmod(i, 10)
        want = None if k % 4 == 0 else float((k + j) % 4 * 10)
        assert got == want, (k, j, got)
    text = served.server.metrics()  # the good and bad requests did share executions
    assert _metric(text, "nv_inference_exec_count", "lookup") < _metric(text, "nv_inference_count", "lookup")
