#!/usr/bin/env bash
# Starts the imgembed HTTP service on http://127.0.0.1:8000 (bootstrapping .venv on first use).
# Arguments go to `imgembed serve`, e.g. --weights dummy, --model sam2.1-hiera-large, --port 9000.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/bootstrap.sh" serve
exec "${IMGEMBED_VENV:-$root/.venv}/bin/imgembed" serve "$@"
