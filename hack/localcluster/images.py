"""Images the local cluster builds itself (no registry is reachable): pause, and small Go programs.

Archives are cached under ~/.cache/modeldeploy/images/, keyed by a hash of their inputs, so a
second `up` reuses them; `oci.build_image` is deterministic, so a rebuild gives the same digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import oci
from .config import cache_dir

PAUSE_IMAGE = "localhost/pause:local"
_PAUSE_SOURCE = Path(__file__).with_name("csrc") / "pause.c"


def images_dir() -> Path:
    return cache_dir() / "images"


def _tool_version(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.splitlines()[0]


def pause_image() -> Path:
    """The pause image archive (a static C binary in an image of its own), built once."""
    source = _PAUSE_SOURCE.read_bytes()
    key = hashlib.sha256(source + _tool_version(["gcc", "--version"]).encode()).hexdigest()[:12]
    out = images_dir() / f"pause-{key}.tar"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(prefix="md-pause-") as tmp:
        binary = Path(tmp) / "pause"
        subprocess.run(["gcc", "-static", "-Os", "-s", "-Wall", "-o", str(binary), str(_PAUSE_SOURCE)], check=True)
        oci.build_image(PAUSE_IMAGE, [{"/pause": oci.File(binary, 0o755)}],
                        oci.ImageConfig(entrypoint=("/pause",), env=()), out)
    return out


def go_binary(package_dir: Path, out: Path) -> Path:
    """A static Go binary (CGO off, stripped) of the main package in `package_dir`."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    env = dict(os.environ, CGO_ENABLED="0")
    # -trimpath and -buildvcs=false: the binary (so the image digest) must not depend on where
    # the checkout is or on its git state.
    proc = subprocess.run([go, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", str(out), "."],
                          cwd=package_dir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"go build in {package_dir} failed:\n{proc.stderr}")
    return out


def go_image(name: str, package_dir: Path, config: oci.ImageConfig, out: Path,
             binary_path: str = "/app") -> str:
    """Build the Go program in `package_dir` and pack it alone into image `name` at `out`.

    The entrypoint defaults to the binary; returns the manifest digest.
    """
    with tempfile.TemporaryDirectory(prefix="md-goimg-") as tmp:
        binary = go_binary(package_dir, Path(tmp) / "app")
        if not config.entrypoint:
            config = dataclasses.replace(config, entrypoint=(binary_path,))
        return oci.build_image(name, [{binary_path: oci.File(binary, 0o755)}], config, out)
