#!/usr/bin/env bash
# Build the converter image: the CPU serving image plus torch. Only the model-loader init container
# of a torchscript or pytorch-export model runs from it (the operator's converterImage), to convert
# the model to ONNX; Triton then serves the ONNX file from the serving image.
#
#   serving-image/build-converter.sh
#
# PyPI's torch is the CUDA build, and it does not import without its CUDA libraries (the nvidia-*
# wheels), even on a CPU: the torch layer is ~4.5 GB. It is packed uncompressed (gzip of 4 GB takes
# minutes on 2 cores and saves little: the libraries are mostly compressed code already).
# Caches: ~/.cache/modeldeploy/converter-image/ (the torch layer, per torch version).
#   IMAGE_NAME  default localhost/modeldeploy-converter:dev
#   OUT         default <repo>/out/modeldeploy-converter.tar
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
name=${IMAGE_NAME:-localhost/modeldeploy-converter:dev}
out=${OUT:-$root/out/modeldeploy-converter.tar}
caches=${MD_CACHE_DIR:-$HOME/.cache/modeldeploy}
cache=$caches/converter-image
py=$root/.venv/bin/python
log() { printf '[converter-image] %s\n' "$*" >&2; }
mkdir -p "$cache" "$(dirname "$out")"

# 1. The serving image's root filesystem, which build.sh leaves in its cache.
base=$caches/serving-image/rootfs
if [ ! -x "$base/opt/tritonserver/bin/tritonserver" ] || [ ! -f "$caches/serving-image/config.json" ]; then
  log "building the serving image first (its root filesystem is the base layer)"
  "$here/build.sh" >&2
fi

# 2. torch (the project venv's version, so the image converts exactly as the tests do) and onnxscript
#    (torch.export's ONNX exporter), installed where the image's python finds them.
torch_version=$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')
layer=$cache/torch-$torch_version
site=$layer/usr/local/lib/python3.11/dist-packages
if [ ! -f "$layer/.complete" ]; then
  log "torch $torch_version layer (pip, ~4 GB with the CUDA libraries it imports)"
  rm -rf "$layer" && mkdir -p "$site"
  # The host's python and glibc are the image's (3.11, Debian bookworm): pip picks the same wheels.
  "$py" -m pip install -q --progress-bar off --only-binary=:all: --target "$site" "torch==$torch_version" "onnxscript>=0.2,<1" "onnx>=1.16,<2" "numpy>=1.26,<2"
  # OpenAI's triton (1 GB) is torch.compile's GPU code generator; export never imports it.
  rm -rf "$site/bin" "$site/triton" "$site"/triton-*.dist-info
  touch "$layer/.complete"
fi
du -sh "$layer" | sed 's/^/[converter-image] torch layer: /' >&2

# 3. Same runtime config as the serving image (uid 1000), its own title.
"$py" - "$caches/serving-image/config.json" "$cache/config.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
doc["Labels"] = {"org.opencontainers.image.title": "modeldeploy-converter",
                 "org.opencontainers.image.description": "modeldeploy serving image + torch: the model-loader "
                                                         "for torchscript and pytorch-export models"}
json.dump(doc, open(sys.argv[2], "w"), indent=2)
PY
log "packing $out (uncompressed)"
PYTHONPATH="$root/hack" "$py" -m localcluster.oci "$base" "$out" --layer "$layer" --name "$name" \
  --config "$cache/config.json" --no-compress
