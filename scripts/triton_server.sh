#!/usr/bin/env bash
# A real Triton Inference Server for the tests and benchmarks, without a container or a GPU: the
# tritonserver 2.51 binary and Python backend that the PyPI wheel nvidia-pytriton 0.7.0 ships,
# installed once into its own virtual environment, which is also the Python backend stub's
# environment (numpy<2: the stub is built against numpy 1, and with numpy 2 it answers "output
# tensor shape does not match size"; onnxruntime, which the exported model.py files run; Pillow
# and tokenizers, which the SigLIP preprocessing steps' model.py runs).
#
#   scripts/triton_server.sh install   install once (a no-op when done; re-run after this script
#                                       or the project's onnxruntime changes)
#   scripts/triton_server.sh path      print the tritonserver binary's path; exit 1 if not installed
#   scripts/triton_server.sh run ARGS  exec tritonserver ARGS with the stub's environment on PATH
#                                       and the wheel's backends; pass --model-repository and the
#                                       addresses (the tests bind 127.0.0.1 only)
#
# Where: IMGEMBED_TRITON_HOME, default ~/.cache/imgembed/triton-0.7.0 (outside the work tree, so
# every clone on a machine shares one install; pip's cache keeps the downloads). Needs the system
# Python 3.11 and its libpython3.11 (the stub links against them): installed with apt-get when
# missing and allowed (root or sudo). The onnxruntime, Pillow and tokenizers versions are the project
# venv's, so Triton and imgembed run the graphs with the same ONNX Runtime and decode, resize and
# tokenize with the same libraries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pytriton_version=0.7.0
home=${IMGEMBED_TRITON_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/imgembed/triton-$pytriton_version}
stub_python=${IMGEMBED_TRITON_STUB_PYTHON:-/usr/bin/python3.11}
python_version=3.11
server_dir=lib/python$python_version/site-packages/pytriton/tritonserver

die() { echo "triton_server.sh: $*" >&2; exit 1; }

binary() { echo "$home/env/$server_dir/bin/tritonserver"; }

installed() { [ -f "$home/.installed" ] && [ -x "$(binary)" ]; }

# The project venv's version of a package, or nothing (then the newest is installed).
project_version() {
  local venv=${IMGEMBED_VENV:-$root/.venv}
  if [ -x "$venv/bin/python" ]; then
    "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true
  fi
}

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  echo "triton_server.sh: installing Debian's $* for the Python backend stub" >&2
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null \
    || die "expected Debian's $* (the stub runs on the system Python $python_version); apt-get failed: install them, or point IMGEMBED_TRITON_STUB_PYTHON at a Python $python_version with a shared libpython"
}

install() {
  local onnxruntime pillow tokenizers want
  onnxruntime=$(project_version onnxruntime)
  pillow=$(project_version pillow)
  tokenizers=$(project_version tokenizers)
  want="nvidia-pytriton==$pytriton_version numpy<2 onnxruntime${onnxruntime:+==$onnxruntime} pillow${pillow:+==$pillow} tokenizers${tokenizers:+==$tokenizers} $(sha256sum "$0" | cut -c1-16)"
  if installed && [ "$(cat "$home/.installed")" = "$want" ]; then
    return 0
  fi
  [ -x "$stub_python" ] || apt_install python3.11 libpython3.11
  mkdir -p "$home"
  exec 9>"$home/.lock"
  flock 9  # another clone may be installing into the same home
  if installed && [ "$(cat "$home/.installed")" = "$want" ]; then
    return 0
  fi
  echo "triton_server.sh: installing nvidia-pytriton $pytriton_version into $home" >&2
  local staging="$home/env.new"
  rm -rf "$staging"
  # --without-pip: Debian's python3.11 has no ensurepip; pip runs from outside with --python.
  "$stub_python" -m venv --without-pip "$staging"
  local pip_python=${IMGEMBED_VENV:-$root/.venv}/bin/python
  [ -x "$pip_python" ] || pip_python=python3
  local pip=("$pip_python" -m pip --python "$staging/bin/python" --disable-pip-version-check -q)
  # --no-deps: only the server binary, its libraries and the stubs are used (not pytriton's Python
  # API, whose dependencies would pull tritonclient[grpc] and an older protobuf).
  "${pip[@]}" install --no-deps "nvidia-pytriton==$pytriton_version"
  "${pip[@]}" install --no-warn-conflicts "numpy<2" "onnxruntime${onnxruntime:+==$onnxruntime}" \
    "pillow${pillow:+==$pillow}"
  # --no-deps: Tokenizer.from_file needs nothing else (huggingface_hub only serves from_pretrained).
  "${pip[@]}" install --no-deps "tokenizers${tokenizers:+==$tokenizers}"
  # pytriton picks the stub of the running Python at start-up; Triton looks for it beside the
  # Python backend, so it is put there once.
  local server="$staging/$server_dir"
  cp "$server/python_backend_stubs/$python_version/triton_python_backend_stub" "$server/backends/python/"
  chmod +x "$server/bin/tritonserver" "$server/backends/python/triton_python_backend_stub"
  if ldd "$server/backends/python/triton_python_backend_stub" | grep -q "not found"; then
    apt_install libpython3.11
  fi
  local missing
  missing=$(ldd "$server/bin/tritonserver" "$server/backends/python/libtriton_python.so" \
    "$server/backends/python/triton_python_backend_stub" | grep "not found" || true)
  [ -z "$missing" ] || die "expected every shared library of tritonserver to resolve; missing: $missing"
  rm -rf "$home/env"
  mv "$staging" "$home/env"
  echo "$want" >"$home/.installed"
  flock -u 9
}

case "${1:-}" in
  install) install; echo "$home" ;;
  path) installed || { echo "tritonserver is not installed in $home: run scripts/triton_server.sh install" >&2; exit 1; }; binary ;;
  run)
    shift
    installed || die "tritonserver is not installed in $home: run scripts/triton_server.sh install"
    server="$home/env/$server_dir"
    # The stub embeds Python in isolated mode and finds its prefix through python3 on PATH: the
    # environment's bin first makes it this environment (numpy<2, onnxruntime). ONNX Runtime's
    # telemetry (a DNS look-up of Microsoft's event collector) is off.
    # The Python backend moves tensors through shared memory that starts at 1 MiB and grows by
    # 1 MiB; SAM 2's are 4 to 16 MiB each, so it starts at 128 MiB and grows by 64 MiB (measured:
    # a tiny encoder request 3.1 s -> 2.2 s, a decoder request 110 -> 84 ms on 2 cores). Later
    # --backend-config arguments of the caller override these.
    ORT_DISABLE_TELEMETRY=${ORT_DISABLE_TELEMETRY:-1} PATH="$home/env/bin:$PATH" exec "$server/bin/tritonserver" \
      --backend-directory "$server/backends" --cache-directory "$server/caches" \
      --backend-config=python,shm-default-byte-size=134217728 \
      --backend-config=python,shm-growth-byte-size=67108864 "$@"
    ;;
  *) die "expected a command: install, path or run ARGS (got '${1:-}')" ;;
esac
