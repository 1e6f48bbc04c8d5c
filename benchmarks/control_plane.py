"""Control-plane benchmark: N ModelDeployments on kwok GPU nodes, two operator replicas with
leader election, against a real API server.

For each N, in one run and on a fresh pair of operator processes (leader and standby, each with
its own token of the Helm chart's ServiceAccount, so the API server's audit log tells them apart
by the token's credential id):

  all Ready     N ModelDeployments applied -> every one Ready; baseline: the same N plain
                Deployments (1 pod, 1 GPU) applied the same way in the same cluster just before,
                so the ratio is what the operator adds to the scheduler, the controllers and kwok
  requests      every API request of each replica, from the audit log, split into reads (get,
                list), writes (create, update, patch, delete), watches, and Lease requests
                (coordination.k8s.io leases, any verb): per ModelDeployment during the rollout to
                Ready, and per minute at rest
  at rest       a window of --rest-seconds (>= 60) after everything is Ready that holds no safety
                relist of either replica: requests per minute and CPU as % of one core
  relist        the first safety relist of each replica after everything is Ready, in a window of
                its own (the operators run with MD_RELIST_SECONDS=--relist-seconds so that one
                falls after Ready): its requests, its CPU seconds and how long its passes ran
  failover      after the windows above: kill -9 the leader, at once change one ModelDeployment's
                spec.replicas 1 -> 2; the time from the kill until the standby holds the Lease,
                and until the change is in that model's Deployment (spec.replicas 2)

Goals (issue 17): all Ready within 1.2x the plain Deployments; at rest 0 reads and 0 writes per
minute apart from watches, the safety relist and the Lease, on both replicas; leader CPU at rest
<= 2% of a core; failover (the change applied) within 15 s.

The operator runs from a copy of operator/modeldeploy taken when the run starts (the working tree,
or --operator-rev), so edits made while it runs do not mix into one run's figures.

    .venv/bin/python benchmarks/control_plane.py --sizes 1000 --json out/control_plane-1000.json
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "hack")]

from benchmarks._report import write_json  # noqa: E402
from localcluster import cluster as lc  # noqa: E402
from localcluster import process  # noqa: E402
from localcluster.config import ClusterConfig  # noqa: E402
from tests.support import operator as op  # noqa: E402
from tests.support.cluster import ClusterHandle, wait_for  # noqa: E402
from tests.support.specs import model_deployment  # noqa: E402

OPERATOR_USER = f"system:serviceaccount:{op.SYSTEM_NAMESPACE}:{op.RELEASE}"
# The chart's election: the Lease in the release namespace, the only Lease its Role may write.
LEASE_NAMESPACE = op.SYSTEM_NAMESPACE
LEASE_NAME = f"{op.RELEASE}-leader"
LABEL_NAME = "modeldeploy.io/name"
GROUP, VERSION, PLURAL = "modeldeploy.io", "v1alpha1", "modeldeployments"
RESERVED_CLUSTERS = ("modeldeploy", "cp-int")  # the demo's and the integration tier's

# Only the operator's requests are recorded, all of them (the cluster's default policy drops reads,
# watches and Leases). Metadata level: verb, resource, user (with the token's credential id), time.
AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: ["{OPERATOR_USER}"]
  - level: None
"""

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
READ_VERBS = frozenset({"get", "list"})
CATEGORIES = ("reads", "writes", "watches", "lease")


# --- processes and CPU -------------------------------------------------------------------------

def _proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


@dataclass
class Replica:
    """One operator process: its role when started, its Lease identity and its token's JTI."""

    role: str
    identity: str
    jti: str
    proc: op.OperatorProcess
    samples: list[tuple[float, float]] = field(default_factory=list)  # (wall time, CPU s)
    peak_rss_mib: float = 0.0
    killed: bool = False

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def sample(self) -> None:
        if self.killed:
            return
        try:
            cpu, rss = _proc_stats(self.pid)
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            return
        self.samples.append((time.time(), cpu))
        self.peak_rss_mib = max(self.peak_rss_mib, rss)

    def cpu_at(self, t: float) -> float:
        """CPU seconds used by wall time `t` (the sample nearest before it; sampled every second)."""
        before = [c for (s, c) in self.samples if s <= t]
        return before[-1] if before else (self.samples[0][1] if self.samples else 0.0)

    def cpu_between(self, t0: float, t1: float) -> float:
        return self.cpu_at(t1) - self.cpu_at(t0)

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.proc.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"time": "", "level": "RAW", "message": line})
        return out

    def relists(self) -> list[tuple[float, float, int]]:
        """(start, end, objects) of each cache relist, from the operator's own log line."""
        found = []
        for doc in self.log_lines():
            m = re.match(r"cache: listed (\d+) objects in ([0-9.]+)s", doc.get("message", ""))
            if m and doc.get("time"):
                end = _ts(doc["time"])
                found.append((end - float(m.group(2)), end, int(m.group(1))))
        return found

    def problems(self) -> list[str]:
        """WARNING and worse lines of its log (a sign of a misbehaving operator)."""
        return [f"{d.get('time')} {d.get('level')} {d.get('logger', '')}: {d.get('message')}"
                for d in self.log_lines() if d.get("level") in ("WARNING", "ERROR", "CRITICAL", "RAW")]


