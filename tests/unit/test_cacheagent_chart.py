"""The cache agent's chart template (templates/cacheagent.yaml), rendered by the real helm binary.

The chart's values.yaml and values.schema.json do not carry `artifactCache` yet (they are another
change's), so each test renders a copy of the chart with VALUES and SCHEMA below merged in when
absent; once they are in the chart, the copy is the chart itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy import constants as c
from tests.support import chart

pytestmark = pytest.mark.skipif(chart.helm() is None, reason="helm is not cached (make binaries)")

VALUES = """
# The node cache agent (docs/artifacts.md#the-node-cache-agent): a DaemonSet in the release
# namespace serving verified model artifacts from a hostPath to the serving pods on its node, so the
# second pod of a model on a node downloads nothing. Pods reach their own node's agent through a
# Service with internalTrafficPolicy Local. Needs Pod Security that allows a hostPath in this
# namespace; model namespaces stay restricted.
artifactCache:
  # -- Run the agent on every node (nodeSelector/tolerations below choose which).
  enabled: false
  # -- The agent's image; empty means the operator's image (it contains the agent).
  image: ""
  # -- The artifact store: s3://BUCKET[/PREFIX]. Empty with storeVolumeClaim set: that claim.
  store: ""
  # -- Secret in the release namespace with the store's AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
  # optionally AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_REGION (read by the agent only, never logged).
  storeCredentialsSecret: ""
  # -- A ReadOnlyMany/ReadWriteMany PersistentVolumeClaim holding a directory store, instead of S3.
  storeVolumeClaim: ""
  # -- The directory on each node.
  hostPath: /var/lib/modeldeploy/artifacts
  # -- Most bytes of artifact files kept per node (bytes, or a quantity such as 50Gi); least
  # recently used artifacts are evicted beyond it. Leave room on the node's disk for one more.
  maxBytes: 50Gi
  # -- Port of the artifacts, /metrics and /healthz.
  port: 8090
  # -- How long a pod's request waits for a fill in progress before it is sent to the store
  # (keep it under the fetch side's 10 s timeout for the agent).
  fillWaitSeconds: 8
  resources:
    requests: {cpu: 100m, memory: 128Mi}
    limits: {memory: 512Mi}
  # -- Where agents run: at least every node serving pods run on (GPU nodes are often tainted).
  nodeSelector: {}
  tolerations: []
  priorityClassName: ""
  podAnnotations: {}
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "enabled": {"type": "boolean"},
        "image": {"type": "string"},
        "store": {"type": "string", "pattern": "^(s3://[^/@?]+(/.*)?)?$"},
        "storeCredentialsSecret": {"type": "string"},
        "storeVolumeClaim": {"type": "string"},
        "hostPath": {"type": "string", "pattern": "^/.+"},
        "maxBytes": {"type": ["string", "integer"], "pattern": "^[1-9][0-9]*(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$",
                     "minimum": 1},
        "port": {"type": "integer", "minimum": 1024, "maximum": 65535},
        "fillWaitSeconds": {"type": "number", "exclusiveMinimum": 0},
        "resources": {"type": "object"},
        "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
        "tolerations": {"type": "array"},
        "priorityClassName": {"type": "string"},
        "podAnnotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

ON = ("artifactCache.enabled=true", "artifactCache.store=s3://artifacts/team-a",
      "artifactCache.storeCredentialsSecret=artifact-store")


