"""A real S3-compatible server for tests: MinIO on a free loopback port, with a fresh data directory.

MinIO is built once from its Go module (hack/triton/build-minio.sh, cached). Objects are put with
plain signed HTTP requests (the loader's own SigV4 signer with method PUT), so the tests need no
AWS SDK; MinIO checks every signature, so a wrong key is refused as it would be by AWS.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from localcluster.objectstore import Store
from localcluster.process import stop_group

from .serving import ROOT, free_port


def minio_binary() -> Path:
    """$MD_MINIO_BIN, else the cached build (built on first use: ~10 minutes on two cores)."""
    if explicit := os.environ.get("MD_MINIO_BIN"):
        return Path(explicit)
    out = subprocess.run([str(ROOT / "hack" / "triton" / "build-minio.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class S3Server:
    """A running server, its root credentials, and helpers to fill it."""

    process: subprocess.Popen[bytes]
    port: int
    access_key: str
    secret_key: str
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store(self) -> Store:
        """The same client the local cluster's object store uses (signed with the loader's SigV4)."""
        return Store(self.endpoint, self.access_key, self.secret_key)

    def env(self, access_key: str | None = None, secret_key: str | None = None) -> dict[str, str]:
        """The AWS_* variables a loader pod gets from its credentialsSecret."""
        return {**self.store.secret_data(), "AWS_ACCESS_KEY_ID": access_key or self.access_key,
                "AWS_SECRET_ACCESS_KEY": secret_key or self.secret_key}

    def create_bucket(self, bucket: str) -> None:
        self.store.ensure_bucket(bucket)

    def put(self, bucket: str, key: str, data: bytes) -> str:
        """Upload an object; returns its s3:// URI."""
        uri = f"s3://{bucket}/{key}"
        self.store.put(uri, data)
        return uri


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/minio/health/ready", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def running_minio(workdir: Path, timeout_s: float = 60.0) -> Iterator[S3Server]:
    """MinIO serving a fresh directory under `workdir` until the block ends."""
    binary = minio_binary()
    port, console = free_port(), free_port()
    data = workdir / "minio-data"
    data.mkdir(parents=True, exist_ok=True)
    access, secret = "md-test-root", "md-test-secret-" + os.urandom(6).hex()
    env = {**os.environ, "MINIO_ROOT_USER": access, "MINIO_ROOT_PASSWORD": secret,
           "MINIO_BROWSER": "off", "MINIO_UPDATE": "off", "HOME": str(workdir)}
    log_path = workdir / "minio.log"
    argv = [str(binary), "server", str(data), "--address", f"127.0.0.1:{port}",
            "--console-address", f"127.0.0.1:{console}", "--quiet"]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = S3Server(proc, port, access, secret, log_path)
    try:
        deadline = time.monotonic() + timeout_s
        while not _ready(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"minio did not become ready:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        yield server
    finally:
        stop_group(proc, timeout=10)
