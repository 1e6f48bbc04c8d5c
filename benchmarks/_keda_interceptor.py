"""The KEDA HTTP add-on's interceptor, run for benchmarks/scale_to_zero.py's comparison (issue 19).

The interceptor is the add-on's request path: a reverse proxy that counts every request (for its
scaler, which KEDA polls) and, while the target Service has no ready endpoint, holds requests
until one appears. It needs a Kubernetes API server (its routes are InterceptorRoute objects, the
endpoints EndpointSlices), so this starts a local API server (the integration tier's, cluster
`bench-keda`), installs the add-on's CRDs, and describes the model as the add-on sees it: a
Service `digits` and an EndpointSlice listing this machine's Triton. The benchmark plays the
kubelet and the EndpointSlice controller: it marks the endpoint ready the moment Triton answers
its readiness probe (a 20 ms poll), which no cluster does faster, so the interceptor's cold
figures are a lower bound. The add-on's scaler and KEDA itself are not run: what scales is the
benchmark starting Triton, the same moment for both proxies.

The add-on is not on the Go module proxy (github.com/kedacore/http-add-on: 403), so its source
comes from a checkout (`--keda-src`); `go build ./interceptor` there fetches its dependencies
from the proxy.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import kubernetes

from localcluster.process import free_port
from tests.support import cluster as cluster_support

NAMESPACE = "ml"
SERVICE = "digits"
SLICE = "digits-bench"


def build(src: Path, out: Path) -> Path:
    """`go build ./interceptor` in the add-on's checkout (cached by the go command)."""
    binary = out / "keda-interceptor"
    subprocess.run(["go", "build", "-o", str(binary), "./interceptor"], cwd=src, check=True)
    return binary


def host_address() -> str:
    """This machine's first global IPv4 address (EndpointSlices refuse loopback addresses)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        return line.split()[3].split("/")[0]
    raise RuntimeError("no global IPv4 address on this machine")


@dataclass
class Interceptor:
    url: str  # host:port of the proxy
    admin: str
    slices: kubernetes.client.DiscoveryV1Api
    address: str
    port: int

    def set_ready(self, ready: bool) -> None:
        """What the kubelet and the EndpointSlice controller would write when the pod turns (not) Ready
        (one PATCH through the API client: milliseconds, faster than any cluster writes it)."""
        self.slices.patch_namespaced_endpoint_slice(SLICE, NAMESPACE, {
            "endpoints": _slice(self.address, self.port, ready)["endpoints"]})

    def wait_routed(self, timeout: float = 60) -> None:
        """Until the interceptor knows the route: an unknown host is 404, a known one with no ready
        endpoint is held (the read times out here)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=0.5)
                return  # answered: routed (and ready)
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    return
            except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
                if isinstance(e, TimeoutError) or "timed out" in str(e):
                    return  # held: routed, waiting for an endpoint
            time.sleep(0.2)
        raise RuntimeError("the interceptor never routed the model")

    def held(self) -> int:
        """Requests inside the interceptor now (its admin /queue, what the add-on's scaler reads)."""
        with urllib.request.urlopen(f"http://{self.admin}/queue", timeout=2) as r:
            counts = json.loads(r.read())
        return sum(int(c.get("Concurrency", 0)) for c in counts.values())


def _slice(address: str, port: int, ready: bool) -> dict[str, object]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": SLICE, "labels": {"kubernetes.io/service-name": SERVICE}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": ready}}]}


@contextmanager
def running_interceptor(binary: Path, src: Path, work: Path, triton_http_port: int) -> Iterator[Interceptor]:
    tc = cluster_support.start("bench-keda")
    proc = None
    try:
        for crd in sorted((src / "config" / "crd" / "bases").glob("*.yaml")):
            tc.kubectl("apply", "--server-side", "-f", str(crd))
        tc.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        tc.kubectl("create", "namespace", NAMESPACE, check=False)
        address = host_address()
        tc.apply([
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE},
             "spec": {"ports": [{"name": "http", "port": 8000, "targetPort": triton_http_port}]}},
            _slice(address, triton_http_port, ready=False),
            {"apiVersion": "http.keda.sh/v1beta1", "kind": "InterceptorRoute", "metadata": {"name": SERVICE},
             "spec": {"target": {"service": SERVICE, "portName": "http"},
                      "scalingMetric": {"concurrency": {"targetValue": 100}},
                      "rules": [{"hosts": ["*"]}]}},
        ], NAMESPACE)
        proxy, admin = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(tc.kubeconfig), "KEDA_HTTP_PROXY_PORT": str(proxy),
               "KEDA_HTTP_ADMIN_PORT": str(admin), "KEDA_HTTP_WATCH_NAMESPACE": NAMESPACE,
               "KEDA_HTTP_DIRECT_POD_ROUTING": "true", "OTEL_PROM_EXPORTER_PORT": str(free_port())}
        log = (work / "keda-interceptor.log").open("w")
        proc = subprocess.Popen([str(binary)], env=env, stdout=log, stderr=subprocess.STDOUT)
        yield Interceptor(url=f"127.0.0.1:{proxy}", admin=f"127.0.0.1:{admin}",
                          slices=kubernetes.client.DiscoveryV1Api(tc.api_client()), address=address,
                          port=triton_http_port)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster_support.stop(tc)
