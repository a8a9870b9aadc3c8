#!/usr/bin/env bash
# Runs lint, format check, the import contract and the whole test suite (bootstrapping .venv on first use).
# Arguments go to pytest, e.g. scripts/test.sh -k fetch -x.
#   scripts/test.sh --fast   the same checks, then only the fast tier (pytest -m fast: pure functions
#                            and plumbing over fake models, a few minutes on 2 cores); --fast is not
#                            passed on to pytest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
fast=false
args=()
for arg in "$@"; do
  if [ "$arg" = --fast ]; then fast=true; else args+=("$arg"); fi
done
"$root/scripts/bootstrap.sh" test
venv=${IMGEMBED_VENV:-$root/.venv}
"$venv/bin/ruff" check src tests benchmarks
"$venv/bin/ruff" format --check src tests benchmarks
# The layering contract (.importlinter): no import points up a layer.
"$venv/bin/lint-imports" --no-cache
"$venv/bin/hadolint" --failure-threshold info Dockerfile  # the image's Dockerfile (no daemon needed)
if $fast; then
  exec "$venv/bin/python" -m pytest -m fast ${args[@]+"${args[@]}"}
fi
exec "$venv/bin/python" -m pytest ${args[@]+"${args[@]}"}