def _ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[11]) + int(fields[12])


class Sampler(threading.Thread):
    """Samples every replica's CPU and RSS, and the machine's load split into this benchmark's
    processes (cluster components, operators, this script) and everything else, once a second."""

    def __init__(self, replicas: list[Replica], own_pids: list[int]) -> None:
        super().__init__(name="sampler", daemon=True)
        self.replicas = replicas
        self.own_pids = own_pids
        self.machine: list[tuple[float, float, float, float]] = []  # (time, busy, total, own) jiffies
        self.halt = threading.Event()
        self.own_dead = 0  # ticks of own processes that have exited (the killed leader)

    def run(self) -> None:
        while not self.halt.is_set():
            for r in self.replicas:
                r.sample()
            own = sum(_ticks(p) for p in [*self.own_pids, os.getpid()])
            own += sum(int(c * os.sysconf("SC_CLK_TCK")) for r in self.replicas
                       for c in ([r.samples[-1][1]] if r.samples else []))
            self.machine.append((time.time(), *_machine_busy(), own))
            self.halt.wait(1.0)

    def busy_pct(self, t0: float, t1: float) -> dict[str, float]:
        """How busy the machine's cores were, in % of all of them: in all, by this benchmark's
        processes, and by the other tenants of the machine."""
        inside = [m for m in self.machine if t0 <= m[0] <= t1]
        if len(inside) < 2:
            return {"all": float("nan"), "benchmark": float("nan"), "others": float("nan")}
        (_, b0, a0, o0), (_, b1, a1, o1) = inside[0], inside[-1]
        total = max(1, a1 - a0)
        own = max(0.0, o1 - o0)
        return {"all": 100.0 * (b1 - b0) / total, "benchmark": 100.0 * own / total,
                "others": 100.0 * max(0.0, (b1 - b0) - own) / total}


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _jti(kubeconfig_path: Path) -> str:
    token = yaml.safe_load(kubeconfig_path.read_text())["users"][0]["user"]["token"]
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]


# --- the audit log -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    t: float
    jti: str
    verb: str
    group: str
    resource: str
    namespace: str
    code: int


def read_audit(logs: Path) -> list[Request]:
    """Every audited request once (watches have two stages), in order, from the log and its
    rotated backups."""
    seen: set[str] = set()
    out: list[Request] = []
    for path in sorted(logs.glob("audit*.log"), key=lambda p: p.stat().st_mtime):
        with path.open() as f:
            for line in f:
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written
                if e.get("auditID") in seen or e["user"]["username"] != OPERATOR_USER:
                    continue
                seen.add(e["auditID"])
                extra = (e["user"].get("extra") or {}).get("authentication.kubernetes.io/credential-id") or [""]
                ref = e.get("objectRef") or {}
                out.append(Request(_ts(e["requestReceivedTimestamp"]), extra[0].removeprefix("JTI="), e["verb"],
                                   ref.get("apiGroup", ""), ref.get("resource", e.get("requestURI", "")),
                                   ref.get("namespace", ""), int((e.get("responseStatus") or {}).get("code", 0))))
    out.sort(key=lambda r: r.t)
    return out


def category(r: Request) -> str:
    if r.resource == "leases" and r.group == "coordination.k8s.io":
        return "lease"
    if r.verb == "watch":
        return "watches"
    if r.verb in READ_VERBS:
        return "reads"
    if r.verb in WRITE_VERBS:
        return "writes"
    return "other"


def tally(reqs: list[Request], jti: str, t0: float, t1: float) -> dict[str, Any]:
    """One replica's requests in [t0, t1): counts by category, and by verb and resource."""
    mine = [r for r in reqs if r.jti == jti and t0 <= r.t < t1]
    by_cat = Counter(category(r) for r in mine)
    return {**{c: by_cat.get(c, 0) for c in (*CATEGORIES, "other")},
            "by_verb_resource": dict(sorted(Counter(f"{r.verb} {r.resource}" for r in mine).items())),
            "errors": dict(Counter(f"{r.code} {r.verb} {r.resource}" for r in mine if r.code >= 400))}


