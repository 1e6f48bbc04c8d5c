"""A loader that trusts nothing, against real servers and real files (no mocks).

- a download limit: a body over it is refused, announced (Content-Length) or not, and the server
  sees the loader hang up long before it has sent the body;
- credentials never follow a redirect to another scheme, host or port (asserted on what the other
  server actually received), and https -> http redirects are refused;
- no symbolic link is followed out of a pvc:// or file:// source;
- no archive member lands outside the model directory, and an archive cannot unpack past the limit;
- and on every one of those failure paths, the real process prints none of the planted secrets.
"""

from __future__ import annotations

import base64
import contextlib
import io
import ipaddress
import os
import ssl
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from modeldeploy import config
from modeldeploy.loader.cli import main
from tests.support.serving_models import ECHO_MODEL_PY, linear_onnx
from tests.support.serving_s3 import running_minio

pytestmark = pytest.mark.integration

SECRET = "hArd3n-S3cr3t-Value-that-must-never-leak-0123456789"
ACCESS_KEY = "AKIAHARDENINGTEST0001"
USERINFO = f"reader:{SECRET}@"
BASIC = "Basic " + base64.b64encode(f"reader:{SECRET}".encode()).decode()
MiB = 2**20
BIG = 128 * MiB  # what an oversized server offers; the loader must hang up long before

Responder = Callable[[BaseHTTPRequestHandler, "Server", str], None]


# ---------------------------------------------------------------- real servers


@dataclass
class Server:
    """A real HTTP(S) server in a thread: routes by path, and a record of what it received and sent."""

    routes: dict[str, Responder]
    host: str = "127.0.0.1"
    tls: ssl.SSLContext | None = None
    received: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    port: int = 0

    def url(self, path: str, userinfo: str = "") -> str:
        return f"{'https' if self.tls else 'http'}://{userinfo}{self.host}:{self.port}{path}"

    def headers(self, path: str) -> list[dict[str, str]]:
        return [h for p, h in self.received if p == path]


def _handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            state.received.append((path, {k.lower(): v for k, v in self.headers.items()}))
            route = state.routes.get(path)
            if route is None:
                self.send_error(404)
                return
            route(self, state, path)

    return Handler


@contextlib.contextmanager
def serving(state: Server) -> Iterator[Server]:
    server = ThreadingHTTPServer((state.host, 0), _handler(state))
    if state.tls is not None:
        server.socket = state.tls.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def body(data: bytes, *, length: bool = True) -> Responder:
    def respond(h: BaseHTTPRequestHandler, s: Server, path: str) -> None:
        h.send_response(200)
        if length:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        s.sent[path] = len(data)

    return respond


def zeros(total: int, *, length: bool) -> Responder:
    """`total` bytes of zeros in 64 KiB writes, counting what went out before the client hung up."""

    def respond(h: BaseHTTPRequestHandler, s: Server, path: str) -> None:
        h.send_response(200)
        if length:
            h.send_header("Content-Length", str(total))
        h.end_headers()
        chunk, sent = bytes(64 * 1024), 0
        try:
            while sent < total:
                h.wfile.write(chunk[: total - sent])
                sent += min(len(chunk), total - sent)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            s.sent[path] = sent
            h.close_connection = True

    return respond


def redirect(location: Callable[[], str], code: int = 302) -> Responder:
    def respond(h: BaseHTTPRequestHandler, s: Server, path: str) -> None:
        h.send_response(code)
        h.send_header("Location", location())
        h.send_header("Content-Length", "0")
        h.end_headers()

    return respond


def status(code: int) -> Responder:
    def respond(h: BaseHTTPRequestHandler, s: Server, path: str) -> None:
        h.send_error(code)

    return respond


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A self-signed certificate for 127.0.0.1 (cryptography), and its file for SSL_CERT_FILE."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modeldeploy loader hardening test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    work = tmp_path_factory.mktemp("tls")
    cert_file, key_file = work / "cert.pem", work / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx, cert_file


