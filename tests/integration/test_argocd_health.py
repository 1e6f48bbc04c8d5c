"""The Argo CD health check (charts/modeldeploy/argocd/health.lua), judged by the real argocd CLI.

`argocd admin settings resource-overrides health OBJ.yaml --argocd-cm-path CM.yaml` runs Argo CD's
own code path (settings manager -> gitops-engine health -> Argo CD's sandboxed gopher-lua VM) on a
ModelDeployment in every phase. The binary is built once from the Go module proxy by
hack/build-argocd.sh into ~/.cache/modeldeploy/bin/argocd-<version> (version: hack/versions/argocd).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VERSION = (ROOT / "hack" / "versions" / "argocd").read_text().strip()
SNIPPET = ROOT / "docs" / "argocd-health.yaml"
LUA = ROOT / "charts" / "modeldeploy" / "argocd" / "health.lua"

STABLE = "5d8f9c7b6a"
IDLE_MESSAGE = ("scaled to zero (no requests for 10m (scaleToZeroAfter 10m): 1 -> 0); the activator answers "
                "the next request and brings a pod back")
CANARY = "e1f2a3b4c5"


def argocd_path() -> Path:
    """Where hack/build-argocd.sh caches the argocd binary of VERSION."""
    return config.cache_dir() / "bin" / f"argocd-{VERSION}"


@pytest.fixture(scope="session")
def argocd() -> Path:
    """The real argocd CLI, built from the Go module proxy when it is not cached yet (20-40 min)."""
    exe = argocd_path()
    if not os.access(exe, os.X_OK):
        env = dict(os.environ, MD_CACHE=str(config.cache_dir()), ARGOCD_VERSION=VERSION)
        subprocess.run([str(ROOT / "hack" / "build-argocd.sh")], check=True, env=env, stdout=subprocess.DEVNULL)
    assert os.access(exe, os.X_OK), f"{exe} was not built"
    return exe


@pytest.fixture(scope="session")
def argocd_cm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An argocd-cm holding the health check rendered from the .lua file (as docs/argocd-health.yaml is)."""
    import gen_argocd_snippet

    path = tmp_path_factory.mktemp("argocd") / "argocd-cm.yaml"
    path.write_text(gen_argocd_snippet.render(LUA.read_text()))
    return path


