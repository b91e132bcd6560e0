#!/usr/bin/env bash
# Set up the course in ./.venv and open JupyterLab on lesson 00.
# Usage: bash tools/start.sh            (set LMLAB_TORCH="torch==X.Y" to choose the torch build)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null

if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${LMLAB_TORCH:-}" ]; then
    python -m pip install -q "$LMLAB_TORCH"
  # A CPU-only build is ~200 MB instead of several GB; fall back to PyPI's default build.
  elif ! python -m pip install -q --timeout 15 --retries 0 torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null; then
    python -m pip install -q "torch==2.13.0"
  fi
fi
python -m pip install -q -e ".[lab]"
lmlab doctor
exec jupyter lab lessons/00_tour.ipynb
