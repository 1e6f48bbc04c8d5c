"""CLI: python -m localcluster {up,down,status,kubeconfig,logs,build,load-image}."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import binaries, cluster, controlplane, hostnet, kind, realnode
from .config import ClusterConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="localcluster", description=__doc__)
    p.add_argument("--name", default="modeldeploy", help="cluster name (keys its directory)")
    p.add_argument("--provider", choices=["local", "kind"], default="local",
                   help="local: host processes built from source (default); kind: a kind cluster")
    sub = p.add_subparsers(dest="cmd", required=True)
    upp = sub.add_parser("up", help="start the cluster (idempotent)")
    upp.add_argument("--nodes", type=int, default=3, help="number of kwok fake GPU nodes")
    upp.add_argument("--gpus", type=int, default=8, help="nvidia.com/gpu per node (fake)")
    upp.add_argument("--real-node", action="store_true",
                     help="add one real node (containerd + kubelet + kube-proxy) that runs pods")
    sub.add_parser("down", help="stop everything and delete the cluster's state")
    sub.add_parser("status", help="show each component's state")
    sub.add_parser("kubeconfig", help="print the path of the admin kubeconfig")
    lg = sub.add_parser("logs", help="print a component's log")
    lg.add_argument("component", choices=[*controlplane.COMPONENTS, *realnode.COMPONENTS, "audit"])
    lg.add_argument("-n", "--lines", type=int, default=50)
    li = sub.add_parser("load-image", help="import an OCI/docker image archive into the real node")
    li.add_argument("archive", type=Path)
    b = sub.add_parser("build", help="build and cache binaries (all by default)")
    b.add_argument("names", nargs="*", default=[])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = ClusterConfig(name=args.name, fake_nodes=getattr(args, "nodes", 3), gpus_per_node=getattr(args, "gpus", 8),
                        real_node=getattr(args, "real_node", False))
    if args.provider == "local":
        cfg = cluster.effective(cfg)
    if args.provider == "kind":
        return kind.main(cfg, args.cmd)
    if args.cmd == "up":
        try:
            cluster.up(cfg)
        except hostnet.NetworkBusy as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    elif args.cmd == "down":
        cluster.down(cfg)
    elif args.cmd == "status":
        for component, state in {**controlplane.status(cfg), **realnode.status(cfg)}.items():
            print(f"{component:26} {state}")
    elif args.cmd == "kubeconfig":
        print(cfg.kubeconfig)
    elif args.cmd == "logs":
        print(cluster.logs(cfg, args.component, args.lines))
    elif args.cmd == "load-image":
        cluster.load_image(cfg, args.archive)
    elif args.cmd == "build":
        names = args.names or [*binaries.CONTROL_PLANE, "kubelet", "kube-proxy", "helm"]
        for name, path in binaries.ensure(*names).items():
            print(f"{name:26} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
