#!/usr/bin/env bash
# Set up the course in ./.venv and open JupyterLab on lesson 00.
# Usage: bash tools/start.sh            (set LMLAB_TORCH="torch==X.Y" to choose the torch build)
set -euo pipefail
cd "$(dirname "$0")/.."

. tools/venv.sh
pip_install -e ".[lab]"
lmlab doctor
exec bash tools/lab.sh lessons/00_tour.ipynb  # as root too; prints the URL with its token
