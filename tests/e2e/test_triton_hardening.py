"""Triton hardened and fenced in, on the real node: restricted APIs refused, policies enforced.

The operator (installed with Helm, as a pod) serves the digits model from MinIO in the CPU
serving image (Triton 2.51) with the generated command; a real NetworkPolicy controller runs in
the real node's network namespace for the whole module: kube-router's firewall
(tests/support/policy_controller.py), started before the model, so the serving pod starts fenced.

- From a client pod in another namespace (the serving image: python, urllib; requests sent with
  `kubectl exec`), through the model's Service: every shared-memory (system, CUDA), trace, model-repository, logging and
  statistics request is refused (403), while health, metadata, config and inference answer.
- From the host (a client outside the cluster, allowed by `networkPolicy.clients.cidrs`), through
  the Service's gRPC port: the same APIs are refused (UNAVAILABLE), inference answers.
- The operator's two NetworkPolicies are admitted by the API server, owned by the
  ModelDeployment, select exactly the serving pods (and the current revision's validation Job
  pod), name the right ports, and a pass at rest leaves them alone.
- Enforced: the metrics port answers the operator's namespace, not the client's; the serving pod
  reaches the model store and not the API server on the same address; the same client pod
  reaches the API server (no policy selects it), so the refusals are the policies'.
No mocks: the real chart, operator, Triton, kube-proxy and kube-router.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from localcluster import hostnet, objectstore
from modeldeploy.resources.networkpolicy import LABEL_JOB_NAME
from modeldeploy.resources.validation_job import job_name
from tests.e2e.conftest import service_answers
from tests.support import operator as op
from tests.support import policy_controller
from tests.support import triton_hardening as th
from tests.support.cluster import ClusterHandle, wait_for
from tests.support.stack import prepare

pytestmark = pytest.mark.e2e

NS = "triton-hardening-e2e"
CLIENT_NS = "triton-hardening-clients"  # clients live elsewhere: another namespace
CLIENT = "client"  # the client pod there
IMAGE = "localhost/modeldeploy-triton-cpu:dev"
MODEL, INPUT, SHAPE = "digits", "input_0", (1, 1, 8, 8)
# A probe for client pods: GET each URL (3 s timeout), print {url: [status, first bytes]}; status 0
# is no answer (refused or dropped).
PROBE = r'''
import json, ssl, sys, urllib.error, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
out = {}
for url in json.loads(sys.argv[1]):
    try:
        with urllib.request.urlopen(url, timeout=3, context=ctx) as r:
            out[url] = [r.status, r.read(200).decode(errors="replace")]
    except urllib.error.HTTPError as e:
        out[url] = [e.code, e.read(200).decode(errors="replace")]
    except Exception as e:
        out[url] = [0, repr(e)[:200]]
print(json.dumps(out))
'''


@dataclass
class Served:
    tc: ClusterHandle
    controller: policy_controller.Running
    store_host: str
    store_port: int
    service_ip: str
    pod: dict[str, Any]
    md: dict[str, Any]

    @property
    def pod_ip(self) -> str:
        return str(self.pod["status"]["podIP"])


def _spec(uri: str) -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": MODEL},
            "spec": {"model": {"name": MODEL, "version": "1", "source": {"uri": uri, "credentialsSecret": "s3-creds"},
                               "format": "onnx", "maxBatchSize": 32},
                     "serving": {"gpus": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                          "limits": {"memory": "2Gi"}}},
                     "replicas": 1}}


def _restricted_namespace(tc: ClusterHandle, name: str) -> None:
    tc.kubectl("delete", "namespace", name, "--ignore-not-found", "--timeout=120s")
    tc.kubectl("create", "namespace", name)
    tc.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    wait_for(lambda: tc.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
             30, message=f"default ServiceAccount in {name}")


def _client_pod(tc: ClusterHandle, controller: policy_controller.Running, namespace: str, name: str) -> str:
    """A restricted, long-running pod from the serving image (python, urllib) to run clients in;
    returns its address once kube-router has it in its sets (before that, policies that allow it
    would still refuse it)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False, "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{"name": "client", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                                    "command": ["python", "-c", "import time; time.sleep(3600)"],
                                    "env": [{"name": "HOME", "value": "/tmp"}],
                                    "securityContext": {"allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"]},
                                                        "readOnlyRootFilesystem": True}}]}}
    tc.apply(pod, namespace)
    tc.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"pod/{name}", "--timeout=120s")
    ip = tc.kubectl_json("get", "pod", name, "-n", namespace)["status"]["podIP"]
    wait_for(lambda: controller.knows(ip), 60, interval=0.5, message=f"kube-router has {name}'s address {ip}")
    return str(ip)


