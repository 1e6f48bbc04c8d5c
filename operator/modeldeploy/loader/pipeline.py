"""One loader run: fetch -> verify -> (convert) -> (quantize) -> config -> atomic commit."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..resources.triton_config import Backend, ModelConfig, instance_groups, render_config
from . import checkdata, checksum, onnx_meta, python_model, uri
from .errors import ConfigError, FormatError
from .fetch import FetchOptions, fetch
from .limits import ByteBudget
from .quantize import Bench, QuantizationReport, quantize_gated
from .repository import VERSION_DIR, Staging, runner_source
from .settings import InputShape, LoaderSettings

CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class Result:
    """What was written, for the log and for tests."""

    model_dir: Path
    quantization: QuantizationReport | None = None
    tuning: dict[str, Any] | None = None  # tuning/choose.summary, plus "measured" (every candidate)


@contextmanager
def _temp_files_in(directory: Path) -> Iterator[None]:
    """Libraries' temporary files (onnxruntime's calibration) go next to the model, not to the small /tmp."""
    before = tempfile.tempdir
    tempfile.tempdir = str(directory)
    try:
        yield
    finally:
        tempfile.tempdir = before


def _shapes_from_npz(path: Path) -> tuple[InputShape, ...]:
    """A TorchScript model's input shape taken from the validation data's `x`."""
    with np.load(path, allow_pickle=False) as npz:
        if "x" not in npz.files:
            return ()
        x = npz["x"]
    return (InputShape(name="x", dtype=str(x.dtype), shape=tuple(x.shape[1:])),)


def _config(s: LoaderSettings, sig: onnx_meta.OnnxSignature | None, quantized: bool,
            name: str = "") -> ModelConfig:
    inputs, outputs = onnx_meta.to_triton(sig, s.max_batch_size) if sig else ((), ())
    params = [("modeldeploy.version", s.model_version)] if s.model_version else []
    if quantized:
        params.append(("modeldeploy.quantization", "int8"))
    return ModelConfig(
        name=name or s.model_name,
        backend=s.backend,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=s.max_batch_size,
        dynamic_batching=s.dynamic_batching,
        instance_groups=instance_groups(s.gpus, s.instances_per_gpu, s.backend),
        warmup=s.warmup,
        parameters=tuple(sorted(params)),
    )


def _onnx_model(s: LoaderSettings, src: Path, validation: Path | None, stage: Staging) -> Path:
    if src.is_dir():
        raise FormatError(f"format {s.format} needs a single file, but the source is a directory")
    if s.format == "onnx":
        return src
    from .convert import convert  # torch is imported only for formats that need it

    shapes = s.input_shapes or (_shapes_from_npz(validation) if validation and s.format == "torchscript" else ())
    return convert(src, s.format, stage.work / "converted.onnx", s.max_batch_size, shapes)


def _write_model_files(s: LoaderSettings, sig: onnx_meta.OnnxSignature, model_dir: Path, quantized: bool) -> None:
    """config.pbtxt (named after the directory) and, for python-onnx, the runner's model.py: what a
    serving pod's Triton gets next to `<model_dir>/1/model.onnx`. The gate's Triton gets the same."""
    if s.backend is Backend.PYTHON_ONNX:
        (model_dir / VERSION_DIR / "model.py").write_text(runner_source(s.runner_sys_path), encoding="utf-8")
    config = _config(s, sig, quantized=quantized, name=model_dir.name)
    (model_dir / CONFIG_FILE).write_text(render_config(config), encoding="utf-8")


def _bench(s: LoaderSettings, sig: onnx_meta.OnnxSignature) -> Bench | None:
    """The gate's Triton when the build Job has one (MD_GATE_TRITON_URL), else None: onnxruntime here."""
    if s.gate is None:
        return None
    from .gate_triton import TritonBench, place

    def write(model_dir: Path, onnx: Path, quantized: bool) -> None:
        place(onnx, model_dir / VERSION_DIR / ONNX_FILE)
        _write_model_files(s, sig, model_dir, quantized)

    return TritonBench(target=s.gate, model_name=s.model_name, max_batch_size=s.max_batch_size, write_model=write)


