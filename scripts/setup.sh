#!/usr/bin/env bash
# Creates .venv (once) and installs the project with its dev tools. Idempotent and offline-safe
# except for the package registry.
#
# torch: an installed torch is kept. Otherwise `torch==2.13.0` comes from the index pip is set up
# with, unless TORCH_INDEX_URL names another one (passed as --index-url), e.g.
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   bash scripts/setup.sh  # CPU build
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 bash scripts/setup.sh  # CUDA 12.8 build
# On Linux, plain PyPI serves the multi-GB CUDA build. The last line says which torch is in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_REQUIREMENT="torch==2.13.0"
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    .venv/bin/python -m pip install -q --index-url "$TORCH_INDEX_URL" "$TORCH_REQUIREMENT"
  else
    .venv/bin/python -m pip install -q "$TORCH_REQUIREMENT"
  fi
elif [[ -n "${TORCH_INDEX_URL:-}" ]]; then
  echo "setup.sh: torch is already installed in .venv; TORCH_INDEX_URL is not used" \
       "(remove it with: .venv/bin/python -m pip uninstall torch)" >&2
fi
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/python - <<'PY'
import torch
cuda, hip = getattr(torch.version, "cuda", None), getattr(torch.version, "hip", None)
build = f"CUDA {cuda} build" if cuda else f"ROCm {hip} build" if hip else "CPU build"
print(f"setup.sh: torch {torch.__version__} in .venv ({build})")
PY
