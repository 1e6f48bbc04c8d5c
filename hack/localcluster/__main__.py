"""CLI: python -m localcluster {up,down,status,kubeconfig,logs,build}."""

from __future__ import annotations

import argparse
import sys

from . import binaries, cluster, controlplane, kind
from .config import ClusterConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="localcluster", description=__doc__)
    p.add_argument("--name", default="modeldeploy", help="cluster name (keys its directory)")
    p.add_argument("--provider", choices=["local", "kind"], default="local",
                   help="local: host processes built from source (default); kind: a kind cluster")
    sub = p.add_subparsers(dest="cmd", required=True)
    upp = sub.add_parser("up", help="start the cluster (idempotent)")
    upp.add_argument("--nodes", type=int, default=3, help="number of kwok fake GPU nodes")
    upp.add_argument("--gpus", type=int, default=8, help="nvidia.com/gpu per fake node")
    sub.add_parser("down", help="stop everything and delete the cluster's state")
    sub.add_parser("status", help="show each component's state")
    sub.add_parser("kubeconfig", help="print the path of the admin kubeconfig")
    lg = sub.add_parser("logs", help="print a component's log")
    lg.add_argument("component", choices=[*controlplane.COMPONENTS, "audit"])
    lg.add_argument("-n", "--lines", type=int, default=50)
    b = sub.add_parser("build", help="build and cache binaries (all by default)")
    b.add_argument("names", nargs="*", default=[])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = ClusterConfig(name=args.name, fake_nodes=getattr(args, "nodes", 3), gpus_per_node=getattr(args, "gpus", 8))
    if args.provider == "kind":
        return kind.main(cfg, args.cmd)
    if args.cmd == "up":
        cluster.up(cfg)
    elif args.cmd == "down":
        cluster.down(cfg)
    elif args.cmd == "status":
        for component, state in controlplane.status(cfg).items():
            print(f"{component:26} {state}")
    elif args.cmd == "kubeconfig":
        print(cfg.kubeconfig)
    elif args.cmd == "logs":
        print(cluster.logs(cfg, args.component, args.lines))
    elif args.cmd == "build":
        names = args.names or [*binaries.CONTROL_PLANE, "kubelet", "kube-proxy", "helm"]
        for name, path in binaries.ensure(*names).items():
            print(f"{name:26} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
