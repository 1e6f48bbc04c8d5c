"""An artifact store in an S3-compatible bucket: signed GET, HEAD, PUT and DELETE of whole objects.

Addressing and credentials follow the loader's S3Client (loader/fetch.py): path-style against an
endpoint (AWS_ENDPOINT_URL, here MD_STORE_AWS_ENDPOINT_URL), virtual-hosted on AWS; requests are
signed with the loader's standard-library SigV4 (no boto3 in the loader image).

Every upload is signed with the file's sha256 as its payload hash, so the server itself refuses
bytes that changed on the way; the same digest goes into the object's `x-amz-meta-sha256`, which
lets a builder see without downloading whose bytes an object holds (a concurrent builder's).
Objects are written with single PUTs, so one file may be at most 5 GiB on AWS.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final

from ..loader import sigv4
from ..loader.errors import LoaderError, TransientFetchError
from ..loader.fetch import S3Client
from ..loader.retry import with_retries
from .errors import ArtifactCorrupt, StoreConfigError
from .manifest import MAX_MANIFEST_BYTES
from .store import Digest, ObjectInfo, file_name, manifest_name

CHUNK: Final = 1 << 20
SHA_HEADER: Final = "x-amz-meta-sha256"
_RETRY_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_RETRY_CODES: Final = frozenset({"XAmzContentSHA256Mismatch", "BadDigest", "SlowDown", "RequestTimeout",
                                 "InternalError", "IncompleteBody"})
_NETWORK_ERRORS: Final = (OSError, http.client.HTTPException)  # ConnectionError and TimeoutError are OSErrors


def _error_code(body: bytes) -> str:
    """S3's <Code> only: other parts of an error body may echo the request or the access key."""
    try:
        code = ET.fromstring(body).findtext("Code") or ""
    except ET.ParseError:
        return ""
    return code if code.isalnum() else ""


def _failure(status: int, reason: str, body: bytes, what: str) -> LoaderError:
    """A non-success answer as an error: transient (retried, exit 75) or the store's configuration."""
    code = _error_code(body)
    detail = f"HTTP {status} {reason}".strip() + (f" ({code})" if code else "")
    if status in _RETRY_STATUS or code in _RETRY_CODES:
        return TransientFetchError(f"{detail} on {what}")
    return StoreConfigError(f"{detail} on {what}: check the artifact store's endpoint, bucket and credentials")


