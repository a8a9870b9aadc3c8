#!/usr/bin/env bash
# Runs lint, format check, the import contract and the whole test suite (bootstrapping .venv on first use).
# Arguments go to pytest, e.g. scripts/test.sh -k fetch -x.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/bootstrap.sh" test
venv=${IMGEMBED_VENV:-$root/.venv}
"$venv/bin/ruff" check src tests benchmarks
"$venv/bin/ruff" format --check src tests benchmarks
# The layering contract (.importlinter): no import points up a layer.
"$venv/bin/lint-imports" --no-cache
exec "$venv/bin/python" -m pytest "$@"
