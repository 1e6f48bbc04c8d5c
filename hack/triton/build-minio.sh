#!/usr/bin/env bash
# Build the MinIO server once (the loader's integration tests use it as their real S3 endpoint).
# No registry ships a MinIO binary we can reach, but its source is a Go module: ~10 min on 2 cores,
# cached under ~/.cache/modeldeploy/bin/minio-<version>/. `make setup` builds it; the S3 tests
# need it (moto was rejected: it does not check credentials, so bad-credential tests mean nothing).
#   hack/triton/build-minio.sh            # prints the binary's path
set -euo pipefail
version=${MD_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}
cache=${MD_CACHE_DIR:-$HOME/.cache/modeldeploy}
dest=$cache/bin/minio-$version
if [ ! -x "$dest/minio" ]; then
  mkdir -p "$dest.tmp"
  GOBIN="$dest.tmp" go install "github.com/minio/minio@$version" >&2
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
echo "$dest/minio"
