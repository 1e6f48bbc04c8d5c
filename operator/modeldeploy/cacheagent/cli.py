"""Entry point: `python -m modeldeploy.cacheagent`: index the cache directory, then serve until SIGTERM.

Exit codes as the artifact commands': 2 invalid settings, 77 the store is misconfigured (no
MD_ARTIFACT_STORE, bad URI, missing directory store). A store that is merely unreachable does not
stop the agent: hits still work, and each miss sends its pod to the store.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Final, TextIO

from ..artifact.report import redactor
from ..artifact.store import open_store
from ..loader.errors import LoaderError
from ..loader.limits import human
from ..loader.report import Redactor, one_line
from .cache import NodeCache
from .metrics import AgentMetrics
from .server import AgentServer
from .settings import agent_settings

PREFIX: Final = "cache-agent"
# The agent's own lines, and those of the store client and retries it runs (artifact, loader).
LOGGERS: Final = ("modeldeploy.cacheagent", "modeldeploy.artifact", "modeldeploy.loader")


class _Formatter(logging.Formatter):
    """Every line redacted: the store's credentials never reach a log, whatever code formats them."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__(f"%(asctime)s {PREFIX} %(levelname)s %(message)s")
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


def setup_logging(redact: Redactor, level: str = "INFO", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(redact))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the agent; returns when SIGTERM or SIGINT arrives (0) or it cannot start (2, 77)."""
    env = os.environ if env is None else env
    args = list(argv) if argv is not None else sys.argv[1:]
    redact = redactor(env, [env.get("MD_ARTIFACT_STORE", ""), *args])
    try:
        settings = agent_settings(args, env)
        setup_logging(redact, settings.log_level)
        store = open_store(settings.store, env, attempts=settings.attempts, timeout_s=settings.timeout_s)
        metrics = AgentMetrics()
        cache = NodeCache(settings.directory, store, settings.max_bytes, metrics, fill_wait_s=settings.fill_wait_s)
        cache.start()
        server = AgentServer(settings.address, settings.port, cache, metrics, redact)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except LoaderError as e:
        print(f"{PREFIX}: error: {one_line(str(e), redact)}", file=sys.stderr, flush=True)
        return e.exit_code
    except OSError as e:  # the directory or the port
        print(f"{PREFIX}: error: {one_line(str(e), redact)}", file=sys.stderr, flush=True)
        return 1

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    log = logging.getLogger(LOGGERS[0])
    log.info("serving %s on %s:%d for %s (budget %s)", settings.directory, settings.address, server.port,
             settings.store, human(settings.max_bytes))
    stop.wait()
    log.info("stopping: fills in progress are abandoned (their directories are dropped at the next start)")
    server.shutdown()
    server.server_close()
    return 0