def per(counts: dict[str, Any], divisor: float) -> dict[str, float]:
    return {c: counts[c] / divisor for c in CATEGORIES}


# --- cluster helpers ---------------------------------------------------------------------------

def _apply_many(tc: ClusterHandle, docs: list[dict[str, Any]], namespace: str) -> None:
    for i in range(0, len(docs), 100):
        tc.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump_all(docs[i:i + 100]))


def _raw(response: Any) -> list[dict[str, Any]]:
    return json.loads(response.data)["items"]


def _poll_every(n: int) -> float:
    """Seconds between polls of all N objects (a poll of 5000 is ~20 MB of JSON for the API server)."""
    return max(2.0, n / 1000)


def _wait_all(list_items: Any, n: int, ready: Any, timeout: float, every: float = 2.0) -> float:
    """Seconds until `ready` holds for n of `list_items()` (polled every `every` seconds)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if sum(1 for i in list_items() if ready(i)) >= n:
            return time.monotonic() - began
        time.sleep(every)
    raise TimeoutError(f"not all {n} ready after {timeout}s")


def _delete_namespace(tc: ClusterHandle, ns: str) -> None:
    tc.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=1800s")


def baseline(tc: ClusterHandle, apps: Any, n: int) -> float:
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
    _wait_all(lambda: _raw(apps.list_namespaced_deployment(ns, _preload_content=False)), n,
              lambda d: d.get("status", {}).get("availableReplicas") == 1, 3600, _poll_every(n))
    took = time.monotonic() - began
    # Gone before the operator starts: its pods' GPUs are free and its garbage collection does not
    # run during the ModelDeployments' rollout.
    _delete_namespace(tc, ns)
    return took


def lease_holder(coord: Any) -> str:
    try:
        lease = coord.read_namespaced_lease(LEASE_NAME, LEASE_NAMESPACE)
    except kubernetes.client.ApiException as e:
        if e.status == 404:
            return ""
        raise
    return lease.spec.holder_identity or ""


def reconciles(rep: Replica) -> dict[str, float]:
    """The replica's completed passes by result (modeldeploy_reconciles_total)."""
    out: dict[str, float] = {}
    try:
        text = rep.proc.metrics()
    except OSError:
        return out
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "modeldeploy_reconciles_total":
                out[s.labels.get("result", "")] = out.get(s.labels.get("result", ""), 0) + s.value
    return out


