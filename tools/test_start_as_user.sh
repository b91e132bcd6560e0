#!/usr/bin/env bash
# The README's start, as a normal (non-root) user: run as root, it clones this checkout for USER (default
# nobody), makes that user's .venv from the system python (a root-only python, e.g. under /root/.pyenv, is
# not runnable by another user) and runs tests/browser/test_start_url.py as that user: the printed URL opens
# lesson 00 in Chromium, the exercise link works, a widget renders. About 4 minutes to install, 3 to test
# on a busy 2-core machine. Not part of tools/test.sh (the suite runs as whoever runs it).
# Usage (as root): bash tools/test_start_as_user.sh [USER]
set -euo pipefail
cd "$(dirname "$0")/.."
user=${1:-nobody}
[ "$(id -u)" = 0 ] || { echo "tools/test_start_as_user.sh: run it as root (it switches to $user)" >&2; exit 2; }
python=${PYTHON:-/usr/bin/python3}
home=$(mktemp -d /tmp/lmlab-as-user-XXXXXX)
trap 'rm -rf "$home"' EXIT
git clone -q "$PWD" "$home/lmlab"
chown -R "$user" "$home"
as_user() { runuser -u "$user" -- env -i HOME="$home" PATH="$home/lmlab/.venv/bin:/usr/bin:/bin" PYTHON="$python" \
  PIP_FIND_LINKS="${PIP_FIND_LINKS:-}" OMP_NUM_THREADS=1 PYTHONHASHSEED=0 HF_HUB_OFFLINE=1 bash -c "cd $home/lmlab && $1"; }
as_user '. tools/venv.sh && pip_install -e ".[lab]" pytest playwright'
as_user 'echo "running as $(id -un) (uid $(id -u))"; python -m pytest -q -p no:cacheprovider tests/browser/test_start_url.py'
