"""Bring the model's bytes to the local disk, from any supported source.

Remote sources (s3://, gs://, http(s)://) are downloaded into a work directory next to the
model repository (the pod's /tmp is small); local ones (file://, pvc://) are read in place.
Transient failures are retried with backoff; 403/404 fail at once with a reason that says
what to fix.
"""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from . import sigv4
from .errors import FetchError, TransientFetchError
from .report import log
from .retry import with_retries
from .uri import SourceURI

GCS_ENDPOINT: Final = "https://storage.googleapis.com"
CHUNK: Final = 1 << 20
_RETRY_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_S3_NS: Final = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_HINTS: Final = {
    403: "access denied: check the credentialsSecret and the bucket policy",
    401: "unauthorized: check the credentialsSecret",
    404: "not found: check the URI",
}


@dataclass(frozen=True)
class FetchOptions:
    """How to fetch: retry policy, timeouts, where pvc claims are mounted, and the credentials' env."""

    env: Mapping[str, str]
    attempts: int = 5
    timeout_s: float = 60.0
    source_mount: Path = Path("/source")
    backoff_s: float = 0.5


def _s3_error_code(body: bytes) -> str:
    """S3's <Code> element only: the rest of an error body may echo the access key or the request."""
    try:
        code = ET.fromstring(body).findtext("Code") or ""
    except ET.ParseError:
        return ""
    return code if code.isalnum() else ""


def _http_failure(status: int, reason: str, body: bytes, shown: str) -> FetchError:
    code = _s3_error_code(body)
    detail = f"HTTP {status} {reason}".strip() + (f" ({code})" if code else "")
    if status in _RETRY_STATUS:
        return TransientFetchError(f"{detail} fetching {shown}")
    hint = _HINTS.get(status, "")
    return FetchError(f"{detail} fetching {shown}" + (f": {hint}" if hint else ""))


def _get(url: str, headers: Mapping[str, str], dest: Path | None, timeout_s: float, shown: str) -> bytes:
    """One GET: the body streamed to `dest` (returns b"") or returned in memory when dest is None."""
    request = urllib.request.Request(url, headers=dict(headers), method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            if dest is None:
                return resp.read()
            expected = resp.headers.get("Content-Length")
            written = 0
            with open(dest, "wb") as f:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    written += len(chunk)
            if expected is not None and written != int(expected):
                raise TransientFetchError(f"download of {shown} was cut short ({written} of {expected} bytes)")
            return b""
    except urllib.error.HTTPError as e:
        body = e.read(64 * 1024) if e.fp is not None else b""
        raise _http_failure(e.code, e.reason or "", body, shown) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e.__class__.__name__
        raise TransientFetchError(f"network error fetching {shown}: {reason}") from None


def _download(url: str, headers_for: _HeaderFactory, dest: Path, opts: FetchOptions, shown: str) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)

    def attempt() -> Path:
        _get(url, headers_for(), dest, opts.timeout_s, shown)
        return dest

    return with_retries(attempt, f"fetching {shown}", opts.attempts, opts.backoff_s)


class _HeaderFactory:
    """Headers for one request, made fresh per attempt (a SigV4 signature carries the time)."""

    def __init__(self, signer: S3Client | None = None, path: str = "", static: Mapping[str, str] | None = None) -> None:
        self._signer, self._path, self._static = signer, path, dict(static or {})

    def __call__(self) -> dict[str, str]:
        return self._signer.headers(self._path, {}) if self._signer else dict(self._static)


