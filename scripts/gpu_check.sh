#!/usr/bin/env bash
# The GPU check: what only a CUDA device can confirm (issue 18), as one prepared run.
#
#   scripts/gpu_check.sh wheels   here, with network: the wheels the GPU machine's image lacks, into
#                                 .whl/ (git-ignored), for CPython 3.12 on x86-64 Linux
#   scripts/gpu_check.sh run      on the GPU machine (no network), from the repository root:
#                                 installs .whl/ into /tmp/site, then runs tests/gpu and the
#                                 GPU benchmarks, writing logs and results under $OUT (or ./gpu-out)
#
# With the device tool: run `scripts/gpu_check.sh wheels` first, then
#   run(command="scripts/gpu_check.sh run", carry=[".whl"], timeout_s=580)
# Its stages have their own time limits (about 9 minutes in all), so one run fits the device
# tool's 10-minute command and leaves room in a 15-minute lease for one rerun of a stage.
# The test module also has a CPU dry run of its own plumbing:
#   IMGEMBED_GPU_TESTS_DRY_RUN=1 .venv/bin/pytest tests/gpu
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# What the GPU machine's image lacks (device KINDS.md lists what it holds), at the versions this
# project's venv runs, so the GPU run tests the same library code as CI.
# Meta's sam2 is not among them: tests/gpu compares the GPU engine with the CPU one.
WHEELS=(fastapi starlette uvicorn python-multipart pydantic pydantic-core annotated-types
  typing-inspection typing-extensions sniffio transformers tokenizers)

wheels() {
  local venv=${IMGEMBED_VENV:-$root/.venv}
  local specs=()
  for name in "${WHEELS[@]}"; do
    version=$("$venv/bin/python" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    if [ -z "$version" ]; then
      echo "gpu_check: $name is not installed in $venv; run scripts/bootstrap.sh test first" >&2
      exit 1
    fi
    specs+=("$name==$version")
  done
  rm -rf .whl && mkdir -p .whl
  # Binary wheels for the GPU machine's Python (3.12, x86-64, glibc); pure-Python ones fit any.
  "$venv/bin/python" -m pip download --quiet --no-deps --only-binary=:all: --dest .whl \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any "${specs[@]}"
  du -sh .whl
  ls .whl
}

run() {
  local out=${OUT:-$root/gpu-out}
  mkdir -p "$out"
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 ORT_DISABLE_TELEMETRY=1
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$root/src:$root/tests/support
  else
    export PYTHONPATH=$root/src:$root/tests/support
  fi
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "bf16 native", torch.cuda.is_bf16_supported(including_emulation=False))'
  } 2>&1 | tee "$out/machine.txt" || true
  python3 -c 'import onnxruntime; print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())' \
    >>"$out/machine.txt" 2>&1 || true
  set +e
  # 1. Correctness on CUDA against the CPU (tests/gpu: engine, preprocessing; the ONNX Runtime
  #    CUDA tests skip themselves unless onnxruntime-gpu is there), a few minutes.
  timeout 240 python3 -m pytest -p no:cacheprovider -q -rs --timeout 200 tests/gpu \
    tests/export/test_onnx_cuda.py 2>&1 | tee "$out/gpu_tests.log"
  local tests_status=${PIPESTATUS[0]}
  # 2. Cross-stream accesses (encoder, decoder, staging and default streams) under PyTorch's CUDA
  #    sanitizer: a segment request, a click by image_id, segment everything and SigLIP 2.
  TORCH_CUDA_SANITIZER=1 timeout 90 python3 -m pytest -p no:cacheprovider -q --timeout 80 \
    tests/gpu/test_cuda_engine.py -k "segment or siglip" 2>&1 | tail -n 60 >"$out/sanitizer.log"
  # 3. Speed on this GPU: forward-pass cost by batch size in bfloat16 (where the GPU batch sizes
  #    come from, with peak memory per item), click latency while the encoder is busy (the
  #    decoder's own stream), and preprocessing on the CPU against the device.
  timeout 120 python3 benchmarks/batch_cost.py --quick --device cuda --compute-dtype bfloat16 \
    --wait-quiet 0 --results "$out/RESULTS.md" --out "$out" >"$out/batch_cost.log" 2>&1
  timeout 60 python3 benchmarks/click_latency.py --quick --device cuda --no-write \
    >"$out/click_latency.log" 2>&1
  timeout 40 python3 benchmarks/preprocess.py --device cuda --repeats 3 >"$out/preprocess.log" 2>&1
  set -e
  echo "gpu_check: tests exit status $tests_status; results in $out"
  return "$tests_status"
}

case "${1:-}" in
  wheels) wheels ;;
  run) run ;;
  *)
    echo "usage: scripts/gpu_check.sh wheels|run (see the comment at the top)" >&2
    exit 2
    ;;
esac
