"""Cold start on the real node: every pod preparing its own model vs built revisions + node cache.

One run, one real-node cluster, both paths with the same models, one after the other:

  per-pod  the chart as it is by default (no artifact store): each serving pod's model-loader init
           container fetches the source, converts, quantizes and gates it itself
  built    the chart with `artifacts.store` on the cluster's MinIO (one build Job per revision)
           and `artifactCache.enabled` (the node cache agent): serving pods only fetch and verify,
           from the agent's copy once the node has one

Models: torchvision ResNet-50 as TorchScript (random weights, as in benchmarks/serving.py) with
`quantize: int8` (converter image, its 64 random validation images; agreement gate 0, the speed
gate still decides), and the digits ONNX model. For each model and path:

  first    apply -> the first pod Ready
  second   `kubectl scale` 1 -> 2 -> the new pod Ready (on the same node: the cluster has one)
  three    scale back to 1, then `kubectl scale` 1 -> 3 -> both new pods Ready
  build    built path: the build Job, status.startTime -> completionTime (1 s resolution), and
           the builder's own buildSeconds from status.revisions[].artifact
  pods     every new pod, from its status (1 s resolution): PodScheduled -> Initialized, -> Triton
           started and -> Ready; its init container's run time; for a fetch, its own seconds and how
           many files the node cache served

Ready is pod readiness, polled every 0.5 s with kubectl, timed from just before the apply or
scale command. Goals (issue 14), printed MET / NOT MET with the figures (an unmet goal is not an
error; the exit status is non-zero only when a measurement failed):

  (a) ResNet-50 int8: a scale-up pod (1 -> 2) Ready in <= 10% of the first build's time (build Job)
  (b) that pod Ready >= 5x faster than the per-pod path's
  (c) digits: a pod served from the node cache (1 -> 2) Ready <= 3 s after it was scheduled

    .venv/bin/python benchmarks/coldstart.py --json out/coldstart.json
    .venv/bin/python benchmarks/coldstart.py --models digits --keep     # no converter image; cluster kept
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "hack")]

from benchmarks._report import write_json  # noqa: E402
from localcluster import cluster as lc  # noqa: E402
from localcluster import hostnet, objectstore  # noqa: E402
from modeldeploy import constants  # noqa: E402
from tests.support import cluster as cluster_support  # noqa: E402
from tests.support import operator as op  # noqa: E402
from tests.support.cluster import ClusterHandle, wait_for  # noqa: E402
from tests.support.stack import prepare  # noqa: E402

MODELS = ("resnet50", "digits")
NAMESPACES = {"per-pod": "bench-cold-per-pod", "built": "bench-cold-built"}
SOURCES = {"resnet50": "s3://models/resnet50-ts/1/model.pt", "digits": "s3://models/digits/1/model.onnx"}
RESNET_DATA_URI = "s3://models/resnet50-ts/validation.npz"
AGENT_SECRET = "artifact-store"
AGENT = "daemonset/modeldeploy-cache-agent"
BUILD_JOBS = "app.kubernetes.io/component=model-build"
FIGURES = ("first_ready_s", "second_ready_s", "three_ready_s")
POLL_S = 0.5


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- the stack and the models

def load_converter(tc: ClusterHandle) -> None:
    """The converter image (operator image + torch, ~4.5 GB) into the node: the TorchScript loader's."""
    out = subprocess.run([str(ROOT / "hack" / "images" / "ensure.sh"), "--converter"], check=True,
                         capture_output=True, text=True).stdout
    assert tc.local is not None
    lc.load_image(lc.effective(tc.local), ROOT / out.split()[-1])