def object_passes(rep: Replica) -> dict[str, float]:
    """The replica's completed passes per ModelDeployment (modeldeploy_object_reconciles_total)."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(rep.proc.metrics()):
        for s in fam.samples:
            if s.name == op.OBJECT_RECONCILES:
                key = f"{s.labels.get('namespace')}/{s.labels.get('name')}"
                out[key] = out.get(key, 0) + s.value
    return out


def _summary(md: dict[str, Any]) -> dict[str, Any]:
    st = md.get("status") or {}
    return {"generation": md["metadata"].get("generation"), "observedGeneration": st.get("observedGeneration"),
            "phase": st.get("phase"), "canary": (st.get("canary") or {}).get("phase"),
            "readyReplicas": st.get("readyReplicas")}


def wait_drained(leader: Replica, quiet: float = 20, timeout: float = 3600) -> tuple[float, float]:
    """Wait until no pass of the leader has finished for `quiet` seconds: the passes still queued
    when the last model turned Ready (echoes of its own status writes, watch events kopf has not
    delivered yet) are done. Returns (seconds until the last pass, passes meanwhile). (The
    modeldeploy_work_queue_depth gauge cannot tell: it is set when a pass starts and counts it.)"""
    began = time.time()
    first = last = sum(reconciles(leader).values())
    since = time.time()
    while time.time() - began < timeout:
        time.sleep(quiet / 2)
        now = sum(reconciles(leader).values())
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= quiet:
            return since - began, last - first
    raise TimeoutError(f"the leader's passes did not stop within {timeout}s")


def _diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))
            if after.get(k, 0) - before.get(k, 0)}


# --- one size ----------------------------------------------------------------------------------

@dataclass
class Setup:
    tc: ClusterHandle
    cfg: ClusterConfig
    work: Path
    src: Path
    args: argparse.Namespace
    api: Any
    apps: Any = None
    custom: Any = None
    coord: Any = None

    def __post_init__(self) -> None:
        self.apps = kubernetes.client.AppsV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.coord = kubernetes.client.CoordinationV1Api(self.api)


def start_replica(s: Setup, n: int, role: str, started: list[Replica]) -> Replica:
    identity = f"bench-{n}-{role}"
    kcfg = op.service_account_kubeconfig(s.tc, s.work / f"sa-{n}-{role}.kubeconfig")
    env = {"PYTHONPATH": str(s.src), "MD_LOG_LEVEL": "INFO",
           "MD_RESYNC_SECONDS": str(s.args.resync_seconds), "MD_RELIST_SECONDS": str(s.args.relist_seconds),
           "MD_LEADER_ELECTION_NAMESPACE": LEASE_NAMESPACE, "MD_LEADER_LEASE": LEASE_NAME, "MD_IDENTITY": identity}
    log = s.work / f"operator-{n}{'-existing' if s.args.existing else ''}-{role}.log"
    log.unlink(missing_ok=True)
    proc = op.OperatorProcess(kubeconfig=kcfg, log_path=log, metrics_port=process.free_port_block(2), env=env,
                              start_timeout_s=600)
    replica = Replica(role, identity, _jti(kcfg), proc)
    started.append(replica)  # stopped by the caller even when it never answers
    proc.start()
    return replica


def wait_relists(s: Setup, reps: list[Replica], after: float, leader: Replica) -> dict[str, Any]:
    """Wait for each replica's first relist that starts after `after` (once the passes after Ready
    have stopped: a relist before that would be measured together with them), then until the
    leader's passes after it are done (its CPU below 10% of a core for 5 s); return the windows."""
    deadline = time.time() + s.args.relist_seconds + s.args.resync_seconds + 120
    found: dict[str, tuple[float, float, int]] = {}
    while len(found) < len(reps):
        if time.time() > deadline:
            raise TimeoutError(f"no relist after Ready within {s.args.relist_seconds}s + margin")
        for r in reps:
            if r.role not in found:
                later = [x for x in r.relists() if x[0] >= after]
                if later:
                    found[r.role] = later[0]
        time.sleep(1)
    last_end = max(x[1] for x in found.values())
    time.sleep(15)
    while time.time() - last_end < 300:
        now = time.time()
        if leader.cpu_between(now - 5, now) < 0.5:
            break
        time.sleep(1)
    quiet_from = time.time() - 5  # the last 5 s were idle: the relist's passes ended before them
    return {"found": found, "until": quiet_from}


