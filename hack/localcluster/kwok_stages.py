"""kwok's Stage configs for a cluster: upstream's fast node/pod stages plus one of our own.

The extra stage makes kwok play a kubelet whose model-loader init container fails, for pods whose
loader is pointed at FAILING_MODEL_URI: the control plane, the scheduler and the operator then
see exactly what a real node reports (a terminated init container with a termination message,
CrashLoopBackOff), so load-failure handling is tested on the integration tier. Real failures on
real pods are tested on the e2e tier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from . import binaries
from .config import ClusterConfig

FAILING_MODEL_URI = "s3://kwok-simulated/fails-to-load/model.onnx"
FAILURE_MESSAGE = "sha256 mismatch for s3://kwok-simulated/fails-to-load/model.onnx (simulated by kwok)"
_LOADER_URI = ('.spec.initContainers.[] | select( .name == "model-loader" ) | .env.[] '
               '| select( .name == "MD_SOURCE_URI" ) | .value')

_FAILURE_TEMPLATE = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  type: Initialized
  reason: ContainersNotInitialized
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  type: Ready
  reason: ContainersNotReady
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 1
  state:
    waiting:
      reason: CrashLoopBackOff
      message: back-off 10s restarting failed container
  lastState:
    terminated:
      exitCode: 1
      reason: Error
      message: "MESSAGE"
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  state:
    waiting:
      reason: PodInitializing
{{ end }}
""".replace("MESSAGE", FAILURE_MESSAGE)


def failing_loader_stage() -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": "modeldeploy-loader-fails"},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {"matchExpressions": [
                {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
                {"key": _LOADER_URI, "operator": "In", "values": [FAILING_MODEL_URI]},
                {"key": '.status.initContainerStatuses.[] | select( .name == "model-loader" ) | .lastState.terminated',
                 "operator": "DoesNotExist"},
            ]},
            "next": {"statusTemplate": _FAILURE_TEMPLATE},
        },
    }


def render() -> list[dict[str, Any]]:
    """Upstream stages (pod-ready made to skip failing loaders) plus the failing-loader stage."""
    docs = [d for d in yaml.safe_load_all(binaries.kwok_stages().read_text()) if d]
    for doc in docs:
        if doc["metadata"]["name"] == "pod-ready":
            doc["spec"]["selector"]["matchExpressions"].append(
                {"key": _LOADER_URI, "operator": "NotIn", "values": [FAILING_MODEL_URI]})
    return [*docs, failing_loader_stage()]


def write(cfg: ClusterConfig) -> Path:
    path = cfg.root / "kwok-stages.yaml"
    path.write_text(yaml.safe_dump_all(render(), sort_keys=False))
    return path
