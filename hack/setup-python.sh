#!/usr/bin/env bash
# Creates .venv and installs modeldeploy with the extras in MD_EXTRAS (default dev); skipped when
# pyproject.toml has not changed since an install with those extras (or more) succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${MD_EXTRAS:-dev}"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "python >= 3.11 required"'
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
hash="$(sha256sum pyproject.toml | cut -c1-16)"
stamp=".venv/.installed-${hash}-${extras//,/_}"
# Up to date when this pyproject.toml was installed with these extras or more (`make bench` adds
# `bench` to the test set; a later `make test` must not reinstall for that).
for done_stamp in .venv/.installed-"$hash"-*; do
  [[ -e "$done_stamp" ]] || continue
  have=",${done_stamp#.venv/.installed-"$hash"-},"; have="${have//_/,}"
  covered=1
  for e in ${extras//,/ }; do [[ "$have" == *",$e,"* ]] || covered=0; done
  if [[ $covered -eq 1 ]]; then
    echo "python env: up to date (.venv, extras ${extras})"
    exit 0
  fi
done
echo "python env: installing modeldeploy[${extras}] into .venv (pip's cache in ~/.cache/pip is reused)"
.venv/bin/python -m pip install --progress-bar off -q --upgrade pip
.venv/bin/python -m pip install --progress-bar off -e ".[${extras}]"
find .venv -maxdepth 1 -name '.installed-*' ! -name ".installed-${hash}-*" -delete  # stale: pyproject.toml changed
touch "$stamp"
