"""Test access to a cluster: the local one from hack/localcluster, or any kubeconfig."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from localcluster import binaries
from localcluster import cluster as localcluster
from localcluster.config import ClusterConfig

# Warnings every pod or node of the local cluster gets (no cluster DNS; cgroup v1 hosts): not a diagnosis.
_ALWAYS_WARNED = frozenset({"MissingClusterDNS", "CgroupV1"})

# `make demo`'s cluster: tests never start, reuse or take down a cluster of that name.
DEMO_CLUSTER = "modeldeploy"
# The e2e tier's real node keeps the conventional Service range (its tests expect the `kubernetes`
# Service at 10.96.0.1); other real nodes on the machine get ranges of their own.
E2E_SERVICE_CIDR = "10.96.0.0/16"


@dataclass
class ClusterHandle:
    """A running cluster as tests see it: a kubeconfig, a kubectl, API clients."""

    kubeconfig: Path
    local: ClusterConfig | None  # None when the tests run against an external kubeconfig

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        exe = str(binaries.path_of("kubectl")) if binaries.path_of("kubectl").exists() else "kubectl"
        argv = [exe, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        proc = subprocess.run(argv, input=input_text, text=True, capture_output=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]], namespace: str | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        docs = manifest if isinstance(manifest, list) else [manifest]
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("apply", "--server-side", "--field-manager=test", *ns, "-f", "-",
                            input_text=yaml.safe_dump_all(docs), check=check)

    def api_client(self) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def audit_log(self) -> Path | None:
        return self.local.logs / "audit.log" if self.local else None

    def state(self) -> str:
        """What a failed e2e test needs to explain itself when only its report survives (CI keeps
        pytest's output): each node's conditions, every pod that is not Running and Ready (phase,
        restarts, why its containers wait or last ended), the newest Warning events, and the end of
        the kubelet's log when the node is not Ready."""
        lines: list[str] = []
        try:
            for node in self.kubectl_json("get", "nodes")["items"]:
                conds = {c["type"]: c for c in node.get("status", {}).get("conditions", [])}
                bad = [f"{t}={c['status']} ({c.get('reason', '')})" for t, c in conds.items()
                       if (t == "Ready") != (c["status"] == "True")]
                lines.append(f"node {node['metadata']['name']}: " + ("; ".join(bad) or "Ready, no pressure"))
            for pod in self.kubectl_json("get", "pods", "-A")["items"]:
                st = pod.get("status", {})
                ready = any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions", []))
                if st.get("phase") == "Succeeded" or (st.get("phase") == "Running" and ready):
                    continue
                why = []
                for cs in st.get("initContainerStatuses", []) + st.get("containerStatuses", []):
                    for key in ("state", "lastState"):
                        for what, detail in (cs.get(key) or {}).items():
                            if what != "running" and detail:
                                message = (detail.get("message") or "")[:160]
                                why.append(f"{cs['name']} {key}.{what}: {detail.get('reason', '')} {message} "
                                           f"(exit {detail.get('exitCode', '-')})")
                    if cs.get("restartCount"):
                        why.append(f"{cs['name']} restarts {cs['restartCount']}")
                unsched = [c.get("message", "") for c in st.get("conditions", []) if c.get("reason") == "Unschedulable"]
                lines.append(f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']}: {st.get('phase')}, "
                             f"ready={ready}; " + "; ".join(why + unsched))
            events = [e for e in self.kubectl_json("get", "events", "-A")["items"]
                      if e.get("type") == "Warning" and e.get("reason") not in _ALWAYS_WARNED]
            events.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
            for e in events[-15:]:
                obj = e.get("involvedObject", {})
                message = (e.get("message") or "")[:200]
                lines.append(f"event {e.get('lastTimestamp') or e.get('eventTime')} {obj.get('kind')} "
                             f"{obj.get('namespace')}/{obj.get('name')}: {e.get('reason')}: {message}")
        except Exception as e:  # the state is a diagnosis, never the failure itself
            lines.append(f"(cluster state unreadable: {e})")
        if self.local is not None and not any(ln.startswith("node ") and "Ready, no pressure" in ln for ln in lines):
            kubelet = self.local.logs / "kubelet.log"
            if kubelet.exists():
                lines += ["kubelet.log, last lines:", *kubelet.read_text(errors="replace").splitlines()[-20:]]
        return "\n".join(lines)


def start(name: str = "pytest") -> ClusterHandle:
    """Use $MD_TEST_KUBECONFIG if set, else bring up (or reuse) the local cluster `name`."""
    external = os.environ.get("MD_TEST_KUBECONFIG")
    if external:
        return ClusterHandle(Path(external), None)
    _refuse_demo(name)
    cfg = ClusterConfig(name=name)
    localcluster.up(cfg)
    return ClusterHandle(cfg.kubeconfig, cfg)


def stop(tc: ClusterHandle) -> None:
    if tc.local is not None and not os.environ.get("MD_KEEP_CLUSTER"):
        _refuse_demo(tc.local.name)
        localcluster.down(tc.local)


def wait_for(predicate: Any, timeout: float, interval: float = 0.5, message: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail with `message` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s: {message} (last value: {last!r})")


def _refuse_demo(name: str) -> None:
    """The demo's cluster may be up beside the tests; a test that took it over would stop it."""
    if name == DEMO_CLUSTER:
        raise ValueError(f"cluster '{DEMO_CLUSTER}' is `make demo`'s: tests use clusters of their own "
                         "(unset MD_TEST_CLUSTER / MD_TEST_REAL_CLUSTER, or name another cluster)")


def start_real_node(name: str = "pytest-e2e", service_cidr: str | None = E2E_SERVICE_CIDR) -> ClusterHandle:
    """A local cluster with one real node (containerd + kubelet + kube-proxy) and no kwok nodes.

    The node gets a network of its own (namespace, bridge, pod range), so it runs beside any
    other cluster's real node; `service_cidr=None` gives it a Service range of its own too.
    """
    _refuse_demo(name)
    cfg = ClusterConfig(name=name, fake_nodes=0, real_node=True, service_cidr=service_cidr)
    localcluster.up(cfg)
    return ClusterHandle(cfg.kubeconfig, cfg)


def restricted_pod(name: str, image: str) -> dict:
    """A pod of the test image meeting Pod Security "restricted", serving /healthz on 8080."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "server", "image": image, "imagePullPolicy": "Never",
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }
