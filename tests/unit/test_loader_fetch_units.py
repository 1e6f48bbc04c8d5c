"""Pure pieces of fetching: SigV4 against AWS's published examples, retries, checksums."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from modeldeploy.loader import checksum, sigv4
from modeldeploy.loader.errors import ConfigError, FetchError, IntegrityError, TransientFetchError
from modeldeploy.loader.fetch import S3Client
from modeldeploy.loader.retry import backoff_delays, with_retries

AWS_EXAMPLE = sigv4.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
WHEN = datetime(2013, 5, 24, tzinfo=UTC)


def test_sigv4_get_object_example() -> None:
    # "Example: GET Object" from the S3 SigV4 documentation.
    h = sigv4.sign("GET", "examplebucket.s3.amazonaws.com", "/test.txt", {}, {"Range": "bytes=0-9"}, AWS_EXAMPLE,
                   "us-east-1", WHEN)
    assert h["authorization"].endswith("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    assert "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date" in h["authorization"]


def test_sigv4_list_objects_example() -> None:
    # "Example: GET Bucket (List Objects)" from the same page: query parameters are signed sorted.
    h = sigv4.sign("GET", "examplebucket.s3.amazonaws.com", "/", {"prefix": "J", "max-keys": "2"}, {}, AWS_EXAMPLE,
                   "us-east-1", WHEN)
    assert h["authorization"].endswith("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")


def test_session_token_is_signed() -> None:
    creds = sigv4.Credentials("AK", "SK", "TOKEN")
    h = sigv4.sign("GET", "h", "/b/k", {}, {}, creds, "eu-west-1", WHEN)
    assert h["x-amz-security-token"] == "TOKEN" and "x-amz-security-token" in h["authorization"]


def test_s3_addressing() -> None:
    aws = S3Client("models", {"AWS_REGION": "eu-west-1"})
    assert aws.url(aws.path("a b/m.onnx"), {}) == "https://models.s3.eu-west-1.amazonaws.com/a%20b/m.onnx"
    dotted = S3Client("my.models", {})
    assert dotted.url(dotted.path("m.onnx"), {}) == "https://s3.us-east-1.amazonaws.com/my.models/m.onnx"
    minio = S3Client("models", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000/"})
    assert minio.url(minio.path("m.onnx"), {}) == "http://127.0.0.1:9000/models/m.onnx"
    assert S3Client("b", {}).headers("/x", {}) == {}  # no credentials: anonymous (public bucket)


def test_backoff_doubles_up_to_a_cap() -> None:
    assert backoff_delays(6, 0.5, 4.0) == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff_delays(1) == []


def test_retries_transient_errors_then_succeeds() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientFetchError("HTTP 503")
        return "ok"

    assert with_retries(flaky, "x", attempts=5, base_s=0.1, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2 and sleeps[1] > sleeps[0]


def test_does_not_retry_permanent_errors() -> None:
    calls = []

    def forbidden() -> None:
        calls.append(1)
        raise FetchError("HTTP 403")

    with pytest.raises(FetchError, match="403"):
        with_retries(forbidden, "x", attempts=5, sleep=lambda _: None)
    assert len(calls) == 1


def test_gives_up_after_the_attempts() -> None:
    def down() -> None:
        raise TransientFetchError("connection reset")

    with pytest.raises(TransientFetchError, match="gave up after 3 attempts"):
        with_retries(down, "x", attempts=3, sleep=lambda _: None)


def test_checksum(tmp_path: Path) -> None:
    f = tmp_path / "m.onnx"
    f.write_bytes(b"model bytes")
    good = checksum.sha256_of(f)
    checksum.verify(f, good)
    checksum.verify(f, good.upper())
    checksum.verify(f, "")
    with pytest.raises(IntegrityError, match=f"sha256 mismatch: want {'0' * 12}…, got {good[:12]}…"):
        checksum.verify(f, "0" * 64)
    with pytest.raises(ConfigError, match="single file"):
        checksum.verify(tmp_path, good)
