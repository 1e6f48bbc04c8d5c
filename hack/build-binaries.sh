#!/usr/bin/env bash
# Builds the Go binaries the local cluster needs, from the Go module proxy, once.
# Each binary is cached as $MD_CACHE/bin/<name>-<version>; a cached binary is never rebuilt.
# Usage: hack/build-binaries.sh [k8s|etcd|kwok|helm|all]...
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
MD_CACHE="${MD_CACHE:-$HOME/.cache/modeldeploy}"
BIN="$MD_CACHE/bin"
WORK="$MD_CACHE/gobuild"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
mkdir -p "$BIN" "$WORK"

log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

have() { # have NAME VERSION -> true when every named binary is cached
  local version="$1"; shift
  for name in "$@"; do [[ -x "$BIN/$name-$version" ]] || return 1; done
}

build_k8s() {
  local names=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
  if have "$K8S_VERSION" "${names[@]}"; then log "kubernetes $K8S_VERSION cached"; return; fi
  local minor="v0.${K8S_VERSION#v1.}"
  local dir="$WORK/k8s-$K8S_VERSION"
  mkdir -p "$dir"
  log "building kubernetes $K8S_VERSION (${names[*]}); a cold build takes 15-30 min on 2 cores"
  curl -fsSL "${GOPROXY_URL:-https://proxy.golang.org}/k8s.io/kubernetes/@v/$K8S_VERSION.mod" -o "$dir/upstream.mod"
  {
    echo "module modeldeploy.local/k8sbuild"
    echo
    grep '^go ' "$dir/upstream.mod"
    grep '^godebug' "$dir/upstream.mod" || true
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -n '/^replace (/,/^)/p' "$dir/upstream.mod" | grep '=> ./staging' \
      | awk -v m="$minor" '{print "\t" $1 " => " $1 " " m}'
    echo ")"
  } > "$dir/go.mod"
  cat > "$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  (cd "$dir" && GOFLAGS="-mod=mod -buildvcs=false -tags=tools" go mod tidy >/dev/null 2>&1 || true)
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#v1.}"
  mkdir -p "$dir/out"
  for name in "${names[@]}"; do
    if [[ -x "$BIN/$name-$K8S_VERSION" ]]; then continue; fi
    log "  go build $name"
    (cd "$dir" && go build -trimpath -tags selinux,notest,grpcnotrace,providerless -ldflags "$ld" \
        -o "out/$name" "k8s.io/kubernetes/cmd/$name")
    mv "$dir/out/$name" "$BIN/$name-$K8S_VERSION"
  done
}

build_etcd() {
  if have "$ETCD_VERSION" etcd; then log "etcd $ETCD_VERSION cached"; return; fi
  local dir="$WORK/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  log "building etcd $ETCD_VERSION"
  cat > "$dir/main.go" <<'GO'
// Command etcd runs etcd's own entry point; built here because no registry serves the binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  printf 'module modeldeploy.local/etcdbuild\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$dir/go.mod"
  (cd "$dir" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd-$ETCD_VERSION" .)
}

go_install_cached() {  # NAME VERSION PACKAGE: `go install PACKAGE@VERSION`, kept as $BIN/NAME-VERSION
  local name=$1 version=$2 package=$3
  if have "$version" "$name"; then log "$name $version cached"; return; fi
  log "building $name $version"
  local tmp; tmp="$(mktemp -d)"
  GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "$package@$version"
  mv "$tmp/$name" "$BIN/$name-$version"; rm -rf "$tmp"
}

build_kwok() { go_install_cached kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok; }

# kwok v0.8 only simulates what its Stage configs say: keep the upstream "fast" node and pod
# stages plus the lease heartbeat next to the binary, so the module cache may be cleaned.
stage_kwok() {
  local dest="$MD_CACHE/share/kwok-$KWOK_VERSION"
  [[ -f "$dest/stages.yaml" ]] && return
  local src; src="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  [[ -d "$src" ]] || (cd "$(mktemp -d)" && go mod download "sigs.k8s.io/kwok@$KWOK_VERSION")
  mkdir -p "$dest"
  local f first=1
  : > "$dest/stages.yaml.tmp"
  for f in "$src"/node/fast/node-initialize.yaml "$src"/node/heartbeat-with-lease/*.yaml "$src"/pod/fast/pod-*.yaml; do
    [[ "$(basename "$f")" == kustomization.yaml ]] && continue
    [[ $first -eq 1 ]] || echo "---" >> "$dest/stages.yaml.tmp"
    first=0
    cat "$f" >> "$dest/stages.yaml.tmp"
  done
  mv "$dest/stages.yaml.tmp" "$dest/stages.yaml"
}

build_helm() { go_install_cached helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm; }

targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(all)
for t in "${targets[@]}"; do
  case "$t" in
    k8s) build_k8s ;;
    etcd) build_etcd ;;
    kwok) build_kwok; stage_kwok ;;
    helm) build_helm ;;
    all) build_etcd; build_kwok; stage_kwok; build_helm; build_k8s ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
done
log "done"
