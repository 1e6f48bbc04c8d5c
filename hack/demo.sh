#!/usr/bin/env bash
# The README's first command (`make demo`): a local cluster with GPU nodes, the ModelDeployment
# CRD, the operator running against it, and an example model deployed.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER="${CLUSTER:-modeldeploy}"
PY=.venv/bin/python
STEP=hack/step
KUBECTL="$($PY -c 'from localcluster import binaries; print(binaries.path_of("kubectl"))')"

$STEP "local cluster '$CLUSTER' (etcd, kube-apiserver, controller-manager, scheduler, kwok GPU nodes)" \
  $PY -m localcluster --name "$CLUSTER" up
KUBECONFIG="$($PY -m localcluster --name "$CLUSTER" kubeconfig)"
export KUBECONFIG
k() { "$KUBECTL" "$@"; }

$STEP "install the ModelDeployment CRD" k apply --server-side --force-conflicts -f crds/
k wait --for=condition=Established crd/modeldeployments.modeldeploy.io --timeout=60s >/dev/null

run_dir="/var/tmp/modeldeploy-clusters/$CLUSTER/run"
mkdir -p "$run_dir"
if [[ -f "$run_dir/operator.pid" ]] && kill -0 "$(cat "$run_dir/operator.pid")" 2>/dev/null; then
  echo "operator already running (pid $(cat "$run_dir/operator.pid"))"
else
  $STEP "start the operator (python -m modeldeploy run; log: $run_dir/operator.log)" bash -c "
    setsid $PY -m modeldeploy run --metrics-port 18080 --log-format text >'$run_dir/operator.log' 2>&1 < /dev/null &
    echo \$! > '$run_dir/operator.pid'"
fi

echo
echo "Nodes and their GPUs:"
k get nodes -o custom-columns='NAME:.metadata.name,GPUS:.status.capacity.nvidia\.com/gpu,PRODUCT:.metadata.labels.nvidia\.com/gpu\.product,READY:.status.conditions[?(@.type=="Ready")].status'

$STEP "deploy examples/digits.yaml (pods are simulated by kwok on the fake GPU nodes)" bash -c "
  '$KUBECTL' create namespace ml --dry-run=client -o yaml | '$KUBECTL' apply -f - >/dev/null
  '$KUBECTL' apply -n ml -f examples/digits.yaml"
$STEP "wait for the ModelDeployment to be Ready" k wait -n ml --for=condition=Ready md/digits --timeout=120s
echo
k get md -n ml
echo
k get deploy,svc,pdb -n ml -l modeldeploy.io/name=digits
cat <<MSG

The cluster keeps running. Next:
  export KUBECONFIG=$KUBECONFIG
  $KUBECTL get md -A            # your ModelDeployments
  $KUBECTL explain modeldeployment.spec
  make cluster-down             # stop everything
MSG
