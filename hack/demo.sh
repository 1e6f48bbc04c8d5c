#!/usr/bin/env bash
# The README's first command (`make demo`): a local cluster with a real node (containerd, kubelet,
# fake GPUs), the operator installed with its Helm chart and running as a pod, MinIO holding a
# digits model trained here, and that model served by Triton and answering through its Service.
# Built revisions are on (docs/artifacts.md): one build Job per revision writes the verified model
# to the `artifacts` bucket of the same MinIO, and serving pods only fetch and verify it.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER="${CLUSTER:-modeldeploy}"
PY=.venv/bin/python
STEP=hack/step
LC=($PY -m localcluster --name "$CLUSTER")
KUBECTL="$($PY -c 'from localcluster import binaries; print(binaries.path_of("kubectl"))')"
HELM="$($PY -c 'from localcluster import binaries; print(binaries.path_of("helm"))')"

$STEP "serving image and operator image (built without Docker; rebuilt only when their inputs change)" \
  hack/images/ensure.sh
$STEP "local cluster '$CLUSTER' with a real node (etcd, apiserver, controllers, containerd, kubelet, kube-proxy)" \
  "${LC[@]}" up --real-node --nodes 0
KUBECONFIG="$("${LC[@]}" kubeconfig)"
export KUBECONFIG
k() { "$KUBECTL" "$@"; }
$STEP "load images into the node's containerd" bash -c "
  ${LC[*]} load-image out/modeldeploy-triton-cpu.tar && ${LC[*]} load-image out/modeldeploy-operator.tar"
$STEP "train the digits model, export to ONNX, upload to the cluster's S3 (MinIO)" \
  $PY hack/demo_digits.py publish --cluster "$CLUSTER"
$STEP "helm install the operator (chart charts/modeldeploy, the operator runs as a pod)" \
  "$HELM" upgrade --install modeldeploy charts/modeldeploy --namespace modeldeploy-system --create-namespace \
    --set image.repository=localhost/modeldeploy-operator --set image.tag=dev \
    --set servingImage=localhost/modeldeploy-triton-cpu:dev --set resyncSeconds=10 \
    --set artifacts.store=s3://artifacts --set artifacts.credentialsSecret=s3-creds --wait --timeout 180s
k create namespace ml --dry-run=client -o yaml | k apply -f - >/dev/null
k label namespace ml --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
$PY - <<PYEOF | k apply -n ml -f - >/dev/null
import json, sys
sys.path.insert(0, "hack")
from localcluster import objectstore
from localcluster.config import ClusterConfig
store = objectstore.up(ClusterConfig(name="$CLUSTER"))
store.ensure_bucket("artifacts")  # the chart's artifacts.store
print(json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"},
                  "stringData": store.secret_data()}))
PYEOF
$STEP "deploy examples/digits-local.yaml" "$KUBECTL" apply -n ml -f examples/digits-local.yaml
$STEP "wait until the model is served (a build Job checks and stores it once; the pod fetches and verifies it, Triton warms up)" \
  "$KUBECTL" wait -n ml --for=condition=Ready md/digits --timeout=300s
echo "  artifact: $(k get md digits -n ml -o jsonpath='{.status.revisions[0].artifact.key} sha256 {.status.revisions[0].artifact.modelSha256}')"
ip="$(k get svc digits -n ml -o jsonpath='{.spec.clusterIP}')"
$STEP "inference through the Service (ClusterIP $ip, kube-proxy)" $PY hack/demo_digits.py infer "http://$ip:8000"
echo
k get md -n ml
echo
k get deploy,pods,svc -n ml -o wide
cat <<MSG

The cluster keeps running. Next:
  export KUBECONFIG=$KUBECONFIG
  $KUBECTL get md -A                                      # your ModelDeployments
  $KUBECTL explain modeldeployment.spec
  $KUBECTL -n ml patch md digits --type=merge -p '{"spec":{"model":{"version":"2"}}}'   # a new revision
  make cluster-down                                       # stop everything
MSG
