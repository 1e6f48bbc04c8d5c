"""The serving pods' Triton command and the serving images agree on the hardening (pure checks, plus
the pod's shell script run against stand-in `tritonserver` executables that print what they got).

The real binary is exercised in tests/integration/test_triton_hardening.py (Triton 2.51) and on the
real node in tests/e2e/test_triton_hardening.py; here only what those cannot show: the script's
version probe on a Triton that lists --http-max-input-size and --allow-client-shm (25.07+ /
26.04+, which cannot run here) and that the image entry point restricts the same APIs.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from modeldeploy.resources.deployment import (
    ADMIN_HEADER,
    HTTP_MAX_INPUT_BYTES,
    OPTIONAL_ARGS,
    RESTRICTED_APIS,
    TRITON_COMMAND,
    triton_args,
)

ROOT = Path(__file__).resolve().parents[2]
SERVE = ROOT / "serving-image" / "triton-serve.sh"
VALUES = ROOT / "charts" / "modeldeploy" / "values.yaml"
MIN_SAFE_RELEASE = (25, 7)  # the August 2025 advisories cover every Triton up to 25.06

# A stand-in tritonserver: --help prints the given flags (as a real help text lists them);
# otherwise it prints its arguments as JSON and exits.
FAKE = '''#!/bin/sh
if [ "$1" = "--help" ]; then printf '%s\\n' "Usage: tritonserver [options]" {flags}; exit 1; fi
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"
'''


def _fake_triton(tmp_path: Path, help_flags: tuple[str, ...]) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "tritonserver"
    exe.write_text(FAKE.format(flags=" ".join(f"'  {f} <integer>'" for f in help_flags)))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}


def _run_pod_command(env: dict[str, str]) -> list[str]:
    out = subprocess.run([*TRITON_COMMAND, *triton_args()], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_restricted_apis_are_the_five_no_client_needs() -> None:
    assert RESTRICTED_APIS == ("shared-memory", "trace", "model-repository", "logging", "statistics")
    # metadata and model-config stay open: the validation Job reads both (loader/validate.py)
    assert not {"health", "metadata", "model-config", "inference"} & set(RESTRICTED_APIS)


@pytest.mark.parametrize("flags", [(), ("--http-max-input-size", "--allow-client-shm")], ids=["2.51", "26.10"])
def test_pod_command_passes_optional_flags_only_to_a_triton_that_has_them(tmp_path: Path,
                                                                          flags: tuple[str, ...]) -> None:
    argv = _run_pod_command(_fake_triton(tmp_path, flags))
    assert argv[: len(triton_args())] == triton_args()
    restricted = [a for a in argv if a.startswith(("--http-restricted-api=", "--grpc-restricted-protocol="))]
    assert len(restricted) == 2
    keys = {a.rsplit(f"{ADMIN_HEADER}=", 1)[1] for a in restricted}
    assert len(keys) == 1 and re.fullmatch(r"[0-9a-f-]{36}", keys.pop())  # one key, both protocols
    assert all(a.split("=", 1)[1].startswith(",".join(RESTRICTED_APIS) + ":") for a in restricted)
    optional = [a for a in argv if a.startswith(tuple(f for f, _ in OPTIONAL_ARGS))]
    if flags:
        assert optional == [f"--http-max-input-size={HTTP_MAX_INPUT_BYTES}", "--allow-client-shm=false"]
    else:
        assert optional == []


def test_each_start_makes_a_new_key(tmp_path: Path) -> None:
    env = _fake_triton(tmp_path, ())
    first, second = _run_pod_command(env), _run_pod_command(env)
    assert first[-1] != second[-1] and first[-1].startswith("--grpc-restricted-protocol=")


def test_image_entry_point_restricts_the_same_apis(tmp_path: Path) -> None:
    env = _fake_triton(tmp_path, ("--http-max-input-size", "--allow-client-shm"))
    argv = json.loads(subprocess.run(["sh", str(SERVE), "--log-verbose=1"], env=env, capture_output=True,
                                     text=True, check=True).stdout)
    restricted = [a.split("=", 1)[1] for a in argv if a.startswith(("--http-restricted-api=",
                                                                     "--grpc-restricted-protocol="))]
    assert len(restricted) == 2 and len(set(restricted)) == 1
    assert restricted[0].startswith(",".join(RESTRICTED_APIS) + f":{ADMIN_HEADER}=")
    assert f"--http-max-input-size={HTTP_MAX_INPUT_BYTES}" in argv and "--allow-client-shm=false" in argv
    assert argv[-1] == "--log-verbose=1"  # extra arguments last: they can override


def _release(tag: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{2})\.(\d{2})", tag)
    assert m, tag
    return int(m.group(1)), int(m.group(2))


def test_gpu_image_is_nvidias_stock_triton_on_a_fixed_safe_release() -> None:
    gpu = yaml.safe_load(VALUES.read_text())["gpuServing"]
    assert gpu["enabled"] is False  # the default stays the CPU image (local clusters, tests)
    m = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d{2}\.\d{2})-py3", gpu["image"])
    assert m, gpu["image"]  # NVIDIA's own image, unchanged: our code runs from loaderImage
    assert _release(m.group(1)) >= MIN_SAFE_RELEASE, gpu["image"]
