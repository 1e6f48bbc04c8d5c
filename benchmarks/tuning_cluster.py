"""Tuning on the real node (issue 18): two ModelDeployments of the digits model side by side, one as
the operator generates it by default, one with `optimization.tune`, served at once.

One run, one real-node cluster (containerd, kubelet, kube-proxy), the chart with built revisions
(`artifacts.store` on the cluster's MinIO, the node cache agent): the tuned revision's build Job
runs the sweep beside its gate Triton on the node, exactly as a user's would. Both models are
then driven through their Services by the tuner's own closed-loop client (loader/tune_client.py,
stdlib HTTP keep-alive, single-sample requests) at concurrency 1, 8 and 32, in ROUNDS short rounds
alternating default and tuned, so drift from other work on the machine hits both. The answers of
both on the validation samples are compared (tuning must not change them).

Goal (issue 18): tuned >= 1.5x the default's throughput at c=32 at equal or lower p99, never
worse than the default, the sweep inside its budget. Printed MET / NOT MET with the figures (an
unmet goal is not an error; the exit status is non-zero when a measurement failed).

    .venv/bin/python benchmarks/tuning_cluster.py --json out/tuning_cluster.json
    .venv/bin/python benchmarks/tuning_cluster.py --budget 1m --duration 6 --keep
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
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "hack")]

from benchmarks._report import write_json  # noqa: E402
from benchmarks.coldstart import NAMESPACES, built_stack, log  # noqa: E402
from benchmarks.tuning import compare_levels  # noqa: E402
from modeldeploy.loader.tune_triton import requests_from  # noqa: E402
from tests.support import cluster as cluster_support  # noqa: E402
from tests.support import serving_digits as sd  # noqa: E402
from tests.support.cluster import ClusterHandle, wait_for  # noqa: E402
from tests.support.stack import VALIDATION_URI  # noqa: E402

NS = NAMESPACES["built"]
SOURCE = "s3://models/digits/1/model.onnx"
NAMES = {"default": "digits-default", "tuned": "digits-tuned"}
GOAL = 1.5


def manifest(name: str, sha256: str, tune: dict[str, Any] | None) -> dict[str, Any]:
    """The digits model as a user would write it: no maxBatchSize (the operator's default), one pod."""
    model: dict[str, Any] = {"name": "digits", "version": "1", "format": "onnx", "validationDataUri": VALIDATION_URI,
                             "source": {"uri": SOURCE, "credentialsSecret": "s3-creds", "sha256": sha256}}
    if tune is not None:
        model["optimization"] = {"tune": tune}
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": model, "replicas": 1,
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                          "limits": {"memory": "2Gi"}}}}}


def md(tc: ClusterHandle, name: str) -> dict[str, Any]:
    return tc.kubectl_json("get", "modeldeployment", name, "-n", NS)


def answers(url: str, x: np.ndarray) -> list[int]:
    """argmax of each sample's answer (KServe v2 JSON, one request per sample)."""
    out = []
    for i in range(len(x)):
        body = json.dumps({"inputs": [{"name": "input_0", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                       "data": x[i].ravel().tolist()}]}).encode()
        req = urllib.request.Request(f"{url}/v2/models/digits/infer", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            out.append(int(np.argmax(json.loads(r.read())["outputs"][0]["data"])))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    results: dict[str, Any] = {"benchmark": "tuning on the real node", "budget": args.budget}
    tc = cluster_support.start_real_node(args.cluster, service_cidr=None)
    try:
        tc.kubectl("delete", "namespace", NS, "--ignore-not-found", "--timeout=300s")
        built_stack(tc, store_uri, cache_dir)
        from localcluster import objectstore

        assert tc.local is not None
        sha = hashlib.sha256(objectstore.up(tc.local).get(SOURCE)).hexdigest()
        began = time.monotonic()
        for which, name in NAMES.items():
            tc.apply(manifest(name, sha, {"budget": args.budget} if which == "tuned" else None), NS)
        for name in NAMES.values():
            wait_for(lambda n=name: md(tc, n).get("status", {}).get("phase") == "Ready", 1200, interval=2,
                     message=f"{name} Ready")
            log(f"{name} Ready {time.monotonic() - began:.0f}s after apply")
        tuned_rev = md(tc, NAMES["tuned"])["status"]["revisions"][0]
        tuning = (tuned_rev.get("artifact") or {}).get("tuning") or {}
        results["tuning"] = tuning
        log(f"tuned: {json.dumps(tuning)[:600]}")
        urls = {w: f"http://{tc.kubectl_json('get', 'service', n, '-n', NS)['spec']['clusterIP']}:8000"
                for w, n in NAMES.items()}
        data = sd.load_digits()
        x = data.x_test[:64].astype(np.float32).reshape(-1, 1, 8, 8)
        same = answers(urls["default"], x) == answers(urls["tuned"], x)
        results["sameAnswers"] = same
        requests = requests_from({"input_0": x}, ["output_0"])
        rows = compare_levels({w: (u, "digits") for w, u in urls.items()}, requests, args.duration, args.warmup)
        results["levels"] = rows
    finally:
        if args.keep:
            log(f"kept: cluster {args.cluster} (kubeconfig {tc.kubeconfig})")
        else:
            cluster_support.stop(tc)
            shutil.rmtree(cache_dir, ignore_errors=True)
    top = rows[-1]
    met = top["throughputRatio"] >= GOAL and top["p99Ratio"] <= 1.0
    never_worse = all(r["throughputRatio"] >= 0.95 for r in rows)
    seconds, budget = tuning.get("seconds"), tuning.get("budgetSeconds")
    results.update(goalMet=met, neverWorse=never_worse)
    print(f"chose {tuning.get('settings')} in {seconds}s (budget {args.budget}); answers unchanged: {same}")
    print(f"goal tuned >= {GOAL}x at c=32 with p99 not higher: {'MET' if met else 'NOT MET'} "
          f"({top['throughputRatio']}x, p99 {top['p99Ratio']}x); never worse (>= 0.95x at every level): "
          f"{never_worse}; sweep inside its budget: {seconds is not None and budget is not None and seconds <= budget}")
    write_json(args.json, results)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
