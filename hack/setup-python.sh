#!/usr/bin/env bash
# Creates .venv and installs modeldeploy with its dev (and conversion) extras; skipped when
# pyproject.toml has not changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${MD_EXTRAS:-dev}"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "python >= 3.11 required"'
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${extras//,/_}"
if [[ -f "$stamp" ]]; then
  echo "python env: up to date (.venv)"
  exit 0
fi
.venv/bin/python -m pip install --progress-bar off -q --upgrade pip
.venv/bin/python -m pip install --progress-bar off -e ".[${extras}]"
rm -f .venv/.installed-*
touch "$stamp"
