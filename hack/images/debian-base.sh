#!/usr/bin/env bash
# A minimal Debian bookworm root filesystem (debootstrap minbase + python3), made once and cached
# as a tarball: the base of every image this project builds without a registry.
#   hack/images/debian-base.sh      # prints the tarball's path
set -euo pipefail
cache=${MD_CACHE_DIR:-$HOME/.cache/modeldeploy}/images
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
base=$cache/bookworm-minbase-python.tar
if [ ! -f "$base" ]; then
  mkdir -p "$cache"
  echo "[debian-base] debootstrap bookworm minbase + python3 (once, ~1 min)" >&2
  tmp=$cache/base.tmp; rm -rf "$tmp"
  debootstrap --variant=minbase --include=python3,libpython3.11,ca-certificates bookworm "$tmp" "$mirror" >&2
  rm -rf "$tmp"/var/cache/apt/* "$tmp"/var/lib/apt/lists/* "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/*
  tar --numeric-owner -C "$tmp" -cf "$base.part" . && mv "$base.part" "$base" && rm -rf "$tmp"
fi
echo "$base"
