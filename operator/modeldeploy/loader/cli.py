"""Entry point: settings in, repository out, and on failure one redacted line and a non-zero exit."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence

from . import pipeline
from .errors import LoaderError
from .report import Redactor, fail, log, setup_logging
from .settings import from_sources, termination_log_path


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the loader; exit code 0 only when the model repository is complete."""
    env = os.environ if env is None else env
    args = list(argv) if argv is not None else sys.argv[1:]
    uris = [env.get("MD_SOURCE_URI", ""), env.get("MD_VALIDATION_URI", ""), *(args or [])]
    redact = Redactor.from_env(env, uris)
    setup_logging(redact)
    termination_log = termination_log_path(args, env)
    started = time.monotonic()
    try:
        settings = from_sources(args, env)
        result = pipeline.run(settings, env)
    except LoaderError as e:
        fail(str(e), redact, termination_log)
        return e.exit_code
    except Exception as e:  # a bug or an unforeseen library error: still one clear line
        log.debug("unexpected failure", exc_info=True)
        fail(f"internal error: {e.__class__.__name__}: {e}", redact, termination_log)
        return 1
    log.info("wrote %s in %.1fs", result.model_dir, time.monotonic() - started)
    return 0
