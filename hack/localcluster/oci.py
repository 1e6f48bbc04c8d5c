"""OCI image archives built from local files, without Docker or a registry.

No image can be pulled on the machines this project runs on, so every image (pause, test servers,
Triton, the operator) is packed here from a root filesystem directory or a list of files and
loaded with `ctr images import` (or `docker load`: a docker-style manifest.json is included).
Archives are deterministic: sorted entries, fixed mtimes and owners chosen by the caller, so the
same inputs always give the same digest and a rebuild can be skipped by comparing digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EPOCH = 0  # mtime of every entry: the archive must not depend on when files were written


@dataclass(frozen=True)
class File:
    """One file of a layer given by content (bytes) or by a host file to copy."""

    source: bytes | Path
    mode: int | None = None  # None: the host file's mode, or 0o644 for bytes
    uid: int = 0
    gid: int = 0


# A layer is a root filesystem directory, or a mapping of image paths ("/bin/x") to files.
LayerSource = Path | Mapping[str, "File | Path"]


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (what `docker inspect` shows under Config)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = (DEFAULT_PATH,)
    user: str = ""
    workdir: str = ""
    exposed_ports: tuple[str, ...] = ()  # "8080/tcp"
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    architecture: str = "amd64"
    os: str = "linux"

    def to_json(self) -> dict[str, object]:
        cfg: dict[str, object] = {"Env": list(self.env)}
        if self.entrypoint:
            cfg["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            cfg["Cmd"] = list(self.cmd)
        if self.user:
            cfg["User"] = self.user
        if self.workdir:
            cfg["WorkingDir"] = self.workdir
        if self.exposed_ports:
            cfg["ExposedPorts"] = {p if "/" in p else f"{p}/tcp": {} for p in sorted(self.exposed_ports)}
        if self.labels:
            cfg["Labels"] = dict(sorted(self.labels.items()))
        if self.stop_signal:
            cfg["StopSignal"] = self.stop_signal
        return cfg


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob written into the archive."""

    media_type: str
    digest: str
    size: int

    def descriptor(self, annotations: Mapping[str, str] | None = None) -> dict[str, object]:
        d: dict[str, object] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if annotations:
            d["annotations"] = dict(annotations)
        return d


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _normalize(info: tarfile.TarInfo, uid: int, gid: int) -> tarfile.TarInfo:
    """Fixed mtime, no user/group names; owners as given (-1 keeps the host file's numeric ids)."""
    info.mtime = EPOCH
    if uid >= 0:
        info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    return info