def measure(s: Setup, n: int, last: bool) -> dict[str, Any]:
    args = s.args
    row: dict[str, Any] = {"n": n, "date": dt.date.today().isoformat(), "existing": args.existing}
    ns = f"bench-{n}"
    if args.existing:
        # A cluster kept (--keep) from a run of this size: N Ready ModelDeployments already there.
        for _ in range(60):  # the chart's upgrade re-applied the CRD: its storage re-initializes (429)
            try:
                have = _raw(s.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL,
                                                                   _preload_content=False))
                break
            except kubernetes.client.ApiException as e:
                if e.status != 429:
                    raise
                time.sleep(2)
        else:
            raise SystemExit(f"--existing: cannot list {ns}'s ModelDeployments")
        ready = sum(1 for m in have if (m.get("status") or {}).get("phase") == "Ready")
        if ready < n:
            raise SystemExit(f"--existing: {ns} holds {ready} Ready ModelDeployments, not {n}")
        row["baseline_s"] = row["ready_s"] = None
    else:
        print(f"N={n}: baseline ({n} plain Deployments)...", flush=True)
        row["baseline_s"] = baseline(s.tc, s.apps, n)
        print(f"N={n}: plain Deployments all available in {row['baseline_s']:.1f}s", flush=True)
        s.tc.kubectl("create", "namespace", ns)
    reps: list[Replica] = []
    run_dir = s.cfg.root / "run"
    own = [p for c in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
           if (p := process.read_pid(run_dir, c))]
    sampler = Sampler(reps, own)
    t_begin = time.time()
    try:
        leader = start_replica(s, n, "leader", reps)
        wait_for(lambda: lease_holder(s.coord) == leader.identity, 60, message="the first replica holds the Lease")
        standby = start_replica(s, n, "standby", reps)
        sampler.start()
        t_started = time.time()
        time.sleep(10)  # both started, caches listed, watches open
        if lease_holder(s.coord) != leader.identity:
            raise AssertionError(f"the Lease moved to {lease_holder(s.coord)!r} before the rollout")

        # Rollout to Ready (with --existing: the replicas' first passes over the Ready models).
        t_apply = time.time()
        if args.existing:
            t_ready = t_apply
        else:
            _apply_many(s.tc, [model_deployment(f"m{i}", replicas=1) for i in range(n)], ns)
            _wait_all(lambda: _raw(s.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL,
                                                                           _preload_content=False)),
                      n, lambda m: m.get("status", {}).get("phase") == "Ready", 3600, _poll_every(n))
            row["ready_s"] = time.time() - t_apply
            t_ready = t_apply + row["ready_s"]
            print(f"N={n}: all {n} ModelDeployments Ready in {row['ready_s']:.1f}s "
                  f"(ratio {row['ready_s'] / row['baseline_s']:.2f}x)", flush=True)
        time.sleep(args.settle_seconds)  # status writes of the last passes land
        passes_settled = reconciles(leader)
        # The work queue still holds the echoes of the last status writes: drain before rest.
        row["drain_s"], row["drain_passes"] = wait_drained(leader)
        t_drained = time.time()
        print(f"N={n}: the leader's queue drained {row['drain_s']:.0f}s after the settle "
              f"({row['drain_passes']:.0f} passes)", flush=True)

        def rest_fits(now: float) -> bool:
            """No relist of either replica can start before the rest window ends."""
            for r in reps:
                starts = [x[0] for x in r.relists()]
                if starts and starts[-1] + args.relist_seconds < now + args.rest_seconds + 5:
                    return False
            return True

        relist = None
        if not rest_fits(time.time()):
            print(f"N={n}: a relist is due before a {args.rest_seconds:.0f}s rest window would end; "
                  "measuring the relist first", flush=True)
            relist = wait_relists(s, reps, t_drained, leader)
            wait_drained(leader)
        passes_rest0, objects0 = reconciles(leader), object_passes(leader)
        time.sleep(2)  # rendering /metrics (thousands of series) is not part of the window
        rest_from = time.time()
        time.sleep(args.rest_seconds)
        rest_to = time.time()
        passes_rest1, objects1 = reconciles(leader), object_passes(leader)
        # Which models had passes at rest, and what their status said (a looping model repeats).
        at_rest = sorted(_diff(objects1, objects0).items(), key=lambda kv: -kv[1])
        row["rest_passes_by_model"] = {}
        for key, count in at_rest[:15]:
            md_ns, md_name = key.split("/", 1)
            md = s.custom.get_namespaced_custom_object(GROUP, VERSION, md_ns, PLURAL, md_name)
            row["rest_passes_by_model"][key] = {"passes": count, **_summary(md)}
        row["rest_models_with_passes"] = len(at_rest)
        print(f"N={n}: rest window {rest_to - rest_from:.0f}s done", flush=True)
        if relist is None:
            relist = wait_relists(s, reps, t_drained, leader)
        passes_relist = reconciles(leader)
        leaked = [(r.role, x) for r in reps for x in r.relists() if rest_from - 1 <= x[1] and x[0] <= rest_to]

        # Failover.
        m0 = s.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "m0")
        target = 1 if m0["spec"].get("replicas") == 2 else 2  # 1 -> 2 (2 -> 1 on a kept cluster)
        row["failover_replicas"] = [m0["spec"].get("replicas"), target]
        for r in reps:
            r.sample()
        row["peak_rss_mib"] = {r.role: r.peak_rss_mib for r in reps}
        t_kill = time.time()
        leader.proc.kill()
        leader.killed = True
        s.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "m0", {"spec": {"replicas": target}})
        t_patched = time.time()
        t_lease = t_change = None
        while time.time() - t_kill < 180 and (t_lease is None or t_change is None):
            if t_lease is None and lease_holder(s.coord) == standby.identity:
                t_lease = time.time()
            if t_change is None:
                deps = _raw(s.apps.list_namespaced_deployment(ns, label_selector=f"{LABEL_NAME}=m0",
                                                              _preload_content=False))
                if any(d["spec"].get("replicas") == target for d in deps):
                    t_change = time.time()
            time.sleep(0.1)
        takeover_to = (t_change or time.time()) + 30
        while time.time() < takeover_to:
            time.sleep(1)
        passes_takeover = reconciles(standby)
        standby.sample()
        row["peak_rss_mib"]["standby_after_takeover"] = standby.peak_rss_mib
    finally:
        sampler.halt.set()
        for r in reps:
            r.proc.stop()  # the new leader releases the Lease for the next size
    t_end = time.time()

    # Requests, from the audit log.
    reqs = read_audit(s.cfg.logs)
    rollout_to = t_drained if args.existing else t_ready + args.settle_seconds
    rest_s = rest_to - rest_from
    row["window"] = {"begin": t_begin, "started": t_started, "apply": t_apply, "ready": t_ready, "drained": t_drained,
                     "rest": [rest_from, rest_to],
                     "kill": t_kill, "end": t_end}
    row["startup"] = {r.role: tally(reqs, r.jti, t_begin - 1, t_apply) for r in reps}
    row["rollout"] = {r.role: tally(reqs, r.jti, t_apply, rollout_to) for r in reps}
    row["rollout_per_md"] = {r.role: per(row["rollout"][r.role], n) for r in reps}
    row["rollout_cpu_s"] = {r.role: r.cpu_between(t_apply, rollout_to) for r in reps}
    row["rollout_relists"] = {r.role: sum(1 for x in r.relists() if t_apply <= x[0] <= rollout_to) for r in reps}
    row["rollout_machine_busy_pct"] = sampler.busy_pct(t_apply, rollout_to)
    row["passes"] = {"rollout_leader": passes_settled, "rest_leader": _diff(passes_rest1, passes_rest0),
                     "relist_leader": _diff(passes_relist, passes_rest1), "takeover_new_leader": passes_takeover}
    row["rest_seconds"] = rest_s
    row["rest"] = {r.role: tally(reqs, r.jti, rest_from, rest_to) for r in reps}
    row["rest_per_min"] = {r.role: per(row["rest"][r.role], rest_s / 60) for r in reps}
    row["rest_cpu_pct"] = {r.role: 100 * r.cpu_between(rest_from, rest_to) / rest_s for r in reps}
    row["rest_machine_busy_pct"] = sampler.busy_pct(rest_from, rest_to)
    row["rest_window_clean"] = not leaked
    row["cpu_samples"] = {r.role: [(round(t - t_started, 1), c) for t, c in r.samples[::5]] for r in reps}
    row["drained_at_s"] = t_drained - t_apply
    row["rest_window_relists"] = [f"{role} relist {x[0]:.1f}-{x[1]:.1f}" for role, x in leaked]
    row["relist"] = {}
    for r in reps:
        start, end, objects = relist["found"][r.role]
        t0, t1 = start - 1, max(end + 1, relist["until"])
        cpu = r.cpu_between(t0, t1)
        rest_rate = r.cpu_between(rest_from, rest_to) / rest_s
        row["relist"][r.role] = {"objects": objects, "list_s": end - start, "window_s": t1 - t0,
                                 "cpu_s": cpu, "cpu_above_rest_s": cpu - rest_rate * (t1 - t0),
                                 "requests": tally(reqs, r.jti, t0, t1)}
    row["failover"] = {"lease_taken_s": None if t_lease is None else t_lease - t_kill,
                       "change_applied_s": None if t_change is None else t_change - t_kill,
                       "patch_sent_s": t_patched - t_kill,
                       "new_leader_requests": tally(reqs, standby.jti, t_kill, takeover_to),
                       "new_leader_cpu_s": standby.cpu_between(t_kill, takeover_to)}
    row["goals"] = goals(row)
    row["problems"] = {r.role: r.problems()[-30:] for r in reps}
    row["lease_transitions"] = [d["message"] for r in reps for d in r.log_lines()
                                if "leader election" in d.get("message", "")]
    if not last:
        _delete_namespace(s.tc, ns)
    return row


