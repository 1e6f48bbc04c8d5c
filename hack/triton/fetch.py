#!/usr/bin/env python3
"""Fetch a CPU tritonserver once, from the nvidia-pytriton wheel, into ~/.cache/modeldeploy/triton/<version>/.

PyPI has no tritonserver package, but the nvidia-pytriton wheel bundles a real tritonserver and
its python backend. This unpacks just those (not installing pytriton, which would pin numpy<2
next to the operator), restores the execute bits a zip loses, assembles a backend directory
Triton can use, and installs the stub's own packages (numpy<2 + onnxruntime: the stub fails
every request with numpy 2) into a separate site directory.

Usage: hack/triton/fetch.py [--print-env]   (stdlib only; idempotent; safe to run concurrently)
Prints the paths as shell exports with --print-env, as JSON otherwise.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

PYTRITON_VERSION: Final = os.environ.get("MD_PYTRITON_VERSION", "0.7.0")  # bundles tritonserver 2.51
STUB_PYTHON: Final = "3.11"  # the stub links libpython3.11 (Debian bookworm's)
STUB_REQUIREMENTS: Final = ("numpy>=1.26,<2", "onnxruntime>=1.18,<2")
CACHE: Final = Path(os.environ.get("MD_CACHE_DIR", Path.home() / ".cache" / "modeldeploy")) / "triton"


@dataclass(frozen=True)
class TritonInstall:
    """Where everything is, once fetched."""

    root: str
    tritonserver: str  # the binary
    backend_dir: str  # --backend-directory (holds python/)
    lib_dir: str  # must be on LD_LIBRARY_PATH
    stub_site: str  # sys.path entry for the runner (numpy<2, onnxruntime)


def paths(version: str = PYTRITON_VERSION) -> TritonInstall:
    root = CACHE / version
    return TritonInstall(
        root=str(root),
        tritonserver=str(root / "tritonserver" / "bin" / "tritonserver"),
        backend_dir=str(root / "backends"),
        lib_dir=str(root / "nvidia_pytriton.libs"),
        stub_site=str(root / "stub-site"),
    )


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def _wheel(dest: Path, version: str) -> Path:
    found = sorted(dest.glob(f"nvidia_pytriton-{version}-*.whl"))
    if not found:
        _pip("download", "--no-deps", "--only-binary=:all:", "--platform", "manylinux_2_35_x86_64",
             "-d", str(dest), f"nvidia-pytriton=={version}")
        found = sorted(dest.glob(f"nvidia_pytriton-{version}-*.whl"))
    if not found:
        raise SystemExit(f"nvidia-pytriton {version} wheel not found after download")
    return found[0]


def _unpack(wheel: Path, staging: Path) -> None:
    """Only the server, its libraries and the 3.11 stub; zip drops the execute bits, so restore them."""
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/")):
                z.extract(name, staging)
    shutil.move(str(staging / "pytriton" / "tritonserver"), str(staging / "tritonserver"))
    shutil.rmtree(staging / "pytriton")
    server = staging / "tritonserver"
    backend = staging / "backends" / "python"
    backend.mkdir(parents=True)
    for f in (server / "backends" / "python").iterdir():
        shutil.copy2(f, backend / f.name)
    shutil.copy2(server / "python_backend_stubs" / STUB_PYTHON / "triton_python_backend_stub", backend)
    for exe in (server / "bin" / "tritonserver", backend / "triton_python_backend_stub"):
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def check_libpython() -> None:
    """The stub embeds Python through libpython3.11.so.1.0; say how to get it if it is missing."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    if f"libpython{STUB_PYTHON}.so.1.0" not in out:
        raise SystemExit(f"libpython{STUB_PYTHON}.so.1.0 not found: apt-get install -y libpython{STUB_PYTHON}")


def ensure(version: str = PYTRITON_VERSION) -> TritonInstall:
    """Fetch and assemble once; later calls only check the marker file."""
    install = paths(version)
    root = Path(install.root)
    marker = root / ".complete"
    if marker.exists():
        return install
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return install
        wheel = _wheel(CACHE / "wheels", version)
        staging = CACHE / f".{version}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        _unpack(wheel, staging)
        _pip("install", "--target", str(staging / "stub-site"), "--only-binary=:all:",
             "--python-version", STUB_PYTHON, "--implementation", "cp", *STUB_REQUIREMENTS)
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
        marker.write_text(json.dumps(asdict(install)))
    return install


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--print-env", action="store_true", help="print shell exports instead of JSON")
    args = p.parse_args()
    check_libpython()
    install = ensure()
    if args.print_env:
        print(f"export TRITONSERVER={install.tritonserver}")
        print(f"export TRITON_BACKEND_DIR={install.backend_dir}")
        print(f"export LD_LIBRARY_PATH={install.lib_dir}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}")
        print(f"export MD_RUNNER_SYS_PATH={install.stub_site}")
    else:
        print(json.dumps(asdict(install), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
