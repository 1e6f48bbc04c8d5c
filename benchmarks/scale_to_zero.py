"""The activator on this machine (processes, no Kubernetes): cold first response and steady-state cost.

One run, the digits CNN served by the CPU tritonserver, the activator as a process
(`python -m modeldeploy.activator`, routes from a file), clients from tritonclient:

  cold     R rounds: N concurrent clients (half HTTP, half gRPC) send to the activator while the
           model has no server, are held, then Triton starts. Per round: Triton's own Ready time
           (from its start to /v2/health/ready 200, polled every 20 ms here) and every response's
           time from Triton's start; the first response and p50/p99 over Ready time.
  steady   with Triton up, the closed-loop load generator of benchmarks/serving.py at concurrency
           C for D seconds, HTTP: straight to Triton, then through the activator with its gate
           open (what a client would see if the Service still pointed at the activator: in the
           design it does not once a pod is Ready, so this is the worst case of a slow switch).

With `--keda-src <checkout of github.com/kedacore/http-add-on>` the same rounds also run through
the KEDA HTTP add-on's interceptor (benchmarks/_keda_interceptor.py; HTTP only, as its cold
figures are compared with the activator's HTTP clients), and the steady load a third time
through the interceptor, which stays in the request path while pods are up.

Goal (issue 19, measured there on the real node): cold p50 first response <= pod Ready + 0.5 s.
Here "Ready" is Triton's start-to-ready on a local model repository (the cached-artifact case
without the pod around it). Printed MET / NOT MET; the exit status is non-zero only when a
measurement failed (lost or failed requests).

    .venv/bin/python benchmarks/scale_to_zero.py --json out/scale_to_zero.json
    .venv/bin/python benchmarks/scale_to_zero.py --rounds 2 --clients 20 --duration 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "hack")]

from benchmarks import _keda_interceptor as keda  # noqa: E402
from benchmarks._load import run_load  # noqa: E402
from benchmarks._report import write_json  # noqa: E402
from localcluster.process import free_port  # noqa: E402
from modeldeploy.loader.cli import main as loader_main  # noqa: E402
from tests.support import serving, serving_digits  # noqa: E402
from tests.support.activator import running_activator, write_routes  # noqa: E402

NAME = "digits"


def _repo(work: Path) -> tuple[Path, np.ndarray]:
    data = serving_digits.load_digits()
    model = serving_digits.train_cnn(data, epochs=4)
    ts = serving_digits.save_torchscript(model, work / "digits.pt")
    code = loader_main([], {
        "MD_SOURCE_URI": f"file://{ts}", "MD_FORMAT": "torchscript", "MD_MODEL_NAME": NAME, "MD_MODEL_VERSION": "1",
        "MD_REPOSITORY": str(work / "repo"), "MD_TERMINATION_LOG": str(work / "term"), "MD_BACKEND": "python-onnx",
        "MD_RUNNER_SYS_PATH": serving.triton_install().stub_site, "MD_MAX_BATCH_SIZE": "32", "MD_WARMUP": "true",
        "MD_DYNAMIC_BATCHING": '{"maxQueueDelayMicroseconds": 2000}',
        "MD_INPUT_SHAPES": '[{"name": "x", "dtype": "float32", "shape": [1, 8, 8]}]'})
    if code != 0:
        raise SystemExit(f"loader failed: {(work / 'term').read_text()}")
    return work / "repo", data.x_test


def _http(url: str):  # type: ignore[no-untyped-def]
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, connection_timeout=180, network_timeout=180)

    def send(x: np.ndarray) -> object:
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(NAME, [inp]).as_numpy("output_0")

    return send


def _grpc(url: str):  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)

    def send(x: np.ndarray) -> object:
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(NAME, [inp], client_timeout=180).as_numpy("output_0")

    return send


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _held_round(x: np.ndarray, clients: int, sender: Callable[[int], Callable[[np.ndarray], object]],
                held: Callable[[], float], server: AbstractContextManager[object], http_port: int,
                on_ready: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """`clients` concurrent requests (client i sends through `sender(i)`), held until `held()` counts
    them all, then Triton (`server`) starts; `on_ready` runs the moment Triton answers ready (a
    20 ms poll). Times from Triton's start."""
    done: list[float | None] = [None] * clients
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            sender(i)(x[i % len(x)][None])
            done[i] = time.monotonic()
        except Exception as e:
            errors.append(repr(e)[:200])

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while held() < clients and time.monotonic() < deadline:
        time.sleep(0.05)
    ready_at: list[float] = []
    stop = threading.Event()

    def watch_ready() -> None:
        while not stop.is_set():
            if _ready(http_port):
                ready_at.append(time.monotonic())
                on_ready()
                return
            time.sleep(0.02)

    started = time.monotonic()
    watcher = threading.Thread(target=watch_ready, daemon=True)
    watcher.start()
    with server:
        for t in threads:
            t.join(timeout=180)
        stop.set()
        watcher.join(timeout=5)
    return _summary(done, started, ready_at, errors, clients)


