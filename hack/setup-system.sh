#!/usr/bin/env bash
# Installs the Debian packages modeldeploy's local cluster and images need, only those missing.
set -euo pipefail
packages=(
  ca-certificates curl git make
  iptables conntrack socat ethtool iproute2 util-linux  # kubelet / kube-proxy on a real node
  containerd runc containernetworking-plugins          # the real node's container runtime
  gcc libc6-dev                                        # the pause image (a static C binary)
  debootstrap                                          # base image without a registry
  libpython3.11                                        # Triton's python backend stub
)
# Test-only packages (`make test` passes --test; `make demo` needs none of them).
# Benchmark-only packages (`make bench` passes --bench).
if [[ "${1:-}" == "--bench" ]]; then
  packages+=(
    openjdk-17-jre-headless                            # TorchServe's frontend (benchmarks/serving.py's baseline)
  )
fi
if [[ "${1:-}" == "--test" ]]; then
  packages+=(
    prometheus                                         # the PromQL metrics-source tests run their own server
    redis-server                                       # Argo CD's cache, for the GitOps sync test (tests/support/argocd.py)
    ipset                                              # kube-router's NetworkPolicy firewall (tests/support/policy_controller.py)
  )
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "system packages: all present"
  exit 0
fi
echo "installing: ${missing[*]}"
SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
log="$(mktemp -t md-apt.XXXXXX.log)"
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
       --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log"; echo "apt-get failed (log: $log)" >&2; exit 1
fi
if [[ " ${missing[*]} " == *" prometheus "* && -d /run/systemd/system ]]; then
  $SUDO systemctl disable --now prometheus >>"$log" 2>&1 || true  # Debian starts a daemon on :9090; not wanted
fi
echo "installed ${#missing[@]} package(s) (log: $log)"
