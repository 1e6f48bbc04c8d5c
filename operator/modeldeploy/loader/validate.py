"""`python -m modeldeploy.loader.validate`: the canary's validation gate, run by a Job (docs/canary.md).

The dataset is fetched with the loader's own fetch code (same URI schemes, same credentials from
the same AWS_* variables), sent in batches to the canary's Triton over plain HTTP inference (the
only Triton APIs the pods restrict are model-repository and logging), and judged: accuracy of
the argmax of the first output against the labels, and, when MD_STABLE_URL is given, agreement
with the stable revision on the same inputs. The verdict is one JSON line in the termination log
(and the last line on stdout) so the operator reads it without ever reading the model's Secret.

Exit 0: passed; 1: judged and failed; 2: could not judge (bad input, dataset unreachable, canary
unreachable ...). Every line is redacted like the loader's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import numpy as np

from . import uri as uri_mod
from .errors import ConfigError, LoaderError
from .fetch import FetchOptions, fetch
from .report import Redactor, log, one_line
from .settings import termination_log_path

EXIT_PASSED: Final = 0
EXIT_FAILED: Final = 1
EXIT_ERROR: Final = 2
MAX_REQUEST_BATCH: Final = 64  # samples per request, below the model's max: keeps each body small
READY_TIMEOUT_S: Final = 120.0  # the Service's endpoints may lag the pod's readiness by a few seconds
REQUEST_TIMEOUT_S: Final = 60.0
PREFIX: Final = "validate"

# Triton datatypes the dataset can be cast to (BF16 has no numpy type).
TRITON_DTYPES: Final[Mapping[str, Any]] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}


class ValidationError(LoaderError):
    """The gate could not judge the canary (not a failed verdict): exit 2."""

    exit_code = EXIT_ERROR


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Endpoint:
    """A Triton HTTP endpoint: how tritonclient reaches it and how messages show it."""

    shown: str  # scheme://host:port, no userinfo or query
    host_port: str
    ssl: bool


@dataclass(frozen=True)
class ValidateSettings:
    """The Job's inputs (environment variables set by resources/validation_job.py)."""

    dataset_uri: str
    model_name: str
    canary: Endpoint
    stable: Endpoint | None = None
    min_accuracy: float | None = None
    min_agreement: float | None = None
    revision: str = ""
    stable_revision: str = ""
    source_mount: Path = Path("/source")
    work_dir: Path = Path("/tmp")
    fetch_attempts: int = 5
    fetch_timeout_s: float = 60.0
    ready_timeout_s: float = READY_TIMEOUT_S
    request_timeout_s: float = REQUEST_TIMEOUT_S


def parse_endpoint(name: str, url: str) -> Endpoint:
    """`http(s)://HOST[:PORT]` -> tritonclient's host:port (it takes no scheme) and the ssl flag."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be http(s)://HOST:PORT, got {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"{name} has an invalid port: {url!r}") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Endpoint(f"{parts.scheme}://{host}:{port}", f"{host}:{port}", parts.scheme == "https")


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
        return True
    except OSError:
        return False


def service_link_url(url: str, env: Mapping[str, str], resolves: Callable[[str], bool] = _resolves) -> str:
    """`http://SVC.NS.svc:PORT` as the kubelet's service-link variables give it when cluster DNS
    cannot resolve the name (clusters without DNS add-on): SVC_SERVICE_HOST / SVC_SERVICE_PORT_HTTP
    of a Service in the Job's namespace. Any other URL, or one that resolves, is returned as is."""
    parts = urllib.parse.urlsplit(url.strip())
    host = parts.hostname or ""
    labels = host.split(".")
    if len(labels) < 3 or labels[2] != "svc" or resolves(host):
        return url
    prefix = labels[0].upper().replace("-", "_")
    ip, port = env.get(f"{prefix}_SERVICE_HOST"), env.get(f"{prefix}_SERVICE_PORT_HTTP")
    if not ip or not port:
        return url
    shown = f"[{ip}]" if ":" in ip else ip
    log.info("%s does not resolve: using the Service's address %s:%s from its service-link variables", host, ip, port)
    return urllib.parse.urlunsplit((parts.scheme, f"{shown}:{port}", parts.path, parts.query, parts.fragment))