def cold_round(repo: Path, x: np.ndarray, clients: int, work: Path, k: int) -> dict[str, Any]:
    ports = (free_port(), free_port(), free_port())
    routes = work / f"routes-{k}.json"
    write_routes(routes, [{"namespace": "ml", "name": NAME, "model": NAME, "clusterIPs": ["127.0.0.1"],
                           "http": f"127.0.0.1:{ports[0]}", "grpc": f"127.0.0.1:{ports[1]}"}])
    with running_activator(work / f"activator-{k}.log", {
        "MD_ACTIVATOR_ROUTES_FILE": str(routes), "MD_ACTIVATOR_MAX_HELD": str(max(clients, 1)),
        "MD_ACTIVATOR_HOLD_TIMEOUT_SECONDS": "180"}) as act:
        while act.metric("modeldeploy_activator_routes") != 1:
            time.sleep(0.05)
        return _held_round(
            x, clients, lambda i: _http(act.http_url) if i % 2 == 0 else _grpc(act.grpc_url),
            lambda: act.metric("modeldeploy_activator_held_requests", namespace="ml", name=NAME),
            serving.running(repo, work / f"triton-{k}.log", ports=ports), ports[0])


def _summary(done: list[float | None], started: float, ready_at: list[float], errors: list[str],
             clients: int) -> dict[str, Any]:
    answered = sorted(d - started for d in done if d is not None)
    http = sorted(d - started for i, d in enumerate(done) if d is not None and i % 2 == 0)
    ready_s = ready_at[0] - started if ready_at else float("nan")
    return {"clients": clients, "answered": len(answered), "errors": errors[:3], "ready_s": ready_s,
            "first_s": answered[0] if answered else None,
            "p50_s": statistics.median(answered) if answered else None,
            "p99_s": float(np.percentile(answered, 99)) if answered else None,
            "http_p50_s": statistics.median(http) if http else None}


def keda_cold_round(icp: keda.Interceptor, repo: Path, x: np.ndarray, clients: int, work: Path, k: int,
                    ports: tuple[int, int, int]) -> dict[str, Any]:
    """One cold round through the interceptor: HTTP clients held there, Triton started, the endpoint
    marked ready the moment Triton answers its readiness probe."""
    icp.set_ready(False)
    summary = _held_round(x, clients, lambda i: _http(icp.url), icp.held,
                          serving.running(repo, work / f"triton-keda-{k}.log", extra_args=("--http-address=0.0.0.0",),
                                          ports=ports), ports[0], on_ready=lambda: icp.set_ready(True))
    summary["http_p50_s"] = summary["p50_s"]  # every client is HTTP here
    return summary


def keda_runs(src: Path, repo: Path, x: np.ndarray, clients: int, rounds: int, concurrency: int, duration: float,
              work: Path) -> dict[str, Any]:
    binary = keda.build(src, work)
    ports = (free_port(), free_port(), free_port())
    inputs = [x[i][None] for i in range(64)]
    with keda.running_interceptor(binary, src, work, ports[0]) as icp:
        icp.wait_routed()
        cold = [keda_cold_round(icp, repo, x, clients, work, k, ports) for k in range(rounds)]
        with serving.running(repo, work / "triton-keda-steady.log", extra_args=("--http-address=0.0.0.0",),
                             ports=ports):
            icp.set_ready(True)
            _http(icp.url)(inputs[0])
            steady_via = run_load(lambda: _http(icp.url), inputs, concurrency, duration, 2.0)
    return {"cold": cold, "steady": steady_via.as_dict()}


