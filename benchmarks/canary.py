"""Canary reaction benchmark: from a bad canary's first failed request to zero canary traffic.

On the real-node cluster (real Triton pods, the operator from the chart, a client sending all
along through the Service), a stable digits model is replaced by a version that fails every
4th request. Measured per run:

  first_error   the first failed request a client saw (the canary is serving)
  verdict       status.canary says RollingBack (the operator decided)
  zero_traffic  the Service's EndpointSlices hold no ready canary endpoint any more

Goal: zero_traffic - first_error <= 2 analysis intervals. For scale, Flagger's default reaction
is interval x threshold (1 min x 5 by default, 60 s at the least with threshold 1); that figure
is its documented configuration, not measured here.

    .venv/bin/python benchmarks/canary.py --runs 3 --interval 5 --json out/canary.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "hack")]

from benchmarks._report import write_json  # noqa: E402
from tests.support import cluster as cluster_support  # noqa: E402
from tests.support.bad_models import bad_digits_tarball  # noqa: E402
from tests.support.cluster import ClusterHandle, wait_for  # noqa: E402
from tests.support.load import Load  # noqa: E402
from tests.support.stack import prepare  # noqa: E402

NS = "bench-canary"
NAME = "digits"

def spec(version: str, uri: str, fmt: str, interval: float) -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": NAME},
            "spec": {"model": {"name": "digits", "version": version,
                               "source": {"uri": uri, "credentialsSecret": "s3-creds"}, "format": fmt,
                               "maxBatchSize": 32},
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                          "limits": {"memory": "2Gi"}}},
                     "replicas": 3,
                     "rollout": {"strategy": "Canary", "maxSurgeGpus": 0,
                                 "steps": [{"weight": 34, "pause": "60s"}, {"weight": 67, "pause": "60s"}],
                                 "analysis": {"interval": f"{interval:g}s", "minRequests": 20, "maxErrorRate": 0.02,
                                              "maxLatencyRatio": 3.0, "failureLimit": 2}}}}


def status(tc: ClusterHandle) -> dict[str, Any]:
    return tc.kubectl_json("get", "modeldeployment", NAME, "-n", NS).get("status", {})


def canary_endpoints(tc: ClusterHandle, revision: str) -> int:
    slices = tc.kubectl_json("get", "endpointslices", "-n", NS, "-l", f"kubernetes.io/service-name={NAME}")
    pods = [ep.get("targetRef", {}).get("name", "") for s in slices["items"] for ep in s.get("endpoints") or []
            if ep.get("conditions", {}).get("ready")]
    return sum(1 for p in pods if p.startswith(f"{NAME}-{revision}-"))


def one_run(tc: ClusterHandle, url: str, uri: str, interval: float, run: int) -> dict[str, float]:
    """Deploy the erroring version once; the times of its first error, the verdict and zero traffic."""
    with Load(url, senders=3, pause=0.02) as load:
        time.sleep(2)
        failed_before = len(load.failed)
        t0 = time.monotonic()
        tc.apply(spec(f"bad-{run}", uri, "python", interval), NS)
        revision = wait_for(lambda: status(tc).get("canaryRevision"), 30, interval=0.2, message="canary revision")
        verdict_at = None
        while time.monotonic() - t0 < 300:
            st = status(tc)
            phase = (st.get("canary") or {}).get("phase")
            if verdict_at is None and phase in ("RollingBack", "RolledBack"):
                verdict_at = time.monotonic()
            if verdict_at is not None and canary_endpoints(tc, revision) == 0:
                zero_at = time.monotonic()
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"run {run}: not rolled back: {status(tc)}")
        errors = load.failed[failed_before:]
    if not errors:
        raise AssertionError(f"run {run}: the client saw no failure; nothing to measure")
    first_error = float(errors[0].split("s:")[0]) + load.began  # Load keeps "<seconds since start>s: ..."
    return {"first_error_to_verdict_s": verdict_at - first_error,
            "first_error_to_zero_traffic_s": zero_at - first_error, "failed_requests": len(errors)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval", type=float, default=5.0, help="spec.rollout.analysis.interval in seconds")
    parser.add_argument("--cluster", default="bench-canary")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    tc = cluster_support.start_real_node(args.cluster, service_cidr=None)  # beside the e2e cluster too
    try:
        store = prepare(tc, NS)
        uri = "s3://models/digits/bench-erroring/model.tar.gz"
        store.put(uri, bad_digits_tarball(fail_every=4))
        tc.apply(spec("1", "s3://models/digits/1/model.onnx", "onnx", args.interval), NS)
        wait_for(lambda: status(tc).get("phase") == "Ready" and status(tc).get("readyReplicas") == 3, 300,
                 interval=1, message="v1 serving")
        ip = tc.kubectl_json("get", "service", NAME, "-n", NS)["spec"]["clusterIP"]
        url = f"{ip}:8000"
        from tests.e2e.conftest import service_answers

        wait_for(lambda: service_answers(url), 30, interval=0.5, message="the Service answers")
        runs = []
        for i in range(args.runs):
            r = one_run(tc, url, uri, args.interval, i)
            runs.append(r)
            print(f"run {i + 1}: first error -> verdict {r['first_error_to_verdict_s']:.1f}s, -> zero canary "
                  f"traffic {r['first_error_to_zero_traffic_s']:.1f}s ({r['failed_requests']} failed requests)",
                  flush=True)
            wait_for(lambda: status(tc).get("readyReplicas") == 3, 120, interval=1, message="stable back")
    finally:
        cluster_support.stop(tc)

    median = statistics.median(r["first_error_to_zero_traffic_s"] for r in runs)
    result = {"interval_s": args.interval, "failure_limit": 2, "runs": runs,
              "median_first_error_to_zero_traffic_s": median,
              "in_intervals": median / args.interval, "goal_intervals": 2,
              "flagger_default_reaction_s": 60 * 5}
    print(f"median first error -> zero canary traffic: {median:.1f}s = {median / args.interval:.2f} analysis "
          f"intervals (goal <= 2); Flagger's default configuration reacts after {60 * 5}s "
          f"({60 * 5 / median:.0f}x slower, documented, not measured)")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
