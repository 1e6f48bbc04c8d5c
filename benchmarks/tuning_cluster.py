"""Tuning on the real node (issue 18): for each model (the digits CNN, ResNet-50), two
ModelDeployments side by side, one as the operator generates it by default, one with
`optimization.tune`, served at once.

One run, one real-node cluster (containerd, kubelet, kube-proxy), the chart with built revisions
(`artifacts.store` on the cluster's MinIO, the node cache agent): the tuned revision's build Job
runs the sweep beside its gate Triton on the node, exactly as a user's would. Both models of a
pair are then driven through their Services by the tuner's own closed-loop client
(loader/tune_client.py, stdlib HTTP keep-alive, single-sample requests) at concurrency 1, 8 and 32,
in ROUNDS short rounds alternating default and tuned, so drift from other work on the machine hits
both. The answers of both on validation samples are compared (tuning must not change them). The
pairs run one after the other (the digits pair is deleted before ResNet-50's is applied), so one
pair's sweep never shares the node's 2 cores with the other pair's measurement.

ResNet-50 is torchvision's (random weights, as in benchmarks/serving.py), exported to ONNX here
with the loader's converter and published to MinIO: both of its ModelDeployments are `format:
onnx`, so the run needs no converter image.

Goals (issue 18): tuned >= 1.5x the default's throughput at c=32 on digits and >= 1.2x on ResNet-50,
at equal or lower p99, never worse than the default, the sweep inside its budget. Printed MET /
NOT MET with the figures (an unmet goal is not an error; the exit status is non-zero when a
measurement failed or the answers differ).

    make setup images bench-setup     # once: the cluster's tools and images, torchvision for ResNet-50
    .venv/bin/python benchmarks/tuning_cluster.py --json out/tuning_cluster.json   # both, ~12 min
    .venv/bin/python benchmarks/tuning_cluster.py --models digits --budget 1m --duration 6 --keep
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "hack")]

from benchmarks._compare import compare_levels  # noqa: E402
from benchmarks._report import write_json  # noqa: E402
from benchmarks.coldstart import NAMESPACES, built_stack, log  # noqa: E402
from benchmarks.tuning import GOALS  # noqa: E402
from localcluster import objectstore  # noqa: E402
from modeldeploy.loader.tune_triton import requests_from  # noqa: E402
from tests.support import cluster as cluster_support  # noqa: E402
from tests.support import serving_digits as sd  # noqa: E402
from tests.support.cluster import ClusterHandle, wait_for  # noqa: E402
from tests.support.stack import VALIDATION_URI  # noqa: E402

NS = NAMESPACES["built"]
OUTPUT = "output_0"  # the loader's converter names outputs output_N
RESNET_SOURCE = "s3://models/resnet50-onnx/1/model.onnx"
RESNET_DATA_URI = "s3://models/resnet50-onnx/validation.npz"


@dataclass(frozen=True)
class Case:
    """One model of the run: where its source is, what its requests carry."""

    model: str            # the Triton model name (spec.model.name)
    source: str
    validation: str
    input: str
    samples: np.ndarray   # what the client sends, one sample per request
    checked: int          # how many samples' answers are compared, default vs tuned
    memory_limit: str

    def names(self) -> dict[str, str]:
        return {"default": f"{self.model}-default", "tuned": f"{self.model}-tuned"}


def digits_case(_store: objectstore.Store) -> Case:
    """The digits model prepare() published (input_0: 1x8x8)."""
    x = sd.load_digits().x_test[:64].astype(np.float32).reshape(-1, 1, 8, 8)
    return Case("digits", "s3://models/digits/1/model.onnx", VALIDATION_URI, "input_0", x, 64, "2Gi")


def resnet_case(store: objectstore.Store) -> Case:
    """ResNet-50 as ONNX in MinIO (exported once per cluster), input x: 3x224x224."""
    if not (store.exists(RESNET_SOURCE) and store.exists(RESNET_DATA_URI)):
        from benchmarks.tuning import resnet50

        with tempfile.TemporaryDirectory(prefix="md-resnet50-") as tmp:
            model = resnet50(Path(tmp))
            store.put(RESNET_DATA_URI, model.validation.read_bytes())
            store.put(RESNET_SOURCE, model.onnx.read_bytes())
    with tempfile.TemporaryDirectory(prefix="md-resnet50-val-") as tmp:
        path = Path(tmp) / "validation.npz"
        path.write_bytes(store.get(RESNET_DATA_URI))
        x = np.load(path)["x"][:16].astype(np.float32)
    return Case("resnet50", RESNET_SOURCE, RESNET_DATA_URI, "x", x, 8, "3Gi")


CASES = {"digits": digits_case, "resnet50": resnet_case}


def manifest(case: Case, name: str, sha256: str, tune: dict[str, Any] | None) -> dict[str, Any]:
    """The model as a user would write it: no maxBatchSize (the operator's default), one pod."""
    model: dict[str, Any] = {"name": case.model, "version": "1", "format": "onnx",
                             "validationDataUri": case.validation,
                             "source": {"uri": case.source, "credentialsSecret": "s3-creds", "sha256": sha256}}
    if tune is not None:
        model["optimization"] = {"tune": tune}
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": model, "replicas": 1,
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                          "limits": {"memory": case.memory_limit}}}}}


