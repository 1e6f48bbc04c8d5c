#!/usr/bin/env bash
# Pack what hack/gpu/triton_on_gpu.py needs on a GPU machine that reaches no registry, into .gpu/
# (git-ignored locally through .git/info/exclude, carried by the device tool, under its 64 MiB):
#  - the tritonserver of the nvidia-pytriton wheel (CUDA 12.6 runtime; `make test` fetched it),
#    with its python backend and the stub for Python 3.12 (the GPU machine's Python), xz-packed,
#    without the libpython3.13 the 3.13 stub would need;
#  - numpy<2 for that stub (the stub fails every request with numpy 2: ../shared/ENVIRONMENT.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
triton=${MD_CACHE_DIR:-$HOME/.cache/modeldeploy}/triton/0.7.0
out=$root/.gpu
grep -qx '/.gpu/' "$root/.git/info/exclude" 2>/dev/null || echo '/.gpu/' >>"$root/.git/info/exclude"
mkdir -p "$out"
[ -x "$triton/tritonserver/bin/tritonserver" ] || "$root/hack/triton/fetch.sh" >/dev/null
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/triton/bin" "$stage/triton/backends/python" "$stage/triton/lib"
cp "$triton/tritonserver/bin/tritonserver" "$stage/triton/bin/"
cp "$triton/backends/python/libtriton_python.so" "$triton/backends/python/triton_python_backend_utils.py" \
  "$stage/triton/backends/python/"
cp "$triton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub" "$stage/triton/backends/python/"
find "$triton/nvidia_pytriton.libs" -maxdepth 1 -type f ! -name 'libpython3*' -exec cp {} "$stage/triton/lib/" \;
tar -C "$stage" -cf - triton | xz -T0 -6 >"$out/triton-gpu.tar.xz"
if ! ls "$out"/numpy-1.26.4-cp312-*.whl >/dev/null 2>&1; then
  "$root/.venv/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$out" numpy==1.26.4
fi
du -ch "$out"/* | sed 's/^/  /'
