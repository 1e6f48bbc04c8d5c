"""Source URIs: every scheme of the contract, and display forms that never carry credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeldeploy.loader.errors import ConfigError
from modeldeploy.loader.uri import parse


@pytest.mark.parametrize(
    ("uri", "scheme", "bucket", "key"),
    [
        ("s3://models/digits/3/model.onnx", "s3", "models", "digits/3/model.onnx"),
        ("s3://models/digits/3/", "s3", "models", "digits/3/"),
        ("gs://public-models/resnet.onnx", "gs", "public-models", "resnet.onnx"),
        ("pvc://model-store/team/a%20b.onnx", "pvc", "model-store", "team/a b.onnx"),
        ("file:///srv/models/m.onnx", "file", "", "/srv/models/m.onnx"),
        ("https://example.com/m.onnx?x=1", "https", "", ""),
    ],
)
def test_parse(uri: str, scheme: str, bucket: str, key: str) -> None:
    u = parse(uri)
    assert (u.scheme, u.bucket, u.key) == (scheme, bucket, key)


def test_directories_end_with_a_slash() -> None:
    assert parse("s3://b/prefix/").is_directory
    assert not parse("s3://b/prefix/model.onnx").is_directory


def test_local_paths() -> None:
    assert parse("pvc://claim/dir/m.onnx").local_path(Path("/source")) == Path("/source/dir/m.onnx")
    assert parse("file:///a/b.onnx").local_path(Path("/source")) == Path("/a/b.onnx")


def test_display_drops_credentials_and_query() -> None:
    shown = parse("https://user:hunter2@example.com:8443/m.onnx?X-Amz-Signature=abc&token=t0k").display()
    assert shown == "https://example.com:8443/m.onnx"
    assert parse("s3://models/a/b.onnx").display() == "s3://models/a/b.onnx"


def test_basename() -> None:
    assert parse("https://h/x/model.tar.gz?sig=1").basename == "model.tar.gz"
    assert parse("s3://b/a/model.onnx").basename == "model.onnx"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ftp://host/m.onnx", "unsupported source URI scheme ftp"),
        ("models/m.onnx", r"scheme \(none\)"),
        ("s3://bucket-only", "s3://BUCKET/KEY"),
        ("pvc://claim", "pvc://CLAIM/PATH"),
        ("s3://b/../etc/passwd", "'..'"),
        ("file://host/m.onnx", "absolute paths on this machine"),
        ("s3://key:secret@bucket/m.onnx", "must not carry credentials"),
        ("https:///m.onnx", "no host"),
    ],
)
def test_refusals(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(uri)
