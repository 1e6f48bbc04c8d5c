"""What the loader says: progress on stderr, and on failure one line for the pod's status.

Every line passes through a Redactor first, which knows the secret values of this run (the
credential environment variables, userinfo and query strings of the source URIs), so no
code path can print a secret, even one that formats an exception from a library.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final, TextIO

SECRET_ENV: Final = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
MAX_MESSAGE: Final = 1024  # the kubelet keeps at most 4096 bytes of a termination message
PREFIX: Final = "model-loader"
_URL_SECRETS = re.compile(r"(?i)(https?://)[^/\s:@]+:[^/\s@]+@")
_SIGNED_QUERY = re.compile(r"(?i)([?&](?:x-amz-[a-z-]+|signature|sig|token|access_token|key)=)[^&\s]+")

log: Final = logging.getLogger("modeldeploy.loader")


class Redactor:
    """Replaces known secret values, URL credentials and signed query parameters with ***."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str], uris: Iterable[str] = (), extra_env: Iterable[str] = ()) -> Redactor:
        """Secrets of this run: credential variables (SECRET_ENV and `extra_env`, e.g. an artifact
        store's own credentials) and anything secret inside the URIs."""
        secrets = [env.get(k, "") for k in (*SECRET_ENV, *extra_env)]
        for uri in uris:
            parts = urllib.parse.urlsplit(uri)
            secrets += [parts.password or "", parts.username or ""]
            secrets += [v for _, v in urllib.parse.parse_qsl(parts.query)]
        return cls(secrets)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
            quoted = urllib.parse.quote(s, safe="")
            if quoted != s:
                text = text.replace(quoted, "***")
        text = _URL_SECRETS.sub(r"\1***@", text)
        return _SIGNED_QUERY.sub(r"\1***", text)


class _RedactingFormatter(logging.Formatter):
    def __init__(self, redact: Redactor, prefix: str = PREFIX) -> None:
        super().__init__(f"{prefix}: %(message)s")
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


def send_redacted(logger: logging.Logger, redact: Redactor, prefix: str, stream: TextIO | None = None) -> None:
    """`logger`'s lines, redacted and prefixed, on stderr only (what `kubectl logs` shows)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_RedactingFormatter(redact, prefix))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def setup_logging(redact: Redactor, stream: TextIO | None = None) -> None:
    """Send the loader's log lines, redacted, to stderr (what `kubectl logs` shows)."""
    send_redacted(log, redact, PREFIX, stream)


def one_line(reason: str, redact: Redactor) -> str:
    """The failure reason as one redacted line of bounded length."""
    line = " ".join(redact(reason).split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


def fail(reason: str, redact: Redactor, termination_log: Path, stream: TextIO | None = None) -> str:
    """Report a failure: the termination log gets the reason, stderr gets it as its last line."""
    line = one_line(reason, redact)
    # Outside a pod there may be no /dev/termination-log; the line on stderr still says it.
    with contextlib.suppress(OSError):
        termination_log.write_text(line + "\n", encoding="utf-8")
    print(f"{PREFIX}: error: {line}", file=stream or sys.stderr, flush=True)
    return line