def _dir_entries(root: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, host path) for everything under `root`, parents before children, sorted."""
    def walk(rel: str, path: Path) -> Iterator[tuple[str, Path]]:
        for child in sorted(os.listdir(path)):
            host = path / child
            name = f"{rel}/{child}" if rel else child
            yield name, host
            if host.is_dir() and not host.is_symlink():
                yield from walk(name, host)
    yield from walk("", root)


def _add_tree(tar: tarfile.TarFile, root: Path) -> None:
    """Add a directory tree, keeping modes, numeric owners, symlinks, hard links and devices."""
    for name, host in _dir_entries(root):
        if stat.S_ISSOCK(host.lstat().st_mode):
            continue  # sockets cannot be archived and mean nothing in an image
        # gettarinfo turns a second path to an already added inode into a hard link entry.
        info = _normalize(tar.gettarinfo(str(host), arcname=name), -1, -1)
        if info.isreg():
            with open(host, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)


def _add_files(tar: tarfile.TarFile, files: Mapping[str, File | Path]) -> None:
    """Add files by image path, creating their parent directories (0755, root) as needed."""
    entries: dict[str, File] = {}
    for raw, spec in files.items():
        name = str(PurePosixPath("/", raw)).lstrip("/")
        if not name:
            raise ValueError(f"invalid image path {raw!r}")
        entries[name] = spec if isinstance(spec, File) else File(spec)
    dirs = {str(p) for name in entries for p in PurePosixPath(name).parents if str(p) != "."}
    for name in sorted(dirs | set(entries)):
        if name not in entries:
            info = _normalize(tarfile.TarInfo(name), 0, 0)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
            continue
        spec = entries[name]
        data = spec.source if isinstance(spec.source, bytes) else Path(spec.source).read_bytes()
        mode = spec.mode
        if mode is None:
            mode = 0o644 if isinstance(spec.source, bytes) else stat.S_IMODE(Path(spec.source).stat().st_mode)
        info = _normalize(tarfile.TarInfo(name), spec.uid, spec.gid)
        info.mode, info.size = mode, len(data)
        tar.addfile(info, io.BytesIO(data))


def layer_tar(source: LayerSource, out: Path) -> str:
    """Write the uncompressed layer tar for `source` to `out`; return its digest (the diff_id)."""
    with open(out, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if isinstance(source, Path):
            if not source.is_dir():
                raise NotADirectoryError(f"layer root {source} is not a directory")
            _add_tree(tar, source)
        else:
            _add_files(tar, source)
    return _file_digest(out)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class _Archive:
    """Collects blobs and metadata files, then writes the final tar in a fixed order."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.written: set[str] = set()

    def _add(self, name: str, size: int, fileobj: IO[bytes] | None, mode: int = 0o644) -> None:
        info = _normalize(tarfile.TarInfo(name), 0, 0)
        info.size, info.mode = size, mode
        self.tar.addfile(info, fileobj)

    def directories(self) -> None:
        for name in ("blobs", "blobs/sha256"):
            info = _normalize(tarfile.TarInfo(name), 0, 0)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            self.tar.addfile(info)

    def blob_bytes(self, media_type: str, data: bytes) -> Blob:
        digest = _sha256(data)
        if digest not in self.written:
            self._add(f"blobs/sha256/{digest[7:]}", len(data), io.BytesIO(data))
            self.written.add(digest)
        return Blob(media_type, digest, len(data))

    def blob_file(self, media_type: str, path: Path, digest: str) -> Blob:
        size = path.stat().st_size
        if digest not in self.written:
            with open(path, "rb") as f:
                self._add(f"blobs/sha256/{digest[7:]}", size, f)
            self.written.add(digest)
        return Blob(media_type, digest, size)

    def file(self, name: str, data: bytes) -> None:
        self._add(name, len(data), io.BytesIO(data))


def build_image(name: str, layers: list[LayerSource], config: ImageConfig, out: Path,
                *, compress: bool = True, compresslevel: int = 6) -> str:
    """Write an OCI image archive for `name` (e.g. "localhost/pause:local") to `out`.

    Returns the manifest digest, which is what the runtime reports as the image's repo digest.
    Layers are stacked in order (later layers win). `compress=False` skips gzip: bigger archives
    but much faster for large local-only images.
    """
    if ":" not in name.rsplit("/", 1)[-1]:
        raise ValueError(f"image name {name!r} needs a tag (e.g. {name}:local)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="oci-", dir=out.parent) as tmp_dir:
        tmp = Path(tmp_dir)
        layer_files: list[tuple[Path, str, str]] = []  # (file, digest, diff_id)
        for i, source in enumerate(layers):
            raw = tmp / f"layer{i}.tar"
            diff_id = layer_tar(source, raw)
            if compress:
                packed = tmp / f"layer{i}.tar.gz"
                with open(raw, "rb") as src, open(packed, "wb") as dst, \
                        gzip.GzipFile(filename="", mode="wb", fileobj=dst, mtime=EPOCH,
                                      compresslevel=compresslevel) as gz:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        gz.write(chunk)
                raw.unlink()
                layer_files.append((packed, _file_digest(packed), diff_id))
            else:
                layer_files.append((raw, diff_id, diff_id))
        image_config = {
            "architecture": config.architecture,
            "os": config.os,
            "created": "1970-01-01T00:00:00Z",
            "config": config.to_json(),
            "rootfs": {"type": "layers", "diff_ids": [d for _, _, d in layer_files]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "modeldeploy localcluster.oci"}
                        for _ in layer_files],
        }
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
            archive = _Archive(tar)
            archive.file("oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
            archive.directories()
            config_blob = archive.blob_bytes(MEDIA_CONFIG, _canonical(image_config))
            layer_type = MEDIA_LAYER_GZIP if compress else MEDIA_LAYER
            layer_blobs = [archive.blob_file(layer_type, path, digest) for path, digest, _ in layer_files]
            manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                        "config": config_blob.descriptor(),
                        "layers": [b.descriptor() for b in layer_blobs]}
            manifest_blob = archive.blob_bytes(MEDIA_MANIFEST, _canonical(manifest))
            descriptor = manifest_blob.descriptor({ANNOTATION_IMAGE_NAME: name,
                                                   ANNOTATION_REF_NAME: name.rsplit(":", 1)[1]})
            descriptor["platform"] = {"architecture": config.architecture, "os": config.os}
            index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [descriptor]}
            archive.file("index.json", _canonical(index))
            # docker load reads manifest.json: the same blobs, so one archive serves both tools.
            archive.file("manifest.json", _canonical([{
                "Config": f"blobs/sha256/{config_blob.digest[7:]}", "RepoTags": [name],
                "Layers": [f"blobs/sha256/{b.digest[7:]}" for b in layer_blobs]}]))
        partial.replace(out)
        return manifest_blob.digest


