#!/usr/bin/env python3
"""The GPU path for real, on a GPU machine that reaches no registry (the workplace's device tool).

What runs there, in order, each phase reported even when a later one fails:
1. NVIDIA's tritonserver (2.51, CUDA 12.6 runtime, from the pytriton wheel: `hack/gpu/pack.sh`) on
   the real GPU with the serving pod's flags (`deployment.triton_args`), serving a user's python
   model whose model.py runs on the GPU (torch, fp32: a 6-layer 8192-wide MLP, memory-bound at
   batch 1 like a large model) with the config.pbtxt the loader generates for it by default
   (`triton_config.render_config`: maxBatchSize 8, no dynamic batcher, one instance).
2. Its GPU metrics (nv_gpu_utilization, DCGM) read by the operator's own parser
   (`metrics.parse`) and turned into the autoscaler's per-pod value and decision
   (`autoscale.rates.pod_value`, `autoscale.recommender.recommend`) at idle and under load.
3. The build Job's tuner (`loader.tune_triton.Tuner`) sweeping that model on the GPU beside the
   gate Triton's flags (`build_job.gate_triton_args`), then the default and the chosen
   configuration served side by side and driven by the tuner's closed-loop client at
   concurrency 1, 8 and 32 (rounds alternating).

    hack/gpu/pack.sh                                         # here, once: .gpu/
    device run, carry [".gpu"]: python3 hack/gpu/triton_on_gpu.py --out "$OUT"

Writes gpu.json (every figure) and the Triton logs to --out. Exit 1 when a phase failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

from benchmarks._compare import compare_levels  # noqa: E402
from modeldeploy.api import parse_spec  # noqa: E402
from modeldeploy.autoscale.rates import pod_value  # noqa: E402
from modeldeploy.autoscale.recommender import Memory, Sample, recommend  # noqa: E402
from modeldeploy.loader.gate_triton import TritonHTTP  # noqa: E402
from modeldeploy.loader.settings import GateTarget  # noqa: E402
from modeldeploy.loader.tune_client import closed_loop  # noqa: E402
from modeldeploy.loader.tune_triton import Tuner, requests_from  # noqa: E402
from modeldeploy.metrics.parse import parse  # noqa: E402
from modeldeploy.resources import deployment  # noqa: E402
from modeldeploy.resources.build_job import gate_triton_args  # noqa: E402
from modeldeploy.resources.triton_config import (  # noqa: E402
    Backend,
    DynamicBatching,
    ModelConfig,
    TensorSpec,
    instance_groups,
    render_config,
)
from modeldeploy.tuning.settings import TuneSettings  # noqa: E402
from modeldeploy.tuning.space import Hardware  # noqa: E402

WORK = Path("/tmp/md-gpu")
MODEL = "mlp"
LAYERS, OUT_WIDTH = 6, 16
HTTP, METRICS = 18000, 18002

MODEL_PY = '''\
"""A user's python model on the GPU: a {layers}-layer {width}-wide MLP in fp32 (weights from a
fixed seed). Triton's dynamic batcher hands execute() several requests: they run as one batch."""
import sys
sys.path[:0] = {sites!r}  # the stub runs Python isolated: PYTHONPATH is ignored
import ctypes
import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.device = torch.device("{device}")
        g = torch.Generator(device=self.device).manual_seed(0)
        self.weights = [torch.randn({width}, {width}, generator=g, device=self.device) / {width} ** 0.5
                        for _ in range({layers})]

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "x").as_numpy() for r in requests]
        batch = np.ascontiguousarray(np.concatenate(xs), dtype=np.float32)
        t = torch.frombuffer(bytearray(batch.tobytes()), dtype=torch.float32).view(batch.shape).to(self.device)
        with torch.no_grad():
            for w in self.weights:
                t = torch.relu(t @ w)
        out = t[:, :{out}].contiguous().cpu()
        raw = (ctypes.c_char * (out.numel() * 4)).from_address(out.data_ptr())  # no numpy C-API across versions
        y = np.frombuffer(raw, dtype=np.float32).reshape(out.shape).copy()
        responses, i = [], 0
        for x in xs:
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y[i:i + len(x)])]))
            i += len(x)
        return responses