def goals(row: dict[str, Any]) -> dict[str, str]:
    def verdict(ok: bool, text: str) -> str:
        return f"{'met' if ok else 'NOT met'}: {text}"

    ratio = None if row["ready_s"] is None else row["ready_s"] / row["baseline_s"]
    lr, sr = row["rest_per_min"]["leader"], row["rest_per_min"]["standby"]
    fo = row["failover"]["change_applied_s"]
    return {
        "ready_ratio<=1.2": "not measured (--existing)" if ratio is None else verdict(ratio <= 1.2, f"{ratio:.2f}x"),
        "leader_rest_reads_writes==0": verdict(lr["reads"] == 0 and lr["writes"] == 0 and row["rest_window_clean"],
                                               f"{lr['reads']:.1f} reads/min, {lr['writes']:.1f} writes/min"),
        "standby_rest_reads_writes==0": verdict(sr["reads"] == 0 and sr["writes"] == 0 and sr["lease"] == 0,
                                                f"{sr['reads']:.1f} reads/min, {sr['writes']:.1f} writes/min, "
                                                f"{sr['lease']:.1f} Lease requests/min"),
        "leader_rest_cpu<=2%": verdict(row["rest_cpu_pct"]["leader"] <= 2.0, f"{row['rest_cpu_pct']['leader']:.2f}%"),
        "failover<=15s": verdict(fo is not None and fo <= 15.0, "never" if fo is None else f"{fo:.1f}s"),
    }