def read_index(archive: Path) -> dict[str, object]:
    """The index.json of an OCI archive (to find an archive's image name and digest)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ValueError(f"{archive} has no index.json")
        return json.loads(member.read())


def image_name(archive: Path) -> str | None:
    """The image name stored in an OCI archive's index, or a docker archive's first RepoTag."""
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        if "index.json" in names:
            f = tar.extractfile("index.json")
            assert f is not None
            for m in json.loads(f.read()).get("manifests", []):
                name = m.get("annotations", {}).get(ANNOTATION_IMAGE_NAME)
                if name:
                    return str(name)
        if "manifest.json" in names:
            f = tar.extractfile("manifest.json")
            assert f is not None
            for m in json.loads(f.read()):
                tags = m.get("RepoTags") or []
                if tags:
                    return str(tags[0])
    return None


def config_from_docker_json(doc: Mapping[str, object]) -> ImageConfig:
    """An ImageConfig from a Docker-style config (User, Env, Entrypoint, Cmd, WorkingDir, ...)."""
    def strings(key: str) -> tuple[str, ...]:
        value = doc.get(key) or ()
        assert isinstance(value, list | tuple), key
        return tuple(str(v) for v in value)

    ports = doc.get("ExposedPorts") or {}
    labels = doc.get("Labels") or {}
    assert isinstance(ports, Mapping) and isinstance(labels, Mapping)
    return ImageConfig(entrypoint=strings("Entrypoint"), cmd=strings("Cmd"), env=strings("Env") or (DEFAULT_PATH,),
                       user=str(doc.get("User", "")), workdir=str(doc.get("WorkingDir", "")),
                       exposed_ports=tuple(sorted(str(p) for p in ports)),
                       labels={str(k): str(v) for k, v in labels.items()},
                       stop_signal=str(doc.get("StopSignal", "")))


def main(argv: list[str] | None = None) -> int:
    """python -m localcluster.oci ROOTFS OUT.tar --name NAME [--layer DIR]... [--config config.json] [--no-compress]"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m localcluster.oci", description=main.__doc__)
    parser.add_argument("rootfs", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--config", type=Path, help="Docker-style image config JSON")
    parser.add_argument("--layer", type=Path, action="append", default=[],
                        help="another root filesystem directory stacked on top (repeatable, in order)")
    parser.add_argument("--no-compress", action="store_true")
    args = parser.parse_args(argv)
    config = config_from_docker_json(json.loads(args.config.read_text())) if args.config else ImageConfig()
    digest = build_image(args.name, [args.rootfs, *args.layer], config, args.out, compress=not args.no_compress)
    print(f"{args.name} {args.out} {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