def _exec(tc: ClusterHandle, namespace: str, target: str, container: str, script: str, *args: str) -> str:
    """`python3 -c script args` in an existing pod's container; its last output line."""
    out = tc.kubectl("exec", "-n", namespace, target, "-c", container, "--", "python3", "-c", script, *args)
    return out.stdout.strip().splitlines()[-1]


def _probe(tc: ClusterHandle, namespace: str, target: str, container: str, urls: list[str]) -> dict[str, list[Any]]:
    return json.loads(_exec(tc, namespace, target, container, PROBE, json.dumps(urls)))


def _ready(tc: ClusterHandle) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        md = tc.kubectl_json("get", "modeldeployment", MODEL, "-n", NS)
        st = md.get("status", {})
        return md if st.get("phase") == "Ready" and st.get("readyReplicas") == 1 else None
    return wait_for(ok, 300, interval=1, message="digits Ready")


@pytest.fixture(scope="module")
def served(real_cluster: ClusterHandle) -> Iterator[Served]:
    cfg = real_cluster.local
    assert cfg is not None
    host, port = objectstore.up(cfg).endpoint.removeprefix("http://").rsplit(":", 1)
    values = (f"networkPolicy.modelStore[0].cidr={host}/32", f"networkPolicy.modelStore[0].ports={{{port}}}",
              # the tests on the host are clients outside the cluster (its address on the node's link)
              f"networkPolicy.clients.cidrs={{{host}/32}}")
    with policy_controller.running(cfg, real_cluster.kubeconfig) as controller:
        try:
            real_cluster.kubectl("delete", "namespace", NS, "--ignore-not-found", "--timeout=120s")
            prepare(real_cluster, NS, *values)
            _restricted_namespace(real_cluster, CLIENT_NS)
            real_cluster.apply(_spec("s3://models/digits/1/model.onnx"), NS)
            md = _ready(real_cluster)
            _client_pod(real_cluster, controller, CLIENT_NS, CLIENT)  # after the policies exist (kube-router's sets)
            svc_ip = real_cluster.kubectl_json("get", "service", MODEL, "-n", NS)["spec"]["clusterIP"]
            wait_for(lambda: service_answers(f"{svc_ip}:8000"), 60, interval=0.5, message="the Service answers")
            pods = real_cluster.kubectl_json("get", "pods", "-n", NS, "-l", f"modeldeploy.io/name={MODEL}")["items"]
            assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
            yield Served(real_cluster, controller, host, int(port), svc_ip, pods[0], md)
        finally:
            for ns in (NS, CLIENT_NS):
                real_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_restricted_apis_are_refused_from_a_client_pod_and_inference_answers(served: Served) -> None:
    base = f"http://{served.service_ip}:8000"
    answers = json.loads(_exec(served.tc, CLIENT_NS, CLIENT, "client", th.POD_SCRIPT, base, MODEL,
                               th.pod_calls(MODEL, INPUT, SHAPE)))
    for call in th.HTTP_CALLS:
        status, body = answers[f"{call.method} {call.url_path(MODEL)}"]
        assert status == 403 and th.HTTP_REFUSAL in body, (call, status, body)
    for open_call in ("GET /v2/health/ready", f"GET /v2/models/{MODEL}", f"GET /v2/models/{MODEL}/config"):
        assert answers[open_call][0] == 200, (open_call, answers[open_call])
    status, body = answers[f"POST /v2/models/{MODEL}/infer"]
    assert status == 200 and '"shape":[1,10]' in body, body


