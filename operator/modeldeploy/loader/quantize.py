"""int8 quantization that must earn its place: as accurate as asked, and faster than fp32.

Static QDQ quantization calibrated on the check data (dynamic int8 turns convolutions into
ConvInteger, measured 11x slower on these CPUs). The result is kept only if its top-1 answers
agree with the fp32 model's on at least `min_agreement` of the check samples and it runs the same
batch faster; otherwise the load fails with the numbers, so nobody serves a worse model by accident.

Both gates run on a bench: onnxruntime sessions on this container's CPU (the per-pod loader, and a
build without a gate Triton), or the serving image's Triton beside the build Job's builder
(gate_triton.TritonBench), which runs the models as the serving pods will, on their device. The
report says which (`timed_by`), so status never passes a CPU number off as a GPU one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from . import checkdata
from .checkdata import CheckData
from .errors import QuantizationRejected
from .onnx_meta import OnnxSignature, session
from .report import log

CALIBRATION_SAMPLES: Final = 512
# Samples per calibration run, each run's min/max merged into the running range (exactly what one
# run over all samples gives): onnxruntime keeps every run's outputs until the ranges are computed,
# and ResNet-50 on 64 samples in one run peaked at 7.8 GiB, past a 6Gi pod limit (OOMKilled).
CALIBRATION_FEED: Final = 8
TIMING_BATCH: Final = 64
TIMING_BUDGET_S: Final = 1.0  # per model
TIMING_MAX_ROUNDS: Final = 50
TIMED_BY_ONNXRUNTIME_CPU: Final = "onnxruntime-cpu"


@dataclass(frozen=True)
class QuantizationReport:
    """The numbers behind the decision, for the log and the tests."""

    agreement: float
    samples: int
    origin: str
    fp32_seconds: float  # best time for one timing batch
    int8_seconds: float
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    timed_by: str = TIMED_BY_ONNXRUNTIME_CPU  # the bench both gates ran on: onnxruntime-cpu | triton

    @property
    def speedup(self) -> float:
        return self.fp32_seconds / self.int8_seconds if self.int8_seconds > 0 else float("inf")


class Runner(Protocol):
    """What the gates call: onnxruntime's InferenceSession.run, or gate_triton.TritonSession.run."""

    def run(self, output_names: list[str], feed: Mapping[str, np.ndarray], /) -> Any: ...


class Bench(Protocol):
    """Where the gates run the fp32 model and the int8 candidate, and the name status records."""

    timed_by: str

    def open(self, fp32: Path, int8: Path) -> AbstractContextManager[tuple[Runner, Runner]]: ...