def steady(repo: Path, x: np.ndarray, concurrency: int, duration: float, work: Path) -> dict[str, Any]:
    ports = (free_port(), free_port(), free_port())
    routes = work / "routes-steady.json"
    write_routes(routes, [{"namespace": "ml", "name": NAME, "model": NAME, "clusterIPs": ["127.0.0.1"],
                           "http": f"127.0.0.1:{ports[0]}", "grpc": f"127.0.0.1:{ports[1]}"}])
    inputs = [x[i][None] for i in range(64)]
    with serving.running(repo, work / "triton-steady.log", ports=ports) as server, \
            running_activator(work / "activator-steady.log", {"MD_ACTIVATOR_ROUTES_FILE": str(routes)}) as act:
        _http(act.http_url)(inputs[0])  # opens the gate
        direct = run_load(lambda: _http(server.http_url), inputs, concurrency, duration, 2.0)
        via = run_load(lambda: _http(act.http_url), inputs, concurrency, duration, 2.0)
    return {"direct": direct.as_dict(), "activator": via.as_dict()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--keda-src", type=Path, help="a checkout of github.com/kedacore/http-add-on: also measure "
                   "its interceptor in the same run")
    args = p.parse_args(argv)
    kd: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="scale-to-zero-") as tmp:
        work = Path(tmp)
        repo, x = _repo(work)
        rounds = [cold_round(repo, x, args.clients, work, k) for k in range(args.rounds)]
        st = steady(repo, x, args.concurrency, args.duration, work)
        if args.keda_src:
            kd = keda_runs(args.keda_src, repo, x, args.clients, args.rounds, args.concurrency, args.duration, work)
    failed = any(r["answered"] != r["clients"] for r in rounds) or st["direct"]["errors"] or st["activator"]["errors"]
    print(f"\ncold: {args.clients} clients held, Triton started late "
          f"({args.rounds} rounds; seconds from Triton's start)")
    print(f"{'round':>5} {'ready':>7} {'first':>7} {'p50':>7} {'p99':>7} {'answered':>9}")
    for k, r in enumerate(rounds):
        print(f"{k:>5} {r['ready_s']:7.2f} {r['first_s'] or float('nan'):7.2f} {r['p50_s'] or float('nan'):7.2f} "
              f"{r['p99_s'] or float('nan'):7.2f} {r['answered']:>4}/{r['clients']}")
    over = [r["p50_s"] - r["ready_s"] for r in rounds if r["p50_s"] is not None]
    first_over = [r["first_s"] - r["ready_s"] for r in rounds if r["first_s"] is not None]
    p50_over = statistics.median(over) if over else float("nan")
    print(f"first response after Ready: median {statistics.median(first_over):.3f}s; "
          f"p50 response after Ready: median {p50_over:.3f}s over rounds")
    print(f"goal p50 cold response <= Ready + 0.5 s: {'MET' if p50_over <= 0.5 else 'NOT MET'} "
          f"({p50_over:.3f}s over Ready)")
    d, a = st["direct"], st["activator"]
    print(f"\nsteady, HTTP, concurrency {args.concurrency}, {args.duration:g}s: direct {d['throughput']:.0f} req/s "
          f"p50 {d['p50_ms']:.2f} ms p99 {d['p99_ms']:.2f} ms; through the activator {a['throughput']:.0f} req/s "
          f"p50 {a['p50_ms']:.2f} ms p99 {a['p99_ms']:.2f} ms ({a['throughput'] / d['throughput']:.2f}x throughput)")
    if kd is not None:
        _print_keda(kd, rounds, st, args)
        failed = failed or any(r["answered"] != r["clients"] for r in kd["cold"]) or bool(kd["steady"]["errors"])
    write_json(args.json, {"cold": rounds, "steady": st, "p50_over_ready_s": p50_over,
                           "first_over_ready_s": statistics.median(first_over), "keda": kd})
    return 1 if failed else 0


def _print_keda(kd: dict[str, Any], rounds: list[dict[str, Any]], st: dict[str, Any], args: Any) -> None:
    print(f"\nKEDA HTTP add-on interceptor, same model, {args.clients} HTTP clients held, Triton started late "
          "(its endpoint marked ready within 20 ms of Triton's readiness)")
    print(f"{'round':>5} {'ready':>7} {'first':>7} {'p50':>7} {'p99':>7} {'answered':>9}")
    for k, r in enumerate(kd["cold"]):
        print(f"{k:>5} {r['ready_s']:7.2f} {r['first_s'] or float('nan'):7.2f} {r['p50_s'] or float('nan'):7.2f} "
              f"{r['p99_s'] or float('nan'):7.2f} {r['answered']:>4}/{r['clients']}")
    ours = [r["http_p50_s"] - r["ready_s"] for r in rounds if r["http_p50_s"] is not None]
    theirs = [r["p50_s"] - r["ready_s"] for r in kd["cold"] if r["p50_s"] is not None]
    if ours and theirs:
        print(f"HTTP p50 cold response after Ready, median over rounds: activator {statistics.median(ours):.3f}s, "
              f"KEDA interceptor {statistics.median(theirs):.3f}s")
    d, a, k = st["direct"], st["activator"], kd["steady"]
    print(f"steady, HTTP, concurrency {args.concurrency}: direct (our design once a pod is Ready) "
          f"p50 {d['p50_ms']:.2f} ms, {d['throughput']:.0f} req/s; through the KEDA interceptor (always, by "
          f"design) p50 {k['p50_ms']:.2f} ms p99 {k['p99_ms']:.2f} ms, {k['throughput']:.0f} req/s "
          f"({k['throughput'] / d['throughput']:.2f}x throughput, +{k['p50_ms'] - d['p50_ms']:.2f} ms p50); "
          f"through our activator's open gate p50 {a['p50_ms']:.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
