"""Scale to zero and back on the real node, through the chart's activator (issue 19's "Must show").

A digits model with `autoscaling.minReplicas: 0` idles to zero pods (its GPU request gone from the
node, its Service pointing at the activator), then 100 concurrent clients (50 HTTP, 50 gRPC)
arrive through its Service: none is lost, every answer equals the one the model gave while it was
up, and the first-response latency is compared with how long its pod took from creation to
Ready. With pods up, requests never pass through the activator (its own counters). Then the
model idles out again, and while clients wait for it the leading operator replica and one
activator replica are killed: the model still comes up, and what the clients saw is reported.
Last, more clients than the activators may hold arrive at zero: those over the cap get 429 with
Retry-After at once, the others are answered; none hangs.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import service_answers
from tests.support import operator as op
from tests.support import serving_digits as sd
from tests.support.cluster import ClusterHandle, wait_for
from tests.support.specs import autoscaled_digits

pytestmark = pytest.mark.e2e

NS = "zero-e2e"
NAME = "idle"
ACTIVATOR = "modeldeploy-activator"
MAX_HELD = 80  # per activator replica: the 100 cold clients split over two never reach it
CHART_VALUES = ("activator.enabled=true", f"activator.maxHeldPerModel={MAX_HELD}")  # the stack fixture's
CLIENTS = 100
OVER_CAP_CLIENTS = 300  # ~150 per activator replica, well over MAX_HELD
IDLE_AFTER = "30s"


def _spec() -> dict[str, Any]:
    """The autoscaling e2e test's digits model (one fake GPU per pod), at most one pod, to zero when idle."""
    md = autoscaled_digits(NAME)
    md["spec"]["autoscaling"] = {"enabled": True, "minReplicas": 0, "maxReplicas": 1,
                                 "scaleToZeroAfter": IDLE_AFTER, "metric": "inferenceRate", "target": 50}
    return md


def _md(tc: ClusterHandle) -> dict[str, Any]:
    return tc.kubectl_json("get", "modeldeployment", NAME, "-n", NS)


def _activator_counters(tc: ClusterHandle) -> dict[str, float]:
    """The activator's counters for this model, summed over its pods (read inside each pod: its
    admin port is only open to its own namespace)."""
    pods = tc.kubectl_json("get", "pods", "-n", op.SYSTEM_NAMESPACE, "-l",
                           f"app.kubernetes.io/name={ACTIVATOR}")["items"]
    script = ("import urllib.request;"
              "print(urllib.request.urlopen('http://127.0.0.1:9090/metrics', timeout=5).read().decode())")
    total: dict[str, float] = {}
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp") or pod["status"].get("phase") != "Running":
            continue
        out = tc.kubectl("exec", "-n", op.SYSTEM_NAMESPACE, pod["metadata"]["name"], "--", "python3", "-c", script)
        for line in out.stdout.splitlines():
            if line.startswith("#") or f'namespace="{NS}"' not in line or f'name="{NAME}"' not in line:
                continue
            key, value = line.rsplit(" ", 1)
            metric = key.split("{", 1)[0]
            total[metric] = total.get(metric, 0.0) + float(value)
    return total


def _node_gpu_requests(tc: ClusterHandle) -> int:
    """nvidia.com/gpu requested by this namespace's pods that still hold it (not Succeeded/Failed)."""
    pods = tc.kubectl_json("get", "pods", "-n", NS)["items"]
    return sum(int(((c.get("resources") or {}).get("requests") or {}).get("nvidia.com/gpu", 0))
               for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")
               for c in p["spec"]["containers"])


def _our_slice_gone(tc: ClusterHandle) -> bool:
    slices = tc.kubectl_json("get", "endpointslices", "-n", NS, "-l", f"kubernetes.io/service-name={NAME}")["items"]
    return bool(slices) and all(s["metadata"]["name"] != f"{NAME}-activator" for s in slices)


