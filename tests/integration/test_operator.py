"""The operator against a real control plane, with the Helm chart's RBAC (pods run on kwok nodes)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support.cluster import ClusterHandle, wait_for
from tests.support.specs import model_deployment

pytestmark = pytest.mark.integration

MD = "modeldeployment"


def _md(tc: ClusterHandle, ns: str, name: str) -> dict[str, Any]:
    return tc.kubectl_json("get", MD, name, "-n", ns)


def _condition(md: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in md.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def _wait_ready(tc: ClusterHandle, ns: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        md = _md(tc, ns, name)
        st = md.get("status", {})
        if st.get("phase") == "Ready" and st.get("observedGeneration") == md["metadata"]["generation"]:
            return md
        return None

    return wait_for(ready, timeout, message=f"{name} Ready")


def _deployments(tc: ClusterHandle, ns: str, name: str) -> list[dict[str, Any]]:
    return tc.kubectl_json("get", "deployments", "-n", ns, "-l", f"modeldeploy.io/name={name}")["items"]


def test_create_builds_children_and_reports_ready(cluster: ClusterHandle, operator: Any, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    cluster.apply(model_deployment("digits", replicas=2), namespace)
    md = _wait_ready(cluster, namespace, "digits")
    uid = md["metadata"]["uid"]
    st = md["status"]
    assert st["readyReplicas"] == 2 and st["replicas"] == 2
    assert st["selector"] == "modeldeploy.io/name=digits"
    assert st["endpoint"]["http"] == f"http://digits.{namespace}.svc:8000/v2/models/digits"
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "Ready": "True", "ModelLoaded": "True", "Progressing": "False", "Degraded": "False"}

    deployments = _deployments(cluster, namespace, "digits")
    assert len(deployments) == 1
    dep = deployments[0]
    assert dep["metadata"]["name"] == f"digits-{st['stableRevision']}"
    assert dep["metadata"]["ownerReferences"][0]["uid"] == uid
    pod = dep["spec"]["template"]["spec"]
    triton = next(c for c in pod["containers"] if c["name"] == "triton")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert [c["name"] for c in pod["initContainers"]] == ["model-loader"]

    # Pods were admitted under Pod Security "restricted" and placed on GPU nodes.
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", "modeldeploy.io/name=digits")["items"]
    assert len(pods) == 2 and all(p["spec"]["nodeName"].startswith("kwok-gpu-") for p in pods)

    for svc in ("digits", "digits-stable", "digits-canary"):
        obj = cluster.kubectl_json("get", "service", svc, "-n", namespace)
        assert obj["metadata"]["ownerReferences"][0]["uid"] == uid
    pdb = cluster.kubectl_json("get", "pdb", "digits", "-n", namespace)
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == uid

    row = cluster.kubectl("get", MD, "digits", "-n", namespace, "--no-headers").stdout.split()
    assert row[:5] == ["digits", "digits", "1", "2/2", "Ready"], row


def test_scale_subresource_reaches_deployment_and_status(cluster: ClusterHandle, operator: Any,
                                                         namespace: str) -> None:
    cluster.apply(model_deployment("scaled", replicas=1), namespace)
    _wait_ready(cluster, namespace, "scaled")
    cluster.kubectl("scale", f"{MD}/scaled", "-n", namespace, "--replicas=5")

    def scaled() -> bool:
        deps = _deployments(cluster, namespace, "scaled")
        st = _md(cluster, namespace, "scaled").get("status", {})
        return (len(deps) == 1 and deps[0]["spec"]["replicas"] == 5 and st.get("replicas") == 5
                and st.get("readyReplicas") == 5)

    wait_for(scaled, 60, message="5 replicas through the scale subresource")
    scale = json.loads(cluster.kubectl("get", "--raw",
                                       f"/apis/modeldeploy.io/v1alpha1/namespaces/{namespace}/modeldeployments/scaled/scale").stdout)
    assert scale["status"]["replicas"] == 5 and scale["status"]["selector"] == "modeldeploy.io/name=scaled"


def test_deleted_child_comes_back_and_owned_fields_are_healed(cluster: ClusterHandle, operator: Any,
                                                               namespace: str) -> None:
    cluster.apply(model_deployment("heal", replicas=1), namespace)
    md = _wait_ready(cluster, namespace, "heal")
    rev = md["status"]["stableRevision"]

    uid_before = cluster.kubectl_json("get", "service", "heal", "-n", namespace)["metadata"]["uid"]
    cluster.kubectl("delete", "service", "heal", "-n", namespace)
    wait_for(lambda: cluster.kubectl("get", "service", "heal", "-n", namespace, check=False).returncode == 0,
             30, message="deleted Service recreated")
    assert cluster.kubectl_json("get", "service", "heal", "-n", namespace)["metadata"]["uid"] != uid_before

    # A field the operator owns (the triton image) is edited by hand: it is put back.
    dep = f"heal-{rev}"
    cluster.kubectl("annotate", "deployment", dep, "-n", namespace, "example.com/owner=someone-else")
    cluster.kubectl("set", "image", f"deployment/{dep}", "-n", namespace, "triton=example.invalid/hacked:1")

    def healed() -> bool:
        d = cluster.kubectl_json("get", "deployment", dep, "-n", namespace)
        image = next(c["image"] for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "triton")
        return image != "example.invalid/hacked:1"

    wait_for(healed, 30, message="hand-edited image reverted")
    d = cluster.kubectl_json("get", "deployment", dep, "-n", namespace)
    assert d["metadata"]["annotations"]["example.com/owner"] == "someone-else"  # not ours: left alone


def _requests_by(cluster: ClusterHandle, user_suffix: str, since: float, namespace: str | None = None,
                 reads: bool = False) -> list[dict[str, Any]]:
    """The user's requests since `since` (writes; with `reads`, every verb but watch), in
    `namespace` when given, else anywhere."""
    log = cluster.audit_log()
    assert log is not None
    skipped = ("watch",) if reads else ("get", "list", "watch")
    out = []
    for line in log.read_text().splitlines():
        e = json.loads(line)
        if e.get("stage") != "ResponseComplete" or e["verb"] in skipped:
            continue
        if not e["user"]["username"].endswith(user_suffix):
            continue
        ts = time.mktime(time.strptime(e["requestReceivedTimestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        if ts >= since and (namespace is None or e.get("objectRef", {}).get("namespace") == namespace):
            out.append(e)
    return out


def _writes_by(cluster: ClusterHandle, user_suffix: str, since: float, namespace: str) -> list[dict[str, Any]]:
    return _requests_by(cluster, user_suffix, since, namespace)


def test_at_rest_the_operator_reads_and_writes_nothing(cluster: ClusterHandle, operator: Any, namespace: str) -> None:
    """Passes read the watch-fed cache: 20 passes (each caused by a user's annotation) and 15 s of
    ticks later, the audit log holds not one GET, LIST or write by the operator, in the model's
    namespace or cluster-wide."""
    if cluster.audit_log() is None:
        pytest.fail("needs the local cluster's audit log")
    cluster.apply(model_deployment("idle", replicas=2), namespace)
    _wait_ready(cluster, namespace, "idle")
    time.sleep(3)  # let the last status write land
    since = time.time() + 1  # the audit log's timestamps are whole seconds
    time.sleep(1.2)
    passes_before = operator.reconciles_of(namespace, "idle")
    for i in range(20):
        cluster.kubectl("annotate", "--overwrite", "modeldeployment", "idle", "-n", namespace, f"example.com/poke={i}")
        wait_for(lambda i=i: operator.reconciles_of(namespace, "idle") - passes_before >= i + 1, 20, interval=0.1,
                 message=f"pass {i + 1} after the user's annotation")
    time.sleep(15)
    # Here or cluster-wide (a LIST of every namespace): earlier tests' namespaces being deleted are
    # not at rest, and the operator's last requests there are theirs.
    requests = [r for r in _requests_by(cluster, "modeldeploy-system:modeldeploy", since, reads=True)
                if r.get("objectRef", {}).get("namespace") in (None, namespace)]
    assert requests == [], [(r["verb"], r["objectRef"]) for r in requests]


def test_rbac_of_the_chart_is_what_the_operator_uses(cluster: ClusterHandle, operator: Any) -> None:
    sa = "system:serviceaccount:modeldeploy-system:modeldeploy"
    can = lambda *a: cluster.kubectl("auth", "can-i", *a, f"--as={sa}", check=False).stdout.strip()  # noqa: E731
    assert can("patch", "modeldeployments", "--subresource=status", "-A") == "yes"
    assert can("create", "deployments", "-A") == "yes"
    assert can("get", "secrets", "-A") == "no"
    assert can("list", "secrets", "-A") == "no"
    # patch only removes the one-shot promote/abort annotations; test_spec_is_never_mutated holds the spec
    assert can("patch", "modeldeployments", "-A") == "yes"
    assert can("update", "modeldeployments", "-A") == "no"
    assert can("create", "pods", "-A") == "no"
    rules = cluster.kubectl_json("get", "clusterrole", "modeldeploy")["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule.get("apiGroups", [])


def test_promoted_canary_switches_within_the_gpu_budget(cluster: ClusterHandle, operator: Any,
                                                        namespace: str) -> None:
    cluster.apply(model_deployment("switch", replicas=3, gpus=2, max_surge_gpus=2), namespace)
    first = _wait_ready(cluster, namespace, "switch")["status"]["stableRevision"]
    cluster.apply(model_deployment("switch", version="2", replicas=3, gpus=2, max_surge_gpus=2), namespace)
    wait_for(lambda: (_md(cluster, namespace, "switch")["status"].get("canary") or {}).get("phase") == "Progressing",
             30, message="canary started")
    cluster.kubectl("annotate", MD, "switch", "-n", namespace, "modeldeploy.io/promote=now")
    budget = 3 * 2 + 2
    seen_revisions = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        deps = _deployments(cluster, namespace, "switch")
        seen_revisions |= {d["metadata"]["labels"]["modeldeploy.io/revision"] for d in deps}
        gpus = sum(d["spec"]["replicas"] * 2 for d in deps)
        assert gpus <= budget, f"{gpus} GPUs requested > budget {budget}"
        md = _md(cluster, namespace, "switch")
        st = md.get("status", {})
        if st.get("stableRevision") not in (None, first) and len(deps) == 1 and st.get("phase") == "Ready":
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"switch did not finish: {st}")
    assert len(seen_revisions) == 2
    assert deps[0]["spec"]["replicas"] == 3
    assert deps[0]["metadata"]["labels"]["app.kubernetes.io/version"] == "2"
    assert st["canary"]["phase"] == "Promoted"
    wait_for(lambda: "modeldeploy.io/promote" not in (_md(cluster, namespace, "switch")["metadata"]
                                                      .get("annotations") or {}), 10,
             message="the one-shot promote annotation removed once acted on")
    assert _md(cluster, namespace, "switch")["metadata"]["generation"] == 2  # spec untouched


def test_operator_killed_and_restarted_makes_no_duplicates(cluster: ClusterHandle, operator: Any,
                                                           namespace: str) -> None:
    names = [f"crash-{i}" for i in range(5)]
    cluster.apply([model_deployment(n, replicas=1) for n in names], namespace)
    time.sleep(0.5)  # mid-reconcile: some children exist, some not yet
    operator.kill()
    operator.start()
    for n in names:
        _wait_ready(cluster, namespace, n)
    before = {n: _md(cluster, namespace, n)["status"] for n in names}
    operator.kill()
    operator.start()
    operator.wait_for_reconciles(namespace, names)  # the new process has looked at each: no sleep
    for n in names:
        assert len(_deployments(cluster, namespace, n)) == 1
        st = _md(cluster, namespace, n)["status"]
        assert st["stableRevision"] == before[n]["stableRevision"]
        assert st["phase"] == "Ready"
        ready = _condition(_md(cluster, namespace, n), "Ready")
        assert ready["lastTransitionTime"] == _condition({"status": before[n]}, "Ready")["lastTransitionTime"]


def test_delete_with_operator_stopped_removes_every_child(cluster: ClusterHandle, operator: Any,
                                                          namespace: str) -> None:
    cluster.apply(model_deployment("gone", replicas=1), namespace)
    _wait_ready(cluster, namespace, "gone")
    assert "finalizers" not in _md(cluster, namespace, "gone")["metadata"]
    operator.stop()
    cluster.kubectl("delete", MD, "gone", "-n", namespace, "--timeout=30s")

    def all_gone() -> bool:
        left = cluster.kubectl("get", "deployments,services,pdb,pods", "-n", namespace,
                               "-l", "modeldeploy.io/name=gone", "-o", "name").stdout.split()
        return not left

    wait_for(all_gone, 60, message="children garbage-collected")


def test_spec_is_never_mutated(cluster: ClusterHandle, operator: Any, namespace: str) -> None:
    cluster.apply(model_deployment("pure", replicas=1), namespace)
    _wait_ready(cluster, namespace, "pure")
    md = cluster.kubectl_json("get", MD, "pure", "-n", namespace, "--show-managed-fields")
    assert md["metadata"]["generation"] == 1
    managers = {m["manager"] for m in md["metadata"]["managedFields"] if m.get("subresource") != "status"}
    assert managers == {"test"}, managers
    assert not any(k.startswith("kopf.") for k in md["metadata"].get("annotations", {}))


def _events(tc: ClusterHandle, ns: str, name: str) -> list[dict[str, Any]]:
    return [e for e in tc.kubectl_json("get", "events", "-n", ns)["items"]
            if e["involvedObject"].get("kind") == "ModelDeployment" and e["involvedObject"]["name"] == name]


def test_new_version_that_fails_to_load_keeps_the_stable_one_serving(cluster: ClusterHandle, operator: Any,
                                                                      namespace: str) -> None:
    from localcluster.kwok_stages import FAILING_MODEL_URI, FAILURE_MESSAGE

    cluster.apply(model_deployment("broken", replicas=2, max_surge_gpus=1), namespace)
    stable = _wait_ready(cluster, namespace, "broken")["status"]["stableRevision"]
    cluster.apply(model_deployment("broken", version="2", replicas=2, max_surge_gpus=1, uri=FAILING_MODEL_URI),
                  namespace)

    def failed() -> dict[str, Any] | None:
        md = _md(cluster, namespace, "broken")
        loaded = _condition(md, "ModelLoaded")
        return md if loaded.get("status") == "False" and md["status"].get("phase") == "Degraded" else None

    md = wait_for(failed, 60, message="ModelLoaded=False")
    loaded = _condition(md, "ModelLoaded")
    assert loaded["reason"] == "LoadFailed"
    assert FAILURE_MESSAGE in loaded["message"] and "model-loader" in loaded["message"]
    assert md["status"]["stableRevision"] == stable
    assert _condition(md, "Ready")["status"] == "True"

    def settled() -> bool:
        deps = {d["metadata"]["labels"]["modeldeploy.io/revision"]: d["spec"]["replicas"]
                for d in _deployments(cluster, namespace, "broken")}
        return deps[stable] == 2 and deps.get(md["status"]["failedRevision"], 0) == 0

    wait_for(settled, 30, message="stable back to 2 replicas, failed revision at 0")
    # No traffic moves to it: the Service's endpoints are the stable pods only.
    slices = cluster.kubectl_json("get", "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=broken")
    ready_pods = {ep["targetRef"]["name"] for s in slices["items"] for ep in s.get("endpoints") or []
                  if ep.get("conditions", {}).get("ready")}
    assert ready_pods and all(p.startswith(f"broken-{stable}-") for p in ready_pods)
    warnings = [e for e in _events(cluster, namespace, "broken") if e["type"] == "Warning"]
    assert any(e["reason"] == "LoadFailed" and FAILURE_MESSAGE in e["message"] for e in warnings)

    # Fixing the spec rolls out the good version (promoted by hand: kwok pods have no metrics to judge).
    cluster.apply(model_deployment("broken", version="3", replicas=2, max_surge_gpus=1), namespace)
    wait_for(lambda: (_md(cluster, namespace, "broken")["status"].get("canary") or {}).get("phase") == "Progressing",
             30, message="canary of version 3 started")
    cluster.kubectl("annotate", MD, "broken", "-n", namespace, "modeldeploy.io/promote=now")

    def recovered() -> bool:
        st = _md(cluster, namespace, "broken").get("status", {})
        return st.get("phase") == "Ready" and st.get("stableRevision") not in (stable, None) \
            and st.get("failedRevision") is None

    wait_for(recovered, 60, message="recovered with version 3")


def test_first_version_that_fails_to_load_is_failed(cluster: ClusterHandle, operator: Any, namespace: str) -> None:
    from localcluster.kwok_stages import FAILING_MODEL_URI

    cluster.apply(model_deployment("never", replicas=1, uri=FAILING_MODEL_URI), namespace)

    def failed() -> bool:
        md = _md(cluster, namespace, "never")
        return md.get("status", {}).get("phase") == "Failed" and _condition(md, "ModelLoaded").get("status") == "False"

    wait_for(failed, 60, message="phase Failed")