class OnnxruntimeCpu:
    """Both models in onnxruntime CPU sessions in this process: the device of a CPU serving pod's
    python-onnx runner, and the only one the per-pod loader has."""

    timed_by = TIMED_BY_ONNXRUNTIME_CPU

    @contextmanager
    def open(self, fp32: Path, int8: Path) -> Iterator[tuple[Runner, Runner]]:
        yield session(fp32), session(int8)


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over the check data, CALIBRATION_FEED samples a
    run, with the `len` and `set_range` its strided calibration (CalibStridedMinMax) asks for."""

    def __init__(self, data: CheckData, sig: OnnxSignature) -> None:
        self._feeds = list(checkdata.chunks(data.head(CALIBRATION_SAMPLES), sig, most=CALIBRATION_FEED))
        self._range = slice(0, len(self._feeds))
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._range = slice(start_index, end_index)
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds[self._range])


@contextmanager
def _root_logger_quiet() -> Iterator[None]:
    """onnxruntime.quantization logs advice through the root logger; our log says what matters."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _prepared(fp32: Path, work: Path) -> Path:
    """The fp32 graph simplified the way quantization needs it (shapes inferred, Identity folded).

    torch.onnx shares equal initializers (folded batch-norm biases are often equal, always in an
    untrained net) and feeds the copies through Identity nodes. quantize_static then finds no
    initializer for those Conv biases and leaves them in float, so those Convs stay float and the
    "int8" ResNet-50 was slower than fp32 on these CPUs (11.4 vs 17.6 img/s; 37.4 once prepared).
    When preparation itself fails (an unusual graph), quantization goes on from the original and
    the speed gate still decides.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / "model.prepared.onnx"
    try:
        with _root_logger_quiet():
            quant_pre_process(str(fp32), str(prepared))
    except Exception as e:  # onnxruntime and onnx raise many types; the original still works
        log.info("quantization pre-processing skipped: %s", (str(e).strip().splitlines() or ["?"])[0][:200])
        return fp32
    return prepared


def write_int8(fp32: Path, dest: Path, data: CheckData, sig: OnnxSignature) -> None:
    """Static QDQ int8 (per-channel weights, uint8 activations) calibrated on `data`, no gates."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    source = _prepared(fp32, dest.parent)
    with _root_logger_quiet():
        quantize_static(
            str(source),
            str(dest),
            _Calibration(data, sig),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"CalibStridedMinMax": 1},  # one feed at a time (CALIBRATION_FEED)
        )


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of samples whose arg-max over the last axis is the same in both outputs."""
    if a.shape != b.shape:
        raise QuantizationRejected(f"int8 output shape {b.shape} differs from fp32's {a.shape}")
    if a.ndim < 2 or a.shape[-1] == 1:  # not class scores: compare rounded values instead
        return float(np.mean(np.isclose(a, b, rtol=1e-2, atol=1e-2)))
    return float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))


def _accuracy(scores: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or scores.ndim < 2 or scores.shape[0] != labels.shape[0]:
        return None
    return float(np.mean(np.argmax(scores.reshape(len(labels), -1), axis=-1) == labels.reshape(-1)))


def best_times(sessions: list[Any], feed: dict[str, np.ndarray], output: str) -> list[float]:
    """Best wall time of one run for each session, measured interleaved so load noise hits all alike."""
    for s in sessions:  # first run allocates; leave it out
        s.run([output], feed)
    best = [float("inf")] * len(sessions)
    spent = 0.0
    rounds = 0
    while rounds < 3 or (spent < TIMING_BUDGET_S * len(sessions) and rounds < TIMING_MAX_ROUNDS):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run([output], feed)
            dt = time.perf_counter() - t0
            best[i] = min(best[i], dt)
            spent += dt
        rounds += 1
    return best


def rejection(report: QuantizationReport, min_agreement: float) -> str | None:
    """Why the int8 model must not be served, or None: too little agreement, or not faster."""
    if report.agreement < min_agreement:
        return (
            f"int8 model rejected: agreement {report.agreement:.3f} < {min_agreement:.3f} "
            f"on {report.samples} {report.origin} (run by {report.timed_by})"
        )
    if report.int8_seconds > report.fp32_seconds:
        return (
            f"int8 model rejected: slower than fp32 ({report.int8_seconds * 1e3:.3f} ms vs "
            f"{report.fp32_seconds * 1e3:.3f} ms per batch, timed by {report.timed_by})"
        )
    return None


def quantize_gated(
    fp32: Path, dest: Path, sig: OnnxSignature, data: CheckData, min_agreement: float, bench: Bench | None = None
) -> QuantizationReport:
    """Write an int8 model to `dest` if it passes both gates on `bench` (default: onnxruntime on
    this CPU); QuantizationRejected otherwise."""
    try:
        write_int8(fp32, dest, data, sig)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise QuantizationRejected(f"int8 quantization failed: {first[:300]}") from None
    bench = bench or OnnxruntimeCpu()
    feed = next(checkdata.chunks(data.head(TIMING_BATCH), sig))
    with bench.open(fp32, dest) as (fp32_s, int8_s):
        want = checkdata.run(fp32_s, data, sig)
        got = checkdata.run(int8_s, data, sig)
        agreement = top1_agreement(want, got)
        t_fp32, t_int8 = best_times([fp32_s, int8_s], feed, sig.outputs[0].name)
    report = QuantizationReport(
        agreement=agreement,
        samples=len(want),
        origin=data.origin,
        fp32_seconds=t_fp32,
        int8_seconds=t_int8,
        fp32_accuracy=_accuracy(want, data.labels),
        int8_accuracy=_accuracy(got, data.labels),
        timed_by=bench.timed_by,
    )
    accuracy = ""
    if report.fp32_accuracy is not None and report.int8_accuracy is not None:
        accuracy = f", accuracy fp32 {report.fp32_accuracy:.4f} int8 {report.int8_accuracy:.4f}"
    log.info(
        "int8 check on %d samples of %s: agreement %.4f%s; batch of %d: fp32 %.3f ms, int8 %.3f ms (%.2fx), by %s",
        report.samples, report.origin, agreement, accuracy, len(next(iter(feed.values()))),
        t_fp32 * 1e3, t_int8 * 1e3, report.speedup, report.timed_by,
    )
    if reason := rejection(report, min_agreement):
        raise QuantizationRejected(reason)
    return report
