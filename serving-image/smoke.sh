#!/usr/bin/env bash
# Smoke-test a built serving-image rootfs without a container engine: the host's model-loader
# writes a repository for a small ONNX model into the rootfs (as the loader image's init container
# does in a pod; the serving image has none of modeldeploy's code); then, in a private mount
# namespace, chroot into it as UID 1000, start the image's entrypoint (hardened tritonserver), and
# check readiness, one inference and that the
# repository, shared-memory, trace, logging and statistics APIs are refused without the per-start
# admin header.
#   serving-image/smoke.sh ROOTFS
set -euo pipefail
rootfs=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
py=$root/.venv/bin/python
port=$((20000 + RANDOM % 20000))
rm -rf "$rootfs/models/"* "$rootfs/tmp/"*
"$py" - "$rootfs/tmp/m.onnx" <<'PY'
import sys
from onnx import TensorProto, helper, numpy_helper, save
import numpy as np
w = numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "w")
g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])], [w])
save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), sys.argv[1])
PY
env MD_SOURCE_URI="file://$rootfs/tmp/m.onnx" MD_MODEL_NAME=smoke MD_MAX_BATCH_SIZE=8 MD_BACKEND=python-onnx \
  MD_REPOSITORY="$rootfs/models" MD_TERMINATION_LOG="$rootfs/tmp/term" PYTHONPATH="$root/operator" "$py" -m modeldeploy.loader
chown -R 1000:1000 "$rootfs/models"
exec unshare -m --propagation private bash -euo pipefail -c '
rootfs=$1; port=$2
mount -t proc proc "$rootfs/proc"
mount --bind /dev "$rootfs/dev"
mount -t tmpfs -o mode=1777,size=256m shm "$rootfs/dev/shm"   # as the pod'"'"'s Memory emptyDir
run() { chroot --userspec=1000:1000 "$rootfs" /usr/bin/env -i HOME=/tmp TMPDIR=/tmp \
  PATH=/opt/tritonserver/bin:/usr/local/bin:/usr/bin:/bin LD_LIBRARY_PATH=/opt/tritonserver/lib "$@"; }
run /usr/local/bin/triton-serve --http-port=$port --grpc-port=$((port+1)) --metrics-port=$((port+2)) >"$rootfs/tmp/triton.log" 2>&1 &
pid=$!
trap "kill $pid 2>/dev/null; wait $pid 2>/dev/null || true" EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null && break
  kill -0 $pid 2>/dev/null || { tail -30 "$rootfs/tmp/triton.log"; exit 1; }
  sleep 0.5
done
curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null || { tail -30 "$rootfs/tmp/triton.log"; exit 1; }
out=$(curl -sf -X POST "http://127.0.0.1:$port/v2/models/smoke/infer" \
  -d "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,4],\"datatype\":\"FP32\",\"data\":[1,2,3,4]}]}")
echo "$out" | grep -q "\"data\":\[1.0,2.0,3.0\]" || { echo "unexpected inference answer: $out"; exit 1; }
for call in "POST /v2/repository/index" "POST /v2/systemsharedmemory/region/r/register" \
            "GET /v2/cudasharedmemory/status" "GET /v2/trace/setting" "GET /v2/logging" "GET /v2/models/stats"; do
  code=$(curl -s -o /dev/null -w "%{http_code}" -X ${call% *} "http://127.0.0.1:$port${call#* }")
  [ "$code" = 403 ] || { echo "$call answered $code without the admin header (want 403)"; exit 1; }
done
echo "smoke test passed: tritonserver as uid 1000, inference answered, restricted APIs refused (403)"
' smoke "$rootfs" "$port"