def publish(store: objectstore.Store, models: list[str]) -> dict[str, str]:
    """Each model's source in MinIO (prepare() publishes digits), and its sha256 as a user pins it."""
    if "resnet50" in models and not (store.exists(SOURCES["resnet50"]) and store.exists(RESNET_DATA_URI)):
        from benchmarks.serving import resnet_case

        with tempfile.TemporaryDirectory() as tmp:
            case = resnet_case(Path(tmp), 0.0, 0.0)
            store.put(RESNET_DATA_URI, case.validation_path.read_bytes())
            store.put(SOURCES["resnet50"], case.torchscript_path.read_bytes())
    return {m: hashlib.sha256(store.get(SOURCES[m])).hexdigest() for m in models}


def built_stack(tc: ClusterHandle, store_uri: str, cache_dir: Path) -> None:
    """The chart again, with built revisions in `store_uri` and the node cache agent on (in
    `cache_dir`, on the fixed Service address the local cluster needs without cluster DNS)."""
    assert tc.local is not None
    store = objectstore.up(tc.local)
    tc.kubectl("create", "namespace", op.SYSTEM_NAMESPACE, check=False)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": AGENT_SECRET},
              "stringData": store.secret_data()}
    tc.kubectl("apply", "-n", op.SYSTEM_NAMESPACE, "-f", "-", input_text=json.dumps(secret))
    agent_ip = ipaddress.ip_network(hostnet.service_cidr(tc.local))[10]  # in the range's static band
    values = {"artifacts.store": store_uri, "artifacts.credentialsSecret": "s3-creds",
              "artifactCache.enabled": "true", "artifactCache.store": store_uri,
              "artifactCache.storeCredentialsSecret": AGENT_SECRET, "artifactCache.clusterIP": agent_ip,
              "artifactCache.hostPath": cache_dir}
    prepare(tc, NAMESPACES["built"], *(f"{k}={v}" for k, v in values.items())).ensure_bucket("artifacts")
    tc.kubectl("rollout", "status", AGENT, "-n", op.SYSTEM_NAMESPACE, "--timeout=180s")


def manifest(model: str, sha256: str) -> dict[str, Any]:
    """The ModelDeployment of `model`, named after it, one replica: the same on both paths."""
    spec: dict[str, Any] = {"name": model, "version": "1", "maxBatchSize": 32,
                            "source": {"uri": SOURCES[model], "credentialsSecret": "s3-creds", "sha256": sha256}}
    if model == "resnet50":
        spec.update(format="torchscript", validationDataUri=RESNET_DATA_URI,
                    inputs=[{"name": "image", "dtype": "float32", "shape": [3, 224, 224]}],
                    optimization={"quantize": "int8", "minAgreement": 0.0})
    else:
        spec["format"] = "onnx"
    limits = {"memory": "6Gi" if model == "resnet50" else "2Gi"}
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": model},
            "spec": {"model": spec, "replicas": 1,
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                          "limits": limits}}}}


# ---------------------------------------------------------------- pods and their timelines

def pods(tc: ClusterHandle, ns: str, name: str, terminating: bool = False) -> list[dict[str, Any]]:
    items = tc.kubectl_json("get", "pods", "-n", ns, "-l", f"modeldeploy.io/name={name}")["items"]
    return [p for p in items if terminating or not p["metadata"].get("deletionTimestamp")]


def conditions(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in pod.get("status", {}).get("conditions", [])}


def is_ready(pod: dict[str, Any]) -> bool:
    return conditions(pod).get("Ready", {}).get("status") == "True"


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def wait_ready(tc: ClusterHandle, ns: str, name: str, count: int, began: float, timeout: float) -> dict[str, float]:
    """Poll until `count` pods of `name` are Ready: {pod: seconds after `began` it was first seen Ready}."""
    seen: dict[str, float] = {}

    def check() -> dict[str, float] | None:
        current = pods(tc, ns, name)
        now = time.monotonic() - began
        for pod in filter(is_ready, current):
            seen.setdefault(pod["metadata"]["name"], now)
        names = [p["metadata"]["name"] for p in current]
        return {n: seen[n] for n in names} if len(names) == count and set(names) <= seen.keys() else None

    return wait_for(check, timeout, interval=POLL_S, message=f"{count} pods of {name} Ready in {ns}")


