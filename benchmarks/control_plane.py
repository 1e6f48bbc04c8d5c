"""Control-plane benchmark: N ModelDeployments on kwok GPU nodes, against a real API server.

Measures, for each N: time until every ModelDeployment is Ready, the operator's CPU seconds and
peak RSS, API writes per ModelDeployment (from the API server's audit log), and writes per minute
at rest (goal: 0). Baseline measured in the same run: the same N plain Deployments applied with
kubectl, time until all are available (what the scheduler, controllers and kwok alone cost), so
the ratio is the operator's overhead.

    .venv/bin/python benchmarks/control_plane.py --sizes 200 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "hack")]

from localcluster import cluster as lc  # noqa: E402
from localcluster.config import ClusterConfig  # noqa: E402
from tests.support import operator as op  # noqa: E402
from tests.support.cluster import ClusterHandle  # noqa: E402
from tests.support.specs import model_deployment  # noqa: E402

OPERATOR_USER = "system:serviceaccount:modeldeploy-system:modeldeploy"


def _proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


def _audit_writes(tc: ClusterHandle, namespace: str, since: float, until: float | None = None) -> int:
    log = tc.audit_log()
    assert log is not None
    count = 0
    for line in log.read_text().splitlines():
        e = json.loads(line)
        if e["user"]["username"] != OPERATOR_USER or e["verb"] in ("get", "list", "watch"):
            continue
        if e.get("objectRef", {}).get("namespace") != namespace:
            continue
        ts = time.mktime(time.strptime(e["requestReceivedTimestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        if ts >= since and (until is None or ts <= until):
            count += 1
    return count


def _apply_many(tc: ClusterHandle, docs: list[dict[str, Any]], namespace: str) -> None:
    for i in range(0, len(docs), 100):
        tc.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump_all(docs[i:i + 100]))


def _wait_all(tc: ClusterHandle, what: str, namespace: str, n: int, ready: Any, timeout: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        items = tc.kubectl_json("get", what, "-n", namespace)["items"]
        done = sum(1 for i in items if ready(i))
        if done >= n:
            return time.monotonic() - began
        time.sleep(1)
    raise TimeoutError(f"{what}: not all {n} ready after {timeout}s")


def baseline(tc: ClusterHandle, n: int) -> float:
    ns = f"baseline-{n}"
    tc.kubectl("create", "namespace", ns)
    deps = [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"plain-{i}"},
             "spec": {"replicas": 1, "selector": {"matchLabels": {"app": f"plain-{i}"}},
                      "template": {"metadata": {"labels": {"app": f"plain-{i}"}},
                                   "spec": {"containers": [{"name": "c", "image": "example.invalid/x:1",
                                                            "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}}
            for i in range(n)]
    began = time.monotonic()
    _apply_many(tc, deps, ns)
    _wait_all(tc, "deployments", ns, n, lambda d: d.get("status", {}).get("availableReplicas") == 1, 900)
    took = time.monotonic() - began
    tc.kubectl("delete", "namespace", ns, "--wait=false")
    return took


def measure(tc: ClusterHandle, proc: op.OperatorProcess, n: int, rest_seconds: float) -> dict[str, float]:
    ns = f"bench-{n}"
    tc.kubectl("create", "namespace", ns)
    assert proc.proc is not None
    cpu0, _ = _proc_stats(proc.proc.pid)
    since = time.time()
    began = time.monotonic()
    _apply_many(tc, [model_deployment(f"m{i}", replicas=1) for i in range(n)], ns)
    _wait_all(tc, "modeldeployments", ns, n, lambda m: m.get("status", {}).get("phase") == "Ready", 1800)
    ready_s = time.monotonic() - began
    settled = time.time()
    cpu1, _ = _proc_stats(proc.proc.pid)
    time.sleep(5)  # let in-flight status writes land before measuring rest
    rest_from = time.time()
    time.sleep(rest_seconds)
    rest_writes = _audit_writes(tc, ns, rest_from)
    writes = _audit_writes(tc, ns, since, settled + 5)
    cpu2, rss2 = _proc_stats(proc.proc.pid)
    tc.kubectl("delete", "namespace", ns, "--wait=false")
    return {"n": n, "ready_s": ready_s, "cpu_s": cpu1 - cpu0, "rest_cpu_s": cpu2 - cpu1, "peak_rss_mib": rss2,
            "writes_per_md": writes / n, "rest_writes_per_min": rest_writes * 60 / rest_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--rest-seconds", type=float, default=60)
    parser.add_argument("--resync-seconds", type=float, default=30)
    parser.add_argument("--keep", action="store_true", help="leave the benchmark cluster running")
    args = parser.parse_args()

    biggest = max(args.sizes)
    nodes = max(3, -(-biggest // 100))
    cfg = ClusterConfig(name="bench", fake_nodes=nodes, gpus_per_node=128, max_pods_per_node=200)
    lc.up(cfg)
    tc = ClusterHandle(cfg.kubeconfig, cfg)
    rows = []
    proc = None
    try:
        op.install_chart(tc)
        work = cfg.root / "bench"
        work.mkdir(exist_ok=True)
        from localcluster import process

        proc = op.OperatorProcess(kubeconfig=op.service_account_kubeconfig(tc, work / "sa.kubeconfig"),
                                  log_path=work / "operator.log", metrics_port=process.free_port(),
                                  env={"MD_RESYNC_SECONDS": str(args.resync_seconds), "MD_LOG_LEVEL": "WARNING"})
        proc.start()
        for n in args.sizes:
            base = baseline(tc, n)
            row = measure(tc, proc, n, args.rest_seconds)
            row["baseline_s"] = base
            rows.append(row)
            print(f"N={n}: all Ready in {row['ready_s']:.1f}s (plain Deployments: {base:.1f}s, "
                  f"ratio {row['ready_s'] / base:.2f}x); operator CPU {row['cpu_s']:.1f}s, "
                  f"peak RSS {row['peak_rss_mib']:.0f} MiB; {row['writes_per_md']:.1f} API writes per "
                  f"ModelDeployment; at rest {row['rest_writes_per_min']:.1f} writes/min, "
                  f"{row['rest_cpu_s']:.1f} CPU s over {args.rest_seconds:.0f}s", flush=True)
    finally:
        if proc:
            proc.stop()
        if not args.keep:
            lc.down(cfg)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
