#!/usr/bin/env bash
# Fetch the Gateway API's standard CRDs (HTTPRoute, Gateway, GatewayClass) from the Go module proxy,
# once, into ~/.cache/modeldeploy/share/gateway-api-<version>/; prints that folder. The integration
# tests install them to check the HTTPRoute modeldeploy manages for weighted canary routing.
# v1.4.1: the newest whose module builds with the go the machine has (v1.7 wants go 1.27).
set -euo pipefail
version=${MD_GATEWAY_API_VERSION:-v1.4.1}
cache=${MD_CACHE_DIR:-$HOME/.cache/modeldeploy}
dest=$cache/share/gateway-api-$version
if [ ! -f "$dest/gateway.networking.k8s.io_httproutes.yaml" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  dir=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@$version" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$dest.tmp"
  for kind in httproutes gateways gatewayclasses; do
    cp "$dir/config/crd/standard/gateway.networking.k8s.io_$kind.yaml" "$dest.tmp/"
  done
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
echo "$dest"