def md(tc: ClusterHandle, name: str) -> dict[str, Any]:
    return tc.kubectl_json("get", "modeldeployment", name, "-n", NS)


def answers(url: str, case: Case) -> list[int]:
    """argmax of each checked sample's answer (KServe v2 JSON, one request per sample)."""
    out = []
    for sample in case.samples[:case.checked]:
        body = json.dumps({"inputs": [{"name": case.input, "shape": [1, *sample.shape], "datatype": "FP32",
                                       "data": sample.ravel().tolist()}]}).encode()
        req = urllib.request.Request(f"{url}/v2/models/{case.model}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            out.append(int(np.argmax(json.loads(r.read())["outputs"][0]["data"])))
    return out


def bench_pair(tc: ClusterHandle, store: objectstore.Store, case: Case, budget: str, duration_s: float,
               warmup_s: float) -> dict[str, Any]:
    """Default and tuned of one model applied together, Ready, compared; deleted afterwards."""
    sha = hashlib.sha256(store.get(case.source)).hexdigest()
    names = case.names()
    began = time.monotonic()
    for which, name in names.items():
        tc.apply(manifest(case, name, sha, {"budget": budget} if which == "tuned" else None), NS)
    ready_s = {}
    for which, name in names.items():
        wait_for(lambda n=name: md(tc, n).get("status", {}).get("phase") == "Ready", 1500, interval=2,
                 message=f"{name} Ready")
        ready_s[which] = round(time.monotonic() - began)
        log(f"{name} Ready {ready_s[which]}s after apply")
    tuning = (md(tc, names["tuned"])["status"]["revisions"][0].get("artifact") or {}).get("tuning") or {}
    log(f"{case.model} tuned: {json.dumps(tuning)[:600]}")
    urls = {w: f"http://{tc.kubectl_json('get', 'service', n, '-n', NS)['spec']['clusterIP']}:8000"
            for w, n in names.items()}
    same = answers(urls["default"], case) == answers(urls["tuned"], case)
    rows = compare_levels({w: (u, case.model) for w, u in urls.items()},
                          requests_from({case.input: case.samples}, [OUTPUT]), duration_s, warmup_s,
                          f"{case.model} ")
    for name in names.values():
        tc.kubectl("delete", "modeldeployment", name, "-n", NS, "--wait=true", "--timeout=300s")
    wait_for(lambda: not tc.kubectl_json("get", "pods", "-n", NS)["items"], 300, interval=2,
             message=f"{case.model} pods gone")
    top, goal = rows[-1], GOALS[case.model]
    seconds, budget_s = tuning.get("seconds"), tuning.get("budgetSeconds")
    return {"model": case.model, "tuning": tuning, "readyAfterApplySeconds": ready_s, "sameAnswers": same,
            "levels": rows, "goal": f">= {goal}x at c=32, p99 not higher",
            "goalMet": top["throughputRatio"] >= goal and top["p99Ratio"] <= 1.0,
            "neverWorse": all(r["throughputRatio"] >= 0.95 for r in rows),
            "withinBudget": seconds is not None and budget_s is not None and seconds <= budget_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--budget", default="3m", help="the tune budget, as in the spec")
    p.add_argument("--duration", type=float, default=12.0, help="seconds per level and model (over all rounds)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--cluster", default="bench-tuning")
    p.add_argument("--keep", action="store_true", help="leave the cluster up")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.cluster == cluster_support.DEMO_CLUSTER:
        p.error(f"'{cluster_support.DEMO_CLUSTER}' is make demo's cluster: name another one")
    store_uri = f"s3://artifacts/tuning-{uuid.uuid4().hex[:8]}"  # nothing built before is reused
    cache_dir = Path(tempfile.mkdtemp(prefix="md-tuning-cache-"))
    results: list[dict[str, Any]] = []
    tc = cluster_support.start_real_node(args.cluster, service_cidr=None)
    try:
        tc.kubectl("delete", "namespace", NS, "--ignore-not-found", "--timeout=300s")
        built_stack(tc, store_uri, cache_dir)
        assert tc.local is not None
        store = objectstore.up(tc.local)
        for model in args.models:
            results.append(bench_pair(tc, store, CASES[model](store), args.budget, args.duration, args.warmup))
    finally:
        if args.keep:
            log(f"kept: cluster {args.cluster} (kubeconfig {tc.kubeconfig})")
        else:
            cluster_support.stop(tc)
            shutil.rmtree(cache_dir, ignore_errors=True)
    for r in results:
        t, top = r["tuning"], r["levels"][-1]
        print(f"{r['model']}: chose {t.get('settings')} in {t.get('seconds')}s (budget {args.budget}, inside: "
              f"{r['withinBudget']}); answers unchanged: {r['sameAnswers']}; goal {r['goal']}: "
              f"{'MET' if r['goalMet'] else 'NOT MET'} ({top['throughputRatio']}x, p99 {top['p99Ratio']}x); "
              f"never worse (>= 0.95x at every level): {r['neverWorse']}")
    write_json(args.json, {"benchmark": "tuning on the real node", "budget": args.budget, "results": results})
    return 0 if all(r["sameAnswers"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
