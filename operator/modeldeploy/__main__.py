"""Command line: `modeldeploy run` starts the operator; `modeldeploy version` prints the version."""

from __future__ import annotations

import argparse
import sys

from . import __version__, config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modeldeploy",
        description="Kubernetes operator serving ML models with NVIDIA Triton: "
                    "canary rollouts judged on the model's own metrics, autoscaling in seconds.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator against the current kubeconfig / in-cluster config")
    config.add_flags(run)
    sub.add_parser("version", help="print the version")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    settings = config.from_args(args)
    from .operator_main import run_operator  # kopf is imported only when the operator runs

    return run_operator(settings)


if __name__ == "__main__":
    sys.exit(main())
