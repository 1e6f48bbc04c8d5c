"""Serving benchmark: our Triton path against the baselines a user would try, and against the compute ceiling.

Everything in one run on this machine, same model and same inputs, and ONE load generator for all
servers (benchmarks/_load.py: a closed loop of N sender threads, one image per request, fixed
duration per level). The HTTP baselines are driven with geventhttpclient, the HTTP library
tritonclient.http itself uses, so no server is favoured by a faster client. Servers, all real
processes on free loopback ports:

  flask       the seed baseline: Flask threaded dev server, eager PyTorch, one image per request
  torchserve  PyPI torchserve, eager PyTorch, TorchServe's batching (batchSize 32, maxBatchDelay 2 ms)
  ort-server  the strongest simple alternative: the loader's model.onnx in onnxruntime behind uvicorn
              workers (benchmarks/_ort_app.py), no batching; the worker/thread split is the best of
              1 worker x 1 thread, 1 worker x all cores, one single-threaded worker per core, chosen
              in the run by a short trial at the top concurrency
  triton      modeldeploy.loader (TorchScript -> ONNX, python-onnx backend, dynamic batching, max
              batch 32) + a real tritonserver process, queried with tritonclient.http
  triton-int8 the same loader with MD_QUANTIZE=int8 (static QDQ calibrated on validation data)

Models: the digits CNN (trained in the run) and torchvision ResNet-50 (random weights, 224x224).
The compute ceiling (no HTTP): onnxruntime in-process on the loader's model.onnx, the best over
thread settings (default; sequential with intra-op = all cores or 1 thread and one caller per core;
parallel execution with inter-op = all cores) and batch sizes (1, 8, 32, 64), re-measured with the
winning cell and, in turn, each other setting's best cell after every round of the servers (the
ceiling is the highest of all, reported with its settings); Triton's share of it at the top
concurrency is reported.

All servers run at once; at each concurrency every server gets --rounds slices of the level's
duration, in rotating order, so a burst of another tenant's load on this shared machine hits them
alike and the ratios hold even when the absolute figures move.

A baseline that cannot start stops the run with its error (run `make bench-setup` first, or
`make bench` for set-up and run); only --no-torchserve leaves one out, and says so.

    make bench                                                              # set-up, then the full run
    .venv/bin/python benchmarks/serving.py --json out/serving.json          # full run
    .venv/bin/python benchmarks/serving.py --quick --json out/quick.json    # digits, concurrency 1 and 8
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

from benchmarks._load import LoadResult, combine, run_load  # noqa: E402
from benchmarks._report import write_json  # noqa: E402
from localcluster.process import stop_group  # noqa: E402
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

class LoaderRefused(RuntimeError):
    """The loader's int8 gates (accuracy, speed) refused the quantized model: reported, not fatal."""


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
        last = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-1:])
        if quantize != "none" and "rejected" in last:
            raise LoaderRefused(f"{name}: {last}")
        raise RuntimeError(f"loader failed for {name}: {last}")
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


# ---------------------------------------------------------------- HTTP servers for the baselines

class BaselineError(RuntimeError):
    """A baseline could not start or could not serve: the run stops, a ratio without it would mislead."""


def _wait_http(probe: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log_path: Path,
               timeout_s: float) -> None:
    t0 = time.monotonic()
    while not probe():
        if proc.poll() is not None:
            raise BaselineError(f"{what} exited with {proc.returncode}: {log_path.read_text(errors='replace')[-1500:]}")
        if time.monotonic() - t0 > timeout_s:
            raise BaselineError(f"{what} not ready after {timeout_s}s: {log_path.read_text(errors='replace')[-1500:]}")
        time.sleep(0.2)


def _post_ok(url: str, body: bytes) -> bool:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def _http_process(what: str, argv: list[str], url: str, case: ModelCase, log_path: Path, timeout_s: float,
                  env: dict[str, str] | None = None, cwd: Path | None = None) -> Iterator[str]:
    """Start a server process group, wait until it answers one image at `url`, stop it afterwards."""
    with open(log_path, "wb") as logf:
        try:
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                    cwd=cwd)
        except OSError as e:
            raise BaselineError(f"{what} cannot start ({argv[0]}): {e}") from e
    try:
        _wait_http(lambda: _post_ok(url, case.inputs[0].tobytes()), proc, what, log_path, timeout_s)
        yield url
    finally:
        stop_group(proc)


