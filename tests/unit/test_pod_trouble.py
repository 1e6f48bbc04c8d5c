"""Pod trouble told apart (pure): what fails a revision once, and what is retried and only shown."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy.planning.observe import PodTrouble, pod_trouble


def pod(*, init: dict[str, Any] | None = None, main: dict[str, Any] | None = None, ready: bool = False,
        restarts: int = 0) -> dict[str, Any]:
    st: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if init is not None:
        st["initContainerStatuses"] = [{"name": "model-loader", "restartCount": restarts, **init}]
    if main is not None:
        st["containerStatuses"] = [{"name": "triton", "restartCount": restarts, **main}]
    return {"metadata": {}, "status": st}


def term(code: int, message: str = "", reason: str = "Error") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "message": message, "reason": reason}}


RUNNING = {"running": {"startedAt": "2026-12-02T10:00:00Z"}}
WAITING_BACKOFF = {"waiting": {"reason": "CrashLoopBackOff"}}

CASES = [
    ("loader checksum mismatch: fails once",
     pod(init={"state": term(1, "fetching\nsha256 mismatch: want ab, got cd")}),
     "failure", "model-loader: sha256 mismatch: want ab, got cd", "LoadFailed"),
    ("loader gate refused int8: fails once",
     pod(init={"state": {"waiting": {"reason": "CrashLoopBackOff"}},
               "lastState": term(1, "QuantizationRejected: int8 accuracy 0.90 < 0.97")}),
     "failure", "model-loader: QuantizationRejected: int8 accuracy 0.90 < 0.97", "LoadFailed"),
    ("loader invalid config (exit 2): fails once", pod(init={"state": term(2, "MD_SOURCE_URI: bad scheme")}),
     "failure", "model-loader: MD_SOURCE_URI: bad scheme", "LoadFailed"),
    ("store unreachable after retries (exit 75): retried, and said while the loader runs again",
     pod(init={"state": RUNNING, "lastState": term(75, "network error fetching s3://m/x (gave up after 5 attempts)")}),
     "trouble", "model-loader: network error fetching s3://m/x (gave up after 5 attempts) (retrying)", "FetchRetrying"),
    ("store unreachable, waiting to retry",
     pod(init={"state": {"waiting": {"reason": "CrashLoopBackOff"}},
               "lastState": term(75, "network error fetching s3://m/x (gave up after 5 attempts)")}),
     "trouble", "model-loader: network error fetching s3://m/x (gave up after 5 attempts) (retrying)", "FetchRetrying"),
    ("loader OOM-killed: the reason is kept, not the log's last line",
     pod(init={"state": term(137, "calibrating 320 samples", reason="OOMKilled")}, restarts=1),
     "trouble", "model-loader: OOMKilled (exit code 137, 1 restart(s)); retrying", "OOMKilled"),
    ("image not imported yet: retried", pod(main={"state": {"waiting": {"reason": "ErrImagePull", "message": "nf"}}}),
     "trouble", "triton: ErrImagePull: nf (retrying)", "ErrImagePull"),
    ("loader image pull backoff: retried",
     pod(init={"state": {"waiting": {"reason": "ImagePullBackOff", "message": "nf"}}}),
     "trouble", "model-loader: ImagePullBackOff: nf (retrying)", "ImagePullBackOff"),
    ("invalid image name never works", pod(main={"state": {"waiting": {"reason": "InvalidImageName", "message": "x"}}}),
     "failure", "triton: InvalidImageName: x", "InvalidImageName"),
    ("missing Secret: retried", pod(init={"state": {"waiting": {"reason": "CreateContainerConfigError",
                                                                 "message": "secret \"s3\" not found"}}}),
     "trouble", "model-loader: CreateContainerConfigError: secret \"s3\" not found (retrying)",
     "CreateContainerConfigError"),
    ("triton refuses the model: fails once",
     pod(init={"state": term(0)}, main={"state": WAITING_BACKOFF,
                                        "lastState": term(1, "E1202 failed to load 'm' version 1: Invalid argument")}),
     "failure", "triton: E1202 failed to load 'm' version 1: Invalid argument", "LoadFailed"),
    ("triton OOM-killed once, restarting", pod(main={"state": WAITING_BACKOFF, "lastState": term(137, "", "OOMKilled")},
                                               restarts=1),
     "trouble", "triton: OOMKilled (exit code 137, 1 restart(s))", "OOMKilled"),
    ("a Ready pod that was OOM-killed once is fine",
     pod(main={"state": RUNNING, "lastState": term(137, "", "OOMKilled")}, ready=True, restarts=1),
     "", "", ""),
    ("triton crashed twice: retried", pod(main={"state": WAITING_BACKOFF, "lastState": term(139, "segfault")},
                                          restarts=2),
     "trouble", "triton: exited (segfault), restart 2", "ContainerCrashed"),
    ("triton crash loop, never Ready: fails", pod(main={"state": WAITING_BACKOFF, "lastState": term(139, "segfault")},
                                                  restarts=5),
     "failure", "triton: crashed 5 times without becoming Ready: segfault", "CrashLoopBackOff"),
    ("loader done, triton starting", pod(init={"state": term(0)}, main={"state": RUNNING}), "", "", ""),
    ("triton restarted after an OOM kill, not Ready yet: the reason stays visible",
     pod(main={"state": RUNNING, "lastState": term(137, "", "OOMKilled")}, restarts=1),
     "trouble", "triton: OOMKilled (exit code 137, 1 restart(s))", "OOMKilled"),
]


@pytest.mark.parametrize(("name", "p", "kind", "message", "reason"), CASES, ids=[c[0] for c in CASES])
def test_pod_trouble(name: str, p: dict[str, Any], kind: str, message: str, reason: str) -> None:
    want = PodTrouble(failure=message if kind == "failure" else "", trouble=message if kind == "trouble" else "",
                      reason=reason)
    assert pod_trouble(p) == want, name