def timeline(pod: dict[str, Any]) -> dict[str, Any]:
    """From the pod's status (1 s resolution): seconds from PodScheduled to Initialized, to Triton's
    start and to Ready; the init container's run time and, for a fetch, figures of its JSON result."""
    status = pod["status"]
    since = partial(seconds_between, conditions(pod)["PodScheduled"]["lastTransitionTime"])
    states = {c["name"]: c["state"] for c in status.get("initContainerStatuses", []) + status["containerStatuses"]}
    running = states[constants.CONTAINER_SERVING].get("running") or {}
    init = states[constants.CONTAINER_LOADER].get("terminated") or {}
    out: dict[str, Any] = {
        "pod": pod["metadata"]["name"],
        "sched_to_initialized_s": since(conditions(pod)["Initialized"]["lastTransitionTime"]),
        "sched_to_started_s": since(running["startedAt"]) if running else None,
        "sched_to_ready_s": since(conditions(pod)["Ready"]["lastTransitionTime"]),
        "init_s": seconds_between(init["startedAt"], init["finishedAt"]) if init else None}
    last = (init.get("message") or "").strip().splitlines()[-1:]  # a fetch's JSON result; a loader's is empty
    result = json_loads(last[0]) if last else {}
    out.update({k: result[k] for k in ("seconds", "files", "fromCache") if k in result})
    return out


def json_loads(text: str) -> dict[str, Any]:
    """A JSON object from `text`, or {} when it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------- one model on one path

def scale(tc: ClusterHandle, ns: str, name: str, replicas: int, timeout: float) -> tuple[float, list[dict[str, Any]]]:
    """`kubectl scale` to `replicas` until that many pods are Ready: when the last new one was, and their timelines."""
    before = {p["metadata"]["name"] for p in pods(tc, ns, name)}
    began = time.monotonic()
    tc.kubectl("scale", f"modeldeployment/{name}", "-n", ns, f"--replicas={replicas}")
    ready = wait_ready(tc, ns, name, replicas, began, timeout)
    new = sorted(set(ready) - before)
    current = {p["metadata"]["name"]: p for p in pods(tc, ns, name)}
    return max((ready[n] for n in new), default=0.0), [{"ready_s": ready[n], **timeline(current[n])} for n in new]


def measure(tc: ClusterHandle, path: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    ns, name = NAMESPACES[path], spec["metadata"]["name"]
    began = time.monotonic()
    tc.apply(spec, ns)
    (first,) = wait_ready(tc, ns, name, 1, began, timeout).values()
    log(f"{name} {path}: apply -> first pod Ready {first:.1f} s")
    out: dict[str, Any] = {"first_ready_s": first, "first_pod": timeline(pods(tc, ns, name)[0]),
                           "load_average_1m": os.getloadavg()[0]}  # the machine is shared: how busy it was
    out["second_ready_s"], out["second_pods"] = scale(tc, ns, name, 2, timeout)
    log(f"{name} {path}: scale 1->2 -> new pod Ready {out['second_ready_s']:.1f} s")
    tc.kubectl("scale", f"modeldeployment/{name}", "-n", ns, "--replicas=1")
    wait_for(lambda: len(pods(tc, ns, name, terminating=True)) == 1, timeout, interval=1,
             message=f"{name} back to one pod")
    out["three_ready_s"], out["three_pods"] = scale(tc, ns, name, 3, timeout)
    log(f"{name} {path}: scale 1->3 -> all Ready {out['three_ready_s']:.1f} s")
    if path == "built":
        out["build"] = build(tc, ns, name)
        log(f"{name} built: build Job {out['build']['job_s']:.0f} s (builder {out['build']['build_seconds']} s)")
    return out


def build(tc: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    """The revision's build Job (start -> completion) and the artifact the operator recorded."""
    jobs = tc.kubectl_json("get", "jobs", "-n", ns, "-l", f"{BUILD_JOBS},modeldeploy.io/name={name}")["items"]
    status = tc.kubectl_json("get", "modeldeployment", name, "-n", ns)["status"]
    artifact = next(r["artifact"] for r in status["revisions"] if r["revision"] == status["stableRevision"])
    job = jobs[0]["status"]
    return {"job_s": seconds_between(job["startTime"], job["completionTime"]), "jobs": len(jobs),
            "build_seconds": artifact.get("buildSeconds"), "reused": artifact.get("reused"),
            "quantized": artifact.get("quantized"), "key": artifact.get("key")}