def test_restricted_grpc_protocols_are_refused_and_inference_answers(served: Served) -> None:
    url = f"{served.service_ip}:8001"
    answers = th.grpc_refusals(url, MODEL)
    wrong = {k: v for k, v in answers.items() if not (v.startswith("StatusCode.UNAVAILABLE") and th.GRPC_REFUSAL in v)}
    assert not wrong and len(answers) == len(th.grpc_calls(MODEL)), wrong
    assert len(th.grpc_infer(url, MODEL, INPUT, SHAPE)) == 10


def _selected(tc: ClusterHandle, namespace: str, match_labels: dict[str, str]) -> list[str]:
    selector = ",".join(f"{k}={v}" for k, v in match_labels.items())
    pods = tc.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return sorted(p["metadata"]["name"] for p in pods)


def test_policies_are_admitted_owned_and_select_the_right_pods_and_ports(served: Served) -> None:
    tc, uid = served.tc, served.md["metadata"]["uid"]
    serving = tc.kubectl_json("get", "networkpolicy", MODEL, "-n", NS)
    validation = tc.kubectl_json("get", "networkpolicy", f"{MODEL}-validation", "-n", NS)
    for policy in (serving, validation):
        (ref,) = policy["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == ("ModelDeployment", uid, True)
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    serving_pods = _selected(tc, NS, {"modeldeploy.io/name": MODEL})
    assert _selected(tc, NS, serving["spec"]["podSelector"]["matchLabels"]) == serving_pods == [
        served.pod["metadata"]["name"]]
    revision = served.pod["metadata"]["labels"]["modeldeploy.io/revision"]
    assert validation["spec"]["podSelector"] == {"matchLabels": {LABEL_JOB_NAME: job_name(MODEL, revision)}}
    clients, activator, metrics = serving["spec"]["ingress"]  # the chart's activator is on by default
    assert [p["port"] for p in clients["ports"]] == [8000, 8001]
    assert clients["from"] == [{"podSelector": {}}, {"namespaceSelector": {}},
                               {"ipBlock": {"cidr": f"{served.store_host}/32"}}]
    assert [p["port"] for p in activator["ports"]] == [8000, 8001]
    assert activator["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": op.SYSTEM_NAMESPACE}}, "podSelector": {"matchLabels": {
            "app.kubernetes.io/instance": op.RELEASE, "app.kubernetes.io/name": "modeldeploy-activator"}}}]
    assert [p["port"] for p in metrics["ports"]] == [8002]
    assert metrics["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == [op.SYSTEM_NAMESPACE]
    dns, store = serving["spec"]["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")} and "to" not in dns
    assert store == {"to": [{"ipBlock": {"cidr": f"{served.store_host}/32"}}],
                     "ports": [{"port": served.store_port, "protocol": "TCP"}]}
    assert validation["spec"]["egress"][-1]["to"] == [{"podSelector": {"matchLabels": {"modeldeploy.io/name": MODEL}}}]
    can = tc.kubectl("auth", "can-i", "patch", "networkpolicies", "-n", NS,
                     f"--as=system:serviceaccount:{op.SYSTEM_NAMESPACE}:{op.RELEASE}", check=False)
    assert can.stdout.strip() == "yes"


