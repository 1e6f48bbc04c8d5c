"""The seam for the node-local cache agent: read artifacts over HTTP, fall back to the store.

The agent (a DaemonSet, not part of this package) serves the store's layout read-only over plain
HTTP on its node, filling from the store on a miss:

    GET {MD_ARTIFACT_CACHE_URL}/{key}/manifest.json        200 bytes | 404 not built
    GET {MD_ARTIFACT_CACHE_URL}/{key}/model/{relative path} 200 bytes | 404

Nothing it says is trusted: every file is checked against the manifest like a store download, and
any failure of the agent (down, 404, 5xx, wrong bytes) sends the pod to the store instead, so
the cache can make a start faster but never break one.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Final

from ..loader.errors import FetchError, LoaderError, TransientFetchError
from .errors import ArtifactCorrupt
from .manifest import MAX_MANIFEST_BYTES
from .report import log
from .store import ArtifactReader, Digest, check_key, check_rel, manifest_name

CHUNK: Final = 1 << 20
_NETWORK_ERRORS: Final = (OSError, http.client.HTTPException)
_DIRECT: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the agent is on this node: no proxy


class AgentUnreachable(TransientFetchError):
    """The agent did not answer or dropped the connection: asking it again for the next file of
    this fetch would only add its timeout again."""


class HttpReader:
    """ArtifactReader over the cache agent's HTTP endpoint (one try per request: the store is
    the retry)."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query:
            raise FetchError("MD_ARTIFACT_CACHE_URL must be an http(s)://HOST[:PORT][/PATH] URL without credentials")
        self.base = base_url.strip().rstrip("/")
        self.timeout_s = timeout_s

    def where(self, key: str) -> str:
        return f"{self.base}/{check_key(key)}"

    def _get(self, path: str) -> http.client.HTTPResponse | None:
        """The open response for `path` under the base URL, or None on 404."""
        url = f"{self.base}/{urllib.parse.quote(path)}"
        try:
            resp: http.client.HTTPResponse = _DIRECT.open(url, timeout=self.timeout_s)
            return resp
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 404:
                return None
            raise TransientFetchError(f"cache agent answered HTTP {e.code} for {url}") from None
        except (urllib.error.URLError, *_NETWORK_ERRORS) as e:
            reason = getattr(e, "reason", None) or e.__class__.__name__
            raise AgentUnreachable(f"cache agent at {self.base} unreachable: {reason}") from None

    def read_manifest(self, key: str) -> bytes | None:
        resp = self._get(manifest_name("", key))
        if resp is None:
            return None
        with resp:
            try:
                return resp.read(MAX_MANIFEST_BYTES + 1)
            except _NETWORK_ERRORS as e:
                raise AgentUnreachable(f"cache agent at {self.base}: {e.__class__.__name__}") from None

    def download(self, key: str, rel: str, dest: Path, size: int) -> Digest:
        resp = self._get(f"{check_key(key)}/model/{check_rel(rel)}")
        if resp is None:
            raise ArtifactCorrupt(f"{self.where(key)}/model/{rel}: not in the cache")
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        written = 0
        with resp, open(dest, "wb") as out:
            while written <= size:
                try:
                    chunk = resp.read(min(CHUNK, size + 1 - written))
                except _NETWORK_ERRORS as e:
                    raise AgentUnreachable(f"cache agent at {self.base}: {e.__class__.__name__}") from None
                if not chunk:
                    break
                h.update(chunk)
                out.write(chunk)
                written += len(chunk)
        return Digest(written, h.hexdigest())


class FallbackReader:
    """Reads from `primary` (the cache agent) and from `fallback` (the store) when it fails.

    `from_cache` holds the files the cache delivered (whether they turned out right is the
    caller's check). An agent that is unreachable once is not asked again in this fetch: a
    dropped connection costs one timeout, not one per file."""

    def __init__(self, primary: ArtifactReader, fallback: ArtifactReader) -> None:
        self.primary, self.fallback = primary, fallback
        self.from_cache: set[str] = set()
        self.primary_down = False

    def where(self, key: str) -> str:
        return self.fallback.where(key)

    def _failed(self, e: LoaderError, what: str) -> None:
        self.primary_down = isinstance(e, AgentUnreachable)
        log.warning("node cache: %s; %s from the store instead%s", e, what,
                    " (and the rest of this fetch)" if self.primary_down else "")

    def read_manifest(self, key: str) -> bytes | None:
        data = None
        if not self.primary_down:
            try:
                data = self.primary.read_manifest(key)
            except LoaderError as e:
                self._failed(e, "reading the manifest")
        return data if data is not None else self.fallback.read_manifest(key)

    def download(self, key: str, rel: str, dest: Path, size: int) -> Digest:
        if not self.primary_down:
            try:
                digest = self.primary.download(key, rel, dest, size)
                self.from_cache.add(rel)
                return digest
            except LoaderError as e:
                self._failed(e, f"fetching {rel}")
        return self.fallback.download(key, rel, dest, size)