def _at_zero(tc: ClusterHandle) -> bool:
    md = _md(tc)
    pods = tc.kubectl_json("get", "pods", "-n", NS, "-l", f"modeldeploy.io/name={NAME}")["items"]
    return md.get("status", {}).get("phase") == "ScaledToZero" and not pods


@dataclass
class Outcome:
    kind: str
    answer: int | None = None
    took: float = 0.0
    first_error: str = ""  # what the client saw on its first try, when that failed
    tries: int = 0


def _client(kind: str, url: str, x: np.ndarray, out: Outcome, retries: int) -> None:
    """One inference through the Service; a failed try is kept and retried (as a client would)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    began = time.monotonic()
    for _ in range(retries + 1):
        out.tries += 1
        try:
            if kind == "http":
                client = httpclient.InferenceServerClient(url, connection_timeout=150, network_timeout=150)
                inp = httpclient.InferInput("input_0", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                logits = client.infer("digits", [inp]).as_numpy("output_0")
                client.close()
            else:
                g = grpcclient.InferenceServerClient(url)
                inp = grpcclient.InferInput("input_0", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                logits = g.infer("digits", [inp], client_timeout=150).as_numpy("output_0")
                g.close()
            out.answer = int(np.asarray(logits).argmax())
            break
        except Exception as e:
            if not out.first_error:
                out.first_error = f"{kind}: {type(e).__name__}: {str(e)[:160]}"
            time.sleep(0.5)
    out.took = time.monotonic() - began


def _burst(ip: str, x: np.ndarray, retries: int = 0) -> tuple[list[Outcome], list[threading.Thread]]:
    outs = [Outcome("http" if i % 2 == 0 else "grpc") for i in range(len(x))]
    threads = [threading.Thread(target=_client, daemon=True, args=(
        o.kind, f"{ip}:{8000 if o.kind == 'http' else 8001}", x[i:i + 1], o, retries)) for i, o in enumerate(outs)]
    for t in threads:
        t.start()
    return outs, threads


@dataclass
class HttpOutcome:
    status: int = 0  # 0: no HTTP answer at all (a hang or a dropped connection)
    retry_after: str | None = None
    took: float = 0.0
    error: str = ""  # what failed when there was no HTTP answer


def _raw_http(url: str, x: np.ndarray, out: HttpOutcome) -> None:
    """One KServe v2 HTTP inference with the standard library, to see the status and headers of a refusal."""
    body = json.dumps({"inputs": [{"name": "input_0", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    req = urllib.request.Request(f"http://{url}/v2/models/digits/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    began = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=150) as r:
            json.loads(r.read())
            out.status = r.status
    except urllib.error.HTTPError as e:
        out.status, out.retry_after = e.code, e.headers.get("Retry-After")
    except OSError as e:
        out.status, out.error = 0, f"{type(e).__name__}: {e}"[:200]
    out.took = time.monotonic() - began


class PodTimes:
    """When this namespace's serving pod was first seen and when it turned Ready (a watch in this
    process: millisecond resolution, where the API's timestamps have one second)."""

    def __init__(self, tc: ClusterHandle) -> None:
        import kubernetes

        self.created: float | None = None
        self.ready: float | None = None
        self._api = kubernetes.client.CoreV1Api(tc.api_client())
        self._w = kubernetes.watch.Watch()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        time.sleep(0.3)  # the watch is established

    def _run(self) -> None:
        for ev in self._w.stream(self._api.list_namespaced_pod, NS, label_selector=f"modeldeploy.io/name={NAME}",
                                 timeout_seconds=300):
            pod = ev["object"]
            if ev["type"] == "DELETED" or pod.metadata.deletion_timestamp:
                continue
            if self.created is None:
                self.created = time.monotonic()
            if self.ready is None and any(c.type == "Ready" and c.status == "True"
                                          for c in pod.status.conditions or []):
                self.ready = time.monotonic()
                self._w.stop()
                return


