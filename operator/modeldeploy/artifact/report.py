"""What the artifact commands say: redacted log lines, and one JSON result for the operator.

The result goes to the termination log (MD_TERMINATION_LOG, default /dev/termination-log), where
the kubelet keeps at most 4096 bytes, and to stdout. It is built from fixed fields (key, digests,
numbers, a redacted one-line reason), so it can hold no secret: the store's and the source's
credentials are redacted from every line as the loader does (loader/report.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, TextIO

from ..loader import report as loader_report
from ..loader.report import Redactor, one_line
from .store import STORE_SECRET_ENV

PREFIX: Final = "artifact"
MAX_RESULT_BYTES: Final = 4000  # under the kubelet's 4096-byte termination message

log: Final = logging.getLogger("modeldeploy.artifact")


def redactor(env: Mapping[str, str], uris: Iterable[str] = ()) -> Redactor:
    """The loader's redactor, also knowing the artifact store's credentials."""
    return Redactor.from_env(env, uris, extra_env=STORE_SECRET_ENV)


def setup_logging(redact: Redactor, stream: TextIO | None = None) -> None:
    """Redacted lines on stderr, for this package and for the loader's pipeline it runs."""
    loader_report.setup_logging(redact, stream)
    loader_report.send_redacted(log, redact, PREFIX, stream)


def encode(result: Mapping[str, Any], redact: Redactor) -> str:
    """Compact JSON of `result`, redacted, at most MAX_RESULT_BYTES (optional detail dropped first)."""
    doc = dict(result)
    text = redact(json.dumps(doc, separators=(",", ":"), sort_keys=True))
    for optional in ("gates", "store", "reason"):
        if len(text.encode("utf-8")) <= MAX_RESULT_BYTES:
            break
        if optional == "reason" and isinstance(doc.get("reason"), str):
            doc["reason"] = doc["reason"][:1000]
        else:
            doc.pop(optional, None)
        text = redact(json.dumps(doc, separators=(",", ":"), sort_keys=True))
    return text


def emit(result: Mapping[str, Any], redact: Redactor, termination_log: Path, stream: TextIO | None = None) -> str:
    """Write the result to the termination log and as the last line of stdout."""
    text = encode(result, redact)
    with contextlib.suppress(OSError):  # outside a pod there may be no /dev/termination-log
        termination_log.write_text(text + "\n", encoding="utf-8")
    print(text, file=stream or sys.stdout, flush=True)
    return text


def fail(
    reason: str,
    exit_code: int,
    redact: Redactor,
    termination_log: Path,
    extra: Mapping[str, Any] | None = None,
    stream: TextIO | None = None,
) -> str:
    """A failure: JSON in the termination log, `artifact: error: <reason>` last on stderr."""
    line = one_line(reason, redact)
    result = {"result": "failed", "exitCode": exit_code, "transient": exit_code == 75, "reason": line,
              **(extra or {})}
    text = encode(result, redact)
    with contextlib.suppress(OSError):
        termination_log.write_text(text + "\n", encoding="utf-8")
    print(f"{PREFIX}: error: {line}", file=stream or sys.stderr, flush=True)
    return line