'''


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd: str) -> str:
    p = subprocess.run(cmd, shell=True, text=True, capture_output=True)
    return (p.stdout + p.stderr).strip()


# ---------------------------------------------------------------- the bundle

@dataclasses.dataclass(frozen=True)
class Bundle:
    tritonserver: Path
    backend_dir: Path
    env: dict[str, str]
    sites: list[str]  # the stub's sys.path head: numpy<2, then the machine's torch
    libpython: str = ""  # the folder added for libpython3.12, "" when the linker knows it
    device: str = "cuda:0"
    width: int = 8192  # the MLP's width: memory-bound at batch 1 on the GPU


def libpython_dir() -> str | None:
    """Where libpython3.12.so.1.0 (the stub links it) is, if the linker does not know already."""
    if "libpython3.12.so.1.0" in sh("ldconfig -p"):
        return ""
    import sysconfig

    guesses = [sysconfig.get_config_var("LIBDIR") or "", f"{sys.base_prefix}/lib", "/usr/lib/x86_64-linux-gnu"]
    guesses += glob.glob("/root/.local/share/uv/python/*/lib") + glob.glob("/opt/*/lib") + glob.glob("/usr/local/lib")
    for d in guesses:
        if d and Path(d, "libpython3.12.so.1.0").exists():
            return d
    return None


def unpack(gpu_dir: Path) -> Bundle:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    with tarfile.open(gpu_dir / "triton-gpu.tar.xz") as tar:
        tar.extractall(WORK, filter="tar")
    site = WORK / "stub-site"
    for wheel in gpu_dir.glob("numpy-*.whl"):
        zipfile.ZipFile(wheel).extractall(site)
    triton = WORK / "triton"
    for exe in (triton / "bin" / "tritonserver", triton / "backends" / "python" / "triton_python_backend_stub"):
        exe.chmod(0o755)
    libs = [str(triton / "lib")]
    where = libpython_dir()
    if where is None:
        raise RuntimeError("no libpython3.12.so.1.0 on this machine: the python backend's stub cannot start")
    if where:
        libs.append(where)
    env = dict(os.environ, LD_LIBRARY_PATH=":".join([*libs, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(":"))
    import torch

    torch_site = str(Path(torch.__file__).resolve().parents[1])
    return Bundle(triton / "bin" / "tritonserver", triton / "backends", env, [str(site), torch_site], where)


def local_bundle() -> Bundle:
    """A dry run of this script here, on the CPU: the cached CPU tritonserver (`make test`'s, Python
    3.11 stub) and a narrow model, to catch mistakes before spending device time."""
    from tests.support.serving import triton_install

    install = triton_install()
    env = dict(os.environ, LD_LIBRARY_PATH=install.lib_dir)
    import torch

    return Bundle(Path(install.tritonserver), Path(install.backend_dir), env,
                  [install.stub_site, str(Path(torch.__file__).resolve().parents[1])], device="cpu", width=512)


def base_config(width: int, max_batch_size: int = 8) -> ModelConfig:
    """What the loader generates for this model by default: maxBatchSize 8, no batcher, one instance
    (a python model gets KIND_CPU instances: its model.py places the work on the GPU itself)."""
    return ModelConfig(name=MODEL, backend=Backend.PYTHON,
                       inputs=(TensorSpec("x", "TYPE_FP32", (width,)),),
                       outputs=(TensorSpec("y", "TYPE_FP32", (OUT_WIDTH,)),),
                       max_batch_size=max_batch_size, instance_groups=instance_groups(1, 1, Backend.PYTHON))


def model_writer(bundle: Bundle) -> Callable[[Path, ModelConfig], None]:
    def write(d: Path, cfg: ModelConfig) -> None:
        (d / "1").mkdir(parents=True, exist_ok=True)
        (d / "1" / "model.py").write_text(MODEL_PY.format(sites=bundle.sites, width=bundle.width, layers=LAYERS,
                                                          out=OUT_WIDTH, device=bundle.device))
        (d / "config.pbtxt").write_text(render_config(cfg))
    return write


@contextmanager
def tritonserver(bundle: Bundle, args: list[str], log_path: Path, ready_path: str) -> Iterator[subprocess.Popen[bytes]]:
    argv = [str(bundle.tritonserver), *args, f"--backend-directory={bundle.backend_dir}"]
    log(" ".join(argv))
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=bundle.env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{HTTP}{ready_path}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver not ready after 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def serving_args(repo: Path) -> list[str]:
    """The serving pod's flags, with this machine's repository and ports."""
    args = [a for a in deployment.triton_args(auto_complete=True)
            if not a.startswith(("--model-repository=", "--http-port=", "--grpc-port=", "--metrics-port="))]
    return [*args, f"--model-repository={repo}", f"--http-port={HTTP}", "--grpc-port=18001",
            f"--metrics-port={METRICS}"]


def requests(width: int, n: int = 64) -> tuple[list[Any], np.ndarray]:
    x = np.random.default_rng(0).standard_normal((n, width), dtype=np.float32)
    return requests_from({"x": x}, ["y"]), x


# ---------------------------------------------------------------- phases

def phase_serve_and_metrics(bundle: Bundle, out: Path, concurrency: int, batched: bool) -> dict[str, Any]:
    """`batched`: the configuration the GPU sweep chose (dynamic batcher, 2 instances, maxBatchSize
    16) instead of the default, so that the GPU is busy enough for the autoscaler to act."""
    repo = WORK / "serve-repo"
    cfg = base_config(bundle.width, 16 if batched else 8)
    if batched:
        cfg = dataclasses.replace(cfg, dynamic_batching=DynamicBatching(0, ()),
                                  instance_groups=instance_groups(1, 2, Backend.PYTHON))
    model_writer(bundle)(repo / MODEL, cfg)
    result: dict[str, Any] = {"config": (repo / MODEL / "config.pbtxt").read_text(), "concurrency": concurrency}
    spec = parse_spec({"model": {"name": MODEL, "format": "python", "source": {"uri": "s3://m/mlp/"}},
                       "serving": {"gpus": 1},
                       "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4,
                                       "metric": "gpuUtilization", "target": 60}}, name=MODEL)
    auto = spec.autoscaling
    t0 = time.monotonic()
    with tritonserver(bundle, serving_args(repo), out / "triton-serving.log", "/v2/health/ready"):
        result["readySeconds"] = round(time.monotonic() - t0, 1)
        reqs, x = requests(bundle.width)
        answer = TritonHTTP(f"http://127.0.0.1:{HTTP}").infer(MODEL, {"x": x[:2]}, ["y"])["y"]
        result["answerShape"] = list(answer.shape)

        def scrape() -> tuple[float, Any, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{METRICS}/metrics", timeout=5) as r:
                text = r.read().decode()
            return time.monotonic(), parse(text, MODEL), text

        ticks: list[dict[str, Any]] = []
        samples: list[Sample] = []
        memory = Memory()
        prev: tuple[float, Any] | None = None

        def tick(phase: str) -> None:
            nonlocal prev, memory
            now, m, text = scrape()
            value = pod_value(auto.metric, m, prev[1] if prev else None, now - prev[0] if prev else 0)
            samples.append(Sample(now, (value,)))
            rec = recommend(auto, 1, samples, now, memory)
            memory = rec.memory
            ticks.append({"phase": phase, "t": round(now - t0, 1), "gpuUtilization": value,
                          "requests": m.requests if m else None, "desired": rec.desired, "reason": rec.reason})
            log(f"{phase}: gpu {value} -> desired {rec.desired}: {rec.reason}")
            prev = (now, m)
            if "gpuLines" not in result:
                result["gpuLines"] = [ln for ln in text.splitlines() if ln.startswith("nv_gpu")][:12]

        for _ in range(4):
            tick("idle")
            time.sleep(1)
        load: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: load.update(
            p=closed_loop(f"http://127.0.0.1:{HTTP}", MODEL, reqs, concurrency, 20.0, 1.0)))
        worker.start()
        while worker.is_alive():
            tick(f"load c={concurrency}")
            time.sleep(1)
        for _ in range(5):
            tick("after")
            time.sleep(1)
        p = load["p"]
        result.update(ticks=ticks, load={"throughput": round(p.throughput, 1), "p99Ms": round(p.p99_s * 1000, 2),
                                         "errors": p.errors, "firstError": p.first_error})
    return result


def phase_tune(bundle: Bundle, out: Path, budget_s: float) -> dict[str, Any]:
    repo = WORK / "gate-repo"
    repo.mkdir(parents=True, exist_ok=True)
    _, x = requests(bundle.width, 256)
    tune = TuneSettings(budget_s=budget_s, cpus=os.cpu_count() or 0)
    hardware = Hardware(cpus=os.cpu_count() or 0, gpus=1, backend=Backend.PYTHON)
    with tritonserver(bundle, gate_triton_args(str(repo), HTTP), out / "triton-gate.log", "/v2/health/live"):
        url = f"http://127.0.0.1:{HTTP}"
        t0 = time.monotonic()
        tuned = Tuner(GateTarget(url, repo), tune, base_config(bundle.width), hardware, model_writer(bundle),
                      {"x": x}, ["y"]).run()
        sweep_s = time.monotonic() - t0
        for line in tuned.table:
            log(line)
        chosen, default = tuned.outcome.chosen, tuned.outcome.default
        result: dict[str, Any] = {"budgetSeconds": budget_s, "sweepSeconds": round(sweep_s, 1),
                                  "measured": tuned.outcome.measured, "table": list(tuned.table),
                                  "chosen": chosen.candidate.describe(), "default": default.candidate.describe()}
        names = {"default": f"{MODEL}-default", "tuned": f"{MODEL}-tuned"}
        write = model_writer(bundle)
        client = TritonHTTP(url)
        for which, cfg in (("default", base_config(bundle.width)), ("tuned", tuned.config)):
            write(repo / names[which], dataclasses.replace(cfg, name=names[which]))
            client.load(names[which])
        reqs, _ = requests(bundle.width)
        rows = compare_levels({w: (url, n) for w, n in names.items()}, reqs, 12.0, 1.0)
        ref = client.infer(names["default"], {"x": x[:8]}, ["y"])["y"]
        again = client.infer(names["tuned"], {"x": x[:8]}, ["y"])["y"]
        result.update(levels=rows, sameAnswers=bool(np.allclose(ref, again, rtol=1e-3, atol=1e-5)))
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/gpu"))
    p.add_argument("--gpu-dir", type=Path, default=ROOT / ".gpu")
    p.add_argument("--budget", type=float, default=120.0, help="the tuner's budget (seconds)")
    p.add_argument("--dry-run-cpu", action="store_true", help="here, without a GPU: the cached CPU Triton")
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop clients in the serving phase")
    p.add_argument("--batched", action="store_true", help="serve the configuration the GPU sweep chose")
    p.add_argument("--skip-tuning", action="store_true")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": {"gpus": sh("nvidia-smi -L"), "driver": sh(
        "nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader"), "python": sys.version,
        "cpus": os.cpu_count()}}
    failed = False

    def save() -> None:
        (args.out / "gpu.json").write_text(json.dumps(report, indent=2, default=str))

    try:
        import torch

        report["machine"]["torch"] = f"{torch.__version__}, cuda {torch.cuda.is_available()}"
        bundle = local_bundle() if args.dry_run_cpu else unpack(args.gpu_dir)
        report["machine"]["libpython"] = bundle.libpython
    except Exception as e:
        report["setup"] = {"error": f"{e}", "trace": traceback.format_exc()}
        save()
        print(json.dumps(report, indent=2, default=str))
        return 1
    phases = [("serving", lambda: phase_serve_and_metrics(bundle, args.out, args.concurrency, args.batched))]
    if not args.skip_tuning:
        phases.append(("tuning", lambda: phase_tune(bundle, args.out, args.budget)))
    for name, run in phases:
        log(f"phase {name}")
        try:
            report[name] = run()
        except Exception as e:
            failed = True
            report[name] = {"error": f"{e}"[-4000:], "trace": traceback.format_exc()[-4000:]}
            log(f"phase {name} failed: {e}")
        save()
    print(json.dumps(report, indent=1, default=str)[-6000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
