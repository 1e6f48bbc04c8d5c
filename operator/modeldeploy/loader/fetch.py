"""Bring the model's bytes to the local disk, from any supported source, trusting none of them.

Remote sources (s3://, gs://, http(s)://) are downloaded into a work directory next to the
model repository (the pod's /tmp is small); local ones (file://, pvc://) are copied there too,
without following a symbolic link out of the source (localsource.py), so every later step reads
bytes that were checked. Transient failures are retried with backoff; 403/404 fail at once with a
reason that says what to fix.

What a source cannot make the loader do:
- fetch more than the download limit (limits.py): a server's Content-Length is checked before
  anything is written, and the bytes are counted as they arrive;
- hand credentials to another host: a redirect to another scheme, host or port is followed
  without the Authorization header (Basic or SigV4) and without any X-Amz-* header, Cookie or
  Proxy-Authorization; a redirect from https to http, or to a scheme other than http(s), is
  refused (as curl and requests do for credentials);
- hold the loader in memory: an S3 listing is read in bounded pages, at most MAX_OBJECTS keys.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from . import sigv4
from .errors import FetchError, SizeLimitError, SourceRefused, TransientFetchError
from .limits import ByteBudget, human
from .localsource import copy_source, copy_tree
from .report import log
from .retry import with_retries
from .uri import SourceURI

GCS_ENDPOINT: Final = "https://storage.googleapis.com"
CHUNK: Final = 1 << 20
MAX_LISTING_BYTES: Final = 16 << 20  # one ListObjectsV2 page of 1000 keys is well under 1 MiB
MAX_OBJECTS: Final = 100_000  # keys of one directory source
MAX_LIST_PAGES: Final = 1_000
MAX_REDIRECTS: Final = 5
# Sent only to the host a request was made for: never across a redirect to another origin.
_CREDENTIAL_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
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
    budget: ByteBudget = field(default_factory=ByteBudget)  # shared by every fetch of one run


def _s3_error_code(body: bytes) -> str:
    """S3's <Code> element only: the rest of an error body may echo the access key or the request."""
    try:
        code = ET.fromstring(body).findtext("Code") or ""
    except ET.ParseError:
        return ""
    return code if code.isalnum() else ""


def _http_failure(status: int, reason: str, body: bytes, shown: str, note: str = "") -> FetchError:
    code = _s3_error_code(body)
    detail = f"HTTP {status} {reason}".strip() + (f" ({code})" if code else "")
    if status in _RETRY_STATUS:
        return TransientFetchError(f"{detail} fetching {shown}")
    hint = _HINTS.get(status, "")
    return FetchError(f"{detail} fetching {shown}" + (f": {hint}" if hint else "") + note)


# ---------------------------------------------------------------- redirects


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, the port made explicit: what credentials are bound to."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or {"https": 443, "http": 80}.get(scheme, 0)


def show_origin(o: tuple[str, str, int]) -> str:
    """An origin for messages: scheme://host:port, never a path or query (they may be presigned)."""
    host = f"[{o[1]}]" if ":" in o[1] else o[1]
    return f"{o[0]}://{host}:{o[2]}"


def is_credential_header(name: str) -> bool:
    """Headers that authenticate the request: Authorization, Cookie, Proxy-Authorization and every
    X-Amz-* header (SigV4's date, payload hash and session token are bound to the signed host)."""
    n = name.lower()
    return n in _CREDENTIAL_HEADERS or n.startswith("x-amz-")


class _RedirectRefused(Exception):
    """Raised inside urllib's redirect handling; _get turns it into SourceRefused with the source's name."""


