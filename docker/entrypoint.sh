#!/bin/sh
# The image's entry point: one image, two ways to run it.
#   IMGEMBED_MODE=http    (default) `imgembed serve` on IMGEMBED_HOST:IMGEMBED_PORT (0.0.0.0:8000)
#   IMGEMBED_MODE=runpod  `python -m imgembed.runpod`, the RunPod serverless worker
# Arguments go to the command (`docker run IMAGE --model sam2.1-hiera-large`, or `--test_input ...`
# in runpod mode).
#
# Weights baked at build time (--build-arg MODELS=...) are served by default: when no model or
# weights variable is set (IMGEMBED_CONFIG, IMGEMBED_MODEL, IMGEMBED_WEIGHTS, IMGEMBED_META_CONFIG,
# SAM2_CHECKPOINT, SAM2_MODEL_CFG), IMGEMBED_CONFIG becomes the baked config and, unless set,
# HF_HUB_OFFLINE=1 (the baked cache is all there is to read). Otherwise those variables decide, as
# for `imgembed serve` anywhere: mounted weights (SAM2_CHECKPOINT=/models/sam2_hiera_large.pt,
# SAM2_MODEL_CFG=sam2_hiera_l.yaml), a mounted cache (HF_HUB_CACHE), or the hub.
set -eu

mode=${IMGEMBED_MODE:-http}
baked=${IMGEMBED_BAKED_CONFIG:-/opt/imgembed/models.toml}
chosen="${IMGEMBED_CONFIG:-}${IMGEMBED_MODEL:-}${IMGEMBED_WEIGHTS:-}${IMGEMBED_META_CONFIG:-}${SAM2_CHECKPOINT:-}${SAM2_MODEL_CFG:-}"
if [ -f "$baked" ] && [ -z "$chosen" ]; then
  export IMGEMBED_CONFIG="$baked"
  export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
fi

case "$mode" in
  http) exec imgembed serve "$@" ;;
  runpod) exec python -m imgembed.runpod "$@" ;;
  *)
    echo "docker/entrypoint.sh: IMGEMBED_MODE=$mode is not a mode; expected http (the HTTP API) or runpod (the RunPod worker)" >&2
    exit 64
    ;;
esac
