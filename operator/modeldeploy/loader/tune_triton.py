"""Tuning in the build Job: each candidate configuration served by the serving image's Triton.

The same sidecar as the int8 gates (resources/build_job.py: the serving image, the serving
container's resources and GPUs, loopback HTTP, explicit model control, the builder's repository).
For each candidate the search asks for (tuning/search.py), the model is written into that
repository under a scratch name with the candidate's config.pbtxt (the model file hard-linked, not
copied), loaded through the repository API, driven by the closed-loop client at every concurrency
level (loader/tune_client.py), and unloaded. The default's first measurement also reads its answers
on the check data; the winner (tuning/choose.py) and the default are measured once more, and the
winner's answers compared with the default's: the tuned model must answer exactly as the default
one (fp32: to float rounding; a TensorRT FP16 candidate: the same top-1 on at least minAgreement of
the samples), or the default is served.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from ..resources.triton_config import ModelConfig
from ..tuning import choose, search
from ..tuning.score import Measurement, meets
from ..tuning.settings import TuneSettings
from ..tuning.space import Candidate, Hardware, from_config, to_config
from .errors import LoaderError
from .gate_triton import LOAD_TIMEOUT_S, TritonHTTP, TritonSession, encode_infer
from .report import log
from .settings import GateTarget
from .tune_client import Request, closed_loop

SCRATCH: Final = "modeldeploy-tune"
REQUEST_SAMPLES: Final = 64  # distinct single-sample requests the senders cycle through
CHECK_SAMPLES: Final = 128  # samples whose answers must match the default's (a big model reads them slowly)
RTOL, ATOL = 1e-3, 1e-5  # fp32: batch composition and thread counts change float rounding only


class TuningFailed(LoaderError):
    """Triton cannot serve the default configuration, or no candidate met the bound and the user
    asked to fail (onBoundMiss: Fail): deterministic, a retry measures the same (exit 1)."""


# writes <repository>/<name>/ for a config: the model file and config.pbtxt (and model.py)
ModelWriter = Callable[[Path, ModelConfig], None]


@dataclass(frozen=True)
class TuneResult:
    config: ModelConfig  # the chosen configuration, named as served
    outcome: choose.Outcome
    table: tuple[str, ...]
    history: tuple[Measurement, ...]  # every candidate, in the order measured (confirmations not)


def scratch_name(model_name: str, n: int) -> str:
    """A candidate's model name: never the served model's own."""
    base = SCRATCH if not model_name.startswith(SCRATCH) else f"{SCRATCH}-x"
    return f"{base}-{n}"


def same_answers(ref: list[np.ndarray], got: list[np.ndarray], fp16: bool, min_agreement: float) -> str:
    """Empty when `got` answers as `ref` does; else why not (with the number)."""
    for i, (a, b) in enumerate(zip(ref, got, strict=True)):
        if a.shape != b.shape:
            return f"output {i} has shape {b.shape}, the default's {a.shape}"
        if fp16 and a.ndim == 2 and a.dtype.kind == "f":
            agree = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
            if agree < min_agreement:
                return f"output {i}: top-1 agreement {agree:.4f} with the default < {min_agreement}"
        elif a.dtype.kind == "f" and not np.allclose(a, b, rtol=RTOL, atol=ATOL):
            return f"output {i}: largest difference {float(np.max(np.abs(a - b))):.3g} from the default's answers"
        elif a.dtype.kind != "f" and not np.array_equal(a, b):
            return f"output {i} differs from the default's answers"
    return ""


def requests_from(check: Mapping[str, np.ndarray], outputs: list[str]) -> list[Request]:
    """Single-sample requests (a batch of one: what dynamic batching is for) from the check data."""
    n = min(REQUEST_SAMPLES, len(next(iter(check.values()))))
    out = []
    for k in range(n):
        body, length = encode_infer({name: v[k:k + 1] for name, v in check.items()}, outputs)
        out.append(Request(body, length))
    return out


@dataclass
class Tuner:
    """One sweep against the build Job's Triton."""

    target: GateTarget
    tune: TuneSettings
    base: ModelConfig  # the default generated configuration, named as served
    hardware: Hardware
    write_model: ModelWriter
    check: Mapping[str, np.ndarray]
    outputs: list[str]
    min_agreement: float = 0.99

    def __post_init__(self) -> None:
        self.client = TritonHTTP(self.target.url)
        self.requests = requests_from(self.check, self.outputs)
        self.check_feed = {k: v[:CHECK_SAMPLES] for k, v in self.check.items()}
        self.counter = 0

    def _load(self, name: str) -> str:
        status, body, _ = self.client.request(
            "POST", f"/v2/repository/models/{urllib.parse.quote(name)}/load", body=b"{}",
            headers={"Content-Type": "application/json"}, timeout_s=LOAD_TIMEOUT_S)
        return "" if status == 200 else f"Triton refused it: {body[:300].decode(errors='replace')}"

    def measure(self, c: Candidate, answers: bool = False) -> tuple[Measurement, list[np.ndarray] | None]:
        """Write, load, drive at every level, (answer the check data), unload."""
        self.counter += 1
        name = scratch_name(self.base.name, self.counter)
        d = self.target.repository / name
        shutil.rmtree(d, ignore_errors=True)
        cfg = dataclasses.replace(to_config(c, self.base), name=name)
        t0 = time.monotonic()
        got: list[np.ndarray] | None = None
        try:
            self.write_model(d, cfg)
            if error := self._load(name):
                return Measurement(c, seconds=time.monotonic() - t0, error=error), None
            warm, window = search.windows_s(self.tune)
            points = tuple(closed_loop(self.target.url, name, self.requests, level, window, warm)
                           for level in self.tune.concurrency)
            if failed := next((p for p in points if p.errors or not p.requests), None):
                error = f"at concurrency {failed.concurrency}: {failed.first_error or 'request errors'}"
                return Measurement(c, points, time.monotonic() - t0, error), None
            if answers:
                with contextlib.suppress(LoaderError):
                    got = TritonSession(self.client, name, cfg.max_batch_size).run(self.outputs, self.check_feed)
            return Measurement(c, points, time.monotonic() - t0), got
        finally:
            self.client.unload(name)
            shutil.rmtree(d, ignore_errors=True)

    def run(self) -> TuneResult:
        """The sweep, the confirmation and the choice; TuningFailed when the default cannot be served."""
        try:
            return self._run()
        finally:
            self.client.close()

    def _run(self) -> TuneResult:
        self.client.wait_live()
        default = from_config(self.base)
        started = time.monotonic()
        history: list[Measurement] = []
        ref: list[np.ndarray] | None = None
        while (c := search.next_candidate(default, self.hardware, history, self.tune,
                                          time.monotonic() - started)) is not None:
            # the default's answers are the reference, read in its first measurement: its cost is then
            # in the estimate the budget is planned with (search.estimate_s), as the winner's check is
            m, got = self.measure(c, answers=not history)
            history.append(m)
            log.info("tuning: candidate %d (%s): %s", len(history) - 1, c.short(), _brief(m))
            if len(history) == 1:
                if not m.ok or got is None:
                    why = m.error or ("requests failed" if not m.ok else "it answered no check data")
                    raise TuningFailed(f"tuning: Triton cannot serve the default configuration: {why}")
                ref = got
        best = search.incumbent(default, history, self.tune) or history[0]
        base_m = history[0]
        final = [base_m]
        if best.candidate != default and not search.affordable(time.monotonic() - started, self.tune.budget_s,
                                                               history, reserve=1):
            log.warning("tuning: no time left in the budget to confirm %s: the default is served",
                        best.candidate.short())
        elif best.candidate != default and ref is not None:
            again_default, _ = self.measure(default)
            again_best, got = self.measure(best.candidate, answers=True)
            base_m, chosen_m = choose.confirmed(history[0], again_default), choose.confirmed(best, again_best)
            log.info("tuning: confirmed, averaged with the first measurements: default %s; %s %s",
                     _brief(base_m), best.candidate.short(), _brief(chosen_m))
            final = choose.ranked(base_m, [chosen_m], self.tune)
            if why := choose.verdict(chosen_m, base_m, self.tune):
                log.warning("tuning: %s is not served: %s", best.candidate.short(), why)
            if final[0] is not base_m:
                why = "it gave no answers" if got is None else same_answers(
                    ref, got, chosen_m.candidate.accelerator == "tensorrt-fp16", self.min_agreement)
                if why:
                    log.warning("tuning: %s is not served: %s", chosen_m.candidate.short(), why)
                    final = [base_m]
        chosen = final[0]
        outcome = choose.Outcome(chosen=chosen, default=base_m, bound_met=meets(chosen, self.tune),
                                 measured=len(history), seconds=time.monotonic() - started)
        table = tuple(choose.table(history, self.tune.concurrency))
        return TuneResult(to_config(chosen.candidate, self.base), outcome, table, tuple(history))


def _brief(m: Measurement) -> str:
    if not m.ok:
        return f"failed ({m.error or 'request errors'})"
    return ", ".join(f"c={p.concurrency} {p.throughput:.0f}/s p99 {p.p99_s * 1000:.1f}ms" for p in m.points)