def _number(env: Mapping[str, str], name: str, default: float | None, lo: float, hi: float) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo:g} and {hi:g}, got {raw}")
    return value


def settings_from_env(env: Mapping[str, str]) -> ValidateSettings:
    """Checked settings; ConfigError names the bad variable before anything is fetched."""
    missing = [k for k in ("MD_DATASET_URI", "MD_MODEL_NAME", "MD_CANARY_URL") if not env.get(k, "").strip()]
    if missing:
        raise ConfigError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
    min_accuracy = _number(env, "MD_MIN_ACCURACY", None, 0, 1)
    min_agreement = _number(env, "MD_MIN_AGREEMENT", None, 0, 1)
    stable = (parse_endpoint("MD_STABLE_URL", service_link_url(env["MD_STABLE_URL"], env))
              if env.get("MD_STABLE_URL", "").strip() else None)
    if min_accuracy is None and min_agreement is None:
        raise ConfigError("nothing to judge: set MD_MIN_ACCURACY or MD_MIN_AGREEMENT")
    if min_agreement is not None and stable is None:
        raise ConfigError("MD_MIN_AGREEMENT needs MD_STABLE_URL (the revision to agree with)")
    attempts = _number(env, "MD_FETCH_ATTEMPTS", 5, 1, 100)
    return ValidateSettings(
        dataset_uri=env["MD_DATASET_URI"].strip(),
        model_name=env["MD_MODEL_NAME"].strip(),
        canary=parse_endpoint("MD_CANARY_URL", service_link_url(env["MD_CANARY_URL"], env)),
        stable=stable,
        min_accuracy=min_accuracy,
        min_agreement=min_agreement,
        revision=env.get("MD_REVISION", ""),
        stable_revision=env.get("MD_STABLE_REVISION", ""),
        source_mount=Path(env.get("MD_SOURCE_MOUNT") or "/source"),
        work_dir=Path(env.get("TMPDIR") or tempfile.gettempdir()),
        fetch_attempts=int(attempts or 5),
        fetch_timeout_s=_number(env, "MD_FETCH_TIMEOUT_SECONDS", 60.0, 0.1, 3600) or 60.0,
        ready_timeout_s=_number(env, "MD_READY_TIMEOUT_SECONDS", READY_TIMEOUT_S, 0, 3600) or 0.0,
        request_timeout_s=_number(env, "MD_REQUEST_TIMEOUT_SECONDS", REQUEST_TIMEOUT_S, 0.1, 3600)
        or REQUEST_TIMEOUT_S,
    )


# ---------------------------------------------------------------- the model's signature and the dataset


@dataclass(frozen=True)
class Tensor:
    """One input or output as Triton's metadata describes it (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """What the gate needs of a served model: its tensors and whether it batches."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int

    def sample_shape(self, t: Tensor) -> tuple[int, ...]:
        """A tensor's shape without the batch axis (a model with max_batch_size 0 has none)."""
        return t.shape[1:] if self.max_batch_size > 0 else t.shape


def model_info(metadata: Mapping[str, Any], config: Mapping[str, Any]) -> ModelInfo:
    """From tritonclient's get_model_metadata and get_model_config answers (JSON dicts)."""

    def tensors(key: str) -> tuple[Tensor, ...]:
        return tuple(Tensor(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t.get("shape", [])))
                     for t in metadata.get(key) or [])

    inputs, outputs = tensors("inputs"), tensors("outputs")
    if not inputs or not outputs:
        raise ValidationError("the model's metadata lists no inputs or no outputs")
    return ModelInfo(inputs, outputs, int(config.get("max_batch_size", 0) or 0))


