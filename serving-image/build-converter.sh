#!/usr/bin/env bash
# Build the converter image: the operator's image (which holds the model-loader) plus torch. Only
# the model-loader init container and the build Job of a torchscript or pytorch-export model run
# from it (the operator's converterImage), to convert the model to ONNX; Triton then serves the
# ONNX file from the serving image.
#
#   serving-image/build-converter.sh
#
# PyPI's torch is the CUDA build, and it does not import without its CUDA libraries (the nvidia-*
# wheels), even on a CPU: the torch layer is ~4.5 GB. It is packed uncompressed (gzip of 4 GB takes
# minutes on 2 cores and saves little: the libraries are mostly compressed code already).
# Caches: ~/.cache/modeldeploy/converter-image/ (the torch layer, per torch version and base).
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

# 1. The operator image's root filesystem, built for this image in a directory of its own (two
#    checkouts building at once must not get each other's operator code).
base_cache=$(mktemp -d "$cache/base.XXXXXX")
trap 'rm -rf "$base_cache"' EXIT
log "the operator image's root filesystem (the base layer)"
ROOTFS_ONLY=$base_cache "$root/hack/images/operator-image.sh" >&2
base=$base_cache/rootfs
base_site=$base/usr/local/lib/python3.11/dist-packages
version_in_base() {  # DIST: the version installed in the base, so the layer installs the same one
  local info; info=$(ls -d "$base_site/$1"-*.dist-info | head -1)
  info=${info##*/}; info=${info%.dist-info}; echo "${info#"$1"-}"
}
numpy_version=$(version_in_base numpy)
onnx_version=$(version_in_base onnx)
base_dists=$(cd "$base_site" && ls -d ./*.dist-info | sha256sum | cut -c1-12)  # the layer depends on them

# 2. torch (the project venv's version, so the image converts exactly as the tests do) and onnxscript
#    (torch.export's ONNX exporter), installed where the image's python finds them, with the base's
#    own numpy and onnx (a layer holding other versions' files over the base's would mix the two).
torch_version=$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')
layer=$cache/torch-$torch_version-base-$base_dists
site=$layer/usr/local/lib/python3.11/dist-packages
if [ ! -f "$layer/.complete" ]; then
  log "torch $torch_version layer (pip, ~4 GB with the CUDA libraries it imports)"
  rm -rf "$layer" && mkdir -p "$site"
  # The host's python and glibc are the image's (3.11, Debian bookworm): pip picks the same wheels.
  "$py" -m pip install -q --progress-bar off --only-binary=:all: --target "$site" "torch==$torch_version" "onnxscript>=0.2,<1" "onnx==$onnx_version" "numpy==$numpy_version"
  # OpenAI's triton (1 GB) is torch.compile's GPU code generator; export never imports it.
  rm -rf "$site/bin" "$site/triton" "$site"/triton-*.dist-info
  # A distribution the base has already (numpy, onnx, protobuf, typing-extensions...) stays the
  # base's: the layer's copy is removed, file by file from its RECORD.
  "$py" - "$base_site" "$site" <<'PY'
import csv, pathlib, re, shutil, sys
base, site = (pathlib.Path(a) for a in sys.argv[1:])
def name(info: pathlib.Path) -> str:
    return re.sub(r"[-_.]+", "-", info.name.rsplit("-", 1)[0]).lower()
in_base = {name(d) for d in base.glob("*.dist-info")}
for info in site.glob("*.dist-info"):
    if name(info) not in in_base:
        continue
    for row in csv.reader((info / "RECORD").read_text().splitlines()):
        path = (site / row[0]).resolve() if row else site
        if path.is_relative_to(site.resolve()) and path.is_file():
            path.unlink()
    shutil.rmtree(info, ignore_errors=True)
PY
  find "$site" -depth -type d -empty -delete
  mkdir -p "$site"
  touch "$layer/.complete"
fi
du -sh "$layer" | sed 's/^/[converter-image] torch layer: /' >&2

# 3. The operator image's runtime config (uid 1000), the loader as entry point, its own title.
"$py" - "$base_cache/config.json" "$cache/config.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
doc["Entrypoint"], doc["Cmd"] = ["/usr/bin/python3", "-m", "modeldeploy.loader"], []
doc["Labels"] = {"org.opencontainers.image.title": "modeldeploy-converter",
                 "org.opencontainers.image.description": "modeldeploy's loader image + torch: the model-loader "
                                                         "for torchscript and pytorch-export models"}
json.dump(doc, open(sys.argv[2], "w"), indent=2)
PY
log "packing $out (uncompressed)"
PYTHONPATH="$root/hack" "$py" -m localcluster.oci "$base" "$out" --layer "$layer" --name "$name" \
  --config "$cache/config.json" --no-compress
