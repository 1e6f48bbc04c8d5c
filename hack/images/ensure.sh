#!/usr/bin/env bash
# Build the serving and operator images into out/, each only when its inputs changed (a content
# hash of the files that go into it is kept next to the archive). The serving image is Triton only;
# the operator image also runs the model-loader, the artifact fetch and the build and validation Jobs.
#   hack/images/ensure.sh              # prints the two archive paths
#   hack/images/ensure.sh --converter  # the converter image (operator image + torch), printed alone
set -euo pipefail
cd "$(dirname "$0")/../.."
build_if_changed() {  # ARCHIVE SCRIPT INPUTS...
  local archive=$1 script=$2; shift 2
  local sum
  sum=$(find "$@" -type f -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  if [[ -f "$archive" && "$(cat "$archive.inputs" 2>/dev/null)" == "$sum" ]]; then
    echo "up to date: $archive" >&2
  else
    "$script" >&2
    echo "$sum" > "$archive.inputs"
  fi
  echo "$archive"
}
# The serving image holds Triton only (none of operator/): the operator image is also the loader's.
serving_inputs=(serving-image/build.sh serving-image/Dockerfile.cpu serving-image/triton-serve.sh hack/images/debian-base.sh
                hack/triton hack/localcluster/oci.py)
operator_inputs=(operator/modeldeploy pyproject.toml hack/images hack/localcluster/oci.py)
if [[ "${1:-}" == "--converter" ]]; then  # the converter image (~4.5 GB) only for those who need it
  # operator image + torch: its own build of the operator image's root filesystem as the base
  build_if_changed out/modeldeploy-converter.tar serving-image/build-converter.sh "${operator_inputs[@]}" \
    serving-image/build-converter.sh
  exit 0
fi
build_if_changed out/modeldeploy-triton-cpu.tar serving-image/build.sh "${serving_inputs[@]}"
build_if_changed out/modeldeploy-operator.tar hack/images/operator-image.sh "${operator_inputs[@]}"