@contextlib.contextmanager
def flask_server(case: ModelCase, work: Path) -> Iterator[str]:
    port = serving.free_port()
    argv = [sys.executable, str(ROOT / "benchmarks" / "_flask_app.py"), str(case.eager_path), str(port),
            ",".join(map(str, case.shape))]
    with _http_process("flask", argv, f"http://127.0.0.1:{port}/predict", case, work / f"flask-{case.name}.log",
                       120) as url:
        yield url


@contextlib.contextmanager
def ort_server(case: ModelCase, onnx_path: Path, workers: int, threads: int, work: Path) -> Iterator[str]:
    """uvicorn with `workers` processes, each one onnxruntime session with `threads` intra-op threads."""
    port = serving.free_port()
    env = dict(os.environ, MD_ORT_MODEL=str(onnx_path), MD_ORT_SHAPE=",".join(map(str, case.shape)),
               MD_ORT_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    argv = [str(BIN / "uvicorn"), "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--lifespan", "off", "--no-access-log", "--http", "httptools", "--backlog", "1024",
            "benchmarks._ort_app:asgi"]
    log_path = work / f"ort-server-{case.name}-w{workers}t{threads}.log"
    with _http_process("ort-server (uvicorn)", argv, f"http://127.0.0.1:{port}/predict", case, log_path, 120,
                       env=env, cwd=ROOT) as url:
        yield url


@contextlib.contextmanager
def torchserve_server(case: ModelCase, work: Path) -> Iterator[str]:
    ts = work / f"torchserve-{case.name}"
    store = ts / "store"
    store.mkdir(parents=True, exist_ok=True)
    (ts / "shape.json").write_text(json.dumps(list(case.shape)))
    shutil.copy(case.eager_path, ts / "model.pth")
    archive = subprocess.run([str(BIN / "torch-model-archiver"), "--model-name", case.name, "--version", "1.0",
                              "--serialized-file", str(ts / "model.pth"), "--handler",
                              str(ROOT / "benchmarks" / "_torchserve_handler.py"), "--extra-files",
                              str(ts / "shape.json"), "--export-path", str(store), "--force"],
                             capture_output=True, text=True, timeout=300)
    if archive.returncode != 0:
        raise BaselineError(f"torch-model-archiver failed: {(archive.stderr or archive.stdout)[-1500:]}")
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
    argv = [str(BIN / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
            "--model-store", str(store), "--ts-config", str(ts / "config.properties")]
    with _http_process("torchserve", argv, f"http://127.0.0.1:{inf}/predictions/{case.name}", case,
                       ts / "torchserve.log", 180, env=env, cwd=ts) as url:
        yield url


def http_sender(url: str) -> Callable[[], Callable[[np.ndarray], object]]:
    """geventhttpclient, one keep-alive connection per sender: the library tritonclient.http uses.

    (requests was the bottleneck here: ~1,300 req/s at c=32 against a server that answers 6,000.)
    """
    parsed = urllib.parse.urlsplit(url)

    def make() -> Callable[[np.ndarray], object]:
        from geventhttpclient import HTTPClient

        client = HTTPClient(parsed.hostname, parsed.port, concurrency=1, connection_timeout=300,
                            network_timeout=300)
        headers = {"Content-Type": "application/octet-stream"}

        def send(x: np.ndarray) -> object:
            r = client.post(parsed.path, body=x.tobytes(), headers=headers)
            body = r.read()
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {body[:200]!r}")
            return json.loads(body)

        return send

    return make


# ---------------------------------------------------------------- preflight

def missing_requirements(with_torchserve: bool) -> list[str]:
    """What this run needs and this environment lacks (checked before anything is trained)."""
    missing = []
    for module, why in [("flask", "the Flask baseline"), ("torchvision", "ResNet-50"),
                        ("uvicorn", "the onnxruntime multi-worker server"), ("httptools", "uvicorn's HTTP parser"),
                        ("geventhttpclient", "the HTTP load generator"), ("sklearn", "the digits data")]:
        if importlib.util.find_spec(module) is None:
            missing.append(f"python module {module} ({why})")
    if with_torchserve:
        for exe in ("torchserve", "torch-model-archiver"):
            if not (BIN / exe).exists():
                missing.append(f"{BIN / exe} (TorchServe, PyPI)")
        java = shutil.which("java")
        if java is None:
            missing.append("java on PATH (TorchServe's frontend; Debian: openjdk-17-jre-headless)")
        elif subprocess.run([java, "-version"], capture_output=True, timeout=60).returncode != 0:
            missing.append(f"a working java ({java} -version failed)")
    return missing


# ---------------------------------------------------------------- the compute ceiling

@dataclass(frozen=True)
class OrtSetting:
    """onnxruntime threading for the ceiling: intra-/inter-op threads (0 = its default), execution mode,
    and how many threads call run() on the one session at the same time."""

    intra: int
    inter: int
    parallel: bool
    callers: int

    @property
    def label(self) -> str:
        if not (self.intra or self.inter or self.parallel) and self.callers == 1:
            return "default"
        mode = "parallel" if self.parallel else "sequential"
        return f"{mode} intra={self.intra} inter={self.inter} callers={self.callers}"


def ceiling_settings(cpus: int) -> list[OrtSetting]:
    """The candidate thread settings: onnxruntime's default, all cores on one call, one 1-thread call
    per core, and parallel execution (inter-op threads) with 1 or all cores per operator."""
    settings = [OrtSetting(0, 0, False, 1), OrtSetting(cpus, 1, False, 1), OrtSetting(1, 1, False, cpus),
                OrtSetting(1, cpus, True, 1), OrtSetting(cpus, cpus, True, 1)]
    return list(dict.fromkeys(settings))  # on one core some coincide


def ceiling_batches() -> list[int]:
    return sorted({1, 8, MAX_BATCH, 2 * MAX_BATCH})


def _ort_session(onnx_path: Path, setting: OrtSetting) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if setting.intra:
        options.intra_op_num_threads = setting.intra
    if setting.inter:
        options.inter_op_num_threads = setting.inter
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if setting.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _measure(session: Any, batch: np.ndarray, callers: int, min_seconds: float) -> dict[str, float]:
    """Images per second of `callers` threads each running `batch` on one session for min_seconds
    (and at least 2 runs each: a slow model still gets a real average)."""
    name = session.get_inputs()[0].name
    session.run(None, {name: batch})
    runs = [0] * callers
    t0 = time.perf_counter()
    deadline = t0 + min_seconds

    def loop(k: int) -> None:
        while runs[k] < 2 or time.perf_counter() < deadline:
            session.run(None, {name: batch})
            runs[k] += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"runs": sum(runs), "seconds": round(elapsed, 3), "images_per_s": sum(runs) * len(batch) / elapsed}


def _batch(case: ModelCase, size: int) -> np.ndarray:
    return np.stack([case.inputs[i % len(case.inputs)] for i in range(size)])


def ort_ceiling(onnx_path: Path, case: ModelCase, min_seconds: float) -> dict[str, Any]:
    """The best onnxruntime throughput over thread settings and batch sizes, with every cell measured."""
    grid = []
    for setting in ceiling_settings(os.cpu_count() or 1):
        session = _ort_session(onnx_path, setting)
        for size in ceiling_batches():
            row = {"setting": setting.label, **asdict(setting), "batch": size,
                   **_measure(session, _batch(case, size), setting.callers, min_seconds)}
            grid.append(row)
        del session
    best = max(grid, key=lambda r: r["images_per_s"])
    return {"best": best, "images_per_s": best["images_per_s"], "grid": grid}


# ---------------------------------------------------------------- one model, every server

def ort_server_candidates(cpus: int) -> list[tuple[int, int]]:
    """(workers, intra-op threads per worker): one process (1 thread or all cores), or one 1-thread worker per core."""
    return list(dict.fromkeys([(1, 1), (1, cpus), (cpus, 1)]))


def check_row(server: str, row: dict[str, Any]) -> None:
    """A server that answered nothing, or failed more than 1% of its requests, has no honest figure."""
    total = row["requests"] + row["errors"]
    if row["requests"] == 0 or row["errors"] > 0.01 * total:
        raise BaselineError(f"{server} at c={row['concurrency']}: {row['requests']} answers, {row['errors']} errors; "
                            f"first error: {row['first_error']}")


def add_ratios(levels: dict[str, dict[str, dict[str, Any]]], baselines: dict[str, str]) -> None:
    """Each row's throughput, p50 and p99 against each baseline at the same concurrency (suffix: the key)."""
    for rows in levels.values():
        for suffix, base_name in baselines.items():
            base = rows.get(base_name)
            if not base or not base["requests"]:
                continue
            for row in rows.values():
                if row["requests"]:
                    row[f"throughput_vs_{suffix}"] = row["throughput"] / base["throughput"]
                    row[f"p50_vs_{suffix}"] = row["p50_ms"] / base["p50_ms"]
                    row[f"p99_vs_{suffix}"] = row["p99_ms"] / base["p99_ms"]


Probe = tuple[dict[str, Any], Callable[[float], float]]


def ceiling_probes(onnx_path: Path, case: ModelCase, grid: list[dict[str, Any]]) -> list[Probe]:
    """Each thread setting's best cell of the sweep, best first, ready to be measured again between
    the servers' rounds: a sweep that ran during another tenant's burst may have crowned the wrong
    setting, so the others get more chances too."""
    best_cells: dict[str, dict[str, Any]] = {}
    for row in sorted(grid, key=lambda r: -r["images_per_s"]):
        best_cells.setdefault(row["setting"], row)
    probes: list[Probe] = []
    for row in best_cells.values():
        setting = OrtSetting(row["intra"], row["inter"], row["parallel"], row["callers"])
        session, batch = _ort_session(onnx_path, setting), _batch(case, row["batch"])

        def measure(seconds: float, session: Any = session, batch: np.ndarray = batch,
                    callers: int = setting.callers) -> float:
            return _measure(session, batch, callers, seconds)["images_per_s"]

        probes.append((row, measure))
    return probes


def probes_for_round(probes: list[Probe], k: int) -> list[Probe]:
    """Round k measures the sweep's winner and one other setting, in turn."""
    if len(probes) < 2:
        return probes
    return [probes[0], probes[1 + k % (len(probes) - 1)]]


def ceiling_result(ceil: dict[str, Any]) -> dict[str, Any]:
    """The highest of the sweep and every re-measurement, with where it came from."""
    best = {**{k: ceil["best"][k] for k in ("setting", "batch", "images_per_s")}, "from": "sweep"}
    for again in ceil.get("again", []):
        if again["images_per_s"] > best["images_per_s"]:
            best = {**again, "from": "between rounds"}
    return best


def bench_model(case: ModelCase, levels: list[int], work: Path, with_torchserve: bool,
                rounds: int) -> dict[str, Any]:
    """Every server on one model: all started together, then at each concurrency `rounds` slices each,
    in rotating order, with the ceiling re-measured after each round (another tenant's burst of load
    then hits every server alike instead of whichever ran at that minute)."""
    out: dict[str, Any] = {"shape": list(case.shape), "duration_s": case.duration_s, "warmup_s": case.warmup_s,
                           "rounds": rounds, "levels": {str(c): {} for c in levels}, "notes": list(case.notes),
                           "refused": {}}
    ceiling_seconds = 1.5 if case.name == "digits" else 4.0

    # The loader first: the ceiling and the onnxruntime server use the very model.onnx Triton serves.
    repo = work / f"repo-{case.name}"
    names = {"triton": (case.name, "none"), "triton-int8": (f"{case.name}-int8", "int8")}
    built: dict[str, str] = {}
    for server, (model, quantize) in names.items():
        try:
            secs = run_loader(case, repo, model, quantize, work)
        except LoaderRefused as e:  # the int8 gates may refuse a model: a result, reported, not a crash
            out["refused"][server] = str(e)[:1500]
            log(f"  {server}: REFUSED by the loader's gate: {e}"[:600])
            continue
        built[server] = model
        out.setdefault("loader_seconds", {})[server] = round(secs, 1)
        log(f"{case.name}: loader built {model} ({quantize}) in {secs:.1f}s")
    fp32_onnx = repo / case.name / "1" / "model.onnx"

    out["ceiling"] = {}
    for server, model in built.items():
        log(f"{case.name}: onnxruntime ceiling sweep ({server} model.onnx)")
        ceil = ort_ceiling(repo / model / "1" / "model.onnx", case, ceiling_seconds)
        out["ceiling"][server] = ceil
        for row in ceil["grid"]:
            log(f"  {row['setting']:<44} batch {row['batch']:>3}: {row['images_per_s']:9.1f} img/s")
        log(f"  best: {ceil['best']['setting']}, batch {ceil['best']['batch']}: {ceil['images_per_s']:.1f} img/s")

    log(f"{case.name}: ort-server (uvicorn + onnxruntime): trial of worker/thread splits at c={max(levels)}")
    trials = []
    for workers, threads in ort_server_candidates(os.cpu_count() or 1):
        with ort_server(case, fp32_onnx, workers, threads, work) as url:
            res = run_load(http_sender(url), case.inputs, max(levels), min(4.0, case.duration_s), case.warmup_s)
        trials.append({"workers": workers, "threads": threads, **res.as_dict()})
        log(f"  workers={workers} threads={threads}: {res.throughput:8.1f} req/s  p99 {res.p99_ms:8.1f} ms "
            f"err={res.errors}")
        check_row(f"ort-server workers={workers} threads={threads}", trials[-1])
    chosen = max(trials, key=lambda t: t["throughput"])
    out["ort_server"] = {"server": "uvicorn (httptools)", "workers": chosen["workers"],
                         "threads_per_worker": chosen["threads"], "model": "the loader's fp32 model.onnx",
                         "trials": trials}

    Hook = Callable[[], dict[str, float] | None]
    servers: dict[str, tuple[Callable[[], Callable[[np.ndarray], object]], Hook | None]] = {}
    with contextlib.ExitStack() as stack:
        log(f"{case.name}: starting flask")
        servers["flask"] = (http_sender(stack.enter_context(flask_server(case, work))), None)
        if with_torchserve:
            log(f"{case.name}: starting torchserve")
            servers["torchserve"] = (http_sender(stack.enter_context(torchserve_server(case, work))), None)
        else:
            out["skipped"] = {"torchserve": "--no-torchserve"}
        log(f"{case.name}: starting ort-server, {chosen['workers']} worker(s) x {chosen['threads']} thread(s)")
        servers["ort-server"] = (http_sender(stack.enter_context(
            ort_server(case, fp32_onnx, chosen["workers"], chosen["threads"], work))), None)
        log(f"{case.name}: starting triton")
        triton = stack.enter_context(serving.running(repo, work / f"triton-{case.name}.log"))
        out["triton_ready_s"] = round(triton.ready_seconds, 2)
        for server, model in built.items():
            def counts(model: str = model) -> dict[str, float] | None:
                try:
                    text = triton.metrics()
                except OSError:  # metrics are a nice-to-have: the load numbers stand without them
                    return None
                return {"count": _metric(text, "nv_inference_count", model),
                        "exec": _metric(text, "nv_inference_exec_count", model)}

            servers[server] = (triton_sender(triton.http_url, model), counts)
        probes = {server: ceiling_probes(repo / model / "1" / "model.onnx", case, out["ceiling"][server]["grid"])
                  for server, model in built.items()}
        k = 0

        order = list(servers)
        slice_s, slice_warmup_s = case.duration_s / rounds, case.warmup_s / rounds
        for c in levels:
            parts: dict[str, list[LoadResult]] = {name: [] for name in order}
            batched: dict[str, list[float]] = {name: [0.0, 0.0] for name in order}
            for r in range(rounds):
                for name in order[r % len(order):] + order[:r % len(order)]:
                    make, hook = servers[name]
                    before = hook() if hook else None
                    res = run_load(make, case.inputs, c, slice_s, slice_warmup_s)
                    after = hook() if hook else None
                    if before is not None and after is not None:
                        batched[name][0] += after["count"] - before["count"]
                        batched[name][1] += after["exec"] - before["exec"]
                    parts[name].append(res)
                    check_row(name, res.as_dict())
                measured = []
                for server, server_probes in probes.items():
                    for cell, measure in probes_for_round(server_probes, k):
                        again = {"setting": cell["setting"], "batch": cell["batch"],
                                 "images_per_s": round(measure(ceiling_seconds), 1)}
                        out["ceiling"][server].setdefault("again", []).append(again)
                        measured.append(f"{server} {again['setting']} b{again['batch']} {again['images_per_s']:.0f}")
                k += 1
                log(f"  {case.name} c={c} round {r + 1}/{rounds}: "
                    + ", ".join(f"{n} {parts[n][-1].throughput:.1f}" for n in order) + " req/s; ceiling again: "
                    + ", ".join(measured) + " img/s")
            for name in order:
                res = combine(parts[name])
                row = res.as_dict()
                row["round_throughputs"] = [round(p.throughput, 1) for p in parts[name]]
                if batched[name][1]:
                    row["avg_batch"] = round(batched[name][0] / batched[name][1], 2)
                out["levels"][str(c)][name] = row
                log(f"  {case.name} {name:<11} c={c:<3} {res.throughput:8.1f} req/s  p50 {res.p50_ms:8.1f} ms  "
                    f"p99 {res.p99_ms:8.1f} ms  n={res.requests} err={res.errors}"
                    + (f"  avg batch {row['avg_batch']}" if "avg_batch" in row else ""))
                check_row(name, row)

    for ceil in out["ceiling"].values():  # the ceiling is a maximum: the sweep's best or any re-measurement
        ceil["winner"] = ceiling_result(ceil)
        ceil["images_per_s"] = ceil["winner"]["images_per_s"]

    add_ratios(out["levels"], {"flask": "flask", "ort_server": "ort-server"})
    top = str(max(levels))
    share = {}
    for server in ("ort-server", *built):
        row = out["levels"][top].get(server)
        ceil = out["ceiling"].get("triton" if server == "ort-server" else server)
        if row and ceil:
            share[server] = row["throughput"] / ceil["images_per_s"]
    out["share_of_ceiling_at_max_concurrency"] = share
    if "32" in out["levels"]:
        rows = out["levels"]["32"]
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
        ort_cfg = res.get("ort_server", {})
        lines.append(f"\n{model} (shape {res['shape']}, {res['duration_s']} s per level; ort-server = uvicorn, "
                     f"{ort_cfg.get('workers')} worker(s) x {ort_cfg.get('threads_per_worker')} onnxruntime thread(s))")
        lines.append("| conc | server | req/s | p50 ms | p99 ms | req/s vs Flask | p99 vs Flask | req/s vs ort-server "
                     "| p99 vs ort-server | avg batch | requests | errors |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for c, rows in res["levels"].items():
            for server, r in rows.items():
                def ratio(k: str, r: dict[str, Any] = r) -> str:
                    return f"{r[k]:.2f}x" if k in r else "-"
                lines.append(f"| {c} | {server} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                             f"| {ratio('throughput_vs_flask')} | {ratio('p99_vs_flask')} "
                             f"| {ratio('throughput_vs_ort_server')} | {ratio('p99_vs_ort_server')} "
                             f"| {r.get('avg_batch') or '-'} | {r['requests']} | {r['errors']} |")
        for server, ceil in res.get("ceiling", {}).items():
            won, best = ceil["winner"], ceil["best"]
            lines.append(f"ceiling ({server} model.onnx, onnxruntime in-process, no HTTP): "
                         f"{ceil['images_per_s']:.1f} img/s with {won['setting']}, batch {won['batch']} "
                         f"({won['from']}; the sweep's best: {best['setting']}, batch {best['batch']}, "
                         f"{best['images_per_s']:.1f}; {len(ceil.get('again', []))} re-measurements)")
        for server, share in res.get("share_of_ceiling_at_max_concurrency", {}).items():
            lines.append(f"{server} at max concurrency = {share:.0%} of the ceiling")
        for server, why in res.get("refused", {}).items():
            lines.append(f"{server} REFUSED by the loader: {why[:400]}")
        for server, why in res.get("skipped", {}).items():
            lines.append(f"{server} SKIPPED: {why}")
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
    p.add_argument("--no-torchserve", action="store_true", help="leave TorchServe out (said so in the results)")
    p.add_argument("--rounds", type=int, default=3,
                   help="slices per server and level, interleaved with the other servers (default 3)")
    p.add_argument("--workdir", type=Path, help="keep models, repositories and server logs here")
    args = p.parse_args(argv)
    levels = args.levels or ([1, 8] if args.quick else [1, 8, 32])
    models = args.models or (["digits"] if args.quick else ["digits", "resnet50"])
    duration = args.duration or (4.0 if args.quick else 8.0)

    missing = missing_requirements(not args.no_torchserve)
    if missing:
        print("benchmarks/serving.py cannot run its baselines; missing:\n  " + "\n  ".join(missing)
              + "\nInstall them with `make bench-setup` (or run `make bench`).", file=sys.stderr)
        return 2

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
            "levels": levels, "load_generator": "closed loop, N threads, one image per request (benchmarks/_load.py); "
                                                "HTTP baselines via geventhttpclient, Triton via tritonclient.http",
            "models": {}, "load_average_at_start": os.getloadavg(),
        }
        started = time.monotonic()
        for name in models:
            if name == "digits":
                case = digits_case(work, duration, min(2.0, duration / 2))
            else:
                case = resnet_case(work, args.resnet_duration, 4.0)
            results["models"][name] = bench_model(case, levels, work, not args.no_torchserve, args.rounds)
            write_json(args.json, results)  # after each model, so a later failure keeps what was measured
        results["load_average_at_end"] = os.getloadavg()
        results["wall_seconds"] = round(time.monotonic() - started, 1)
        results["table"] = print_table(results)
        write_json(args.json, results)
        if args.json:
            log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
