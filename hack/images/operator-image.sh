#!/usr/bin/env bash
# Build the operator image without a container engine: the cached Debian base, the operator and
# its dependencies installed from wheels downloaded on the host, run as uid 1000. It is also the
# loader image (the chart's loaderImage default): the model-loader and artifact fetch init
# containers and the build and validation Jobs run modeldeploy's code from it, so serving pods need
# nothing but Triton. serving-image/build-converter.sh adds torch on top of its root filesystem.
#   hack/images/operator-image.sh      # prints "NAME ARCHIVE DIGEST"
#   IMAGE_NAME (default localhost/modeldeploy-operator:dev), OUT (default out/modeldeploy-operator.tar)
#   ROOTFS_ONLY=DIR: leave the root filesystem (DIR/rootfs) and its config (DIR/config.json) in DIR
#   and pack nothing (the converter image's base)
# On a machine with Docker, operator/Dockerfile builds the same image.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
name=${IMAGE_NAME:-localhost/modeldeploy-operator:dev}
out=${OUT:-$root/out/modeldeploy-operator.tar}
cache=${MD_CACHE_DIR:-$HOME/.cache/modeldeploy}/images/operator
py=$root/.venv/bin/python
log() { printf '[operator-image] %s\n' "$*" >&2; }
base=$("$root/hack/images/debian-base.sh")
mkdir -p "$cache/wheels" "$(dirname "$out")"
# This checkout's wheel, rootfs and config in a directory of this build's own: two checkouts (git
# worktrees) building at once shared $cache/self and $cache/rootfs, and one's image got the
# other's operator code.
if [ -n "${ROOTFS_ONLY:-}" ]; then
  work=$ROOTFS_ONLY && rm -rf "$work/rootfs" "$work/self" && mkdir -p "$work"
else
  work=$(mktemp -d "$cache/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi
log "wheels (downloaded on the host; cached)"
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$work/self" "$root" >/dev/null
self_wheel=$(ls "$work"/self/modeldeploy-*.whl | tail -1)
"$py" -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$cache/wheels" "$self_wheel"
rootfs=$work/rootfs
mkdir -p "$rootfs"
tar --numeric-owner -C "$rootfs" -xf "$base"
site=$rootfs/usr/local/lib/python3.11/dist-packages
"$py" -m pip install -q --no-index --find-links "$cache/wheels" --only-binary=:all: --python-version 3.11 \
  --implementation cp --target "$site" "$self_wheel"
rm -rf "$site/bin"
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"  # pods run `python -m modeldeploy.loader`
grep -q '^modeldeploy:' "$rootfs/etc/group" || echo 'modeldeploy:x:1000:' >> "$rootfs/etc/group"
grep -q '^modeldeploy:' "$rootfs/etc/passwd" || echo 'modeldeploy:x:1000:1000::/tmp:/usr/sbin/nologin' >> "$rootfs/etc/passwd"
chmod 1777 "$rootfs/tmp"
cat > "$work/config.json" <<JSON
{"User": "1000:1000", "WorkingDir": "/tmp",
 "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE=1",
         "PYTHONUNBUFFERED=1"],
 "Entrypoint": ["/usr/bin/python3", "-m", "modeldeploy"], "Cmd": ["run"],
 "Labels": {"org.opencontainers.image.title": "modeldeploy-operator",
            "org.opencontainers.image.description": "the modeldeploy operator, model-loader and artifact builder"}}
JSON
[ -n "${ROOTFS_ONLY:-}" ] && exit 0
log "packing $out"
PYTHONPATH="$root/hack" "$py" -m localcluster.oci "$rootfs" "$out" --name "$name" --config "$work/config.json"
