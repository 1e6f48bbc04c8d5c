#!/usr/bin/env bash
# Fetch the CPU tritonserver (from the nvidia-pytriton wheel) once; see fetch.py.
#   eval "$(hack/triton/fetch.sh --print-env)"
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-$here/../../.venv/bin/python}
[ -x "$py" ] || py=python3
exec "$py" "$here/fetch.py" "$@"
