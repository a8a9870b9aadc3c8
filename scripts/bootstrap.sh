#!/usr/bin/env bash
# Creates the project's virtual environment (.venv) and installs what a mode needs, once.
#   scripts/bootstrap.sh serve   torch 2.13.0 (CPU wheel here) and imgembed
#   scripts/bootstrap.sh test    the same plus test tools, the runpod SDK, and Meta's sam2 reference
#                                and a real Triton server (scripts/triton_server.sh, cached outside .venv)
# Re-runs only when pyproject.toml or this script changed. IMGEMBED_VENV overrides the location.
set -euo pipefail
mode=${1:-serve}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${IMGEMBED_VENV:-$root/.venv}

# The browser page's onnxruntime-web, from the npm registry (a no-op when up to date); the browser
# tests also need Debian's chromium, installed here when missing and allowed (root or sudo).
if [ "$mode" = test ]; then
  scripts/fetch_ui_assets.sh
  if [ ! -x /usr/bin/chromium ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo -n"
    echo "bootstrap (test): installing Debian's chromium for the browser tests" >&2
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null \
      || echo "bootstrap: could not install chromium; the browser tests will be skipped" >&2
  fi
else
  scripts/fetch_ui_assets.sh \
    || echo "bootstrap: /ui needs onnxruntime-web: install npm, then run scripts/fetch_ui_assets.sh" >&2
fi
python=${PYTHON:-python3}
stamp="$venv/.bootstrap-$mode"

# A real Triton server for tests/export/test_triton_server.py, in its own environment (a no-op
# when installed; scripts/triton_server.sh says what and where).
triton() {
  if [ "$mode" = test ]; then
    scripts/triton_server.sh install >/dev/null \
      || echo "bootstrap: could not install tritonserver; tests/export/test_triton_server.py will fail" >&2
  fi
}

if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/bootstrap.sh ]; then
  triton
  exit 0
fi
echo "bootstrap ($mode): preparing $venv" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
# torch first and pinned: every later requirement accepts 2.13.0, so nothing replaces it.
"${pip[@]}" install torch==2.13.0
case "$mode" in
  serve) "${pip[@]}" install -e ".[runpod,search,onnx]" ;;
  test)
    "${pip[@]}" install -e ".[test,runpod,search,onnx,modal]"
    # Meta's reference implementation, for parity tests only. --no-deps keeps torchvision out;
    # SAM2_BUILD_CUDA=0 skips its CUDA extension; its needs (hydra-core, iopath) are in [test].
    SAM2_BUILD_CUDA=0 "${pip[@]}" install --no-build-isolation --no-deps sam2==1.1.0
    # samexporter (seed 002's exporter), for tests/export/test_samexporter_peer.py only. --no-deps:
    # it pins torch and torchvision; export_sam2 needs only torch, onnx, hydra and sam2 (above).
    "${pip[@]}" install --no-deps samexporter==0.5.0
    ;;
  *) echo "bootstrap: unknown mode '$mode' (expected serve or test)" >&2; exit 2 ;;
esac
"$venv/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"torch was replaced: {torch.__version__}"
PY
touch "$stamp"
triton
