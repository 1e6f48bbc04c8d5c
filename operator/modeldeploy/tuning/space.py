"""The candidate configurations: one frozen value per setting tuning may change (pure).

A Candidate holds only what tuning changes; everything else (inputs, outputs, warm-up, the
backend, the model's own parameters) stays as the loader generated it, so a candidate's
config.pbtxt is the default one with these settings replaced (`to_config`). The default generated
configuration is itself a Candidate (`from_config`) and is always measured first.

Rules that keep every candidate servable and compatible with the clients of the default:
- max_batch_size is never lowered below the default's (a client may send batches that large) and
  never raised from 0 (a model without a batch axis cannot be batched);
- preferred batch sizes are at most max_batch_size;
- threads only on the CPU, accelerators only for the native onnxruntime backend on a GPU
  (the python-onnx runner of the CPU image has only the CPU execution provider).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from ..resources.triton_config import Backend, DynamicBatching, ModelConfig

QUEUE_DELAYS_US: Final = (None, 0, 100, 500, 2000)  # None: no dynamic batcher
BATCH_FACTORS: Final = (1, 2, 4, 8)  # max batch size = default x factor
MAX_TUNED_BATCH: Final = 256
MAX_CPU_INSTANCES: Final = 4
MAX_GPU_INSTANCES: Final = 3  # per GPU
ACCELERATORS: Final = ("", "tensorrt", "tensorrt-fp16")  # "": the plain CUDA execution provider
INTRA: Final = "intra_op_thread_count"  # onnxruntime's names, in the native backend and our runner
INTER: Final = "inter_op_thread_count"
EXECUTION_MODE: Final = "execution_mode"  # 1: parallel (inter-op threads only matter then)
TUNED_PARAMETERS: Final = frozenset({INTRA, INTER, EXECUTION_MODE})


@dataclass(frozen=True)
class Hardware:
    """What the serving container has: CPUs (0: unknown), GPUs, and the backend that runs the model."""

    cpus: int
    gpus: int
    backend: Backend

    @property
    def on_gpu(self) -> bool:
        return self.gpus > 0 and self.backend is Backend.ONNXRUNTIME


@dataclass(frozen=True)
class Candidate:
    """The settings tuning may change. queue_delay_us None: no dynamic batcher; threads 0: the
    runtime's default; accelerator "": none."""

    max_batch_size: int
    queue_delay_us: int | None = None
    preferred: tuple[int, ...] = ()
    instances: int = 1
    intra_threads: int = 0
    inter_threads: int = 0
    accelerator: str = ""

    def describe(self) -> dict[str, Any]:
        """The settings as status and the build log show them."""
        out: dict[str, Any] = {"maxBatchSize": self.max_batch_size, "instances": self.instances}
        if self.queue_delay_us is not None:
            out["dynamicBatching"] = {"maxQueueDelayMicroseconds": self.queue_delay_us,
                                      "preferredBatchSizes": list(self.preferred)}
        if self.intra_threads:
            out["intraOpThreads"] = self.intra_threads
        if self.inter_threads:
            out["interOpThreads"] = self.inter_threads
        if self.accelerator:
            out["accelerator"] = self.accelerator
        return out

    def short(self) -> str:
        """One cell of the build log's table."""
        batcher = "off" if self.queue_delay_us is None else f"{self.queue_delay_us}us"
        pref = ",".join(map(str, self.preferred)) or "-"
        return (f"mbs={self.max_batch_size} delay={batcher} pref={pref} inst={self.instances} "
                f"intra={self.intra_threads or '-'} inter={self.inter_threads or '-'} acc={self.accelerator or '-'}")


def _param(cfg: ModelConfig, key: str) -> int:
    value = dict(cfg.parameters).get(key, "")
    return int(value) if value.isdigit() else 0