def redirect_refusal(old_url: str, new_url: str) -> str | None:
    """Why a redirect from `old_url` to `new_url` is refused, or None when it may be followed."""
    old, new = origin(old_url), origin(new_url)
    if new[0] not in ("http", "https"):
        scheme = new[0] or "scheme-less"
        return f"refusing a redirect from {show_origin(old)} to a {scheme} URL: only http(s) is fetched"
    if old[0] == "https" and new[0] == "http":
        return (f"refusing a redirect from https to http ({show_origin(old)} -> {show_origin(new)}): "
                "the download would no longer be encrypted")
    return None


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, minus credential forwarding and downgrades (urllib forwards both)."""

    max_redirections = MAX_REDIRECTS

    def http_error_302(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any) -> Any:
        """Check the target before urllib does (it would echo a refused Location in its error)."""
        location = headers.get("location") or headers.get("uri")
        if location:
            refusal = redirect_refusal(req.full_url, urllib.parse.urljoin(req.full_url, location))
            if refusal is not None:
                fp.close()
                raise _RedirectRefused(refusal)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        refusal = redirect_refusal(req.full_url, newurl)
        if refusal is not None:
            fp.close()
            raise _RedirectRefused(refusal)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(newurl) != origin(req.full_url):
            for name in [k for k in new.headers if is_credential_header(k)]:
                new.remove_header(name)
            for name in [k for k in new.unredirected_hdrs if is_credential_header(k)]:
                new.remove_header(name)
        return new


_OPENER: Final = urllib.request.build_opener(_Redirects)


# ---------------------------------------------------------------- one GET


def _announced(value: str | None) -> int | None:
    """Content-Length as a number; None when absent or not a plain non-negative integer."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _stream(resp: Any, dest: Path, shown: str, budget: ByteBudget | None) -> int:
    """Write the body to `dest`, refusing it before the first byte when its announced size does not
    fit, and before the chunk that would pass the limit otherwise. Returns the bytes written."""
    announced = _announced(resp.headers.get("Content-Length"))
    if budget is not None and announced is not None:
        budget.check(announced, shown, f"the server announced {announced} bytes (Content-Length)")
    written = 0
    try:
        with open(dest, "wb") as f:
            while chunk := resp.read(CHUNK):
                if budget is not None:
                    budget.check(written + len(chunk), shown,
                                 f"more than {budget.remaining} bytes arrived without an announced size; "
                                 "the download was stopped there")
                f.write(chunk)
                written += len(chunk)
    except SizeLimitError:
        dest.unlink(missing_ok=True)
        raise
    if announced is not None and written != announced:
        raise TransientFetchError(f"download of {shown} was cut short ({written} of {announced} bytes)")
    return written


def _get(url: str, headers: Mapping[str, str], dest: Path | None, timeout_s: float, shown: str,
         budget: ByteBudget | None = None) -> bytes:
    """One GET: the body streamed to `dest` (returns b"", counted against `budget`) or, when dest is
    None, returned in memory (at most MAX_LISTING_BYTES: S3 listings)."""
    request = urllib.request.Request(url, headers=dict(headers), method="GET")
    try:
        with _OPENER.open(request, timeout=timeout_s) as resp:
            if dest is None:
                body: bytes = resp.read(MAX_LISTING_BYTES + 1)
                if len(body) > MAX_LISTING_BYTES:
                    raise FetchError(f"listing {shown}: the response is larger than {human(MAX_LISTING_BYTES)}")
                return body
            written = _stream(resp, dest, shown, budget)
            if budget is not None:
                budget.add(written)
            return b""
    except _RedirectRefused as e:
        raise SourceRefused(f"{e} fetching {shown}") from None
    except urllib.error.HTTPError as e:
        body = e.read(64 * 1024) if e.fp is not None else b""
        note = ""
        final = e.geturl() or url
        if any(is_credential_header(k) for k in headers) and origin(final) != origin(url):
            note = f" (after a redirect to {show_origin(origin(final))}, which was not sent the credentials)"
        raise _http_failure(e.code, e.reason or "", body, shown, note) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e.__class__.__name__
        raise TransientFetchError(f"network error fetching {shown}: {reason}") from None


