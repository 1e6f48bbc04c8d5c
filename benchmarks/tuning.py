"""Tuning benchmark (issue 18): the default generated config.pbtxt vs the tuned one, side by side.

For each model, in one run on this machine: the artifact builder (`python -m modeldeploy.artifact
build`, in this process) builds the model twice beside one real tritonserver started with the build
Job's sidecar flags: once as the operator's defaults generate it (maxBatchSize 8, no dynamic
batcher, one instance), once with `spec.model.optimization.tune` (its sweep timed against its
budget). Both artifacts are then served by that Triton at the same time and driven by one
closed-loop load generator (loader/tune_client.py: N senders, stdlib HTTP keep-alive, pre-encoded
single-sample requests; the lightest client we have, so that on 2 shared cores the client is not
what is measured) at concurrency 1, 8 and 32: at each level, ROUNDS short rounds alternating
default and tuned (so drift from other work on the machine hits both), throughput averaged, p50
and p99 the median over rounds.

Goals (issue 18): tuned >= 1.5x the default's throughput at c=32 on the digits CNN and >= 1.2x on
ResNet-50, each at equal or lower p99, never worse than the default; the sweep inside its budget.

    .venv/bin/python benchmarks/tuning.py --json out/tuning.json                    # digits and ResNet-50
    .venv/bin/python benchmarks/tuning.py --models digits --budget 60 --duration 5  # a quick look

This runs the real Triton binary the tests use (~/.cache/modeldeploy/triton), not a cluster: the
sweep and the serving happen on this machine's CPUs, as a build Job and its serving pods on one
node would.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

from benchmarks._compare import compare_levels  # noqa: E402
from benchmarks._report import write_json  # noqa: E402
from modeldeploy.artifact.cli import main as artifact_main  # noqa: E402
from modeldeploy.loader.convert import convert  # noqa: E402
from modeldeploy.loader.gate_triton import TritonHTTP  # noqa: E402
from modeldeploy.loader.settings import InputShape  # noqa: E402
from modeldeploy.loader.tune_client import Request  # noqa: E402
from modeldeploy.loader.tune_triton import requests_from  # noqa: E402
from tests.support import serving, serving_digits  # noqa: E402

DEFAULT_MAX_BATCH = "8"  # api.DEFAULT_MAX_BATCH_SIZE: what a spec without maxBatchSize gets
GOALS = {"digits": 1.5, "resnet50": 1.2}
OUTPUT = "output_0"  # the loader's TorchScript export names outputs output_N


@dataclass
class Model:
    name: str
    onnx: Path
    validation: Path
    requests: list[Request]


def digits(work: Path) -> Model:
    data = serving_digits.load_digits()
    ts = serving_digits.save_torchscript(serving_digits.train_cnn(data), work / "digits.pt")
    onnx = convert(ts, "torchscript", work / "digits.onnx", 8, (InputShape("x", "float32", (1, 8, 8)),))
    val = serving_digits.save_validation(data, work / "digits-val.npz")
    return Model("digits", onnx, val, requests_from({"x": data.x_test[:64]}, [OUTPUT]))


def resnet50(work: Path) -> Model:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    torch.jit.script(model).save(str(work / "resnet50.pt"))
    onnx = convert(work / "resnet50.pt", "torchscript", work / "resnet50.onnx", 8,
                   (InputShape("x", "float32", (3, 224, 224)),))
    x = np.random.default_rng(0).random((64, 3, 224, 224), dtype=np.float32)
    np.savez(work / "resnet50-val.npz", x=x)
    return Model("resnet50", onnx, work / "resnet50-val.npz", requests_from({"x": x[:16]}, [OUTPUT]))


def build(model: Model, triton: serving.TritonServer, repo: Path, store: Path, tune: dict[str, Any] | None,
          work: Path) -> dict[str, Any]:
    """One build Job's work, in this process; its JSON result."""
    store.mkdir(parents=True, exist_ok=True)
    term = work / f"{model.name}-{'tuned' if tune else 'default'}.termination-log"
    env = {"MD_ARTIFACT_STORE": f"file://{store}", "MD_SOURCE_URI": f"file://{model.onnx}",
           "MD_MODEL_NAME": model.name, "MD_MAX_BATCH_SIZE": DEFAULT_MAX_BATCH,
           "MD_VALIDATION_URI": f"file://{model.validation}", "MD_BACKEND": "python-onnx",
           "MD_RUNNER_SYS_PATH": serving.triton_install().stub_site, "MD_REPOSITORY": str(repo),
           "MD_GATE_TRITON_URL": f"http://{triton.http_url}", "MD_GATE_REPOSITORY": str(repo),
           "MD_ARTIFACT_HARDWARE": "benchmark", "MD_TERMINATION_LOG": str(term)}
    if tune is not None:
        env["MD_TUNE"] = json.dumps(tune)
    if artifact_main(["build"], env) != 0:
        raise RuntimeError(f"build of {model.name} failed: {term.read_text()}")
    return dict(json.loads(term.read_text()))