class S3Store:
    """ArtifactStore over one bucket and prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        env: Mapping[str, str],
        *,
        attempts: int = 5,
        timeout_s: float = 60.0,
        backoff_s: float = 0.5,
    ) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self._client = S3Client(bucket, env)  # addressing, region and credentials, as the loader reads them
        self._attempts, self._timeout_s, self._backoff_s = attempts, timeout_s, backoff_s
        if self._client.scheme not in ("http", "https"):
            raise StoreConfigError(f"artifact store endpoint scheme {self._client.scheme!r}: use http(s)")

    # ------------------------------------------------------------ names and requests

    def where(self, key: str) -> str:
        return "s3://" + "/".join(p for p in (self.bucket, self.prefix, key) if p)

    def _shown(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    def _connection(self) -> http.client.HTTPConnection:
        if self._client.scheme == "https":
            return http.client.HTTPSConnection(self._client.host, timeout=self._timeout_s,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self._client.host, timeout=self._timeout_s)

    def _headers(self, method: str, path: str, payload_sha256: str, extra: Mapping[str, str]) -> dict[str, str]:
        creds = self._client.creds
        if creds is None:  # an anonymous bucket
            return {"host": self._client.host, **{k.lower(): v for k, v in extra.items()}}
        return sigv4.sign(method, self._client.host, path, {}, extra, creds, self._client.region,
                          datetime.now(UTC), payload_sha256=payload_sha256)

    @contextmanager
    def _request(
        self,
        method: str,
        name: str,
        *,
        body: BinaryIO | bytes | None = None,
        size: int = 0,
        payload_sha256: str = sigv4.EMPTY_SHA256,
        extra: Mapping[str, str] | None = None,
    ) -> Iterator[http.client.HTTPResponse]:
        """One signed request; a network failure before the answer becomes TransientFetchError."""
        path = self._client.path(name)
        headers = self._headers(method, path, payload_sha256, extra or {})
        if body is not None:
            headers["content-length"] = str(size)
        conn = self._connection()
        try:
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
            except _NETWORK_ERRORS as e:
                raise TransientFetchError(f"network error on {self._shown(name)}: {e.__class__.__name__}") from None
            yield resp
        finally:
            conn.close()

    def _read(self, resp: http.client.HTTPResponse, limit: int, name: str) -> bytes:
        """Up to `limit` bytes of a body; a network failure becomes TransientFetchError."""
        try:
            return resp.read(limit)
        except _NETWORK_ERRORS as e:
            raise TransientFetchError(f"network error on {self._shown(name)}: {e.__class__.__name__}") from None

    # ------------------------------------------------------------ reads

    def read_manifest(self, key: str) -> bytes | None:
        name = manifest_name(self.prefix, key)

        def attempt() -> bytes | None:
            with self._request("GET", name) as resp:
                body = self._read(resp, MAX_MANIFEST_BYTES + 1, name)
                if resp.status == 404 and _error_code(body) == "NoSuchKey":
                    return None
                if resp.status != 200:
                    raise _failure(resp.status, resp.reason, body, self._shown(name))
                return body

        return with_retries(attempt, f"reading {self._shown(name)}", self._attempts, self._backoff_s)

    def download(self, key: str, rel: str, dest: Path, size: int) -> Digest:
        name = file_name(self.prefix, key, rel)
        shown = self._shown(name)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def attempt() -> Digest:
            with self._request("GET", name) as resp:
                if resp.status != 200:
                    body = self._read(resp, 64 * 1024, name)
                    if resp.status == 404 and _error_code(body) == "NoSuchKey":
                        raise ArtifactCorrupt(f"{shown}: listed in the manifest but missing from the store")
                    raise _failure(resp.status, resp.reason, body, shown)
                length = resp.getheader("Content-Length")
                announced = int(length) if length and length.strip().isdigit() else None
                if announced is not None and announced != size:
                    return Digest(announced, "")  # the caller reports the size mismatch
                h = hashlib.sha256()
                written = 0
                with open(dest, "wb") as f:  # a local disk error is not the store's: it propagates
                    while written <= size and (chunk := self._read(resp, min(CHUNK, size + 1 - written), name)):
                        h.update(chunk)
                        f.write(chunk)
                        written += len(chunk)
                if announced is not None and written < announced:
                    raise TransientFetchError(f"download of {shown} was cut short ({written} of {announced} bytes)")
                return Digest(written, h.hexdigest())

        return with_retries(attempt, f"fetching {shown}", self._attempts, self._backoff_s)

    def stat(self, key: str, rel: str) -> ObjectInfo | None:
        name = file_name(self.prefix, key, rel)

        def attempt() -> ObjectInfo | None:
            with self._request("HEAD", name) as resp:
                self._read(resp, 1, name)
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise _failure(resp.status, resp.reason, b"", self._shown(name))
                length = (resp.getheader("Content-Length") or "").strip()
                sha = (resp.getheader(SHA_HEADER) or "").strip().lower()
                return ObjectInfo(int(length) if length.isdigit() else -1, sha or None)

        return with_retries(attempt, f"checking {self._shown(name)}", self._attempts, self._backoff_s)

    # ------------------------------------------------------------ writes

    def _put(self, name: str, content: Path | bytes, size: int, sha256: str, extra: Mapping[str, str]) -> None:
        """PUT a file (streamed) or bytes, signed with their sha256 so the server checks the payload."""
        shown = self._shown(name)

        def send(body: BinaryIO | bytes) -> None:
            with self._request("PUT", name, body=body, size=size, payload_sha256=sha256, extra=extra) as resp:
                answer = self._read(resp, 64 * 1024, name)
                if resp.status != 200:
                    raise _failure(resp.status, resp.reason, answer, shown)

        def attempt() -> None:
            if isinstance(content, bytes):
                send(content)
                return
            with open(content, "rb") as f:
                send(f)

        with_retries(attempt, f"uploading {shown}", self._attempts, self._backoff_s)

    def upload(self, key: str, rel: str, src: Path, sha256: str, size: int) -> None:
        self._put(file_name(self.prefix, key, rel), src, size, sha256, {SHA_HEADER: sha256})

    def write_manifest(self, key: str, data: bytes) -> None:
        sha = hashlib.sha256(data).hexdigest()
        self._put(manifest_name(self.prefix, key), data, len(data), sha,
                  {SHA_HEADER: sha, "content-type": "application/json"})

    def delete_manifest(self, key: str) -> None:
        name = manifest_name(self.prefix, key)

        def attempt() -> None:
            with self._request("DELETE", name) as resp:
                body = self._read(resp, 64 * 1024, name)
                if resp.status not in (200, 204, 404):
                    raise _failure(resp.status, resp.reason, body, self._shown(name))

        with_retries(attempt, f"deleting {self._shown(name)}", self._attempts, self._backoff_s)