def _download(url: str, headers_for: _HeaderFactory, dest: Path, opts: FetchOptions, shown: str) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)

    def attempt() -> Path:
        _get(url, headers_for(), dest, opts.timeout_s, shown, opts.budget)
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

    def list_objects(self, prefix: str, opts: FetchOptions, shown: str) -> list[tuple[str, int]]:
        """(key, size) of every object under `prefix` (ListObjectsV2, following continuation
        tokens), at most MAX_OBJECTS keys in at most MAX_LIST_PAGES pages."""
        objects: list[tuple[str, int]] = []
        token = ""
        for _ in range(MAX_LIST_PAGES):
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            path = self.path("")

            def attempt(q: dict[str, str] = query, p: str = path) -> bytes:
                return _get(self.url(p, q), self.headers(p, q), None, opts.timeout_s, shown)

            body = with_retries(attempt, f"listing {shown}", opts.attempts, opts.backoff_s)
            try:
                root = ET.fromstring(body)
            except ET.ParseError:
                raise FetchError(f"listing {shown}: the endpoint's answer is not an S3 listing") from None
            for item in root.iter(f"{_S3_NS}Contents"):
                key = item.findtext(f"{_S3_NS}Key") or ""
                size = (item.findtext(f"{_S3_NS}Size") or "0").strip()
                objects.append((key, int(size) if size.isdigit() else 0))
            if len(objects) > MAX_OBJECTS:
                raise FetchError(f"more than {MAX_OBJECTS} objects under {shown}: not a model directory")
            token = root.findtext(f"{_S3_NS}NextContinuationToken") or ""
            if root.findtext(f"{_S3_NS}IsTruncated") != "true" or not token:
                return [(k, n) for k, n in objects if k and not k.endswith("/")]
        raise FetchError(f"listing {shown} did not end after {MAX_LIST_PAGES} pages")


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
    objects = client.list_objects(uri.key, opts, shown)
    if not objects:
        raise FetchError(f"no objects under {shown}")
    total = sum(size for _, size in objects)
    opts.budget.check(total, shown, f"its {len(objects)} objects total {total} bytes")
    root = dest / (uri.basename or "source")
    for key, _ in objects:
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


def _local(uri: SourceURI, dest: Path, opts: FetchOptions) -> Path:
    """A checked copy of a pvc:// or file:// source under `dest` (localsource.py)."""
    path = uri.local_path(opts.source_mount)
    if not os.path.lexists(path):
        where = f" (claim {uri.bucket} is mounted at {opts.source_mount})" if uri.scheme == "pvc" else ""
        raise FetchError(f"{uri.display()} does not exist{where}")
    log.info("copying %s", uri.display())
    boundary = opts.source_mount if uri.scheme == "pvc" else None
    return copy_source(path, boundary, dest, uri.basename or "source", uri.display(), opts.budget)


def fetch(uri: SourceURI, dest: Path, opts: FetchOptions) -> Path:
    """A copy of the source under `dest`: downloaded, or copied from a local path with every check."""
    dest.mkdir(parents=True, exist_ok=True)
    if uri.scheme in ("file", "pvc"):
        path = _local(uri, dest, opts)
    elif uri.scheme == "s3":
        log.info("fetching %s", uri.display())
        path = _fetch_s3(uri, dest, opts)
    elif uri.scheme == "gs":
        log.info("fetching %s", uri.display())  # public objects only: GCS's XML API over plain https
        url = f"{GCS_ENDPOINT}/{uri.bucket}/{sigv4.uri_encode(uri.key, keep_slash=True)}"
        path = _fetch_http(url, uri, dest, opts)
    else:
        log.info("fetching %s", uri.display())
        path = _fetch_http(uri.raw, uri, dest, opts)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    log.info("fetched %s (%d bytes)", uri.display(), size)
    return path


def copy_into(src: Path, dest: Path) -> None:
    """Copy a file or directory tree the loader made (under its work directory) to `dest`, with the
    same refusals as a local source: no link out of it, no special files."""
    if src.is_dir():
        copy_tree(src, dest)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
