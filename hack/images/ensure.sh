#!/usr/bin/env bash
# Build the serving and operator images into out/, each only when its inputs changed (a content
# hash of the files that go into it is kept next to the archive).
#   hack/images/ensure.sh              # prints the two archive paths
#   hack/images/ensure.sh --converter  # the converter image (serving image + torch), printed alone
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
serving_inputs=(serving-image operator/modeldeploy pyproject.toml hack/images hack/triton hack/localcluster/oci.py)
if [[ "${1:-}" == "--converter" ]]; then  # the converter image (~4.5 GB) only for those who need it
  build_if_changed out/modeldeploy-triton-cpu.tar serving-image/build.sh "${serving_inputs[@]}" >/dev/null
  build_if_changed out/modeldeploy-converter.tar serving-image/build-converter.sh "${serving_inputs[@]}"
  exit 0
fi
build_if_changed out/modeldeploy-triton-cpu.tar serving-image/build.sh "${serving_inputs[@]}"
build_if_changed out/modeldeploy-operator.tar hack/images/operator-image.sh \
  operator/modeldeploy pyproject.toml hack/images hack/localcluster/oci.py