@dataclass(frozen=True)
class Dataset:
    """Input arrays by the model's input names (first axis = samples) and optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    @property
    def samples(self) -> int:
        return len(next(iter(self.inputs.values())))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the .npz (no pickles: a dataset must not run code)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":  # np.load would try it as a pickle and say so, confusingly
                raise ValidationError("dataset is not an .npz file (not a zip archive)")
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise ValidationError(f"dataset is not a readable .npz file: {e}") from None


def _labels(arrays: Mapping[str, np.ndarray]) -> np.ndarray | None:
    y = arrays.get("y")
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0)):
        raise ValidationError(f"dataset labels y must be integer class ids, one per sample (got {y.dtype} {y.shape})")
    return y.astype(np.int64)


def dataset_for(arrays: Mapping[str, np.ndarray], info: ModelInfo) -> Dataset:
    """The arrays fed to each input, checked and cast (checkdata.py's conventions: `x`, or one per name)."""
    inputs: dict[str, np.ndarray] = {}
    for t in info.inputs:
        key = t.name if t.name in arrays else ("x" if len(info.inputs) == 1 and "x" in arrays else None)
        if key is None:
            raise ValidationError(f"dataset has no array for input {t.name!r} (keys: {sorted(arrays)})")
        arr = np.asarray(arrays[key])
        want, got = info.sample_shape(t), arr.shape[1:]
        if len(want) != len(got) or any(w not in (-1, g) for w, g in zip(want, got, strict=True)):
            shown = tuple("?" if w == -1 else w for w in want)
            raise ValidationError(f"dataset input {t.name!r} has sample shape {got}, the model wants {shown}")
        dtype = TRITON_DTYPES.get(t.datatype)
        if dtype is None:
            raise ValidationError(f"input {t.name!r} has datatype {t.datatype}, which the gate cannot send")
        try:
            inputs[t.name] = arr.astype(dtype, copy=False)
        except (TypeError, ValueError):
            raise ValidationError(f"dataset input {t.name!r} ({arr.dtype}) cannot be cast to {t.datatype}") from None
    labels = _labels(arrays)
    sizes = {len(v) for v in inputs.values()}
    if len(sizes) != 1 or 0 in sizes or (labels is not None and len(labels) not in sizes):
        raise ValidationError("dataset arrays must be non-empty and have the same number of samples")
    return Dataset(inputs, labels)


# ---------------------------------------------------------------- pure judging


def batch_slices(samples: int, max_batch_size: int, cap: int = MAX_REQUEST_BATCH) -> list[slice]:
    """Request boundaries: at most the model's max batch size (and `cap`); 1 for a non-batching model."""
    size = max(1, min(max_batch_size, cap)) if max_batch_size > 0 else 1
    return [slice(start, min(start + size, samples)) for start in range(0, samples, size)]


def predictions(outputs: np.ndarray) -> np.ndarray:
    """Class ids: the argmax of each sample's values; a per-sample scalar is the class id itself."""
    flat = np.asarray(outputs).reshape(len(outputs), -1)
    if flat.shape[1] == 1:
        return np.rint(flat[:, 0].astype(np.float64)).astype(np.int64)
    return flat.argmax(axis=1).astype(np.int64)


def count_equal(a: np.ndarray, b: np.ndarray) -> int:
    """How many positions of two class-id arrays agree."""
    if len(a) != len(b) or len(a) == 0:
        raise ValidationError(f"cannot compare {len(a)} predictions with {len(b)}")
    return int(np.sum(np.asarray(a) == np.asarray(b)))


def _shown(value: float, threshold: float) -> str:
    """value with enough digits that a pass and a fail never print the same (0.9989 vs 0.999)."""
    for digits in range(3, 7):
        text = f"{value:.{digits}f}"
        if value == threshold or float(text) != threshold:
            return text
    return repr(value)


@dataclass(frozen=True)
class Verdict:
    """The gate's answer: what was measured and why it passed or failed."""

    passed: bool
    samples: int
    message: str
    accuracy: float | None = None
    agreement: float | None = None

    def to_json(self) -> str:
        """The termination-log line the operator parses (validation.verdict_from_job)."""
        return json.dumps({
            "passed": self.passed,
            "accuracy": None if self.accuracy is None else round(self.accuracy, 6),
            "agreement": None if self.agreement is None else round(self.agreement, 6),
            "samples": self.samples,
            "message": self.message,
        }, separators=(", ", ": "))


def judge(samples: int, correct: int | None, equal: int | None, min_accuracy: float | None,
          min_agreement: float | None) -> Verdict:
    """Pass iff accuracy >= min_accuracy and agreement >= min_agreement (each only when set).

    The message names every measurement: a threshold's with >= or <, an unjudged one for information.
    """
    if samples <= 0:
        raise ValidationError("the dataset has no samples")
    accuracy = None if correct is None else correct / samples
    agreement = None if equal is None else equal / samples
    if (min_accuracy is None or accuracy is None) and (min_agreement is None or agreement is None):
        raise ValidationError("nothing was judged: no threshold had a measurement")
    results: list[bool] = []
    parts: list[str] = []
    for what, value, count, threshold, unit in (("accuracy", accuracy, correct, min_accuracy, "correct"),
                                                  ("agreement with stable", agreement, equal, min_agreement, "equal")):
        if value is None:
            continue
        if threshold is None:
            parts.append(f"{what} {value:.3f} ({count}/{samples} {unit})")
            continue
        ok = value >= threshold
        results.append(ok)
        parts.append(f"{what} {_shown(value, threshold)} {'>=' if ok else '<'} {threshold:g} "
                     f"({count}/{samples} {unit})")
    return Verdict(all(results), samples, "; ".join(parts), accuracy, agreement)


def error_json(message: str) -> str:
    """The termination-log line when the gate could not judge."""
    return json.dumps({"passed": False, "error": True, "accuracy": None, "agreement": None, "samples": 0,
                       "message": message}, separators=(", ", ": "))


# ---------------------------------------------------------------- Triton (the only impure part besides fetch)


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text}" if text and not text.startswith("[") else (text or e.__class__.__name__)


class Served:
    """One revision's model behind a Triton HTTP endpoint."""

    def __init__(self, role: str, endpoint: Endpoint, model: str, timeout_s: float) -> None:
        import tritonclient.http as httpclient  # imported here: the pure helpers above need no client

        self._http = httpclient
        self.role, self.endpoint, self.model = role, endpoint, model
        self._client = httpclient.InferenceServerClient(
            endpoint.host_port, ssl=endpoint.ssl, connection_timeout=timeout_s, network_timeout=timeout_s)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    def wait_ready(self, timeout_s: float, poll_s: float = 1.0) -> None:
        """Until the model answers ready; the Service may lag the pod's readiness by a moment."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            try:
                if self._client.is_model_ready(self.model):
                    return
                last = ""
            except Exception as e:  # connection refused, DNS, timeouts: all mean "not reachable yet"
                last = _reason(e)
            if time.monotonic() >= deadline:
                break
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        where = f"{self.role} unreachable at {self.endpoint.shown}" if last else \
            f"{self.role} model {self.model!r} not ready at {self.endpoint.shown}"
        raise ValidationError(f"{where} after {timeout_s:g}s" + (f": {last}" if last else ""))

    def info(self) -> ModelInfo:
        try:
            metadata = self._client.get_model_metadata(self.model)
            config = self._client.get_model_config(self.model)
        except Exception as e:
            raise ValidationError(f"cannot read the {self.role} model's metadata: {_reason(e)}") from None
        return model_info(metadata, config)

    def predict(self, data: Dataset, info: ModelInfo) -> np.ndarray:
        """Class ids for every sample, sent in batches the model accepts."""
        output = info.outputs[0].name
        out: list[np.ndarray] = []
        for part in batch_slices(data.samples, info.max_batch_size):
            inputs = []
            for t in info.inputs:
                arr = data.inputs[t.name][part]
                if info.max_batch_size == 0:
                    arr = arr[0]  # no batch axis: one sample per request
                inp = self._http.InferInput(t.name, list(arr.shape), t.datatype)
                inp.set_data_from_numpy(arr, binary_data=t.datatype != "BYTES")
                inputs.append(inp)
            try:
                result = self._client.infer(self.model, inputs,
                                            outputs=[self._http.InferRequestedOutput(output, binary_data=True)])
            except Exception as e:
                raise ValidationError(f"{self.role} inference failed on samples {part.start}-{part.stop - 1}: "
                                      f"{_reason(e)}") from None
            values = result.as_numpy(output)
            if values is None:
                raise ValidationError(f"{self.role} answered without output {output!r}")
            if info.max_batch_size == 0:
                values = values[None]
            if len(values) != part.stop - part.start:
                raise ValidationError(f"{self.role} answered {len(values)} results for {part.stop - part.start} "
                                      f"samples: its first output has no batch axis")
            out.append(predictions(values))
        return np.concatenate(out)


@contextlib.contextmanager
def _served(role: str, endpoint: Endpoint, s: ValidateSettings) -> Iterator[Served]:
    served = Served(role, endpoint, s.model_name, s.request_timeout_s)
    try:
        yield served
    finally:
        served.close()


def _fetch_dataset(s: ValidateSettings, env: Mapping[str, str], work: Path) -> dict[str, np.ndarray]:
    source = uri_mod.parse(s.dataset_uri)
    opts = FetchOptions(env=env, attempts=s.fetch_attempts, timeout_s=s.fetch_timeout_s, source_mount=s.source_mount)
    try:
        path = fetch(source, work / "dataset", opts)
    except LoaderError as e:
        raise ValidationError(f"cannot fetch dataset: {e}") from None
    if path.is_dir():
        raise ValidationError(f"dataset {source.display()} is a directory: it must be one .npz file")
    return read_npz(path)


def run(s: ValidateSettings, env: Mapping[str, str]) -> Verdict:
    """Fetch, send to the canary (and the stable revision), judge."""
    s.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="md-validate-", dir=s.work_dir))
    try:
        arrays = _fetch_dataset(s, env, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with _served("canary", s.canary, s) as canary:
        canary.wait_ready(s.ready_timeout_s)
        info = canary.info()
        data = dataset_for(arrays, info)
        if s.min_accuracy is not None and data.labels is None:
            raise ValidationError("dataset has no labels (y): minAccuracy needs them")
        started = time.monotonic()
        canary_pred = canary.predict(data, info)
        log.info("canary %s answered %d samples in %.1fs", s.revision or s.canary.shown, data.samples,
                 time.monotonic() - started)
    correct = None if data.labels is None else count_equal(canary_pred, data.labels)
    equal = None
    if s.stable is not None:
        with _served("stable", s.stable, s) as stable:
            stable.wait_ready(s.ready_timeout_s)
            stable_info = stable.info()
            equal = count_equal(canary_pred, stable.predict(dataset_for(arrays, stable_info), stable_info))
    return judge(data.samples, correct, equal, s.min_accuracy, s.min_agreement)


# ---------------------------------------------------------------- entry point


def _setup_logging(redact: Redactor, stream: TextIO | None = None) -> None:
    """The loader's logger (fetch logs through it), with this tool's prefix and the same redaction."""

    class Formatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return redact(super().format(record))

    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(Formatter(f"{PREFIX}: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def _report(line: str, termination_log: Path) -> None:
    """The JSON line to the termination log (what the operator reads) and as stdout's last line."""
    with contextlib.suppress(OSError):  # outside a pod there may be no /dev/termination-log
        termination_log.write_text(line + "\n", encoding="utf-8")
    print(line, flush=True)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the gate; 0 passed, 1 failed, 2 could not judge."""
    env = os.environ if env is None else env
    args = list(argv) if argv is not None else sys.argv[1:]
    uris = [env.get(k, "") for k in ("MD_DATASET_URI", "MD_CANARY_URL", "MD_STABLE_URL")]
    redact = Redactor.from_env(env, uris)
    _setup_logging(redact)
    termination_log = termination_log_path(args, env)
    try:
        settings = settings_from_env(env)
        verdict = run(settings, env)
    except LoaderError as e:
        message = one_line(str(e), redact)
        log.error("error: %s", message)
        _report(error_json(message), termination_log)
        return EXIT_ERROR
    except Exception as e:  # a bug or an unforeseen library error: still one clear line
        log.debug("unexpected failure", exc_info=True)
        message = one_line(f"internal error: {e.__class__.__name__}: {e}", redact)
        log.error("error: %s", message)
        _report(error_json(message), termination_log)
        return EXIT_ERROR
    verdict = Verdict(verdict.passed, verdict.samples, one_line(verdict.message, redact), verdict.accuracy,
                      verdict.agreement)
    log.info("%s: %s", "passed" if verdict.passed else "failed", verdict.message)
    _report(verdict.to_json(), termination_log)
    return EXIT_PASSED if verdict.passed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
