"""The loader against a real S3-compatible server (MinIO): signed downloads, and each failure clear and clean."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modeldeploy.loader.checksum import sha256_of
from modeldeploy.loader.cli import main
from tests.support.serving_models import ECHO_MODEL_PY, echo_tarball, linear_onnx
from tests.support.serving_s3 import S3Server, running_minio

pytestmark = pytest.mark.integration
BUCKET = "models"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, Path]]:
    work = tmp_path_factory.mktemp("s3")
    model = work / "model.onnx"
    linear_onnx(model)
    with running_minio(work) as server:
        server.create_bucket(BUCKET)
        server.put(BUCKET, "linear/1/model.onnx", model.read_bytes())
        server.put(BUCKET, "linear/broken.onnx", b"PK\x03\x04 a zip file, not an ONNX graph")
        server.put(BUCKET, "echo/echo.tar.gz", echo_tarball())
        server.put(BUCKET, "echo-dir/model.py", ECHO_MODEL_PY.encode())
        server.put(BUCKET, "echo-dir/lib/util.py", b"VALUE = 42\n")
        yield server, model


def load(tmp_path: Path, env: dict[str, str], **extra: str) -> tuple[int, str, Path]:
    repo, term = tmp_path / "repo", tmp_path / "termination-log"
    code = main([], {"MD_MODEL_NAME": "linear", "MD_REPOSITORY": str(repo), "MD_TERMINATION_LOG": str(term),
                     "MD_MAX_BATCH_SIZE": "8", "MD_FETCH_ATTEMPTS": "2", **env, **extra})
    return code, term.read_text().strip() if term.exists() else "", repo


def entries(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.iterdir()) if repo.exists() else []


def test_signed_download_with_checksum(tmp_path: Path, s3: tuple[S3Server, Path]) -> None:
    server, model = s3
    code, msg, repo = load(tmp_path, server.env(), MD_SOURCE_URI=f"s3://{BUCKET}/linear/1/model.onnx",
                           MD_SHA256=sha256_of(model))
    assert (code, msg) == (0, "")
    assert (repo / "linear" / "1" / "model.onnx").read_bytes() == model.read_bytes()
    assert entries(repo) == ["linear"]


def test_python_model_tarball_and_directory(tmp_path: Path, s3: tuple[S3Server, Path]) -> None:
    server, _ = s3
    code, _, repo = load(tmp_path / "a", server.env(), MD_SOURCE_URI=f"s3://{BUCKET}/echo/echo.tar.gz",
                         MD_FORMAT="python")
    assert code == 0 and (repo / "linear" / "1" / "model.py").read_text() == ECHO_MODEL_PY
    code, _, repo = load(tmp_path / "b", server.env(), MD_SOURCE_URI=f"s3://{BUCKET}/echo-dir/", MD_FORMAT="python")
    assert code == 0
    assert (repo / "linear" / "1" / "lib" / "util.py").read_text() == "VALUE = 42\n"
    assert (repo / "linear" / "1" / "model.py").read_text() == ECHO_MODEL_PY


def test_wrong_checksum(tmp_path: Path, s3: tuple[S3Server, Path]) -> None:
    server, _ = s3
    code, msg, repo = load(tmp_path, server.env(), MD_SOURCE_URI=f"s3://{BUCKET}/linear/1/model.onnx",
                           MD_SHA256="f" * 64)
    assert code == 1 and msg.startswith("sha256 mismatch: want ffffffffffff…, got ") and entries(repo) == []


def test_missing_object(tmp_path: Path, s3: tuple[S3Server, Path]) -> None:
    server, _ = s3
    code, msg, repo = load(tmp_path, server.env(), MD_SOURCE_URI=f"s3://{BUCKET}/linear/2/model.onnx")
    assert code == 1
    assert msg == f"HTTP 404 Not Found (NoSuchKey) fetching s3://{BUCKET}/linear/2/model.onnx: not found: check the URI"
    assert entries(repo) == []


def test_missing_prefix(tmp_path: Path, s3: tuple[S3Server, Path]) -> None:
    server, _ = s3
    code, msg, _ = load(tmp_path, server.env(), MD_SOURCE_URI=f"s3://{BUCKET}/nothing-here/", MD_FORMAT="python")
    assert code == 1 and msg == f"no objects under s3://{BUCKET}/nothing-here/"


@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_bad_credentials_fail_fast_and_leak_nothing(tmp_path: Path, s3: tuple[S3Server, Path], wrong: str,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    server, _ = s3
    bad_secret = "not-the-secret-" + "x" * 24
    env = server.env(secret_key=bad_secret) if wrong == "secret" else server.env(access_key="NO-SUCH-KEY-1234")
    code, msg, repo = load(tmp_path, env, MD_SOURCE_URI=f"s3://{BUCKET}/linear/1/model.onnx", MD_FETCH_ATTEMPTS="5")
    out, err = capfd.readouterr()
    assert code == 1 and entries(repo) == []
    code_name = "SignatureDoesNotMatch" if wrong == "secret" else "InvalidAccessKeyId"
    assert msg == (f"HTTP 403 Forbidden ({code_name}) fetching s3://{BUCKET}/linear/1/model.onnx: "
                   "access denied: check the credentialsSecret and the bucket policy")
    assert "retrying" not in err  # 403 is not retried
    for secret in (bad_secret, server.secret_key, env["AWS_ACCESS_KEY_ID"]):
        assert secret not in out + err + msg


def test_wrong_format(tmp_path: Path, s3: tuple[S3Server, Path]) -> None:
    server, _ = s3
    code, msg, repo = load(tmp_path, server.env(), MD_SOURCE_URI=f"s3://{BUCKET}/linear/broken.onnx")
    assert code == 1 and msg.startswith("not a valid ONNX model") and entries(repo) == []


def test_unreachable_endpoint_is_retried_then_reported(tmp_path: Path, s3: tuple[S3Server, Path]) -> None:
    server, _ = s3
    env = {**server.env(), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # discard port: connection refused
    code, msg, repo = load(tmp_path, env, MD_SOURCE_URI=f"s3://{BUCKET}/linear/1/model.onnx")
    assert code == 75 and msg.startswith(f"network error fetching s3://{BUCKET}/linear/1/model.onnx")
    assert "gave up after 2 attempts" in msg and entries(repo) == []