def _write_onnx(s: LoaderSettings, src: Path, validation: Path | None,
                stage: Staging) -> tuple[QuantizationReport | None, dict[str, Any] | None]:
    model = _onnx_model(s, src, validation, stage)
    sig = onnx_meta.read_signature(model)
    _config(s, sig, quantized=s.quantize == "int8")  # checks batching against the graph early
    report = None
    data = None
    if s.quantize == "int8" or s.tune is not None:
        data = checkdata.load_npz(validation, sig) if validation else checkdata.generate(sig)
    if s.quantize == "int8" and data is not None:
        int8 = stage.work / "model.int8.onnx"
        with _temp_files_in(stage.work):
            report = quantize_gated(model, int8, sig, data, s.min_agreement, _bench(s, sig))
        model = int8
    if model.is_relative_to(stage.work):  # every source is copied into work first: move, not copy again
        model.replace(stage.version_dir / ONNX_FILE)
    else:
        shutil.copyfile(model, stage.version_dir / ONNX_FILE)
    _write_model_files(s, sig, stage.model_dir, quantized=s.quantize == "int8")
    tuning = None
    if s.tune is not None and data is not None:
        tuning = _tune(s, sig, stage.model_dir, s.quantize == "int8", data)
    return report, tuning


def _tune(s: LoaderSettings, sig: onnx_meta.OnnxSignature, model_dir: Path, quantized: bool,
          data: checkdata.CheckData) -> dict[str, Any]:
    """Tune config.pbtxt through the build's Triton (loader/tune_triton.py) and write the chosen one."""
    from ..tuning import choose
    from ..tuning.space import Hardware
    from .gate_triton import place
    from .report import log
    from .tune_triton import Tuner, TuningFailed

    assert s.tune is not None and s.gate is not None  # settings.from_sources: tune needs the gate's Triton

    def write(d: Path, cfg: ModelConfig) -> None:
        place(model_dir / VERSION_DIR / ONNX_FILE, d / VERSION_DIR / ONNX_FILE)
        if s.backend is Backend.PYTHON_ONNX:
            (d / VERSION_DIR / "model.py").write_text(runner_source(s.runner_sys_path), encoding="utf-8")
        (d / CONFIG_FILE).write_text(render_config(cfg), encoding="utf-8")

    base = _config(s, sig, quantized=quantized, name=model_dir.name)
    hardware = Hardware(cpus=s.tune.cpus or os.cpu_count() or 1, gpus=s.gpus, backend=s.backend)
    tuner = Tuner(target=s.gate, tune=s.tune, base=base, hardware=hardware, write_model=write, check=data.inputs,
                  outputs=[o.name for o in sig.outputs], min_agreement=s.min_agreement)
    result = tuner.run()
    for line in result.table:
        log.info("tuning | %s", line)
    summary = choose.summary(result.outcome, s.tune)
    log.info("tuning: chose %s (default: %s); bound met: %s", summary["tuned"], summary["default"],
             summary["boundMet"])
    if not result.outcome.bound_met:
        message = choose.miss_message(result.outcome, s.tune)
        if s.tune.on_bound_miss == "Fail":
            raise TuningFailed(f"tuning: {message} (onBoundMiss: Fail)")
        log.warning("tuning: %s; serving the best", message)
        summary["message"] = message
    (model_dir / CONFIG_FILE).write_text(render_config(result.config), encoding="utf-8")
    return {**summary, "measured": [choose.measurement_json(m) for m in result.history]}


def run(s: LoaderSettings, env: Mapping[str, str]) -> Result:
    """Write `<repository>/<model_name>` or raise a LoaderError, leaving the repository as it was."""
    source = uri.parse(s.source_uri)
    validation_uri = uri.parse(s.validation_uri) if s.validation_uri else None
    mounted_claim = source.bucket if source.scheme == "pvc" else None
    if validation_uri and validation_uri.scheme == "pvc" and validation_uri.bucket != mounted_claim:
        raise ConfigError(
            f"MD_VALIDATION_URI: claim {validation_uri.bucket} is not mounted; only the model source's claim is"
        )
    budget = ByteBudget(s.max_download_bytes)  # the model and the validation data together
    opts = FetchOptions(env=env, attempts=s.fetch_attempts, timeout_s=s.fetch_timeout_s, source_mount=s.source_mount,
                        budget=budget)
    with Staging(s.repository, s.model_name) as stage:
        src = fetch(source, stage.work / "source", opts)
        checksum.verify(src, s.sha256)
        validation = fetch(validation_uri, stage.work / "validation", opts) if validation_uri else None
        report = None
        if s.format == "python":
            user_config = python_model.install(src, stage.model_dir, stage.work, s.model_name, s.runner_sys_path,
                                               max_unpacked_bytes=s.max_download_bytes)
            text = user_config if user_config is not None else render_config(_config(s, None, quantized=False))
            (stage.model_dir / CONFIG_FILE).write_text(text, encoding="utf-8")
        else:
            report, tuning = _write_onnx(s, src, validation, stage)
            return Result(model_dir=stage.commit(), quantization=report, tuning=tuning)
        return Result(model_dir=stage.commit(), quantization=report)