def from_config(cfg: ModelConfig) -> Candidate:
    """The default generated configuration as a Candidate."""
    db = cfg.dynamic_batching
    return Candidate(
        max_batch_size=cfg.max_batch_size,
        queue_delay_us=None if db is None else db.max_queue_delay_microseconds,
        preferred=() if db is None else tuple(db.preferred_batch_sizes),
        instances=cfg.instance_groups[0].count if cfg.instance_groups else 1,
        intra_threads=_param(cfg, INTRA),
        inter_threads=_param(cfg, INTER),
        accelerator=cfg.accelerator,
    )


def to_config(c: Candidate, base: ModelConfig) -> ModelConfig:
    """`base` (the default generated config) with the candidate's settings."""
    params = {k: v for k, v in base.parameters if k not in TUNED_PARAMETERS}
    if c.intra_threads:
        params[INTRA] = str(c.intra_threads)
    if c.inter_threads:
        params[INTER] = str(c.inter_threads)
        params[EXECUTION_MODE] = "1"
    batching = None if c.queue_delay_us is None else DynamicBatching(c.queue_delay_us, c.preferred)
    groups = tuple(dataclasses.replace(g, count=c.instances) for g in base.instance_groups)
    return dataclasses.replace(base, max_batch_size=c.max_batch_size, dynamic_batching=batching,
                               instance_groups=groups, parameters=tuple(sorted(params.items())),
                               accelerator=c.accelerator)


def effective(c: Candidate, default: Candidate) -> Candidate:
    """The candidate as it behaves: without a dynamic batcher, max and preferred batch sizes change
    nothing a closed-loop client of single samples can see, so they collapse to the default's (two
    such candidates are one measurement, never two)."""
    if c.queue_delay_us is None:
        return dataclasses.replace(c, max_batch_size=default.max_batch_size, preferred=())
    return c


def _max_instances(hw: Hardware) -> int:
    if hw.on_gpu:
        return MAX_GPU_INSTANCES
    return max(1, min(MAX_CPU_INSTANCES, hw.cpus or MAX_CPU_INSTANCES))


def _thread_values(hw: Hardware) -> tuple[int, ...]:
    top = hw.cpus or 4
    return tuple(sorted({0, 1, 2, top} & set(range(0, top + 1))))


def dimensions(c: Candidate, default: Candidate, hw: Hardware) -> list[list[Candidate]]:
    """The candidates that differ from `c` in one setting, one list per setting, most promising
    first: the dynamic batcher, instances, the batch size, preferred sizes, then threads (intra-op,
    inter-op) or the accelerator."""
    r = dataclasses.replace
    batching = default.max_batch_size > 0
    dims: list[list[Candidate]] = []
    if batching:
        dims.append([r(c, queue_delay_us=d, preferred=() if d is None else c.preferred) for d in QUEUE_DELAYS_US])
    dims.append([r(c, instances=n) for n in range(1, _max_instances(hw) + 1)])
    if batching and c.queue_delay_us is not None:
        sizes = [max(default.max_batch_size, min(MAX_TUNED_BATCH, default.max_batch_size * f)) for f in BATCH_FACTORS]
        dims.append([r(c, max_batch_size=m, preferred=tuple(p for p in c.preferred if p <= m)) for m in sizes])
        dims.append([r(c, preferred=()), r(c, preferred=(c.max_batch_size,))])
    if hw.on_gpu:
        dims.append([r(c, accelerator=a) for a in ACCELERATORS])
    elif hw.backend is not Backend.PYTHON:
        dims.append([r(c, intra_threads=t) for t in _thread_values(hw)])
        dims.append([r(c, inter_threads=t) for t in _thread_values(hw)])
    return dims


def neighbors(c: Candidate, default: Candidate, hw: Hardware, after: Candidate | None = None) -> Iterator[Candidate]:
    """Every candidate that differs from `c` in one setting (`dimensions`, in order). `after`: the
    candidate `c` improved on; the settings after the one that changed come first (coordinate
    descent's cycle: the other settings get their turn before the changed one is revisited)."""
    dims = dimensions(c, default, hw)
    start = 0
    if after is not None:
        changed = next((k for k, dim in enumerate(dimensions(after, default, hw)) if c in dim), None)
        start = 0 if changed is None else (changed + 1) % len(dims)
    for dim in dims[start:] + dims[:start]:
        yield from dim