class S3Client:
    """Signed GETs against AWS S3 or any S3-compatible endpoint, configured by the AWS_* variables."""

    def __init__(self, bucket: str, env: Mapping[str, str]) -> None:
        self.bucket = bucket
        self.region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "").rstrip("/")
        access, secret = env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", "")
        self.creds = sigv4.Credentials(access, secret, env.get("AWS_SESSION_TOKEN", "")) if access and secret else None
        if endpoint:  # S3-compatible servers: path-style addressing
            parts = urllib.parse.urlsplit(endpoint)
            self.scheme, self.host, self.prefix = parts.scheme or "https", parts.netloc, f"/{bucket}"
        elif "." not in bucket:  # AWS: virtual-hosted style
            self.scheme, self.host, self.prefix = "https", f"{bucket}.s3.{self.region}.amazonaws.com", ""
        else:  # dotted bucket names break TLS with virtual hosts
            self.scheme, self.host, self.prefix = "https", f"s3.{self.region}.amazonaws.com", f"/{bucket}"

    def path(self, key: str) -> str:
        return self.prefix + "/" + sigv4.uri_encode(key, keep_slash=True) if key else self.prefix + "/"

    def url(self, path: str, query: Mapping[str, str]) -> str:
        q = sigv4.canonical_query(query)
        return f"{self.scheme}://{self.host}{path}" + (f"?{q}" if q else "")

    def headers(self, path: str, query: Mapping[str, str]) -> dict[str, str]:
        if self.creds is None:  # anonymous access to a public bucket
            return {}
        signed = sigv4.sign("GET", self.host, path, query, {}, self.creds, self.region, datetime.now(UTC))
        signed.pop("host")  # urllib sets Host itself, identically
        return signed

    def list_keys(self, prefix: str, opts: FetchOptions, shown: str) -> list[str]:
        """All keys under `prefix` (ListObjectsV2, following continuation tokens)."""
        keys: list[str] = []
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            path = self.path("")

            def attempt(q: dict[str, str] = query, p: str = path) -> bytes:
                return _get(self.url(p, q), self.headers(p, q), None, opts.timeout_s, shown)

            body = with_retries(attempt, f"listing {shown}", opts.attempts, opts.backoff_s)
            root = ET.fromstring(body)
            keys += [k.text or "" for k in root.iter(f"{_S3_NS}Key")]
            token = root.findtext(f"{_S3_NS}NextContinuationToken") or ""
            if root.findtext(f"{_S3_NS}IsTruncated") != "true" or not token:
                return [k for k in keys if k and not k.endswith("/")]


def _relative(key: str, prefix: str) -> Path:
    rel = Path(key[len(prefix):])
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise FetchError(f"refusing object key {key!r}: it would land outside the model directory")
    return rel


def _fetch_s3(uri: SourceURI, dest: Path, opts: FetchOptions) -> Path:
    client = S3Client(uri.bucket, opts.env)
    shown = uri.display()
    if not uri.is_directory:
        path = client.path(uri.key)
        return _download(client.url(path, {}), _HeaderFactory(client, path), dest / uri.basename, opts, shown)
    keys = client.list_keys(uri.key, opts, shown)
    if not keys:
        raise FetchError(f"no objects under {shown}")
    root = dest / (uri.basename or "source")
    for key in keys:
        path = client.path(key)
        _download(client.url(path, {}), _HeaderFactory(client, path), root / _relative(key, uri.key), opts, shown)
    return root


def _basic_auth(url: str) -> tuple[str, dict[str, str]]:
    """user:password@ in an http(s) URL becomes a Basic Authorization header (urllib ignores userinfo)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, {}
    token = base64.b64encode(
        f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}".encode()
    ).decode()
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), {"Authorization": f"Basic {token}"}


def _fetch_http(url: str, uri: SourceURI, dest: Path, opts: FetchOptions) -> Path:
    if uri.is_directory:
        raise FetchError(f"{uri.display()} names a directory: http(s) sources must be single files (use a tarball)")
    url, headers = _basic_auth(url)
    return _download(url, _HeaderFactory(static=headers), dest / (uri.basename or "model"), opts, uri.display())


def _local(uri: SourceURI, opts: FetchOptions) -> Path:
    path = uri.local_path(opts.source_mount)
    if not path.exists():
        where = f" (claim {uri.bucket} is mounted at {opts.source_mount})" if uri.scheme == "pvc" else ""
        raise FetchError(f"{uri.display()} does not exist{where}")
    if not os.access(path, os.R_OK):
        raise FetchError(f"{uri.display()} is not readable by uid {os.getuid()}")
    return path


def fetch(uri: SourceURI, dest: Path, opts: FetchOptions) -> Path:
    """The local path of the source: a downloaded copy under `dest`, or the file itself if local."""
    if uri.scheme in ("file", "pvc"):
        return _local(uri, opts)
    dest.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s", uri.display())
    if uri.scheme == "s3":
        path = _fetch_s3(uri, dest, opts)
    elif uri.scheme == "gs":  # public objects only: GCS's XML API over plain https
        url = f"{GCS_ENDPOINT}/{uri.bucket}/{sigv4.uri_encode(uri.key, keep_slash=True)}"
        path = _fetch_http(url, uri, dest, opts)
    else:
        path = _fetch_http(uri.raw, uri, dest, opts)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    log.info("fetched %s (%d bytes)", uri.display(), size)
    return path


def copy_into(src: Path, dest: Path) -> None:
    """Copy a file or directory tree to `dest` (used for in-place local sources)."""
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=False)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
