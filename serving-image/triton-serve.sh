#!/bin/sh
# Entry point of the serving image: tritonserver with hardened defaults.
#  - a fixed model set (--model-control-mode=none): the model-loader init container wrote it;
#  - ready only when every model is loaded and warmed up (--strict-readiness=true);
#  - no SageMaker / Vertex AI front ends;
#  - the model-repository and logging APIs (load/unload, log settings) need a header whose value is
#    random per start and never leaves the container, so nobody can change what is served.
# Extra arguments are appended (e.g. --log-verbose=1). The operator's pod runs tritonserver with
# the same flags (resources/deployment.py triton_args()).
set -eu
key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
exec tritonserver \
  --model-repository="${MODEL_REPOSITORY:-/models}" \
  --model-control-mode=none \
  --strict-readiness=true \
  --allow-sagemaker=false \
  --allow-vertex-ai=false \
  --exit-on-error=true \
  --http-restricted-api="model-repository,logging:x-modeldeploy-admin=${key}" \
  --grpc-restricted-protocol="model-repository,logging:x-modeldeploy-admin=${key}" \
  "$@"
