"""Serving benchmark: Flask + eager PyTorch vs TorchServe vs our Triton path (fp32 and int8).

Everything in one run on this machine, same model and same inputs, and ONE load generator for all
servers (benchmarks/_load.py: a closed loop of N sender threads, one image per request, fixed
duration per level). Servers, all real processes on free loopback ports:

  flask       the seed baseline: Flask threaded dev server, eager PyTorch, one image per request
  torchserve  PyPI torchserve, eager PyTorch, TorchServe's batching (batchSize 32, maxBatchDelay 2 ms)
  triton      modeldeploy.loader (TorchScript -> ONNX, python-onnx backend, dynamic batching, max
              batch 32) + a real tritonserver, queried with tritonclient.http
  triton-int8 the same loader with MD_QUANTIZE=int8 (static QDQ calibrated on validation data)

Models: the digits CNN (trained in the run) and torchvision ResNet-50 (random weights, 224x224).
Also measured: raw onnxruntime in-process throughput at batch 32 on the loader's model.onnx (the
compute ceiling, no HTTP), and Triton's share of it at concurrency 32.

    .venv/bin/python benchmarks/serving.py --json out/serving.json          # full run
    .venv/bin/python benchmarks/serving.py --quick --json out/quick.json    # digits, concurrency 1 and 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

from benchmarks._load import LoadResult, run_load  # noqa: E402
from benchmarks._report import write_json  # noqa: E402
from tests.support import serving, serving_digits  # noqa: E402

MAX_BATCH = 32
DYNAMIC_BATCHING = '{"maxQueueDelayMicroseconds": 2000}'
BIN = Path(sys.executable).parent


@dataclass
class ModelCase:
    name: str
    shape: tuple[int, ...]  # one image, without the batch axis
    eager_path: Path  # pickled nn.Module (Flask, TorchServe)
    torchscript_path: Path  # the loader's input
    validation_path: Path
    inputs: list[np.ndarray]  # the requests, shared by every server
    min_agreement: str
    duration_s: float
    warmup_s: float
    notes: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- models

def digits_case(work: Path, duration_s: float, warmup_s: float) -> ModelCase:
    import torch

    data = serving_digits.load_digits()
    t0 = time.monotonic()
    model = serving_digits.train_cnn(data)
    log(f"digits CNN trained in {time.monotonic() - t0:.1f}s")
    torch.save(model, work / "digits.pth")
    serving_digits.save_torchscript(model, work / "digits.pt")
    serving_digits.save_validation(data, work / "digits-val.npz")
    inputs = [np.ascontiguousarray(x) for x in data.x_test[:256]]
    return ModelCase("digits", (1, 8, 8), work / "digits.pth", work / "digits.pt", work / "digits-val.npz",
                     inputs, "0.98", duration_s, warmup_s)


def resnet_case(work: Path, duration_s: float, warmup_s: float) -> ModelCase:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    torch.save(model, work / "resnet50.pth")
    torch.jit.script(model).save(str(work / "resnet50.pt"))
    rng = np.random.default_rng(0)
    x = rng.random((64, 3, 224, 224), dtype=np.float32)
    np.savez(work / "resnet50-val.npz", x=x)
    inputs = [np.ascontiguousarray(v) for v in x[:16]]
    case = ModelCase("resnet50", (3, 224, 224), work / "resnet50.pth", work / "resnet50.pt",
                     work / "resnet50-val.npz", inputs, "0.0", duration_s, warmup_s)
    case.notes.append("random weights: int8 agreement gate set to 0 (top-1 of an untrained net is meaningless); "
                      "the loader's speed gate still applies")
    return case


# ---------------------------------------------------------------- Triton (the real loader)

def run_loader(case: ModelCase, repo: Path, name: str, quantize: str, work: Path) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({
        "MD_SOURCE_URI": f"file://{case.torchscript_path}", "MD_FORMAT": "torchscript", "MD_MODEL_NAME": name,
        "MD_MODEL_VERSION": "1", "MD_MAX_BATCH_SIZE": str(MAX_BATCH), "MD_DYNAMIC_BATCHING": DYNAMIC_BATCHING,
        "MD_QUANTIZE": quantize, "MD_MIN_AGREEMENT": case.min_agreement, "MD_WARMUP": "true", "MD_GPUS": "0",
        "MD_INSTANCES_PER_GPU": "1", "MD_REPOSITORY": str(repo), "MD_BACKEND": "python-onnx",
        "MD_VALIDATION_URI": f"file://{case.validation_path}",
        "MD_RUNNER_SYS_PATH": serving.triton_install().stub_site,
        "MD_TERMINATION_LOG": str(work / f"{name}.termination-log"), "HOME": str(work), "TMPDIR": str(work),
    })
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "modeldeploy.loader"], env=env, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"loader failed for {name}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return time.monotonic() - t0


def triton_sender(url: str, model: str) -> Callable[[], Callable[[np.ndarray], object]]:
    def make() -> Callable[[np.ndarray], object]:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(url, connection_timeout=300, network_timeout=300)
        meta = client.get_model_metadata(model)
        in_name, out_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]

        def send(x: np.ndarray) -> object:
            inp = httpclient.InferInput(in_name, [1, *x.shape], "FP32")
            inp.set_data_from_numpy(x[None])
            return client.infer(model, [inp]).as_numpy(out_name)

        return send

    return make


def _metric(text: str, name: str, model: str) -> float:
    pattern = rf'^{name}{{[^}}]*model="{re.escape(model)}"[^}}]*}} ([0-9.e+]+)$'
    return sum(float(m) for m in re.findall(pattern, text, re.MULTILINE))


# ---------------------------------------------------------------- HTTP servers for the eager baselines

def _wait_http(probe: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log_path: Path,
               timeout_s: float) -> None:
    t0 = time.monotonic()
    while not probe():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log_path.read_text(errors='replace')[-1500:]}")
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"{what} not ready after {timeout_s}s: {log_path.read_text(errors='replace')[-1500:]}")
        time.sleep(0.2)


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _post_ok(url: str, body: bytes) -> bool:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def flask_server(case: ModelCase, work: Path) -> Iterator[str]:
    port = serving.free_port()
    log_path = work / f"flask-{case.name}.log"
    argv = [sys.executable, str(ROOT / "benchmarks" / "_flask_app.py"), str(case.eager_path), str(port),
            ",".join(map(str, case.shape))]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/predict"
    try:
        _wait_http(lambda: _post_ok(url, case.inputs[0].tobytes()), proc, "flask", log_path, 120)
        yield url
    finally:
        _killpg(proc)


@contextlib.contextmanager
def torchserve_server(case: ModelCase, work: Path) -> Iterator[str]:
    ts = work / f"torchserve-{case.name}"
    store = ts / "store"
    store.mkdir(parents=True, exist_ok=True)
    (ts / "shape.json").write_text(json.dumps(list(case.shape)))
    shutil.copy(case.eager_path, ts / "model.pth")
    subprocess.run([str(BIN / "torch-model-archiver"), "--model-name", case.name, "--version", "1.0",
                    "--serialized-file", str(ts / "model.pth"), "--handler",
                    str(ROOT / "benchmarks" / "_torchserve_handler.py"), "--extra-files", str(ts / "shape.json"),
                    "--export-path", str(store), "--force"], check=True, capture_output=True, timeout=300)
    inf, mgmt, met = serving.free_port(), serving.free_port(), serving.free_port()
    models = {case.name: {"1.0": {"defaultVersion": True, "marName": f"{case.name}.mar", "minWorkers": 1,
                                  "maxWorkers": 1, "batchSize": MAX_BATCH, "maxBatchDelay": 2,
                                  "responseTimeout": 300}}}
    (ts / "config.properties").write_text("\n".join([
        f"inference_address=http://127.0.0.1:{inf}", f"management_address=http://127.0.0.1:{mgmt}",
        f"metrics_address=http://127.0.0.1:{met}", f"model_store={store}", "load_models=all",
        "disable_token_authorization=true", "install_py_dep_per_model=false", "enable_envvars_config=false",
        f"models={json.dumps(models)}", "",
    ]))
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    log_path = ts / "torchserve.log"
    argv = [str(BIN / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
            "--model-store", str(store), "--ts-config", str(ts / "config.properties")]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, cwd=ts, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{inf}/predictions/{case.name}"
    try:
        _wait_http(lambda: _post_ok(url, case.inputs[0].tobytes()), proc, "torchserve", log_path, 180)
        yield url
    finally:
        _killpg(proc)


def http_sender(url: str) -> Callable[[], Callable[[np.ndarray], object]]:
    def make() -> Callable[[np.ndarray], object]:
        import requests

        session = requests.Session()
        headers = {"Content-Type": "application/octet-stream"}

        def send(x: np.ndarray) -> object:
            r = session.post(url, data=x.tobytes(), headers=headers, timeout=300)
            r.raise_for_status()
            return r.json()

        return send

    return make


# ---------------------------------------------------------------- the compute ceiling

def ort_ceiling(onnx_path: Path, case: ModelCase, min_seconds: float) -> dict[str, float]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch = np.stack([case.inputs[i % len(case.inputs)] for i in range(MAX_BATCH)])
    session.run(None, {name: batch})
    runs, t0 = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - t0 < min_seconds:
        session.run(None, {name: batch})
        runs += 1
    elapsed = time.perf_counter() - t0
    return {"batch": MAX_BATCH, "runs": runs, "images_per_s": runs * MAX_BATCH / elapsed,
            "ms_per_batch": elapsed / runs * 1000}


# ---------------------------------------------------------------- one model, every server

def bench_model(case: ModelCase, levels: list[int], work: Path, with_torchserve: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"shape": list(case.shape), "duration_s": case.duration_s, "warmup_s": case.warmup_s,
                           "levels": {str(c): {} for c in levels}, "errors": {}, "notes": list(case.notes)}

    def level_runs(server: str, make: Callable[[], Callable[[np.ndarray], object]],
                   hook: Callable[[int], dict[str, float] | None] | None = None) -> None:
        for c in levels:
            before = hook(0) if hook else None
            res: LoadResult = run_load(make, case.inputs, c, case.duration_s, case.warmup_s)
            row = res.as_dict()
            after = hook(0) if hook else None
            if before is not None and after is not None:
                execs = after["exec"] - before["exec"]
                row["avg_batch"] = round((after["count"] - before["count"]) / execs, 2) if execs else None
            out["levels"][str(c)][server] = row
            log(f"  {case.name} {server:<11} c={c:<3} {res.throughput:8.1f} req/s  p50 {res.p50_ms:8.1f} ms  "
                f"p99 {res.p99_ms:8.1f} ms  n={res.requests} err={res.errors}"
                + (f"  avg batch {row.get('avg_batch')}" if hook else ""))

    log(f"{case.name}: flask")
    try:
        with flask_server(case, work) as url:
            level_runs("flask", http_sender(url))
    except Exception as e:
        out["errors"]["flask"] = repr(e)[:1500]

    if with_torchserve:
        log(f"{case.name}: torchserve")
        try:
            with torchserve_server(case, work) as url:
                level_runs("torchserve", http_sender(url))
        except Exception as e:
            out["errors"]["torchserve"] = repr(e)[:1500]
            log(f"  torchserve failed: {e!r}"[:600])

    repo = work / f"repo-{case.name}"
    names = {"triton": (case.name, "none"), "triton-int8": (f"{case.name}-int8", "int8")}
    built: dict[str, str] = {}
    for server, (model, quantize) in names.items():
        try:
            secs = run_loader(case, repo, model, quantize, work)
            built[server] = model
            out.setdefault("loader_seconds", {})[server] = round(secs, 1)
            log(f"{case.name}: loader built {model} ({quantize}) in {secs:.1f}s")
        except Exception as e:
            out["errors"][server] = repr(e)[:1500]
            log(f"  {server}: {e!r}"[:600])
    if built:
        out["ceiling"] = {}
        for server, model in built.items():
            out["ceiling"][server] = ort_ceiling(repo / model / "1" / "model.onnx", case,
                                                 3.0 if case.name == "digits" else 8.0)
            log(f"{case.name}: onnxruntime in-process batch {MAX_BATCH} ({server}): "
                f"{out['ceiling'][server]['images_per_s']:.1f} img/s")
        with serving.running(repo, work / f"triton-{case.name}.log") as server_proc:
            out["triton_ready_s"] = round(server_proc.ready_seconds, 2)
            for server, model in built.items():
                def counts(_: int, model: str = model) -> dict[str, float] | None:
                    try:
                        text = server_proc.metrics()
                    except OSError:  # metrics are a nice-to-have: the load numbers stand without them
                        return None
                    return {"count": _metric(text, "nv_inference_count", model),
                            "exec": _metric(text, "nv_inference_exec_count", model)}

                log(f"{case.name}: {server}")
                level_runs(server, triton_sender(server_proc.http_url, model), counts)

    # ratios to Flask at the same level
    for rows in out["levels"].values():
        base = rows.get("flask")
        for row in rows.values():
            if base and base["requests"] and row["requests"]:
                row["throughput_vs_flask"] = row["throughput"] / base["throughput"]
                row["p50_vs_flask"] = row["p50_ms"] / base["p50_ms"]
                row["p99_vs_flask"] = row["p99_ms"] / base["p99_ms"]
    top = str(max(levels))
    share = {}
    for server in built:
        row = out["levels"][top].get(server)
        if row and server in out["ceiling"]:
            share[server] = row["throughput"] / out["ceiling"][server]["images_per_s"]
    out["triton_share_of_ceiling_at_max_concurrency"] = share
    if "32" in out["levels"]:
        rows = out["levels"]["32"]
        if "flask" in rows and "triton" in rows:
            out["goal_3x_flask_at_32_with_lower_p99"] = {
                server: {"throughput_vs_flask": rows[server].get("throughput_vs_flask"),
                         "p99_lower": rows[server]["p99_ms"] < rows["flask"]["p99_ms"],
                         "met": (rows[server].get("throughput_vs_flask") or 0) >= 3.0
                         and rows[server]["p99_ms"] < rows["flask"]["p99_ms"]}
                for server in ("triton", "triton-int8") if server in rows}
    return out


def print_table(results: dict[str, Any]) -> str:
    lines = []
    for model, res in results["models"].items():
        lines.append(f"\n{model} (shape {res['shape']}, {res['duration_s']} s per level)")
        lines.append("| conc | server | req/s | p50 ms | p99 ms | req/s vs Flask | p50 vs Flask | p99 vs Flask "
                     "| requests | errors |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for c, rows in res["levels"].items():
            for server, r in rows.items():
                def ratio(k: str, r: dict[str, Any] = r) -> str:
                    return f"{r[k]:.2f}x" if k in r else "-"
                lines.append(f"| {c} | {server} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                             f"| {ratio('throughput_vs_flask')} | {ratio('p50_vs_flask')} | {ratio('p99_vs_flask')} "
                             f"| {r['requests']} | {r['errors']} |")
        for server, ceil in res.get("ceiling", {}).items():
            share = res["triton_share_of_ceiling_at_max_concurrency"].get(server)
            lines.append(f"ceiling ({server} model.onnx, onnxruntime in-process, batch {ceil['batch']}): "
                         f"{ceil['images_per_s']:.1f} img/s; {server} at max concurrency = "
                         + (f"{share:.0%} of it" if share is not None else "n/a"))
        for server, err in res["errors"].items():
            lines.append(f"{server} FAILED: {err[:400]}")
        if "goal_3x_flask_at_32_with_lower_p99" in res:
            lines.append(f"goal (>=3x Flask req/s at c=32 and lower p99): {res['goal_3x_flask_at_32_with_lower_p99']}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits only, concurrency 1 and 8")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--models", nargs="+", choices=["digits", "resnet50"], help="default: both (digits with --quick)")
    p.add_argument("--levels", type=int, nargs="+", help="concurrency levels (default 1 8 32; 1 8 with --quick)")
    p.add_argument("--duration", type=float, help="digits: seconds per level (default 8, 4 with --quick)")
    p.add_argument("--resnet-duration", type=float, default=15.0, help="ResNet-50: seconds per level")
    p.add_argument("--no-torchserve", action="store_true")
    p.add_argument("--workdir", type=Path, help="keep models, repositories and server logs here")
    args = p.parse_args(argv)
    levels = args.levels or ([1, 8] if args.quick else [1, 8, 32])
    models = args.models or (["digits"] if args.quick else ["digits", "resnet50"])
    duration = args.duration or (4.0 if args.quick else 8.0)

    work_ctx = contextlib.nullcontext(args.workdir) if args.workdir else tempfile.TemporaryDirectory(prefix="md-serve-")
    with work_ctx as w:
        work = Path(w)
        work.mkdir(parents=True, exist_ok=True)
        import onnxruntime
        import torch

        results: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                        "torch_threads": torch.get_num_threads()},
            "levels": levels, "load_generator": "closed loop, N threads, one image per request (benchmarks/_load.py)",
            "models": {},
        }
        started = time.monotonic()
        for name in models:
            if name == "digits":
                case = digits_case(work, duration, min(2.0, duration / 2))
            else:
                case = resnet_case(work, args.resnet_duration, 4.0)
            results["models"][name] = bench_model(case, levels, work, not args.no_torchserve)
            write_json(args.json, results)  # after each model, so a later failure keeps what was measured
        results["wall_seconds"] = round(time.monotonic() - started, 1)
        results["table"] = print_table(results)
        write_json(args.json, results)
        if args.json:
            log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