def serve(triton: serving.TritonServer, repo: Path, artifact: Path, name: str) -> None:
    """An artifact's model directory served under `name` (config.pbtxt's name rewritten)."""
    dest = repo / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(artifact / "model", dest)
    config = dest / "config.pbtxt"
    config.write_text(re.sub(r'^name: "[^"]*"', f'name: "{name}"', config.read_text(), count=1, flags=re.M))
    TritonHTTP(f"http://{triton.http_url}").load(name)


def bench_model(model: Model, work: Path, budget_s: float, duration_s: float, warmup_s: float) -> dict[str, Any]:
    repo, store = work / f"{model.name}-repo", work / f"{model.name}-store"
    repo.mkdir()
    with serving.running_gate(repo, work / f"{model.name}-triton.log") as triton:
        default = build(model, triton, repo, store, None, work)
        t0 = time.monotonic()
        tuned = build(model, triton, repo, store, {"budgetSeconds": budget_s}, work)
        build_s = time.monotonic() - t0
        names = {"default": f"{model.name}-default", "tuned": f"{model.name}-tuned"}
        serve(triton, repo, store / default["key"], names["default"])
        serve(triton, repo, store / tuned["key"], names["tuned"])
        url = f"http://{triton.http_url}"
        rows = compare_levels({w: (url, names[w]) for w in names}, model.requests, duration_s, warmup_s,
                              f"{model.name} ")
    top = rows[-1]
    goal = GOALS[model.name]
    met = bool(top["throughputRatio"] and top["throughputRatio"] >= goal and top["p99Ratio"] <= 1.0)
    never_worse = all(r["throughputRatio"] >= 0.95 for r in rows if r["throughputRatio"] is not None)
    return {"model": model.name, "tuning": tuned.get("tuning"), "sweepSeconds": tuned["tuning"]["seconds"],
            "budgetSeconds": budget_s, "withinBudget": tuned["tuning"]["seconds"] <= budget_s,
            "buildSeconds": round(build_s, 1), "levels": rows, "goal": f">= {goal}x at c=32, p99 not higher",
            "goalMet": met, "neverWorse": never_worse}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=["digits", "resnet50"], default=["digits", "resnet50"])
    p.add_argument("--budget", type=float, default=180.0, help="the tune budget (seconds) for every model")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level and configuration (over all rounds)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each round")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="md-tuning-bench-") as tmp:
        work = Path(tmp)
        for name in args.models:
            model = digits(work) if name == "digits" else resnet50(work)
            print(f"{name}: building default and tuned (budget {args.budget:.0f}s) ...", flush=True)
            results.append(bench_model(model, work, args.budget, args.duration, args.warmup))
    for r in results:
        t = r["tuning"]
        print(f"{r['model']}: chose {t['settings']} in {r['sweepSeconds']}s of {r['budgetSeconds']:.0f}s "
              f"({t['candidates']} candidates); at c=32 {r['levels'][-1]['throughputRatio']}x throughput, p99 "
              f"{r['levels'][-1]['p99Ratio']}x; goal {r['goal']}: {'met' if r['goalMet'] else 'NOT met'}; "
              f"never worse: {r['neverWorse']}")
    write_json(args.json, {"benchmark": "tuning", "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