@pytest.fixture
def trusted(tls: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """The in-process loader trusts the test certificate (OpenSSL reads SSL_CERT_FILE per context)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls[1]))
    return tls[0]


@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("model") / "linear.onnx"
    linear_onnx(path)
    return path.read_bytes()


# ---------------------------------------------------------------- running the loader


def load(tmp_path: Path, uri: str, **env: str) -> tuple[int, str, Path]:
    repo, term = tmp_path / "repo", tmp_path / "termination-log"
    code = main([], {"MD_SOURCE_URI": uri, "MD_MODEL_NAME": "m", "MD_REPOSITORY": str(repo),
                     "MD_TERMINATION_LOG": str(term), "MD_FETCH_ATTEMPTS": "2", **env})
    return code, term.read_text().strip() if term.exists() else "", repo


def entries(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.iterdir()) if repo.exists() else []


def no_secret_in(headers: list[dict[str, str]]) -> bool:
    text = repr(headers)
    return SECRET not in text and SECRET[::-1] not in text and ACCESS_KEY not in text and BASIC not in text


# ---------------------------------------------------------------- the download limit


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "no-content-length"])
def test_an_oversized_body_is_refused_and_never_downloaded_in_full(tmp_path: Path, announced: bool) -> None:
    state = Server({"/big.onnx": zeros(BIG, length=announced)})
    with serving(state) as srv:
        code, msg, repo = load(tmp_path, srv.url("/big.onnx"), MD_MAX_DOWNLOAD_BYTES=str(MiB))
    assert code == 1  # deterministic: not 75, the kubelet must not retry it forever
    assert msg.startswith(f"{srv.url('/big.onnx')} is larger than the download limit of 1 MiB (1048576 bytes, "
                          "MD_MAX_DOWNLOAD_BYTES: spec.model.source.maxBytes or the operator's maxDownloadBytes): ")
    if announced:
        assert msg.endswith(f"the server announced {BIG} bytes (Content-Length)")
    else:
        assert msg.endswith("more than 1048576 bytes arrived without an announced size; the download was stopped there")
    assert len(state.headers("/big.onnx")) == 1  # not retried
    assert state.sent["/big.onnx"] < BIG // 4  # the loader hung up: the body never came in full
    assert entries(repo) == []


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "no-content-length"])
def test_a_body_of_exactly_the_limit_is_fine(tmp_path: Path, onnx_bytes: bytes, announced: bool) -> None:
    with serving(Server({"/m.onnx": body(onnx_bytes, length=announced)})) as srv:
        code, msg, repo = load(tmp_path, srv.url("/m.onnx"), MD_MAX_DOWNLOAD_BYTES=str(len(onnx_bytes)))
    assert (code, msg) == (0, "")
    assert (repo / "m" / "1" / "model.onnx").read_bytes() == onnx_bytes


def test_a_directory_source_is_limited_by_the_sum_of_its_files(tmp_path: Path) -> None:
    claim = tmp_path / "claim"
    (claim / "echo").mkdir(parents=True)
    (claim / "echo" / "model.py").write_text(ECHO_MODEL_PY)
    (claim / "echo" / "a.bin").write_bytes(bytes(600_000))
    (claim / "echo" / "b.bin").write_bytes(bytes(600_000))
    env = {"MD_FORMAT": "python", "MD_SOURCE_MOUNT": str(claim)}
    code, msg, repo = load(tmp_path, "pvc://store/echo/", MD_MAX_DOWNLOAD_BYTES=str(MiB), **env)
    size = 1_200_000 + len(ECHO_MODEL_PY)
    assert code == 1 and msg.startswith("pvc://store/echo/ is larger than the download limit of 1 MiB")
    assert msg.endswith(f"its files total {size} bytes") and entries(repo) == []
    assert load(tmp_path, "pvc://store/echo/", MD_MAX_DOWNLOAD_BYTES=str(size), **env)[0] == 0


def test_the_model_and_its_validation_data_share_the_limit(tmp_path: Path, onnx_bytes: bytes) -> None:
    (tmp_path / "m.onnx").write_bytes(onnx_bytes)
    np.savez(tmp_path / "val.npz", x=np.zeros((64, 4), dtype=np.float32))
    val_size = (tmp_path / "val.npz").stat().st_size
    env = {"MD_VALIDATION_URI": f"file://{tmp_path}/val.npz", "MD_QUANTIZE": "int8", "MD_MIN_AGREEMENT": "0"}
    code, msg, repo = load(tmp_path, f"file://{tmp_path}/m.onnx", MD_MAX_DOWNLOAD_BYTES=str(len(onnx_bytes) + 100),
                           **env)
    assert code == 1 and msg.startswith(f"file://{tmp_path}/val.npz is larger than the download limit")
    assert msg.endswith(f": it is {val_size} bytes; {len(onnx_bytes)} bytes were already fetched in this run")
    assert entries(repo) == []


def test_an_s3_directory_over_the_limit_is_refused_from_its_listing(tmp_path: Path) -> None:
    """MinIO: the listing's sizes are summed before any object is fetched."""
    with running_minio(tmp_path / "s3") as server:
        server.create_bucket("models")
        server.put("models", "echo/model.py", ECHO_MODEL_PY.encode())
        server.put("models", "echo/weights.bin", bytes(MiB))
        env = {**server.env(), "MD_FORMAT": "python"}
        code, msg, repo = load(tmp_path, "s3://models/echo/", MD_MAX_DOWNLOAD_BYTES=str(MiB), **env)
        assert code == 1 and entries(repo) == []
        assert msg == ("s3://models/echo/ is larger than the download limit of 1 MiB (1048576 bytes, "
                       "MD_MAX_DOWNLOAD_BYTES: spec.model.source.maxBytes or the operator's maxDownloadBytes): "
                       f"its 2 objects total {MiB + len(ECHO_MODEL_PY)} bytes")
        code, _, repo = load(tmp_path, "s3://models/echo/", MD_MAX_DOWNLOAD_BYTES=str(2 * MiB), **env)
        assert code == 0 and (repo / "m" / "1" / "weights.bin").stat().st_size == MiB


@pytest.mark.parametrize(("values", "expected"), [
    ("", 10 * 2**30),
    ("maxDownloadBytes: 2Gi\n", 2 * 2**30),
    ("maxDownloadBytes: 5368709120\n", 5 * 2**30),  # a YAML integer is a float64 to Helm: rendered exactly
])
def test_the_chart_value_reaches_the_operator_setting(tmp_path: Path, values: str, expected: int) -> None:
    from localcluster import binaries

    chart = Path(__file__).resolve().parents[2] / "charts" / "modeldeploy"
    (tmp_path / "values.yaml").write_text(values or "{}\n")
    out = subprocess.run([str(binaries.ensure("helm")["helm"]), "template", "md", str(chart), "--kube-version",
                          "1.35.4", "-f", str(tmp_path / "values.yaml")], text=True, capture_output=True, check=True)
    from tests.support.chart import operator_deployment

    operator = operator_deployment([d for d in yaml.safe_load_all(out.stdout) if d])
    env = {e["name"]: e["value"] for e in operator["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    assert config.from_env(env).max_download_bytes == expected


# ---------------------------------------------------------------- redirects


def _other(kind: str, routes: dict[str, Responder], tls: ssl.SSLContext) -> Server:
    """The redirect target: another port, another host (127.0.0.2), or https on another port."""
    if kind == "host":
        return Server(routes, host="127.0.0.2")
    return Server(routes, tls=tls if kind == "scheme" else None)


@pytest.mark.parametrize("kind", ["port", "host", "scheme"])
def test_basic_auth_is_not_sent_to_a_redirect_target_elsewhere(tmp_path: Path, onnx_bytes: bytes, kind: str,
                                                                trusted: ssl.SSLContext) -> None:
    target = _other(kind, {"/m.onnx": body(onnx_bytes)}, trusted)
    with serving(target) as b:
        origin = Server({"/m.onnx": redirect(lambda: b.url("/m.onnx?sig=presigned-by-the-server"))})
        with serving(origin) as a:
            code, msg, repo = load(tmp_path, a.url("/m.onnx", USERINFO))
    assert (code, msg) == (0, "")
    assert (repo / "m" / "1" / "model.onnx").read_bytes() == onnx_bytes
    assert [h.get("authorization") for h in origin.headers("/m.onnx")] == [BASIC]  # the named host got them
    (seen,) = target.headers("/m.onnx")
    assert "authorization" not in seen and no_secret_in(target.headers("/m.onnx"))


def test_credentials_still_go_to_the_same_origin_after_a_redirect(tmp_path: Path, onnx_bytes: bytes) -> None:
    state = Server({"/old.onnx": redirect(lambda: "/m.onnx", 301), "/m.onnx": body(onnx_bytes)})
    with serving(state) as srv:
        code, _, _ = load(tmp_path, srv.url("/old.onnx", USERINFO))
    assert code == 0
    assert [h.get("authorization") for h in state.headers("/m.onnx")] == [BASIC]


def test_sigv4_headers_are_not_sent_to_a_redirect_target(tmp_path: Path, onnx_bytes: bytes) -> None:
    """An S3-compatible endpoint that redirects: the signature, date, payload hash and session token
    stay with the endpoint; the other host gets an anonymous GET."""
    with serving(Server({"/m.onnx": body(onnx_bytes)}, host="127.0.0.2")) as b:
        endpoint = Server({"/models/m.onnx": redirect(lambda: b.url("/m.onnx"), 307)})
        with serving(endpoint) as a:
            code, msg, _ = load(tmp_path, "s3://models/m.onnx", AWS_ENDPOINT_URL=a.url(""),
                                AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET,
                                AWS_SESSION_TOKEN=SECRET[::-1])
    assert (code, msg) == (0, "")
    (signed,) = endpoint.headers("/models/m.onnx")
    assert signed["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert signed["x-amz-security-token"] == SECRET[::-1]
    (anonymous,) = b.headers("/m.onnx")
    assert not [k for k in anonymous if k == "authorization" or k.startswith("x-amz-")]
    assert no_secret_in(b.headers("/m.onnx"))


def test_a_refused_target_says_it_was_not_sent_the_credentials(tmp_path: Path) -> None:
    target = Server({"/m.onnx": status(401)}, host="127.0.0.2")
    with serving(target) as b, serving(Server({"/m.onnx": redirect(lambda: b.url("/m.onnx"))})) as a:
        code, msg, _ = load(tmp_path, a.url("/m.onnx", USERINFO))
    assert code == 1
    assert msg == (f"HTTP 401 Unauthorized fetching {a.url('/m.onnx')}: unauthorized: check the credentialsSecret "
                   f"(after a redirect to http://127.0.0.2:{b.port}, which was not sent the credentials)")
    assert no_secret_in(target.headers("/m.onnx"))


def test_https_to_http_redirect_is_refused(tmp_path: Path, onnx_bytes: bytes, trusted: ssl.SSLContext) -> None:
    plain = Server({"/m.onnx": body(onnx_bytes)})
    with serving(plain) as b:
        secure = Server({"/m.onnx": redirect(lambda: b.url("/m.onnx")), "/direct.onnx": body(onnx_bytes)},
                        tls=trusted)
        with serving(secure) as a:
            assert load(tmp_path / "control", a.url("/direct.onnx", USERINFO))[0] == 0  # TLS itself works
            code, msg, repo = load(tmp_path, a.url("/m.onnx", USERINFO))
    assert code == 1
    assert msg == (f"refusing a redirect from https to http (https://127.0.0.1:{a.port} -> http://127.0.0.1:{b.port}): "
                   f"the download would no longer be encrypted fetching https://127.0.0.1:{a.port}/m.onnx")
    assert plain.received == []  # nothing, credentials or not, went over plain http
    assert len(secure.headers("/m.onnx")) == 1 and entries(repo) == []


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/m.onnx", "file:///etc/passwd"])
def test_redirects_to_other_schemes_are_refused(tmp_path: Path, location: str) -> None:
    with serving(Server({"/m.onnx": redirect(lambda: location)})) as a:
        code, msg, _ = load(tmp_path, a.url("/m.onnx"))
    scheme = location.split(":", 1)[0]
    assert code == 1 and msg.startswith(f"refusing a redirect from http://127.0.0.1:{a.port} to a {scheme} URL")


# ---------------------------------------------------------------- symbolic links in local sources


@pytest.fixture
def claim(tmp_path: Path) -> Path:
    """A claim's mount with a python model directory in it, and a secret file outside it."""
    mount = tmp_path / "claim"
    (mount / "echo").mkdir(parents=True)
    (mount / "echo" / "model.py").write_text(ECHO_MODEL_PY)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text(f"TOP {SECRET}\n")
    return mount


def _python_from_claim(tmp_path: Path, claim: Path, uri: str = "pvc://store/echo/") -> tuple[int, str, Path]:
    return load(tmp_path, uri, MD_FORMAT="python", MD_SOURCE_MOUNT=str(claim))


def _nothing_leaked(tmp_path: Path) -> bool:
    repo = tmp_path / "repo"
    files = [p for p in repo.rglob("*") if p.is_file()] if repo.exists() else []
    return not any(SECRET.encode() in p.read_bytes() for p in files)


@pytest.mark.parametrize(("target", "shown"), [
    ("../../outside/secret.txt", "'../../outside/secret.txt'"),
    ("{tmp}/outside/secret.txt", "'{tmp}/outside/secret.txt'"),
    ("/proc/self/environ", "'/proc/self/environ'"),
])
def test_a_link_out_of_a_directory_source_is_refused(tmp_path: Path, claim: Path, target: str, shown: str) -> None:
    os.symlink(target.format(tmp=tmp_path), claim / "echo" / "leak.txt")
    code, msg, repo = _python_from_claim(tmp_path, claim)
    assert code == 1
    assert msg == (f"pvc://store/echo/: leak.txt is a symbolic link to {shown.format(tmp=tmp_path)}, "
                   "outside the source; refusing to follow it")
    assert entries(repo) == [] and _nothing_leaked(tmp_path)


def test_a_link_out_of_a_nested_directory_is_refused(tmp_path: Path, claim: Path) -> None:
    (claim / "echo" / "lib").mkdir()
    os.symlink("../../../outside/secret.txt", claim / "echo" / "lib" / "util.py")
    code, msg, _ = _python_from_claim(tmp_path, claim)
    assert code == 1 and msg.startswith("pvc://store/echo/: lib/util.py is a symbolic link to ")


def test_a_link_to_a_sibling_outside_the_named_directory_is_refused(tmp_path: Path, claim: Path) -> None:
    """Inside the claim but outside the directory the URI names: still outside the source."""
    (claim / "shared.py").write_text("X = 1\n")
    os.symlink("../shared.py", claim / "echo" / "shared.py")
    code, msg, _ = _python_from_claim(tmp_path, claim)
    assert code == 1 and msg.endswith("shared.py is a symbolic link to '../shared.py', outside the source; "
                                      "refusing to follow it")


def test_a_link_inside_the_source_is_copied_as_a_regular_file(tmp_path: Path, claim: Path) -> None:
    (claim / "echo" / "lib").mkdir()
    (claim / "echo" / "lib" / "util.py").write_text("VALUE = 42\n")
    os.symlink("lib/util.py", claim / "echo" / "util.py")
    code, msg, repo = _python_from_claim(tmp_path, claim)
    assert (code, msg) == (0, "")
    copied = repo / "m" / "1" / "util.py"
    assert not copied.is_symlink() and copied.read_text() == "VALUE = 42\n"


@pytest.mark.parametrize(("make", "reason"), [
    (lambda d: os.symlink("lib", d / "alias"), "alias is a symbolic link to 'lib', a directory: links to directories "
                                               "are not followed"),
    (lambda d: os.symlink("gone.py", d / "dangling.py"), "dangling.py is a symbolic link to 'gone.py', which does "
                                                         "not exist"),
    (lambda d: os.mkfifo(d / "pipe"), "pipe is not a regular file, directory or symbolic link"),
], ids=["link-to-directory", "dangling-link", "fifo"])
def test_other_entries_a_source_may_not_hold(tmp_path: Path, claim: Path, make: Callable[[Path], None],
                                             reason: str) -> None:
    (claim / "echo" / "lib").mkdir()
    make(claim / "echo")
    code, msg, _ = _python_from_claim(tmp_path, claim)
    assert code == 1 and msg == f"pvc://store/echo/: {reason}"


def test_a_single_file_linked_out_of_the_claim_is_refused(tmp_path: Path, claim: Path, onnx_bytes: bytes) -> None:
    (tmp_path / "outside" / "model.onnx").write_bytes(onnx_bytes)
    os.symlink("../outside/model.onnx", claim / "model.onnx")
    code, msg, repo = load(tmp_path, "pvc://store/model.onnx", MD_SOURCE_MOUNT=str(claim))
    assert code == 1 and entries(repo) == []
    assert msg == (f"pvc://store/model.onnx leads out of the claim through a symbolic link "
                   f"(to {os.path.realpath(tmp_path / 'outside' / 'model.onnx')}); refusing it")


def test_a_path_through_a_directory_link_out_of_the_claim_is_refused(tmp_path: Path, claim: Path,
                                                                     onnx_bytes: bytes) -> None:
    (tmp_path / "outside" / "model.onnx").write_bytes(onnx_bytes)
    os.symlink(tmp_path / "outside", claim / "models")
    code, msg, _ = load(tmp_path, "pvc://store/models/model.onnx", MD_SOURCE_MOUNT=str(claim))
    assert code == 1 and msg.startswith("pvc://store/models/model.onnx leads out of the claim through a symbolic link")


def test_a_single_file_linked_inside_the_claim_is_fine(tmp_path: Path, claim: Path, onnx_bytes: bytes) -> None:
    (claim / "v3").mkdir()
    (claim / "v3" / "model.onnx").write_bytes(onnx_bytes)
    os.symlink("v3/model.onnx", claim / "current.onnx")
    code, msg, repo = load(tmp_path, "pvc://store/current.onnx", MD_SOURCE_MOUNT=str(claim))
    assert (code, msg) == (0, "") and (repo / "m" / "1" / "model.onnx").read_bytes() == onnx_bytes


def test_file_sources_name_the_file_itself(tmp_path: Path, onnx_bytes: bytes) -> None:
    (tmp_path / "model.onnx").write_bytes(onnx_bytes)
    os.symlink("model.onnx", tmp_path / "link.onnx")
    code, msg, _ = load(tmp_path, f"file://{tmp_path}/link.onnx")
    assert code == 1
    assert msg == f"file://{tmp_path}/link.onnx is a symbolic link (to 'model.onnx'): name the file itself"
    code, msg, _ = load(tmp_path, "file:///proc/self/environ", MD_FORMAT="python")
    assert code == 1 and msg == "file:///proc/self/environ is under /proc, /sys, /dev: not a model source"
    assert load(tmp_path, f"file://{tmp_path}/model.onnx")[0] == 0


def test_a_link_out_of_a_file_directory_source_is_refused(tmp_path: Path, claim: Path) -> None:
    os.symlink(tmp_path / "outside" / "secret.txt", claim / "echo" / "notes.txt")
    code, msg, _ = load(tmp_path, f"file://{claim}/echo/", MD_FORMAT="python")
    assert code == 1 and msg.startswith(f"file://{claim}/echo/: notes.txt is a symbolic link to ")
    assert _nothing_leaked(tmp_path)


# ---------------------------------------------------------------- archives


def _tar(members: list[tuple[tarfile.TarInfo, bytes]], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"pwned\n") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


EVIL: dict[str, tuple[Callable[[Path], list[tuple[tarfile.TarInfo, bytes]]], str]] = {
    "dot-dot": (lambda t: [_file("../../escaped.txt")], "archive member '../../escaped.txt' would land outside"),
    "absolute": (lambda t: [_file(f"{t}/escaped.txt")], "would land outside the model directory"),
    "symlink-out": (lambda t: [_link("lib", f"{t}/outside", tarfile.SYMTYPE), _file("lib/escaped.txt")],
                    "archive member 'lib' is a link (to "),
    "hardlink-out": (lambda t: [_link("escaped.txt", "/etc/passwd", tarfile.LNKTYPE)],
                     "archive member 'escaped.txt' is a link (to '/etc/passwd')"),
}


@pytest.mark.parametrize("case", sorted(EVIL))
def test_an_archive_member_that_leaves_the_model_directory_is_refused(tmp_path: Path, case: str) -> None:
    make, reason = EVIL[case]
    (tmp_path / "outside").mkdir()
    archive = _tar([_file("model.py", ECHO_MODEL_PY.encode()), *make(tmp_path)])
    with serving(Server({"/echo.tar": body(archive)})) as srv:
        code, msg, repo = load(tmp_path, srv.url("/echo.tar"), MD_FORMAT="python")
    assert code == 1 and reason in msg and entries(repo) == []
    assert not list(tmp_path.rglob("escaped.txt"))  # nowhere: not outside, not even inside


def test_an_archive_cannot_unpack_past_the_limit(tmp_path: Path) -> None:
    archive = _tar([_file("model.py", ECHO_MODEL_PY.encode()), _file("weights.bin", bytes(4 * MiB))], gz=True)
    assert len(archive) < 64 * 1024  # the download is small; what it unpacks to is not
    with serving(Server({"/echo.tar.gz": body(archive)})) as srv:
        code, msg, repo = load(tmp_path, srv.url("/echo.tar.gz"), MD_FORMAT="python", MD_MAX_DOWNLOAD_BYTES=str(MiB))
    assert code == 1 and entries(repo) == []
    assert msg == ("python model archive unpacks to more than 1 MiB (1048576 bytes, MD_MAX_DOWNLOAD_BYTES): "
                   "refusing to unpack it")


# ---------------------------------------------------------------- no secret on any of these paths


@dataclass
class Case:
    env: dict[str, str]
    expect: str  # the start of the termination message


def _process(tmp_path: Path, env: dict[str, str]) -> tuple[int, str, str]:
    term = tmp_path / "termination-log"
    full = {**os.environ, "MD_MODEL_NAME": "m", "MD_REPOSITORY": str(tmp_path / "repo"),
            "MD_TERMINATION_LOG": str(term), "MD_FETCH_ATTEMPTS": "2", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": SECRET[::-1], **env}
    proc = subprocess.run([sys.executable, "-m", "modeldeploy.loader"], env=full, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stdout + proc.stderr, term.read_text() if term.exists() else ""


SECRET_CASES = ["oversized-content-length", "oversized-streamed", "redirect-then-401", "s3-redirect-then-403",
                "https-to-http", "pvc-link-to-environ", "tar-traversal", "archive-too-big"]


@pytest.mark.parametrize("case", SECRET_CASES)
def test_secrets_appear_nowhere_on_any_refusal(tmp_path: Path, case: str, tls: tuple[ssl.SSLContext, Path]) -> None:
    """The real process, with the secret planted in the AWS variables and the URI's userinfo (and, for
    the link case, in the very file the link points at): it fails with exit 1 and prints none of it."""
    ctx, cert = tls
    claim = tmp_path / "claim"
    (claim / "echo").mkdir(parents=True)
    (claim / "echo" / "model.py").write_text(ECHO_MODEL_PY)
    os.symlink("/proc/self/environ", claim / "echo" / "environ")
    evil = _tar([_file("model.py", ECHO_MODEL_PY.encode()), _file("../../escaped.txt")])
    bomb = _tar([_file("model.py", ECHO_MODEL_PY.encode()), _file("w.bin", bytes(2 * MiB))], gz=True)
    other = Server({"/401": status(401), "/403": status(403)}, host="127.0.0.2")
    with contextlib.ExitStack() as stack:
        b = stack.enter_context(serving(other))
        a = stack.enter_context(serving(Server({
            "/big-cl": zeros(BIG, length=True), "/big": zeros(BIG, length=False),
            "/to-401": redirect(lambda: b.url("/401")), "/models/m.onnx": redirect(lambda: b.url("/403"), 307),
            "/evil.tar": body(evil), "/bomb.tar.gz": body(bomb)})))
        secure = stack.enter_context(serving(Server({"/down": redirect(lambda: a.url("/big"))}, tls=ctx)))
        cases = {
            "oversized-content-length": Case({"MD_SOURCE_URI": a.url("/big-cl", USERINFO),
                                              "MD_MAX_DOWNLOAD_BYTES": str(MiB)}, "http://127.0.0.1"),
            "oversized-streamed": Case({"MD_SOURCE_URI": a.url("/big", USERINFO), "MD_MAX_DOWNLOAD_BYTES": str(MiB)},
                                       "http://127.0.0.1"),
            "redirect-then-401": Case({"MD_SOURCE_URI": a.url("/to-401", USERINFO)}, "HTTP 401"),
            "s3-redirect-then-403": Case({"MD_SOURCE_URI": "s3://models/m.onnx", "AWS_ENDPOINT_URL": a.url("")},
                                         "HTTP 403"),
            "https-to-http": Case({"MD_SOURCE_URI": secure.url("/down", USERINFO), "SSL_CERT_FILE": str(cert)},
                                  "refusing a redirect from https to http"),
            "pvc-link-to-environ": Case({"MD_SOURCE_URI": "pvc://store/echo/", "MD_SOURCE_MOUNT": str(claim),
                                         "MD_FORMAT": "python"}, "pvc://store/echo/: environ is a symbolic link"),
            "tar-traversal": Case({"MD_SOURCE_URI": a.url("/evil.tar", USERINFO), "MD_FORMAT": "python"},
                                  "archive member '../../escaped.txt'"),
            "archive-too-big": Case({"MD_SOURCE_URI": a.url("/bomb.tar.gz", USERINFO), "MD_FORMAT": "python",
                                     "MD_MAX_DOWNLOAD_BYTES": str(MiB)}, "python model archive unpacks to more"),
        }
        code, output, term = _process(tmp_path, cases[case].env)
    assert code == 1, output
    assert term.startswith(cases[case].expect), term
    assert output.splitlines()[-1] == f"model-loader: error: {term.strip()}"
    for needle in (SECRET, SECRET[::-1], ACCESS_KEY, BASIC.split()[1]):
        assert (output + term).count(needle) == 0, needle
    assert no_secret_in(other.received)  # and nothing reached the host a redirect pointed at
    assert _nothing_leaked(tmp_path)
