"""Entry point: `python -m modeldeploy.artifact build | fetch | key`.

Each command ends with one JSON result (termination log and stdout) and an exit code the operator
acts on (docs/artifacts.md): 0 done, 1 deterministic failure (checksum, format, conversion, gate),
2 invalid input, 65 artifact corrupt (rebuild it), 66 not built, 75 transient (retry with
backoff; store or source unreachable), 77 artifact store misconfigured or refusing access.

The build command is imported only when asked for: it pulls in the loader's pipeline (numpy,
onnxruntime, maybe torch), which the fetch command must never load.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ..loader.errors import LoaderError
from ..loader.settings import termination_log_path
from .options import build_options, fetch_settings
from .report import emit, fail, log, redactor, setup_logging

USAGE: Final = """usage: python -m modeldeploy.artifact COMMAND [flags]

commands:
  build   reuse the artifact of these loader settings, or build and publish it (the build Job)
  fetch   download an artifact by key, verify every file, commit the model repository (serving pods)
  key     print the key (and what it hashes) of these loader settings, to inspect or pre-seed a store

Run `python -m modeldeploy.artifact COMMAND --help` for a command's flags; every flag has an MD_*
environment variable (docs/artifacts.md).
"""


def _key(argv: Sequence[str], env: Mapping[str, str], facts: dict[str, Any]) -> dict[str, Any]:
    from .key import key_from_inputs, key_inputs

    opts, settings = build_options(argv, env, need_store=False)
    inputs = key_inputs(settings, scope=opts.scope, device=opts.device, hardware=opts.hardware)
    return {"key": key_from_inputs(inputs), "keyInputs": inputs}


def _build(argv: Sequence[str], env: Mapping[str, str], facts: dict[str, Any]) -> dict[str, Any]:
    from . import build  # the loader's pipeline: numpy, onnxruntime
    from .key import artifact_key

    opts, settings = build_options(argv, env)
    facts["key"] = artifact_key(settings, scope=opts.scope, device=opts.device, hardware=opts.hardware)
    return build.run(opts, settings, env)


def _fetch(argv: Sequence[str], env: Mapping[str, str], facts: dict[str, Any]) -> dict[str, Any]:
    from . import fetch

    settings = fetch_settings(argv, env)
    facts["key"] = settings.key
    return fetch.run(settings, env)


Command = Callable[[Sequence[str], Mapping[str, str], dict[str, Any]], dict[str, Any]]
COMMANDS: Final[dict[str, Command]] = {"build": _build, "fetch": _fetch, "key": _key}


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run one command; 0 only when it did what it says."""
    env = os.environ if env is None else env
    args = list(argv) if argv is not None else sys.argv[1:]
    if not args or args[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
        return 0 if args and args[0] in ("-h", "--help") else 2
    command, rest = args[0], args[1:]
    uris = [env.get("MD_SOURCE_URI", ""), env.get("MD_VALIDATION_URI", ""), env.get("MD_ARTIFACT_CACHE_URL", ""),
            *rest]
    redact = redactor(env, uris)
    setup_logging(redact)
    termination_log = termination_log_path(rest, env)
    started = time.monotonic()
    facts: dict[str, Any] = {"command": command}  # what the failure result can say (the key, once known)
    try:
        result = COMMANDS[command](rest, env, facts)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except LoaderError as e:
        fail(str(e), e.exit_code, redact, termination_log, facts)
        return e.exit_code
    except Exception as e:  # a bug or an unforeseen library error: still one clear line
        log.debug("unexpected failure", exc_info=True)
        fail(f"internal error: {e.__class__.__name__}: {e}", 1, redact, termination_log, facts)
        return 1
    if command == "key":  # for people and scripts: not a termination message
        print(redact(json.dumps(result, indent=1, sort_keys=True)))
        return 0
    emit(result, redact, termination_log)
    log.info("%s: %s in %.1fs", command, result.get("result"), time.monotonic() - started)
    return 0