def test_a_pass_at_rest_leaves_the_policies_alone(served: Served) -> None:
    def versions() -> dict[str, str]:
        items = served.tc.kubectl_json("get", "networkpolicies", "-n", NS)["items"]
        return {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in items}

    before = versions()
    assert set(before) == {MODEL, f"{MODEL}-validation"}
    time.sleep(12)  # more than two resync periods of the e2e stack (resyncSeconds=5)
    assert versions() == before


def _kubernetes_url(served: Served) -> str:
    cfg = served.tc.local
    assert cfg is not None
    first = re.sub(r"\.0/\d+$", ".1", hostnet.network(cfg).service_cidr)
    return f"https://{first}:443/version"


def test_the_controller_enforces_the_metrics_port_and_the_egress(served: Served) -> None:
    metrics = f"http://{served.pod_ip}:8002/metrics"
    http = f"http://{served.pod_ip}:8000/v2/health/ready"
    store = f"http://{served.store_host}:{served.store_port}/minio/health/live"
    api = _kubernetes_url(served)
    # A client pod elsewhere: Triton's HTTP port yes, its metrics no; the API server (it is under no
    # policy) answers, which shows the network would carry what the policies refuse.
    seen = _probe(served.tc, CLIENT_NS, CLIENT, "client", [http, metrics, api])
    assert seen[http][0] == 200, seen
    assert seen[metrics][0] == 0, seen
    assert seen[api][0] in (200, 401, 403), seen
    # The operator's namespace reads the metrics (what the operator scrapes).
    operators = served.tc.kubectl_json("get", "pods", "-n", op.SYSTEM_NAMESPACE, "-l",
                                       "app.kubernetes.io/name=modeldeploy-operator")["items"]
    assert len(operators) == 2, [p["metadata"]["name"] for p in operators]  # the leader and the standby
    wait_for(lambda: all(served.controller.knows(p["status"]["podIP"]) for p in operators), 60,
             message="operator pods known")
    seen = _probe(served.tc, op.SYSTEM_NAMESPACE, "deploy/modeldeploy", "operator", [metrics])
    assert seen[metrics][0] == 200 and seen[metrics][1].startswith("#"), seen
    # The serving pod: the model store yes; the API server, on the store's own address, no.
    pod = served.pod["metadata"]["name"]
    seen = _probe(served.tc, NS, pod, "triton", [store, api])
    assert seen[store][0] == 200, seen
    assert seen[api][0] == 0, seen
    assert "sync iptables took" in served.controller.log()  # the refusals above were kube-router's rules


def test_a_canary_validation_job_passes_under_its_policy(served: Served) -> None:
    """Last (it starts a rollout): the validation Job of a new revision, selected by
    `<name>-validation` (egress: DNS, the store, the model's pods on 8000), fetches its dataset from
    MinIO and queries the canary, and passes, with the policies enforced."""
    tc = served.tc
    spec = _spec("s3://models/digits/2/model.onnx")
    spec["spec"]["model"]["version"] = "2"
    spec["spec"]["rollout"] = {"steps": [{"weight": 50, "pause": "60s"}],
                               "validation": {"datasetUri": "s3://models/digits/validation.npz", "minAccuracy": 0.9}}
    tc.apply(spec, NS)

    def verdict() -> dict[str, Any] | None:
        canary = tc.kubectl_json("get", "modeldeployment", MODEL, "-n", NS).get("status", {}).get("canary") or {}
        found = canary.get("validation") or {}
        return canary if found.get("verdict") in ("Passed", "Failed") else None

    canary = wait_for(verdict, 300, interval=1, message="the canary's validation verdict")
    assert canary["validation"]["verdict"] == "Passed", canary["validation"]
    job = job_name(MODEL, canary["revision"])
    policy = tc.kubectl_json("get", "networkpolicy", f"{MODEL}-validation", "-n", NS)
    assert policy["spec"]["podSelector"] == {"matchLabels": {LABEL_JOB_NAME: job}}
    assert len(_selected(tc, NS, {LABEL_JOB_NAME: job})) == 1  # it selects the Job's real pod
