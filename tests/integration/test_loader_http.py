"""The loader against a real HTTP server: retries on what may heal, fails fast on what will not."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeldeploy.loader.checksum import sha256_of
from modeldeploy.loader.cli import main
from tests.support.serving_http import FileServer, serving
from tests.support.serving_models import linear_onnx

pytestmark = pytest.mark.integration


@pytest.fixture
def onnx_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "linear.onnx"
    linear_onnx(path)
    return path.read_bytes()


def load(tmp_path: Path, uri: str, **env: str) -> tuple[int, str, Path]:
    repo, term = tmp_path / "repo", tmp_path / "termination-log"
    code = main([], {"MD_SOURCE_URI": uri, "MD_MODEL_NAME": "linear", "MD_REPOSITORY": str(repo),
                     "MD_TERMINATION_LOG": str(term), "MD_MAX_BATCH_SIZE": "8", **env})
    return code, term.read_text().strip() if term.exists() else "", repo


def entries(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.iterdir()) if repo.exists() else []


def test_downloads_and_verifies(tmp_path: Path, onnx_bytes: bytes) -> None:
    digest = sha256_of(_write(tmp_path / "x", onnx_bytes))
    with serving(FileServer(files={"/m/model.onnx": onnx_bytes})) as srv:
        code, msg, repo = load(tmp_path, srv.url("/m/model.onnx"), MD_SHA256=digest)
    assert (code, msg) == (0, "")
    assert (repo / "linear" / "1" / "model.onnx").read_bytes() == onnx_bytes
    assert entries(repo) == ["linear"]


def test_retries_5xx_then_succeeds(tmp_path: Path, onnx_bytes: bytes) -> None:
    state = FileServer(files={"/m.onnx": onnx_bytes}, fail_first={"/m.onnx": (2, 503)})
    with serving(state) as srv:
        code, _, repo = load(tmp_path, srv.url("/m.onnx"))
    assert code == 0 and state.requests["/m.onnx"] == 3
    assert (repo / "linear" / "1" / "model.onnx").read_bytes() == onnx_bytes


def test_retries_a_cut_short_download(tmp_path: Path, onnx_bytes: bytes) -> None:
    state = FileServer(files={"/m.onnx": onnx_bytes}, truncate={"/m.onnx"})
    with serving(state) as srv:
        code, _, repo = load(tmp_path, srv.url("/m.onnx"))
    assert code == 0 and state.requests["/m.onnx"] == 2
    assert (repo / "linear" / "1" / "model.onnx").read_bytes() == onnx_bytes


@pytest.mark.parametrize(("status", "reason"), [(404, "not found: check the URI"),
                                                (403, "access denied: check the credentialsSecret")])
def test_no_retry_on_404_and_403(tmp_path: Path, status: int, reason: str) -> None:
    state = FileServer(fail_first={"/m.onnx": (99, status)})
    with serving(state) as srv:
        code, msg, repo = load(tmp_path, srv.url("/m.onnx"))
    assert code == 1 and state.requests["/m.onnx"] == 1
    assert msg.startswith(f"HTTP {status}") and reason in msg and srv.url("/m.onnx") in msg
    assert entries(repo) == []


def test_gives_up_on_a_server_that_stays_down(tmp_path: Path) -> None:
    state = FileServer(fail_first={"/m.onnx": (99, 502)})
    with serving(state) as srv:
        code, msg, repo = load(tmp_path, srv.url("/m.onnx"), MD_FETCH_ATTEMPTS="3")
    assert code == 75 and state.requests["/m.onnx"] == 3  # EX_TEMPFAIL: retried, never a failed revision
    assert "HTTP 502" in msg and "gave up after 3 attempts" in msg and entries(repo) == []


def test_wrong_checksum(tmp_path: Path, onnx_bytes: bytes) -> None:
    with serving(FileServer(files={"/m.onnx": onnx_bytes})) as srv:
        code, msg, repo = load(tmp_path, srv.url("/m.onnx"), MD_SHA256="ab" * 32)
    assert code == 1 and msg.startswith("sha256 mismatch: want abababababab…") and entries(repo) == []


def test_wrong_format(tmp_path: Path) -> None:
    with serving(FileServer(files={"/m.onnx": b"\x89PNG\r\n\x1a\n not a model"})) as srv:
        code, msg, repo = load(tmp_path, srv.url("/m.onnx"))
    assert code == 1 and msg.startswith("not a valid ONNX model") and entries(repo) == []


def test_credentials_in_the_url_never_reach_the_output(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    secret = "pa55-w0rd-that-must-not-leak"
    with serving(FileServer()) as srv:
        uri = f"http://reader:{secret}@127.0.0.1:{srv.port}/m.onnx?token={secret}"
        code, msg, _ = load(tmp_path, uri)
    out, err = capfd.readouterr()
    assert code == 1 and secret not in msg + out + err
    assert srv.headers_seen[0]["Authorization"] == "Basic cmVhZGVyOnBhNTUtdzByZC10aGF0LW11c3Qtbm90LWxlYWs="
    assert msg == f"HTTP 404 Not Found fetching http://127.0.0.1:{srv.port}/m.onnx: not found: check the URI"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
