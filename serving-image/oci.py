#!/usr/bin/env python3
"""Pack a root filesystem into a single-layer OCI image archive, without a container engine.

The archive holds both an OCI index (index.json, for `ctr -n k8s.io images import`) and a Docker
manifest.json (for `docker load`), so either runtime imports it under the given name.
Usage: oci.py ROOTFS OUT.tar --name localhost/modeldeploy-triton-cpu:dev --config config.json
where config.json holds the image's runtime config (User, Env, Entrypoint, Cmd, ExposedPorts, ...).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _digest_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest(), path.stat().st_size


def _layer(rootfs: Path, work: Path) -> tuple[Path, str]:
    """rootfs as a gzipped tar (GNU tar keeps owners, modes, hard links); returns (blob, diff_id)."""
    plain = work / "layer.tar"
    subprocess.run(
        ["tar", "--numeric-owner", "--sort=name", "--mtime=@0", "-C", str(rootfs), "-cf", str(plain),
         "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./run/*", "."],
        check=True,
    )
    diff_id, _ = _digest_file(plain)
    gz = work / "layer.tar.gz"
    with open(plain, "rb") as src, gzip.GzipFile(gz, "wb", compresslevel=6, mtime=0) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    plain.unlink()
    return gz, diff_id


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def pack(rootfs: Path, out: Path, name: str, runtime: dict[str, Any]) -> str:
    """Write the archive; returns the manifest digest."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        layer, diff_id = _layer(rootfs, Path(tmp))
        layer_digest, layer_size = _digest_file(layer)
        config = json.dumps({
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "architecture": "amd64",
            "os": "linux",
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created_by": "modeldeploy serving-image/build.sh (debootstrap, no container engine)"}],
        }, sort_keys=True).encode()
        config_digest = hashlib.sha256(config).hexdigest()
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": f"sha256:{config_digest}", "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": f"sha256:{layer_digest}", "size": layer_size}],
        }, sort_keys=True).encode()
        manifest_digest = hashlib.sha256(manifest).hexdigest()
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
        index = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{manifest_digest}", "size": len(manifest),
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
            }],
        }, sort_keys=True).encode()
        docker_manifest = json.dumps([{
            "Config": f"blobs/sha256/{config_digest}",
            "RepoTags": [name],
            "Layers": [f"blobs/sha256/{layer_digest}"],
        }]).encode()
        with tarfile.open(out, "w") as tar:
            _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
            _add_bytes(tar, "index.json", index)
            _add_bytes(tar, "manifest.json", docker_manifest)
            _add_bytes(tar, f"blobs/sha256/{config_digest}", config)
            _add_bytes(tar, f"blobs/sha256/{manifest_digest}", manifest)
            tar.add(layer, f"blobs/sha256/{layer_digest}")
    return f"sha256:{manifest_digest}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rootfs", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--config", type=Path, required=True)
    a = p.parse_args()
    digest = pack(a.rootfs, a.out, a.name, json.loads(a.config.read_text()))
    print(f"{a.name} {digest} {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
