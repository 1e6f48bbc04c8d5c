"""OCI image archives built without Docker: layout, content addressing, determinism."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from localcluster import oci


def _rootfs(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hi\n")
    (root / "bin").mkdir()
    tool = root / "bin" / "tool"
    tool.write_bytes(b"\x7fELF fake")
    tool.chmod(0o755)
    os.link(tool, root / "bin" / "tool-alias")
    (root / "bin" / "sh").symlink_to("tool")
    return root


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()}  # type: ignore[union-attr]


def _build(tmp_path: Path, out_name: str = "img.tar", **kwargs: object) -> tuple[Path, str]:
    root = tmp_path / "rootfs"
    if not root.exists():
        _rootfs(root)
    layers: list[oci.LayerSource] = [root, {"/app/run.sh": oci.File(b"#!/bin/sh\necho ok\n", 0o755),
                                            "/app/conf/settings.json": oci.File(b"{}", uid=1000, gid=1000)}]
    config = oci.ImageConfig(entrypoint=("/app/run.sh",), cmd=("--serve",), user="1000:1000", workdir="/app",
                             exposed_ports=("8080/tcp", "8002"), env=(oci.DEFAULT_PATH, "MODE=test"),
                             labels={"org.example": "x"})
    out = tmp_path / out_name
    digest = oci.build_image("localhost/sample:local", layers, config, out, **kwargs)  # type: ignore[arg-type]
    return out, digest


def test_layout_index_names_the_image(tmp_path: Path) -> None:
    out, digest = _build(tmp_path)
    files = _members(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["mediaType"] == oci.MEDIA_INDEX
    (desc,) = index["manifests"]
    assert desc["digest"] == digest
    assert desc["annotations"] == {oci.ANNOTATION_IMAGE_NAME: "localhost/sample:local",
                                   oci.ANNOTATION_REF_NAME: "local"}
    assert desc["platform"] == {"architecture": "amd64", "os": "linux"}
    assert oci.image_name(out) == "localhost/sample:local"
    docker = json.loads(files["manifest.json"])
    assert docker[0]["RepoTags"] == ["localhost/sample:local"]
    assert all(p in files for p in [docker[0]["Config"], *docker[0]["Layers"]])


def test_every_blob_matches_its_digest_and_size(tmp_path: Path) -> None:
    out, digest = _build(tmp_path)
    files = _members(out)
    blobs = {f"sha256:{name.rsplit('/', 1)[1]}": data for name, data in files.items()
             if name.startswith("blobs/sha256/") and data}
    for d, data in blobs.items():
        assert d == "sha256:" + hashlib.sha256(data).hexdigest()
    manifest = json.loads(blobs[digest])
    assert manifest["mediaType"] == oci.MEDIA_MANIFEST
    for desc in [manifest["config"], *manifest["layers"]]:
        assert desc["size"] == len(blobs[desc["digest"]])
    config = json.loads(blobs[manifest["config"]["digest"]])
    # diff_ids are the digests of the uncompressed layers.
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        assert layer["mediaType"] == oci.MEDIA_LAYER_GZIP
        raw = gzip.decompress(blobs[layer["digest"]])
        assert diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    run = config["config"]
    assert run["Entrypoint"] == ["/app/run.sh"] and run["Cmd"] == ["--serve"]
    assert run["User"] == "1000:1000" and run["WorkingDir"] == "/app"
    assert run["ExposedPorts"] == {"8002/tcp": {}, "8080/tcp": {}}
    assert "MODE=test" in run["Env"] and run["Labels"] == {"org.example": "x"}


def _layer_entries(out: Path, index: int) -> list[tarfile.TarInfo]:
    files = _members(out)
    manifest_digest = json.loads(files["index.json"])["manifests"][0]["digest"]
    manifest = json.loads(files[f"blobs/sha256/{manifest_digest[7:]}"])
    data = files[f"blobs/sha256/{manifest['layers'][index]['digest'][7:]}"]
    if manifest["layers"][index]["mediaType"] == oci.MEDIA_LAYER_GZIP:
        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def test_layers_keep_modes_links_and_are_sorted_with_fixed_times(tmp_path: Path) -> None:
    out, _ = _build(tmp_path)
    tree = {m.name: m for m in _layer_entries(out, 0)}
    assert list(tree) == ["bin", "bin/sh", "bin/tool", "bin/tool-alias", "etc", "etc/motd"]
    assert tree["bin/tool"].mode & 0o777 == 0o755
    assert tree["bin/sh"].issym() and tree["bin/sh"].linkname == "tool"
    assert tree["bin/tool-alias"].islnk() and tree["bin/tool-alias"].linkname == "bin/tool"
    assert all(m.mtime == 0 and m.uname == "" for m in tree.values())
    files = {m.name: m for m in _layer_entries(out, 1)}
    assert list(files) == ["app", "app/conf", "app/conf/settings.json", "app/run.sh"]
    assert files["app"].isdir() and files["app/run.sh"].mode == 0o755
    assert (files["app/conf/settings.json"].uid, files["app/conf/settings.json"].gid) == (1000, 1000)


def test_rebuild_gives_identical_bytes(tmp_path: Path) -> None:
    first, d1 = _build(tmp_path, "a.tar")
    os.utime(tmp_path / "rootfs" / "etc" / "motd", (1, 1))  # a touched file must not change the image
    second, d2 = _build(tmp_path, "b.tar")
    assert d1 == d2
    assert first.read_bytes() == second.read_bytes()


def test_uncompressed_layers(tmp_path: Path) -> None:
    out, digest = _build(tmp_path, compress=False)
    files = _members(out)
    manifest = json.loads(files[f"blobs/sha256/{digest[7:]}"])
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'][7:]}"])
    assert [layer["mediaType"] for layer in manifest["layers"]] == [oci.MEDIA_LAYER] * 2
    assert [layer["digest"] for layer in manifest["layers"]] == config["rootfs"]["diff_ids"]


def test_name_needs_a_tag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tag"):
        oci.build_image("localhost/pause", [{"/x": oci.File(b"")}], oci.ImageConfig(), tmp_path / "x.tar")