def diagnose(tc: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    """What the ModelDeployment and its pods say, for a measurement that failed."""
    md = tc.kubectl("get", "modeldeployment", name, "-n", ns, "-o", "json", check=False)
    status = json_loads(md.stdout).get("status", {})
    states = {p["metadata"]["name"]: [c.get("state") for c in p["status"].get("initContainerStatuses", [])
                                      + p["status"].get("containerStatuses", [])]
              for p in pods(tc, ns, name, terminating=True)}
    return {"phase": status.get("phase"), "message": status.get("message"),
            "conditions": status.get("conditions"), "pods": states}


def measure_or_report(tc: ClusterHandle, path: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """measure(), or the error and what the cluster said; the model is deleted either way (its pods gone)."""
    ns, name = NAMESPACES[path], spec["metadata"]["name"]
    try:
        return measure(tc, path, spec, timeout)
    except Exception as e:
        log(f"{name} {path} FAILED: {e}"[:800])
        return {"error": str(e)[:1500], "diagnosis": diagnose(tc, ns, name)}
    finally:
        tc.kubectl("delete", "modeldeployment", name, "-n", ns, "--ignore-not-found", "--wait=false")
        wait_for(lambda: not pods(tc, ns, name, terminating=True), 300, interval=1, message=f"{name} gone")


# ---------------------------------------------------------------- report

def ratios(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """per-pod time / built time, per model and figure: how many times faster the built path was."""
    out = {}
    for model, paths in models.items():
        pp, built = paths.get("per-pod", {}), paths.get("built", {})
        out[model] = {k: pp[k] / built[k] for k in FIGURES if pp.get(k) and built.get(k)}
    return out


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def table(models: dict[str, dict[str, Any]], speedups: dict[str, dict[str, float]]) -> str:
    lines = ["| model | path | apply -> 1st pod Ready | 1->2: new pod Ready | 1->3: all Ready | build Job "
             "| 1->2 pod: init container | 1->2 pod: scheduled -> Triton started | 1->2 pod: scheduled -> Ready |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, paths in models.items():
        for path, r in paths.items():
            if "error" in r:
                lines.append(f"| {model} | {path} | FAILED: {r['error'][:200]} | | | | | | |")
                continue
            pod = (r["second_pods"] or [{}])[0]
            lines.append(f"| {model} | {path} | {_s(r['first_ready_s'])} | {_s(r['second_ready_s'])} "
                         f"| {_s(r['three_ready_s'])} | {_s(r.get('build', {}).get('job_s'))} "
                         f"| {_s(pod.get('init_s'))} | {_s(pod.get('sched_to_started_s'))} "
                         f"| {_s(pod.get('sched_to_ready_s'))} |")
    for model, ratio in speedups.items():
        lines.append(f"{model}, per-pod time / built time (same run; > 1: built faster): "
                     + (", ".join(f"{k.removesuffix('_ready_s')} {v:.2f}x" for k, v in ratio.items())
                        or "no pair measured"))
    return "\n".join(lines)


def goal_a(models: dict[str, Any]) -> tuple[bool, str]:
    built = models["resnet50"]["built"]
    took, job = built["second_ready_s"], built["build"]["job_s"]
    return took <= 0.1 * job, f"scale-up pod Ready {took:.1f} s; 10% of the build Job's {job:.0f} s = {0.1 * job:.1f} s"


def goal_b(models: dict[str, Any]) -> tuple[bool, str]:
    per_pod, built = (models["resnet50"][p]["second_ready_s"] for p in ("per-pod", "built"))
    return per_pod / built >= 5, f"per-pod {per_pod:.1f} s / built {built:.1f} s = {per_pod / built:.1f}x"


def goal_c(models: dict[str, Any]) -> tuple[bool, str]:
    pod = models["digits"]["built"]["second_pods"][0]
    return pod["sched_to_ready_s"] <= 3, (
        f"PodScheduled -> Ready {pod['sched_to_ready_s']:.0f} s (1 s resolution; Triton started at "
        f"{pod['sched_to_started_s']} s); its fetch {pod.get('seconds')} s, {pod.get('fromCache')} of "
        f"{pod.get('files')} files from the node cache")


GOALS = (("a", "ResNet-50 int8: a scale-up pod Ready in <= 10% of the first build's time", goal_a),
         ("b", "ResNet-50 int8: that pod >= 5x faster than on the per-pod path", goal_b),
         ("c", "digits: a pod from the node cache Ready <= 3 s after it is scheduled", goal_c))


def check_goals(models: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, text, check in GOALS:
        try:
            met, figures = check(models)
        except (KeyError, IndexError, TypeError, ZeroDivisionError):  # a model not asked for, or failed
            met, figures = None, "not asked for (--models), or a measurement failed"
        verdict = "NOT MEASURED" if met is None else "MET" if met else "NOT MET"
        print(f"goal ({key}) {text}: {verdict}: {figures}", flush=True)
        out.append({"goal": key, "text": text, "met": met, "figures": figures})
    return out


# ---------------------------------------------------------------- main

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--cluster", default="bench-coldstart", help="the real-node cluster to start (or reuse)")
    p.add_argument("--keep", action="store_true", help="leave the cluster and the cache agent's directory")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for pods at each step")
    args = p.parse_args()
    if args.cluster == cluster_support.DEMO_CLUSTER:
        p.error(f"'{cluster_support.DEMO_CLUSTER}' is make demo's cluster: name another one")

    store_uri = f"s3://artifacts/coldstart-{uuid.uuid4().hex[:8]}"  # nothing built before is reused
    cache_dir = Path(tempfile.mkdtemp(prefix="md-coldstart-cache-"))
    results: dict[str, Any] = {"cluster": args.cluster, "store": store_uri, "poll_s": POLL_S,
                               "models": {m: {} for m in args.models}}
    started = time.monotonic()
    tc = cluster_support.start_real_node(args.cluster, service_cidr=None)  # beside the e2e cluster too
    try:
        for ns in NAMESPACES.values():  # a kept cluster's earlier run
            tc.kubectl("delete", "namespace", ns, "--ignore-not-found", "--timeout=300s")
        if "resnet50" in args.models:
            load_converter(tc)
        shas = publish(prepare(tc, NAMESPACES["per-pod"]), args.models)
        for path in NAMESPACES:
            if path == "built":
                built_stack(tc, store_uri, cache_dir)
            for model in args.models:
                results["models"][model][path] = measure_or_report(tc, path, manifest(model, shas[model]),
                                                                   args.timeout)
                write_json(args.json, results)  # after each step: a later failure keeps what was measured
    finally:
        if args.keep:
            log(f"kept: cluster {args.cluster} (kubeconfig {tc.kubeconfig}), cache directory {cache_dir}")
        else:
            cluster_support.stop(tc)
            shutil.rmtree(cache_dir, ignore_errors=True)
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    results["ratios"] = ratios(results["models"])
    results["table"] = table(results["models"], results["ratios"])
    print(results["table"], flush=True)
    results["goals"] = check_goals(results["models"])
    write_json(args.json, results)
    failed = [f"{m} {p}" for m, paths in results["models"].items() for p, r in paths.items() if "error" in r]
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