# --- output ------------------------------------------------------------------------------------

def _fmt(v: float, digits: int = 1) -> str:
    return f"{v:.{digits}f}"


def _or(row: dict[str, Any], key: str, fmt: str) -> str:
    return "-" if row.get(key) is None else fmt.format(row[key])


def table(rows: list[dict[str, Any]]) -> str:
    def cats(d: dict[str, float], digits: int = 2) -> str:
        return " / ".join(_fmt(d[c], digits) for c in CATEGORIES)

    lines: list[tuple[str, list[str]]] = [
        ("all Ready (ModelDeployments)", [_or(r, "ready_s", "{:.1f} s") for r in rows]),
        ("plain Deployments", [_or(r, "baseline_s", "{:.1f} s") for r in rows]),
        ("ratio (goal <= 1.2x)", ["existing models" if r["ready_s"] is None else
                                  f"{r['ready_s'] / r['baseline_s']:.2f}x" for r in rows]),
        ("queue drained after Ready + settle", [f"{r['drain_s']:.0f} s ({r['drain_passes']:.0f} passes)"
                                                for r in rows]),
        ("leader CPU, rollout", [f"{r['rollout_cpu_s']['leader']:.1f} s" for r in rows]),
        ("peak RSS leader / standby", [f"{r['peak_rss_mib']['leader']:.0f} / {r['peak_rss_mib']['standby']:.0f} MiB"
                                       for r in rows]),
        ("rollout, leader, per MD: reads / writes / watches / Lease", [cats(r["rollout_per_md"]["leader"])
                                                                       for r in rows]),
        ("rollout, standby, per MD: reads / writes / watches / Lease", [cats(r["rollout_per_md"]["standby"])
                                                                        for r in rows]),
        ("relists during rollout (leader)", [str(r["rollout_relists"]["leader"]) for r in rows]),
        ("at rest, leader, per min: reads / writes / watches / Lease", [cats(r["rest_per_min"]["leader"], 1)
                                                                        for r in rows]),
        ("at rest, standby, per min: reads / writes / watches / Lease", [cats(r["rest_per_min"]["standby"], 1)
                                                                         for r in rows]),
        ("at rest window", [f"{r['rest_seconds']:.0f} s{'' if r['rest_window_clean'] else ' (HOLDS A RELIST)'}"
                            for r in rows]),
        ("CPU at rest leader / standby (% of a core)", [f"{r['rest_cpu_pct']['leader']:.2f}% / "
                                                        f"{r['rest_cpu_pct']['standby']:.2f}%" for r in rows]),
        ("passes at rest (leader)", [str(int(sum(r["passes"]["rest_leader"].values()))) for r in rows]),
        ("relist, leader: requests (reads/writes), CPU", [
            f"{r['relist']['leader']['requests']['reads']}/{r['relist']['leader']['requests']['writes']}, "
            f"{r['relist']['leader']['cpu_s']:.1f} s in {r['relist']['leader']['window_s']:.0f} s" for r in rows]),
        ("relist, standby: requests (reads/writes), CPU", [
            f"{r['relist']['standby']['requests']['reads']}/{r['relist']['standby']['requests']['writes']}, "
            f"{r['relist']['standby']['cpu_s']:.1f} s in {r['relist']['standby']['window_s']:.0f} s" for r in rows]),
        ("failover: standby holds the Lease", [
            "never" if r["failover"]["lease_taken_s"] is None else f"{r['failover']['lease_taken_s']:.1f} s"
            for r in rows]),
        ("failover: change in the Deployment (goal <= 15 s)", [
            "never" if r["failover"]["change_applied_s"] is None else f"{r['failover']['change_applied_s']:.1f} s"
            for r in rows]),
        ("machine busy, rollout: all (this benchmark + others)", [
            "{all:.0f}% ({benchmark:.0f}% + {others:.0f}%)".format(**r["rollout_machine_busy_pct"]) for r in rows]),
        ("machine busy, rest: all (this benchmark + others)", [
            "{all:.0f}% ({benchmark:.0f}% + {others:.0f}%)".format(**r["rest_machine_busy_pct"]) for r in rows]),
    ]
    head = "| | " + " | ".join(f"N = {r['n']}" for r in rows) + " |"
    sep = "|---|" + "---|" * len(rows)
    return "\n".join([head, sep, *[f"| {k} | " + " | ".join(v) + " |" for k, v in lines]])