@pytest.fixture(scope="module")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart, with the artifactCache values and schema merged in where it lacks them."""
    dest = tmp_path_factory.mktemp("chart") / "modeldeploy"
    shutil.copytree(chart.CHART, dest)
    values = dest / "values.yaml"
    if "artifactCache" not in yaml.safe_load(values.read_text()):
        values.write_text(values.read_text() + VALUES)
    schema_path = dest / "values.schema.json"
    schema = json.loads(schema_path.read_text())
    schema["properties"].setdefault("artifactCache", SCHEMA)
    schema_path.write_text(json.dumps(schema, indent=2))
    # what the operator's Deployment will do with the URL helper: render it where a test can read it
    (dest / "templates" / "zz-cache-url.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cache-url-probe}\n"
        "data: {url: {{ include \"modeldeploy.cacheAgentURL\" . | quote }}}\n")
    return dest


def render(chart_dir: Path, *sets: str) -> list[dict[str, Any]]:
    exe = chart.helm()
    assert exe is not None
    argv = [str(exe), "template", "md", str(chart_dir), "--namespace", "modeldeploy-system", "--kube-version",
            "1.35.4", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(argv, text=True, capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(proc.stdout + proc.stderr)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def agent_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "cache-agent"]


def test_off_by_default(chart_dir: Path) -> None:
    assert agent_objects(render(chart_dir)) == []


def test_the_chart_as_it_is_still_renders() -> None:
    """With or without the artifactCache values in the chart (the template must not need them)."""
    assert agent_objects(chart.render()) == []


def test_the_url_helper_names_the_service(chart_dir: Path) -> None:
    docs = render(chart_dir, *ON, "artifactCache.port=9100")
    url = next(d for d in docs if d["metadata"]["name"] == "cache-url-probe")["data"]["url"]
    svc = chart.by_kind(agent_objects(docs), "Service")[0]
    assert url == f"http://{svc['metadata']['name']}.modeldeploy-system.svc:9100"


def test_values_block_is_valid_yaml_with_the_defaults_the_template_reads() -> None:
    block = yaml.safe_load(VALUES)["artifactCache"]
    assert set(block) == set(SCHEMA["properties"])
    assert block["enabled"] is False and block["maxBytes"] == "50Gi"


def test_daemonset_service_and_policy(chart_dir: Path) -> None:
    docs = agent_objects(render(chart_dir, *ON))
    assert sorted(d["kind"] for d in docs) == ["DaemonSet", "NetworkPolicy", "Service"]
    ds = chart.by_kind(docs, "DaemonSet")[0]
    svc = chart.by_kind(docs, "Service")[0]
    assert ds["metadata"]["namespace"] == svc["metadata"]["namespace"] == "modeldeploy-system"
    assert ds["metadata"]["name"] == svc["metadata"]["name"] == "md-modeldeploy-cache-agent"
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    # the Service keeps each pod on its own node's agent
    assert svc["spec"]["internalTrafficPolicy"] == "Local" and svc["spec"]["ports"][0]["port"] == 8090
    assert "hostNetwork" not in pod and all("hostPort" not in p for p in pod["containers"][0]["ports"])
    assert pod["volumes"][0]["hostPath"] == {"path": "/var/lib/modeldeploy/artifacts", "type": "DirectoryOrCreate"}
    assert pod["automountServiceAccountToken"] is False

    agent = pod["containers"][0]
    assert agent["image"] == "localhost/modeldeploy-operator:dev"
    assert agent["command"] == ["python3", "-m", "modeldeploy.cacheagent"]
    env = {e["name"]: e for e in agent["env"]}
    assert env["MD_ARTIFACT_STORE"]["value"] == "s3://artifacts/team-a"
    assert env["MD_CACHE_MAX_BYTES"]["value"] == "50Gi" and env["MD_CACHE_DIR"]["value"] == "/cache"
    assert env["MD_CACHE_PORT"]["value"] == "8090"
    secret_refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if "valueFrom" in e}
    assert set(secret_refs) == {f"MD_STORE_{k}" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                           "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION")}
    assert all(r["name"] == "artifact-store" and r["key"] == n.removeprefix("MD_STORE_") and r["optional"]
               for n, r in secret_refs.items())
    assert agent["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}

    # as restrictive as a hostPath allows: the agent is non-root without capabilities
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    assert agent["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}}
    init = pod["initContainers"][0]  # root only to chown the node's directory, with CAP_CHOWN alone
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    compile(init["command"][2], "chown", "exec")  # the script is valid Python

    policy = chart.by_kind(docs, "NetworkPolicy")[0]
    peers = policy["spec"]["ingress"][0]["from"]
    assert peers[0]["podSelector"]["matchLabels"] == {c.LABEL_MANAGED_BY: c.MANAGED_BY,
                                                      c.LABEL_APP_COMPONENT: c.COMPONENT_SERVER}


def test_settings_flow_into_the_pod(chart_dir: Path) -> None:
    docs = agent_objects(render(chart_dir, *ON, "artifactCache.maxBytes=1073741824", "artifactCache.port=9100",
                                "artifactCache.hostPath=/mnt/nvme/md", "artifactCache.image=reg/agent:1",
                                "artifactCache.tolerations[0].operator=Exists", "networkPolicy.enabled=false",
                                "artifactCache.nodeSelector.pool=gpu"))
    assert sorted(d["kind"] for d in docs) == ["DaemonSet", "Service"]
    ds = chart.by_kind(docs, "DaemonSet")[0]
    pod = ds["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["MD_CACHE_MAX_BYTES"] == "1073741824" and env["MD_CACHE_PORT"] == "9100"
    assert pod["containers"][0]["image"] == pod["initContainers"][0]["image"] == "reg/agent:1"
    assert pod["volumes"][0]["hostPath"]["path"] == "/mnt/nvme/md"
    assert pod["tolerations"] == [{"operator": "Exists"}] and pod["nodeSelector"] == {"pool": "gpu"}
    assert chart.by_kind(docs, "Service")[0]["spec"]["ports"][0]["port"] == 9100


def test_a_volume_claim_store_is_mounted_read_only(chart_dir: Path) -> None:
    docs = agent_objects(render(chart_dir, "artifactCache.enabled=true", "artifactCache.storeVolumeClaim=artifacts"))
    pod = chart.by_kind(docs, "DaemonSet")[0]["spec"]["template"]["spec"]
    agent = pod["containers"][0]
    assert {e["name"]: e.get("value") for e in agent["env"]}["MD_ARTIFACT_STORE"] == "file:///artifact-store"
    assert {"name": "store", "mountPath": "/artifact-store", "readOnly": True} in agent["volumeMounts"]
    assert {"name": "store", "persistentVolumeClaim": {"claimName": "artifacts", "readOnly": True}} in pod["volumes"]
    assert not any("valueFrom" in e for e in agent["env"])  # no credentials without a Secret


def test_enabled_without_a_store_fails_with_a_message(chart_dir: Path) -> None:
    with pytest.raises(AssertionError, match=r"artifactCache\.enabled needs artifactCache\.store"):
        render(chart_dir, "artifactCache.enabled=true")


def test_schema_refuses_unknown_and_bad_values(chart_dir: Path) -> None:
    for bad, where in (("maxBytes=lots", "/maxBytes'"), ("hostPath=relative", "/hostPath'"),
                       ("colour=blue", "': additional properties 'colour'"), ("store=https://not-s3", "/store'")):
        with pytest.raises(AssertionError, match=re.escape(f"at '/artifactCache{where}")):
            render(chart_dir, *ON, f"artifactCache.{bad}")
