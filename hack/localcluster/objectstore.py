"""An S3-compatible store (MinIO) beside the cluster, reachable from pods, holding the models.

It runs as one more process of the cluster (pid file in <cluster>/run, so `down` stops it), on
the bridge address when the cluster has a real node (pods reach it there) and on loopback
otherwise. Root credentials are made per cluster and kept in <cluster>/objectstore.json (0600):
they go into a Secret for the loader, never into logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from modeldeploy.loader import sigv4

from . import cluster, hostnet, process
from .config import REPO_ROOT, ClusterConfig
from .progress import step

REGION = "us-east-1"
NAME = "minio"


@dataclass(frozen=True)
class Store:
    endpoint: str  # http://HOST:PORT, as pods and the host reach it
    access_key: str
    secret_key: str

    def secret_data(self) -> dict[str, str]:
        """What a ModelDeployment's credentialsSecret holds for the loader."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": REGION}

    busy_retry_s: float = 30.0  # how long a 503 (MinIO still initialising, or busy) is retried

    def _request(self, method: str, path: str, body: bytes = b"") -> int:
        """The HTTP status of one signed request. 503 (S3's "slow down / try again") is retried:
        a loaded CI run got it for a bucket creation right after /minio/health/ready said 200."""
        deadline = time.monotonic() + self.busy_retry_s
        while True:
            code = self._request_once(method, path, body)
            if code != 503 or time.monotonic() >= deadline:
                return code
            time.sleep(0.2)

    def _request_once(self, method: str, path: str, body: bytes) -> int:
        return self._send(method, path, body)[0]

    def _send(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        host = self.endpoint.removeprefix("http://")
        creds = sigv4.Credentials(self.access_key, self.secret_key)
        headers = sigv4.sign(method, host, path, {}, {}, creds, REGION, datetime.now(UTC),
                             payload_sha256=hashlib.sha256(body).hexdigest())
        headers.pop("host")
        req = urllib.request.Request(self.endpoint + path, data=body or None, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as e:
            return int(e.code), b""

    def get(self, uri: str) -> bytes:
        """The object's bytes (what a test compares with what pods serve)."""
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        code, data = self._send("GET", f"/{bucket}/{sigv4.uri_encode(key, keep_slash=True)}")
        if code != 200:
            raise RuntimeError(f"reading {uri}: HTTP {code}")
        return data

    def ensure_bucket(self, bucket: str) -> None:
        code = self._request("PUT", f"/{bucket}")
        if code not in (200, 409):
            raise RuntimeError(f"creating bucket {bucket}: HTTP {code}")

    def exists(self, uri: str) -> bool:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        return self._request("HEAD", f"/{bucket}/{sigv4.uri_encode(key, keep_slash=True)}") == 200

    def put(self, uri: str, data: bytes) -> None:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        self.ensure_bucket(bucket)
        code = self._request("PUT", f"/{bucket}/{sigv4.uri_encode(key, keep_slash=True)}", data)
        if code != 200:
            raise RuntimeError(f"uploading {uri}: HTTP {code}")


def _state(cfg: ClusterConfig) -> Path:
    return cfg.root / "objectstore.json"


def _minio_binary() -> Path:
    out = subprocess.run([str(REPO_ROOT / "hack" / "triton" / "build-minio.sh")], check=True,
                         capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _ready(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/minio/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def up(cfg: ClusterConfig) -> Store:
    """Start MinIO if it is not running; idempotent."""
    cfg = cluster.effective(cfg)
    path = _state(cfg)
    if path.exists():
        store = Store(**json.loads(path.read_text()))
    else:
        host = hostnet.network(cfg).host_ip if cfg.real_node else "127.0.0.1"
        store = Store(f"http://{host}:{process.free_port()}", "md-" + secrets.token_hex(4), secrets.token_hex(20))
        path.write_text(json.dumps(asdict(store)))
        path.chmod(0o600)
    run = cfg.root / "run"
    if process.running(run, NAME) and _ready(store.endpoint):
        return store
    with step(f"starting MinIO (S3) on {store.endpoint}"):
        data = cfg.root / "minio-data"
        data.mkdir(parents=True, exist_ok=True)
        addr = store.endpoint.removeprefix("http://")
        env = {**os.environ, "MINIO_ROOT_USER": store.access_key, "MINIO_ROOT_PASSWORD": store.secret_key,
               "MINIO_BROWSER": "off", "MINIO_UPDATE": "off", "HOME": str(cfg.root)}
        process.start(run, cfg.logs, NAME, [str(_minio_binary()), "server", str(data), "--address", addr,
                                             "--console-address", f"127.0.0.1:{process.free_port()}", "--quiet"],
                      env=env)
        deadline = time.monotonic() + 60
        while not _ready(store.endpoint):
            if not process.running(run, NAME) or time.monotonic() > deadline:
                raise RuntimeError(f"MinIO did not start; see {cfg.logs / (NAME + '.log')}")
            time.sleep(0.2)
    return store
