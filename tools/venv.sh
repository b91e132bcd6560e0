# Sourced by tools/start.sh and tools/test.sh (from the repository root): create and activate ./.venv,
# then install torch FIRST: a bare "torch" requirement would pull a multi-GB CUDA build.
# LMLAB_TORCH="torch==X.Y" chooses the build; unset, a CPU-only build is tried (~200 MB), then PyPI's.

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# pip's exit status is kept; only the machine's noisy "Location ... is ignored" lines are dropped.
pip_install() { python -m pip install -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
pip_install --upgrade pip

if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${LMLAB_TORCH:-}" ]; then
    pip_install "$LMLAB_TORCH"
  elif ! pip_install --timeout 15 --retries 0 torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null; then
    pip_install "torch==2.13.0"
  fi
fi