# --- main --------------------------------------------------------------------------------------

def snapshot_operator(dest: Path, rev: str | None) -> dict[str, Any]:
    """Copy operator/modeldeploy (the working tree, or `rev`) to dest/modeldeploy; describe it."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True, capture_output=True).stdout.strip()
    if rev:
        archive = subprocess.run(["git", "archive", rev, "operator/modeldeploy"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "--strip-components=1", "-C", str(dest)], input=archive, check=True)
        dirty: list[str] = []
    else:
        shutil.copytree(ROOT / "operator" / "modeldeploy", dest / "modeldeploy",
                        ignore=shutil.ignore_patterns("__pycache__"))
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "operator/modeldeploy"], cwd=ROOT, text=True,
                               capture_output=True).stdout.splitlines()
    digest = hashlib.sha256()
    for p in sorted((dest / "modeldeploy").rglob("*.py")):
        digest.update(str(p.relative_to(dest)).encode() + p.read_bytes())
    return {"head": head, "rev": rev or "working tree", "uncommitted": dirty, "sha256": digest.hexdigest()[:16]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000])
    parser.add_argument("--rest-seconds", type=float, default=90, help="the at-rest window (at least 60)")
    parser.add_argument("--resync-seconds", type=float, default=30, help="MD_RESYNC_SECONDS (the chart's default)")
    parser.add_argument("--relist-seconds", type=float, default=300,
                        help="MD_RELIST_SECONDS: short enough that a relist falls after Ready, long enough "
                             "for a rest window without one (the chart's default is 600)")
    parser.add_argument("--settle-seconds", type=float, default=15, help="after all Ready, before rest")
    parser.add_argument("--cluster", default="cpbench")
    parser.add_argument("--operator-rev", help="benchmark this git revision's operator, not the working tree")
    parser.add_argument("--existing", action="store_true",
                        help="no baseline and no rollout: the kept cluster's namespace bench-N already holds N "
                             "Ready ModelDeployments (a run with --keep); measures rest, relist and failover")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="leave the benchmark cluster running")
    args = parser.parse_args()
    if args.cluster in RESERVED_CLUSTERS or args.cluster.startswith("pytest"):
        parser.error(f"cluster name {args.cluster!r} belongs to make demo or the tests")
    if args.rest_seconds < 60:
        parser.error("--rest-seconds must be at least 60")
    if args.relist_seconds < args.rest_seconds + args.resync_seconds + 120:
        parser.error("--relist-seconds must leave room for the rest window between two relists")

    biggest = max(args.sizes)
    # 128 GPUs and 200 pods a node: one GPU per model, a quarter spare (the failover's extra pod).
    nodes = max(3, -(-biggest * 5 // 4 // 128))
    cfg = ClusterConfig(name=args.cluster, fake_nodes=nodes, gpus_per_node=128, max_pods_per_node=200,
                        extra_apiserver_args=(f"--audit-policy-file={lc_root(args.cluster) / 'bench-audit.yaml'}",))
    cfg.root.mkdir(parents=True, exist_ok=True)
    (cfg.root / "bench-audit.yaml").write_text(AUDIT_POLICY)
    work = cfg.root / "bench"
    work.mkdir(exist_ok=True)
    source = snapshot_operator(work / "src", args.operator_rev)
    print(f"operator: {source}", flush=True)
    result: dict[str, Any] = {"benchmark": "control_plane", "date": dt.date.today().isoformat(),
                              "operator": source, "nodes": nodes, "gpus_per_node": 128,
                              "settings": {k: v for k, v in vars(args).items() if k != "json"} | {
                                  "json": str(args.json), "lease_seconds": 12, "renew_seconds": 3},
                              "machine": {"cores": os.cpu_count()}, "sizes": []}
    lc.up(cfg)
    tc = ClusterHandle(cfg.kubeconfig, cfg)
    try:
        op.install_chart(tc)
        s = Setup(tc, cfg, work, work / "src", args, tc.api_client())
        for n in args.sizes:
            row = measure(s, n, last=n == args.sizes[-1])
            result["sizes"].append(row)
            write_json(args.json, result)
            print(table([row]), flush=True)
            for k, v in row["goals"].items():
                print(f"  {k}: {v}", flush=True)
    finally:
        if not args.keep:
            lc.down(cfg)
    print(table(result["sizes"]))
    write_json(args.json, result)
    return 0


def lc_root(name: str) -> Path:
    return ClusterConfig(name=name).root


if __name__ == "__main__":
    sys.exit(main())
