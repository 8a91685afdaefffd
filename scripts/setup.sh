#!/usr/bin/env bash
# Creates .venv (once) and installs the project with its dev tools. Idempotent and offline-safe
# except for the package registry. CPU machines get the pinned CPU wheel of torch; for a GPU,
# install the CUDA wheel of torch 2.13 into .venv before running this (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