def test_idle_model_goes_to_zero_and_a_hundred_cold_clients_are_all_answered(
        real_cluster: ClusterHandle, stack: dict[str, Any]) -> None:
    tc = real_cluster
    tc.kubectl("rollout", "status", f"deployment/{ACTIVATOR}", "-n", op.SYSTEM_NAMESPACE, "--timeout=180s")
    tc.apply(_spec(), NS)
    wait_for(lambda: _md(tc).get("status", {}).get("readyReplicas") == 1, 240, interval=1, message="one pod serving")
    ip = tc.kubectl_json("get", "service", NAME, "-n", NS)["spec"]["clusterIP"]
    wait_for(lambda: service_answers(f"{ip}:8000"), 60, interval=0.5, message="the Service answers")
    wait_for(lambda: _our_slice_gone(tc), 60, interval=0.5, message="the Service back on the pods only")
    x = sd.load_digits().x_test[:CLIENTS].astype(np.float32)
    expected = []
    for i in range(CLIENTS):
        o = Outcome("http")
        _client("http", f"{ip}:8000", x[i:i + 1], o, retries=0)
        assert o.answer is not None, o.first_error
        expected.append(o.answer)

    # With pods up, requests never pass through the activator.
    before = _activator_counters(tc)
    outs, threads = _burst(ip, x[:30])
    for t in threads:
        t.join(60)
    assert all(o.answer is not None for o in outs), [o.first_error for o in outs if o.answer is None][:3]
    steady_latency = statistics.median(o.took for o in outs)
    assert _activator_counters(tc).get("modeldeploy_activator_requests_total", 0) == \
        before.get("modeldeploy_activator_requests_total", 0)

    # Idle for scaleToZeroAfter: zero pods, the GPU back, the Service on the activator.
    wait_for(lambda: _at_zero(tc), 150, interval=1, message="the idle model at zero pods")
    md = _md(tc)
    ready = next(c for c in md["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ScaledToZero" and "activator" in ready["message"], ready
    assert md["status"]["readyText"] == "0/0" and md["status"]["autoscaling"]["desiredReplicas"] == 0
    assert _node_gpu_requests(tc) == 0
    svc = tc.kubectl_json("get", "service", NAME, "-n", NS)
    assert "selector" not in svc["spec"] and svc["spec"]["clusterIP"] == ip  # clients keep their address
    activators = {a for p in tc.kubectl_json("get", "pods", "-n", op.SYSTEM_NAMESPACE, "-l",
                                             f"app.kubernetes.io/name={ACTIVATOR}")["items"]
                  for a in [p["status"].get("podIP")] if a}
    def slices() -> list[dict[str, Any]]:
        return tc.kubectl_json("get", "endpointslices", "-n", NS, "-l", f"kubernetes.io/service-name={NAME}")["items"]
    try:  # only ours is left: the controller's, frozen with the pods that went, is deleted
        wait_for(lambda: [s["metadata"]["name"] for s in slices()] == [f"{NAME}-activator"], 20, interval=0.5,
                 message="only the activator's EndpointSlice")
    except AssertionError:
        print(json.dumps(slices(), indent=1)[:3000])
        raise
    # (the controller may still write one from a stale view of the Service; the operator deletes it again)
    ours = next(s for s in slices() if s["metadata"]["name"] == f"{NAME}-activator")
    assert {a for e in ours["endpoints"] for a in e["addresses"]} == activators
    events = [e["reason"] for e in tc.kubectl_json("get", "events", "-n", NS)["items"]
              if e["involvedObject"].get("name") == NAME]
    assert "ScaledToZero" in events
    # The scale subresource (what kubectl scale, an HPA or KEDA read) says 0 pods and still selects them.
    scale = tc.kubectl_json("get", "modeldeployment", NAME, "-n", NS, "--subresource=scale")
    assert scale["status"]["replicas"] == 0 and scale["status"]["selector"] == f"modeldeploy.io/name={NAME}", scale

    # 100 concurrent clients at zero: held, the pod comes, every one answered, none lost.
    counted = _activator_counters(tc)
    times = PodTimes(tc)
    sent = time.monotonic()
    outs, threads = _burst(ip, x)
    for t in threads:
        t.join(200)
    lost = [(i, o.first_error) for i, o in enumerate(outs) if o.answer is None]
    assert lost == [], lost[:5]
    wrong = [i for i, o in enumerate(outs) if o.answer != expected[i]]
    assert wrong == [], wrong[:5]
    assert all(not o.first_error for o in outs), [o.first_error for o in outs if o.first_error][:3]
    # (the activator probes the starting pod itself: answers may come before the kubelet marks it Ready)
    wait_for(lambda: times.ready is not None, 60, interval=0.2, message="the pod Ready")
    assert times.created is not None and times.ready is not None
    took = sorted(o.took for o in outs)
    pod_ready = times.ready - times.created
    first, p50, p99 = took[0], statistics.median(took), took[int(0.99 * (len(took) - 1))]
    report = {"clients": CLIENTS, "first_response_s": round(first, 3), "p50_s": round(p50, 3),
              "p99_s": round(p99, 3), "pod_created_after_s": round(times.created - sent, 3),
              "pod_ready_s": round(pod_ready, 3), "steady_p50_s": round(steady_latency, 4)}
    counters = _activator_counters(tc)
    cold = [counters.get(f"modeldeploy_activator_cold_start_seconds_{k}", 0) -
            counted.get(f"modeldeploy_activator_cold_start_seconds_{k}", 0) for k in ("sum", "count")]
    report["activator_saw_ready_after_s"] = round(cold[0] / cold[1], 3) if cold[1] else None
    print("scale-from-zero:", json.dumps(report))
    held = counters.get("modeldeploy_activator_held_total", 0) - counted.get("modeldeploy_activator_held_total", 0)
    forwarded = counters.get("modeldeploy_activator_forwarded_total", 0) - \
        counted.get("modeldeploy_activator_forwarded_total", 0)
    assert held >= 1 and forwarded >= held, counters
    assert counters.get("modeldeploy_activator_timed_out_total", 0) == counted.get(
        "modeldeploy_activator_timed_out_total", 0)
    # Nothing waits for long once the pod is Ready (the activator probes it every 0.1 s), and the
    # demand reaches a new pod within seconds (activator -> Lease -> operator -> Deployment -> pod).
    assert p50 - (times.ready - sent) <= 0.5, report
    assert times.created - sent <= 3.0, report

    # Back on the pods: the activator is out of the data path again.
    wait_for(lambda: _our_slice_gone(tc), 60, interval=0.5, message="the Service back on the pods")
    assert tc.kubectl_json("get", "service", NAME, "-n", NS)["spec"].get("selector")
    before = _activator_counters(tc)
    outs, threads = _burst(ip, x[:30])
    for t in threads:
        t.join(60)
    assert all(o.answer is not None for o in outs)
    assert _activator_counters(tc).get("modeldeploy_activator_requests_total", 0) == \
        before.get("modeldeploy_activator_requests_total", 0)
    print("steady state after the activator was involved: p50 "
          f"{statistics.median(o.took for o in outs):.4f}s (before: {steady_latency:.4f}s)")

    # At zero again; clients arrive, then the leading operator and one activator replica are killed.
    wait_for(lambda: _at_zero(tc), 150, interval=1, message="at zero a second time")
    outs, threads = _burst(ip, x[:20], retries=5)
    time.sleep(0.5)  # held by now; the demand is written
    victim = tc.kubectl_json("get", "pods", "-n", op.SYSTEM_NAMESPACE, "-l",
                             f"app.kubernetes.io/name={ACTIVATOR}")["items"][0]["metadata"]["name"]
    tc.kubectl("delete", "pod", victim, "-n", op.SYSTEM_NAMESPACE, "--grace-period=0", "--force", "--wait=false")
    _, _, failover = op.kill_leader(tc)
    for t in threads:
        t.join(200)
    saw = [o.first_error for o in outs if o.first_error]
    print(f"operator and one activator killed while scaling from zero: {len(outs) - len(saw)} of {len(outs)} "
          f"answered on the first try; first failures seen: {saw[:3]}; standby led after {failover:.1f}s")
    assert all(o.answer is not None for o in outs), [(o.first_error, o.tries) for o in outs if o.answer is None]
    assert [o.answer for o in outs] == expected[:20]
    wait_for(lambda: _md(tc)["status"].get("phase") == "Ready", 60, interval=1, message="Ready after the kills")
    tc.kubectl("rollout", "status", f"deployment/{ACTIVATOR}", "-n", op.SYSTEM_NAMESPACE, "--timeout=120s")

    # Over the cap: more cold clients than two activators may hold. The excess is refused at once with
    # 429 and Retry-After, every held one is answered, and none hangs.
    wait_for(lambda: _at_zero(tc), 150, interval=1, message="at zero a third time")
    rejected_before = _activator_counters(tc).get("modeldeploy_activator_rejected_model_total", 0)
    results = [HttpOutcome() for _ in range(OVER_CAP_CLIENTS)]
    threads = [threading.Thread(target=_raw_http, daemon=True, args=(f"{ip}:8000", x[i % CLIENTS:i % CLIENTS + 1], r))
               for i, r in enumerate(results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    by_status: dict[int, int] = {}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    refused = [r for r in results if r.status == 429]
    print("over the cap:", json.dumps({"clients": OVER_CAP_CLIENTS, "per_activator_cap": MAX_HELD,
                                       "by_status": by_status,
                                       "refused_within_s": round(max((r.took for r in refused), default=0), 3)}))
    assert set(by_status) <= {200, 429}, by_status  # no hang, no dropped connection, no other error
    assert by_status.get(200, 0) >= MAX_HELD and refused, by_status
    assert all(r.retry_after and int(r.retry_after) > 0 for r in refused)
    answered = statistics.median(r.took for r in results if r.status == 200)
    assert max(r.took for r in refused) < 0.5 * answered, (by_status, answered)  # at once, not after holding
    assert _activator_counters(tc).get("modeldeploy_activator_rejected_model_total", 0) - rejected_before \
        >= len(refused)

    # Scaled from outside (what KEDA or an HPA do through the scale subresource, with the operator's
    # autoscaler off): at spec.replicas 0 the activator holds the requests, no pod is started for
    # them, and raising spec.replicas answers every one.
    tc.kubectl("patch", "modeldeployment", NAME, "-n", NS, "--type=merge", "-p",
               json.dumps({"spec": {"autoscaling": {"enabled": False}, "replicas": 1}}))
    wait_for(lambda: _md(tc)["status"].get("phase") == "Ready", 120, interval=1, message="one pod, scaled from outside")
    tc.kubectl("scale", "modeldeployment", NAME, "-n", NS, "--replicas=0")
    wait_for(lambda: _at_zero(tc), 120, interval=1, message="at zero by kubectl scale")
    ready = next(c for c in _md(tc)["status"]["conditions"] if c["type"] == "Ready")
    assert "spec.replicas is 0" in ready["message"], ready
    wait_for(lambda: not _our_slice_gone(tc), 30, interval=0.5, message="the Service on the activator")
    outs, threads = _burst(ip, x[:10])
    time.sleep(3)
    assert all(o.answer is None and not o.first_error for o in outs)  # held, not refused
    assert not tc.kubectl_json("get", "pods", "-n", NS, "-l", f"modeldeploy.io/name={NAME}")["items"]
    tc.kubectl("scale", "modeldeployment", NAME, "-n", NS, "--replicas=1")
    for t in threads:
        t.join(200)
    assert [o.answer for o in outs] == expected[:10], [o.first_error for o in outs]
    assert all(not o.first_error for o in outs)
    print("held at spec.replicas 0, answered once raised: "
          f"p50 {statistics.median(o.took for o in outs):.2f}s (3 s of it before kubectl scale)")
    tc.kubectl("delete", "modeldeployment", NAME, "-n", NS, "--wait=false")
