#!/usr/bin/env bash
# Open JupyterLab on a notebook of the course and say where: the URL, token included.
# Usage: bash tools/lab.sh [NOTEBOOK] [more jupyter lab options, e.g. --no-browser]
# tools/start.sh runs it after installing; run it directly to reopen the course. As root (a container, a
# cloud VM, CI) it adds --allow-root. LMLAB_PORT (default 8888, or a free port if that one is taken),
# LMLAB_IP (default 127.0.0.1; 0.0.0.0 to reach a container from outside) and LMLAB_TOKEN choose the address.
set -euo pipefail
cd "$(dirname "$0")/.."

notebook=${1:-lessons/00_tour.ipynb}
[ $# -gt 0 ] && shift
notebook=${notebook#./}
if [ ! -f "$notebook" ]; then
  echo "tools/lab.sh: no notebook at $notebook (paths are relative to the repository root, e.g. exercises/04_attention.ipynb)" >&2
  exit 2
fi
ip=${LMLAB_IP:-127.0.0.1}
token=${LMLAB_TOKEN:-$(python -c 'import secrets; print(secrets.token_hex(24))')}
port=$(python - "${LMLAB_PORT:-8888}" "$ip" <<'PY'
import socket, sys
want, ip = int(sys.argv[1]), sys.argv[2]
for port in (want, 0):
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
PY
)
extra=()
if [ "$(id -u)" = "0" ]; then
  extra+=(--allow-root)
  echo "Running as root: starting JupyterLab with --allow-root."
fi
host=$ip
[ "$ip" = "0.0.0.0" ] && host=127.0.0.1
echo "The course opens at: http://$host:$port/lab/tree/$notebook?token=$token"
# The repository is the server's root (lessons/, exercises/ and solutions/ all reachable); the notebook is
# opened by its URL. (Passing the notebook as an argument would make its folder the root.)
exec jupyter lab --ServerApp.root_dir="$PWD" --ServerApp.default_url="/lab/tree/$notebook" \
  --ip="$ip" --port="$port" --ServerApp.port_retries=0 \
  --IdentityProvider.token="$token" "${extra[@]}" "$@"
