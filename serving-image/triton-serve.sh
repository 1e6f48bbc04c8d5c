#!/bin/sh
# Entry point of the serving image: tritonserver with hardened defaults.
#  - a fixed model set (--model-control-mode=none): the model-loader init container wrote it;
#  - ready only when every model is loaded and warmed up (--strict-readiness=true);
#  - no SageMaker / Vertex AI front ends;
#  - the shared-memory (system and CUDA), trace, model-repository, logging and statistics APIs,
#    on HTTP and gRPC, need a header whose value is random per start and never leaves the
#    container, so no client can register shared memory, change what is served, tracing or
#    logging, or read per-model statistics (the metrics port :8002 has the counters);
#  - the largest HTTP request body is 64 MiB where this Triton has --http-max-input-size
#    (25.07 onward), and client shared memory is off where it has --allow-client-shm (26.04 onward).
# Extra arguments come after these (so they can override them, e.g. --log-verbose=1). The
# operator's pods run tritonserver with the same restrictions and flags (resources/deployment.py:
# TRITON_COMMAND and triton_args(); tests/unit/test_triton_hardening_args.py keeps the two in step).
set -eu
key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
restricted="shared-memory,trace,model-repository,logging,statistics:x-modeldeploy-admin=${key}"
help=$(tritonserver --help 2>&1 || true)
optional=""
case "$help" in *--http-max-input-size*) optional="$optional --http-max-input-size=67108864" ;; esac
case "$help" in *--allow-client-shm*) optional="$optional --allow-client-shm=false" ;; esac
# shellcheck disable=SC2086  # $optional is a list of flags without spaces inside them
exec tritonserver \
  --model-repository="${MODEL_REPOSITORY:-/models}" \
  --model-control-mode=none \
  --strict-readiness=true \
  --allow-sagemaker=false \
  --allow-vertex-ai=false \
  --exit-on-error=true \
  --http-restricted-api="$restricted" \
  --grpc-restricted-protocol="$restricted" \
  $optional \
  "$@"
