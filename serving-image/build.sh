#!/usr/bin/env bash
# Build the CPU serving image: Triton 2.51 with its python backend, and numpy + onnxruntime for the
# runner the loader writes next to a model (python-onnx backend). Nothing of modeldeploy's own code:
# serving pods run only tritonserver, as they do from NVIDIA's stock image on GPU nodes; the
# loader runs from the operator's image (the chart's loaderImage).
#
#   serving-image/build.sh [--check] [--context-only]
#
# With a running Docker engine it uses Dockerfile.cpu; without one (this project's machines: the
# docker CLI has no engine) it builds the same image from a debootstrap'ed Debian bookworm rootfs
# and packs an OCI archive that `ctr -n k8s.io images import` and `docker load` both accept.
# Everything is downloaded on the host (pip cannot reach PyPI from inside an image build here).
# Caches: ~/.cache/modeldeploy/serving-image/ (base rootfs, wheels). Output: $OUT.
#   IMAGE_NAME  default localhost/modeldeploy-triton-cpu:dev   (the operator's default serving image)
#   OUT         default <repo>/out/modeldeploy-triton-cpu.tar
#   --check     smoke-test the rootfs before packing (serving-image/smoke.sh: Triton as uid 1000 serving
#               a repository the host's loader wrote)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
name=${IMAGE_NAME:-localhost/modeldeploy-triton-cpu:dev}
out=${OUT:-$root/out/modeldeploy-triton-cpu.tar}
cache=${MD_CACHE_DIR:-$HOME/.cache/modeldeploy}/serving-image
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
py=$root/.venv/bin/python
[ -x "$py" ] || py=python3
check=0 context_only=0
for arg in "$@"; do
  case $arg in
    --check) check=1 ;;
    --context-only) context_only=1 ;;
    *) echo "unknown argument $arg" >&2; exit 2 ;;
  esac
done
log() { printf '[serving-image] %s\n' "$*" >&2; }
mkdir -p "$cache" "$(dirname "$out")"

# 1. Triton from the nvidia-pytriton wheel (cached by hack/triton/fetch.py).
triton_root=$("$py" "$root/hack/triton/fetch.py" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["root"])')

# 2. The build context: /opt/tritonserver layout plus a wheelhouse, in a directory of this build's
# own (as hack/images/operator-image.sh): two checkouts building at once must not share a context
# or a rootfs. --context-only leaves it for the caller.
work=$(mktemp -d "$cache/build.XXXXXX")
[ "$context_only" = 1 ] || trap 'rm -rf "$work"' EXIT
ctx=$work/context
mkdir -p "$ctx/opt/tritonserver/bin" "$ctx/wheels"
cp -a "$triton_root/tritonserver/bin/tritonserver" "$ctx/opt/tritonserver/bin/"
cp -a "$triton_root/nvidia_pytriton.libs" "$ctx/opt/tritonserver/lib"
cp -a "$triton_root/backends" "$ctx/opt/tritonserver/backends"
cp -a "$triton_root/tritonserver/caches" "$ctx/opt/tritonserver/caches"
cp "$here/triton-serve.sh" "$ctx/triton-serve.sh"
mkdir -p "$cache/wheels"
log "wheelhouse (numpy<2: the python backend stub fails every request with numpy 2)"
"$py" -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$cache/wheels" "numpy>=1.26,<2" "onnxruntime>=1.18,<2"
cp "$cache/wheels"/*.whl "$ctx/wheels/"
if [ "$context_only" = 1 ]; then echo "$ctx"; exit 0; fi

# 3. A Docker engine, if one answers, builds from the Dockerfile.
if docker info >/dev/null 2>&1; then
  log "docker engine found: docker build"
  cp "$here/Dockerfile.cpu" "$ctx/Dockerfile"
  docker build -t "$name" "$ctx"
  docker save -o "$out" "$name"
  echo "$name $out"; exit 0
fi

# 4. No engine: a minbase bookworm rootfs (cached), then the same steps as Dockerfile.cpu.
base=$("$root/hack/images/debian-base.sh")
rootfs=$work/rootfs
mkdir -p "$rootfs"
tar --numeric-owner -C "$rootfs" -xf "$base"
cp -a "$ctx/opt/tritonserver" "$rootfs/opt/tritonserver"
site=$rootfs/usr/local/lib/python3.11/dist-packages
"$py" -m pip install -q --no-index --find-links "$ctx/wheels" --only-binary=:all: --python-version 3.11 \
  --implementation cp --target "$site" "numpy>=1.26,<2" "onnxruntime>=1.18,<2"
rm -rf "$site/bin"
install -m 0755 "$here/triton-serve.sh" "$rootfs/usr/local/bin/triton-serve"
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
grep -q '^triton:' "$rootfs/etc/group" || echo 'triton:x:1000:' >> "$rootfs/etc/group"
grep -q '^triton:' "$rootfs/etc/passwd" || echo 'triton:x:1000:1000::/tmp:/usr/sbin/nologin' >> "$rootfs/etc/passwd"
mkdir -p "$rootfs/models" && chown 1000:1000 "$rootfs/models" && chmod 1777 "$rootfs/tmp"
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

if [ "$check" = 1 ]; then
  log "smoke test (chroot as uid 1000: loader, tritonserver, one inference)"
  "$here/smoke.sh" "$rootfs" >&2
  rm -rf "$rootfs/models/"* "$rootfs/tmp/"*
fi

cat > "$work/config.json" <<JSON
{
  "User": "1000:1000",
  "WorkingDir": "/tmp",
  "Env": ["PATH=/opt/tritonserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
          "LD_LIBRARY_PATH=/opt/tritonserver/lib", "PYTHONDONTWRITEBYTECODE=1"],
  "Entrypoint": ["/usr/local/bin/triton-serve"],
  "ExposedPorts": {"8000/tcp": {}, "8001/tcp": {}, "8002/tcp": {}},
  "Labels": {"org.opencontainers.image.title": "modeldeploy-triton-cpu",
             "org.opencontainers.image.description": "Triton 2.51 (python backend) with numpy and onnxruntime for the python-onnx runner"}
}
JSON
log "packing $out"
PYTHONPATH="$root/hack" "$py" -m localcluster.oci "$rootfs" "$out" --name "$name" --config "$work/config.json"
