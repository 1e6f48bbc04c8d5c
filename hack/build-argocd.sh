#!/usr/bin/env bash
# Builds the real `argocd` CLI (Argo CD's multi-call binary, ./cmd) from the Go module proxy, once.
# The binary is cached as $MD_CACHE/bin/argocd-<version>; a cached binary is never rebuilt. The
# version lives in hack/versions/argocd, shared with tests/integration/test_argocd_health.py.
# Argo CD needs a newer Go than may be installed: GOTOOLCHAIN=auto fetches the toolchain its go.mod
# names from the module proxy. A cold build takes 20-40 min on 2 cores.
# Usage: hack/build-argocd.sh            # prints the binary's path
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ARGOCD_VERSION="${ARGOCD_VERSION:-$(tr -d '[:space:]' < "$here/versions/argocd")}"
MD_CACHE="${MD_CACHE:-$HOME/.cache/modeldeploy}"
BIN="$MD_CACHE/bin"
dest="$BIN/argocd-$ARGOCD_VERSION"
module=github.com/argoproj/argo-cd/v3
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
export GOTOOLCHAIN="${ARGOCD_GOTOOLCHAIN:-auto}"

log() { printf '[build-argocd %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ -x "$dest" ]]; then
  log "argocd $ARGOCD_VERSION cached"
  echo "$dest"
  exit 0
fi
mkdir -p "$BIN"
t0=$SECONDS
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT

# Upstream's go.mod: its go line and its replace directives (replaces apply only in the main
# module, so a wrapper module must repeat them; the ./gitops-engine one is the nested module
# github.com/argoproj/argo-cd/gitops-engine/v3, tagged with the same version, so it is dropped).
log "downloading $module@$ARGOCD_VERSION from the module proxy"
(cd "$dir" && GOTOOLCHAIN=local go mod download -json "$module@$ARGOCD_VERSION" > download.json 2>&1) || true
upstream_mod="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' "$dir/download.json")"
if [[ -z "$upstream_mod" || ! -f "$upstream_mod" ]]; then
  cat "$dir/download.json" >&2
  log "could not download $module@$ARGOCD_VERSION"
  exit 1
fi
{
  echo "module modeldeploy.local/argocdbuild"
  echo
  grep '^go ' "$upstream_mod"
  grep '^godebug' "$upstream_mod" || true
  echo
  echo "require $module $ARGOCD_VERSION"
  echo
  echo "replace ("
  sed -n '/^replace (/,/^)/p' "$upstream_mod" | grep '=>' | grep -v '=> \./' | sed 's/^[[:space:]]*/\t/'
  echo ")"
} > "$dir/go.mod"
cat > "$dir/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/argoproj/argo-cd/v3/cmd"
GO
log "go $(grep '^go ' "$upstream_mod" | cut -d' ' -f2) needed (installed: $(GOTOOLCHAIN=local go env GOVERSION)); resolving modules"
(cd "$dir" && GOFLAGS="$GOFLAGS -tags=tools" go mod tidy -e)
log "go build ./cmd with $(cd "$dir" && go env GOVERSION); a cold build takes 20-40 min on 2 cores"
ld="-s -w -X $module/common.version=${ARGOCD_VERSION#v} -X $module/common.gitTag=$ARGOCD_VERSION"
(cd "$dir" && go build -trimpath -ldflags "$ld" -o "$dir/argocd" "$module/cmd")
mv "$dir/argocd" "$dest"
log "built $dest in $(( (SECONDS - t0) / 60 )) min $(( (SECONDS - t0) % 60 )) s"
echo "$dest"