def cond(ctype: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    """A status condition as the operator writes it."""
    return {"type": ctype, "status": status, "reason": reason, "message": message, "observedGeneration": 1,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


def conditions(ready: tuple[str, str, str], loaded: tuple[str, str, str], progressing: tuple[str, str, str],
               degraded: tuple[str, str, str]) -> list[dict[str, Any]]:
    """The four conditions, each (status, reason, message)."""
    return [cond("Ready", *ready), cond("ModelLoaded", *loaded), cond("Progressing", *progressing),
            cond("Degraded", *degraded)]


LOADING_STABLE = ("Unknown", "Loading", f"revision {STABLE}: waiting for the model to load")
LOADING_CANARY = ("Unknown", "Loading", f"revision {CANARY}: waiting for the model to load")
SERVING = conditions(("True", "Serving", "2/2 replicas ready"),
                     ("True", "ModelLoaded", f"revision {STABLE}: 2 pod(s) serving"),
                     ("False", "RolloutComplete", f"revision {STABLE} serves"),
                     ("False", "AsExpected", ""))


def canary_status(phase: str, step: int, weight: int, message: str | None = None,
                  last_analysis: str | None = None) -> dict[str, Any]:
    """status during a canary of CANARY against STABLE (the operator's phase is Progressing)."""
    canary: dict[str, Any] = {"phase": phase, "revision": CANARY, "step": step, "weight": weight,
                              "canaryReplicas": 1, "stableReplicas": 2, "failures": 0,
                              "paused": phase == "Paused", "startedAt": "2026-01-01T00:00:00Z"}
    if message:
        canary["message"] = message
    if last_analysis:
        canary["analyses"] = [{"at": "2026-01-01T00:01:00Z", "step": step, "requests": 120, "errorRate": 0.0,
                               "verdict": "Pass", "reason": last_analysis}]
    return {
        "observedGeneration": 1, "phase": "Progressing", "stableRevision": STABLE, "canaryRevision": CANARY,
        "replicas": 3, "readyReplicas": 3, "readyText": "3/2",
        "conditions": conditions(("True", "Serving", "3/2 replicas ready"),
                                 ("True", "ModelLoaded", f"revision {CANARY}: 1 pod(s) serving"),
                                 ("True", "CanaryInProgress", f"canary {CANARY}: step {step + 1}, weight {weight}%"),
                                 ("False", "AsExpected", "")),
        "canary": canary,
    }


def model_deployment(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    """A ModelDeployment with a two-step canary rollout, and `status` when given."""
    obj: dict[str, Any] = {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "digits", "namespace": "ml", "generation": generation,
                     "uid": "0f7c6a62-3f5c-4c1e-9a51-0d6f4b0e2a11"},
        "spec": {
            "model": {"version": "2", "source": {"uri": "s3://models/digits/2/model.onnx"}, "format": "onnx"},
            "serving": {"gpus": 1},
            "replicas": 2,
            "rollout": {"steps": [{"weight": 10, "pause": "60s"}, {"weight": 50, "pause": "120s"}]},
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("fresh-no-status", model_deployment(None),
     "Progressing", "Waiting for the operator to report status"),
    ("empty-status", model_deployment({}),
     "Progressing", "Waiting for the operator to report status"),
    ("observed-generation-behind",
     model_deployment({"observedGeneration": 2, "phase": "Ready", "stableRevision": STABLE,
                       "conditions": SERVING}, generation=3),
     "Progressing", "Waiting for the operator to observe generation 3 (status is for generation 2)"),
    ("pending",
     model_deployment({"observedGeneration": 1, "phase": "Pending", "readyText": "0/2",
                       "conditions": conditions(("False", "NoReadyReplicas", "0/2 replicas ready"),
                                                LOADING_STABLE,
                                                ("False", "RolloutComplete", f"revision {STABLE} serves"),
                                                ("True", "Unschedulable", "0/3 nodes have nvidia.com/gpu"))}),
     "Progressing", "0/2 replicas ready"),
    ("loading",
     model_deployment({"observedGeneration": 1, "phase": "Loading", "stableRevision": STABLE,
                       "conditions": conditions(("False", "NoReadyReplicas", "0/2 replicas ready"),
                                                LOADING_STABLE,
                                                ("False", "RolloutComplete", f"revision {STABLE} serves"),
                                                ("False", "AsExpected", ""))}),
     "Progressing", f"revision {STABLE}: waiting for the model to load"),
    ("ready",
     model_deployment({"observedGeneration": 1, "phase": "Ready", "stableRevision": STABLE, "replicas": 2,
                       "readyReplicas": 2, "readyText": "2/2", "conditions": SERVING}),
     "Healthy", f"2/2 replicas ready (revision {STABLE})"),
    ("scaled-to-zero",
     model_deployment({"observedGeneration": 1, "phase": "Pending", "stableRevision": STABLE,
                       "conditions": conditions(("False", "ScaledToZero", "replicas is 0"),
                                                LOADING_STABLE,
                                                ("False", "RolloutComplete", f"revision {STABLE} serves"),
                                                ("False", "AsExpected", ""))}),
     "Healthy", "replicas is 0"),
    ("idle-at-zero",  # autoscaling.minReplicas 0: the activator answers the next request
     model_deployment({"observedGeneration": 1, "phase": "ScaledToZero", "stableRevision": STABLE,
                       "readyText": "0/0",
                       "conditions": conditions(("False", "ScaledToZero", IDLE_MESSAGE),
                                                LOADING_STABLE,
                                                ("False", "RolloutComplete", f"revision {STABLE} serves"),
                                                ("False", "AsExpected", ""))}),
     "Healthy", IDLE_MESSAGE),
    ("plain-switch-progressing",
     model_deployment({"observedGeneration": 1, "phase": "Progressing", "stableRevision": STABLE,
                       "canaryRevision": CANARY,
                       "conditions": conditions(("True", "Serving", "2/2 replicas ready"),
                                                LOADING_CANARY,
                                                ("True", "RolloutInProgress",
                                                 f"revision {STABLE} -> {CANARY}: 0/2 new replicas ready"),
                                                ("False", "AsExpected", ""))}),
     "Progressing", f"revision {STABLE} -> {CANARY}: 0/2 new replicas ready"),
    ("canary-validating", model_deployment(canary_status("Validating", 0, 0)),
     "Progressing", f"Canary {CANARY}: validating before live traffic"),
    ("canary-progressing-step-1-weight-10",
     model_deployment(canary_status("Progressing", 0, 10, last_analysis="error rate 0.0% <= 1%")),
     "Progressing", f"Canary {CANARY}: step 1/2, weight 10%, last analysis: error rate 0.0% <= 1%"),
    ("canary-progressing-no-analysis-yet", model_deployment(canary_status("Progressing", 1, 50)),
     "Progressing", f"Canary {CANARY}: step 2/2, weight 50%"),
    ("canary-promoting", model_deployment(canary_status("Promoting", 1, 67, "promoted by annotation")),
     "Progressing", f"Canary {CANARY}: promoting, step 2/2, weight 67%: promoted by annotation"),
    ("canary-rolling-back",
     model_deployment(canary_status("RollingBack", 0, 10, "error rate 4.1% > 1%")),
     "Progressing", f"Canary {CANARY}: rolling back: error rate 4.1% > 1%"),
    ("canary-paused", model_deployment(canary_status("Paused", 0, 10)),
     "Suspended", f"Canary {CANARY}: paused at step 1/2, weight 10%"),
    ("canary-rolled-back",
     model_deployment({
         "observedGeneration": 1, "phase": "Degraded", "stableRevision": STABLE, "failedRevision": CANARY,
         "message": "error rate 4.1% > 1%",
         "conditions": conditions(("True", "Serving", "2/2 replicas ready"),
                                  ("False", "CanaryAnalysisFailed", f"revision {CANARY}: error rate 4.1% > 1%"),
                                  ("False", "RolloutFailed",
                                   f"revision {CANARY} was rolled back: error rate 4.1% > 1%; "
                                   f"revision {STABLE} keeps serving"),
                                  ("True", "CanaryAnalysisFailed", "error rate 4.1% > 1%")),
         "canary": {"phase": "RolledBack", "revision": CANARY, "step": 0, "failures": 3,
                    "message": "error rate 4.1% > 1%", "rollbackReason": "CanaryAnalysisFailed"}}),
     "Degraded", f"Canary {CANARY} rolled back: error rate 4.1% > 1%"),
    ("canary-rolled-back-no-conditions",
     model_deployment({"observedGeneration": 1, "phase": "Ready", "stableRevision": STABLE,
                       "canary": {"phase": "RolledBack", "revision": CANARY}}),
     "Degraded", f"Canary {CANARY} rolled back: phase Ready"),
    ("rolled-back-then-spec-reverted",
     model_deployment({"observedGeneration": 1, "phase": "Ready", "stableRevision": STABLE,
                       "failedRevision": CANARY, "conditions": SERVING,
                       "canary": {"phase": "RolledBack", "revision": CANARY, "message": "error rate 4.1% > 1%"}}),
     "Healthy", f"2/2 replicas ready (revision {STABLE})"),
    ("load-failed",
     model_deployment({
         "observedGeneration": 1, "phase": "Failed", "failedRevision": STABLE,
         "message": "sha256 mismatch: expected 3a1f..., got 9bc2...",
         "conditions": conditions(("False", "NoReadyReplicas", "0/2 replicas ready"),
                                  ("False", "LoadFailed", f"revision {STABLE}: sha256 mismatch: expected 3a1f..., "
                                   "got 9bc2..."),
                                  ("False", "RolloutComplete", f"revision {STABLE} serves"),
                                  ("True", "LoadFailed", "sha256 mismatch: expected 3a1f..., got 9bc2..."))}),
     "Degraded", "sha256 mismatch: expected 3a1f..., got 9bc2..."),
    ("failed-revision-model-not-loaded",
     model_deployment({"observedGeneration": 1, "phase": "Ready", "stableRevision": STABLE,
                       "failedRevision": CANARY,
                       "conditions": [cond("Ready", "True", "Serving", "2/2 replicas ready"),
                                      cond("ModelLoaded", "False", "LoadFailed",
                                           f"revision {CANARY}: image pull failed")]}),
     "Degraded", f"revision {CANARY}: image pull failed"),
    ("failed-revision-is-canary",
     model_deployment({"observedGeneration": 1, "phase": "Progressing", "stableRevision": STABLE,
                       "canaryRevision": CANARY, "failedRevision": CANARY, "message": "startup timeout"}),
     "Degraded", "startup timeout"),
    ("degraded-insufficient-replicas",
     model_deployment({"observedGeneration": 1, "phase": "Degraded", "stableRevision": STABLE,
                       "conditions": conditions(("True", "Serving", "1/2 replicas ready"),
                                                ("True", "ModelLoaded", f"revision {STABLE}: 1 pod(s) serving"),
                                                ("False", "RolloutComplete", f"revision {STABLE} serves"),
                                                ("True", "InsufficientReplicas", "1/2 replicas ready"))}),
     "Degraded", "1/2 replicas ready"),
    ("invalid-spec",
     model_deployment({"observedGeneration": 1, "phase": "Failed",
                       "message": "spec.serving.gpus: exceeds spec.rollout.maxSurgeGpus",
                       "conditions": [cond("Ready", "False", "InvalidSpec", "spec.serving.gpus: too many"),
                                      cond("Degraded", "True", "InvalidSpec", "spec.serving.gpus: too many")]}),
     "Degraded", "spec.serving.gpus: too many"),
    ("partial-status-without-conditions",
     model_deployment({"observedGeneration": 1, "phase": "Ready"}),
     "Progressing", "phase Ready"),
]


def health(argocd: Path, cm: Path, obj: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    """(STATUS, MESSAGE) that `argocd admin settings resource-overrides health` prints for `obj`."""
    path = tmp_path / "obj.yaml"
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    proc = subprocess.run([str(argocd), "admin", "settings", "resource-overrides", "health", str(path),
                           "--argocd-cm-path", str(cm)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fields = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert "STATUS" in fields, proc.stdout + proc.stderr
    return fields["STATUS"], fields.get("MESSAGE", "")


@pytest.mark.parametrize(("obj", "status", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_health(argocd: Path, argocd_cm: Path, tmp_path: Path, obj: dict[str, Any], status: str,
                message: str) -> None:
    assert health(argocd, argocd_cm, obj, tmp_path) == (status, message)


def test_shipped_snippet_works_as_argocd_cm(argocd: Path, tmp_path: Path) -> None:
    """docs/argocd-health.yaml, exactly as users paste it, is read by Argo CD's settings manager."""
    obj = model_deployment(canary_status("Paused", 1, 50))
    assert health(argocd, SNIPPET, obj, tmp_path) == ("Suspended", f"Canary {CANARY}: paused at step 2/2, weight 50%")


def test_without_the_snippet_argocd_has_no_health_check(argocd: Path, tmp_path: Path) -> None:
    """Argo CD has no built-in check for ModelDeployment: without the snippet it would report nothing useful."""
    cm = tmp_path / "argocd-cm.yaml"
    cm.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: argocd-cm}\ndata: {}\n")
    obj = tmp_path / "obj.yaml"
    obj.write_text(yaml.safe_dump(model_deployment(None)))
    proc = subprocess.run([str(argocd), "admin", "settings", "resource-overrides", "health", str(obj),
                           "--argocd-cm-path", str(cm)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Health script is not configured for 'modeldeploy.io/ModelDeployment'" in proc.stdout


def test_argocd_version(argocd: Path) -> None:
    proc = subprocess.run([str(argocd), "version", "--client", "--short"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert VERSION in proc.stdout


def test_ignore_differences_on_replicas(argocd: Path, tmp_path: Path) -> None:
    """The argocd-cm ignoreDifferences in docs/gitops.md (for an HPA on the scale subresource) hides spec.replicas."""
    cm = tmp_path / "argocd-cm.yaml"
    cm.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "argocd-cm"},
        "data": {"resource.customizations.ignoreDifferences.modeldeploy.io_ModelDeployment":
                 "jsonPointers:\n  - /spec/replicas\n"}}))
    obj = tmp_path / "obj.yaml"
    obj.write_text(yaml.safe_dump(model_deployment(None)))
    env = {k: v for k, v in os.environ.items() if k != "KUBECTL_EXTERNAL_DIFF"}  # argocd prints with plain `diff`
    proc = subprocess.run([str(argocd), "admin", "settings", "resource-overrides", "ignore-differences", str(obj),
                           "--argocd-cm-path", str(cm)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Following fields are ignored" in proc.stdout, proc.stdout
    removed = [line for line in proc.stdout.splitlines() if line.startswith("<")]
    assert any("replicas: 2" in line for line in removed), proc.stdout
    assert not any("gpus" in line or "version" in line for line in removed), proc.stdout
