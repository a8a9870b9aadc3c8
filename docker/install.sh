#!/usr/bin/env bash
# Every RUN step of the Dockerfile, so that the install path the image takes is the one the tests run
# (tests/deploy/test_docker_install.py).
#
#   docker/install.sh venv --venv DIR [--variant cpu|cuda] [--cuda TAG] [--torch-version V]
#                          [--extras LIST] [--source DIR] [--reuse-site-packages DIR] [--dry-run]
#       A virtual environment at DIR with torch pinned exactly, installed first so nothing replaces
#       it: torch==V+cpu from PyTorch's CPU index, or torch==V+TAG (TAG a CUDA wheel tag, cu128 by
#       default) from that CUDA index, whose metadata pins the nvidia-* libraries it brings; then
#       imgembed[EXTRAS] at the versions of docker/constraints.txt. It checks that torch is exactly
#       V+TAG built for that CUDA (none for cpu) and that `imgembed` and the RunPod worker import.
#       --reuse-site-packages DIR makes DIR's packages visible to the new environment (a .pth file)
#       and installs with --no-index: nothing is downloaded (tests, air-gapped builds). --dry-run
#       prints the three pip installs (pip, torch, imgembed) it would run, and runs nothing.
#   docker/install.sh weights --venv DIR --cache DIR --config FILE [MODEL ...]
#       `imgembed download MODEL ...` into the Hugging Face cache DIR, and FILE, an imgembed config
#       file serving those models ([[models]] tables), which docker/entrypoint.sh uses by default.
#       No model: an empty cache and no FILE (weights mounted or fetched at run time).
#   docker/install.sh user --name NAME --uid UID --home DIR [--owns DIR ...] [--dry-run]
#       The non-root user the container runs as, owning the folders it writes.
set -euo pipefail

die() { echo "docker/install.sh: $*" >&2; exit 64; }

venv_step() {
  local venv="" variant=cpu cuda=cu128 torch_version=2.13.0 extras=runpod source="" reuse=""
  local dry_run=false
  while [ $# -gt 0 ]; do
    case "$1" in
      --venv) venv=$2; shift 2 ;;
      --variant) variant=$2; shift 2 ;;
      --cuda) cuda=$2; shift 2 ;;
      --torch-version) torch_version=$2; shift 2 ;;
      --extras) extras=$2; shift 2 ;;
      --source) source=$2; shift 2 ;;
      --reuse-site-packages) reuse=$2; shift 2 ;;
      --dry-run) dry_run=true; shift ;;
      *) die "venv: unknown option $1 (expected --venv, --variant, --cuda, --torch-version, --extras, --source, --reuse-site-packages, --dry-run)" ;;
    esac
  done
  [ -n "$venv" ] || die "venv: --venv DIR is required"
  local tag
  case "$variant" in
    cpu) tag=cpu ;;
    cuda)
      [[ "$cuda" =~ ^cu[0-9]{3}$ ]] || die "venv: --cuda $cuda; expected a PyTorch CUDA wheel tag such as cu128"
      tag=$cuda ;;
    *) die "venv: --variant $variant; expected cpu or cuda" ;;
  esac
  local index=https://download.pytorch.org/whl/$tag
  local here
  here=$(cd "$(dirname "$0")" && pwd)
  source=${source:-$(dirname "$here")}
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-cache-dir -q)
  local package="$source"
  [ -n "$extras" ] && package="$source[$extras]"
  # The online install, in order: pip itself, torch alone from its index, then imgembed.
  local pip_step=(install --upgrade "pip==25.2")
  local torch_step=(install --index-url "$index" "torch==$torch_version+$tag")
  local package_step=(install --constraint "$here/constraints.txt" "$package")
  if $dry_run; then
    printf 'pip %s\n' "${pip_step[*]}" "${torch_step[*]}" "${package_step[*]}"
    return 0
  fi
  if [ -n "$reuse" ]; then
    # No pip or setuptools of its own: the reused folder's run and build the install.
    python3 -m venv --without-pip "$venv"
  else
    python3 -m venv "$venv"
  fi
  if [ -n "$reuse" ]; then
    [ -d "$reuse" ] || die "venv: --reuse-site-packages $reuse is not a folder"
    local site
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$reuse" > "$site/zz-reused-site-packages.pth"
    # --ignore-installed --no-deps: install imgembed here without touching (or uninstalling from)
    # the reused folder; then check that the reused packages satisfy what imgembed[EXTRAS] requires.
    "${pip[@]}" install --no-index --no-build-isolation --no-deps --ignore-installed "$package"
    "$venv/bin/python" - "$extras" <<'PY' || die "venv: the reused packages do not satisfy imgembed[$extras]"
import sys
from importlib import metadata

from packaging.requirements import Requirement

extras = {extra for extra in sys.argv[1].split(",") if extra} or {""}
unmet = []
for line in metadata.requires("imgembed") or []:
    requirement = Requirement(line)
    if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in extras):
        continue
    try:
        version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        unmet.append(f"{requirement} (absent)")
        continue
    if not requirement.specifier.contains(version, prereleases=True):
        unmet.append(f"{requirement} (found {version})")
if unmet:
    sys.exit("unmet: " + ", ".join(unmet))
PY
  else
    "${pip[@]}" "${pip_step[@]}"
    "${pip[@]}" "${torch_step[@]}"
    "${pip[@]}" "${package_step[@]}"
  fi
  "$venv/bin/python" - "$torch_version" "$tag" <<'PY' || die "venv: torch is not the pinned build (above)"
import sys
import torch
version, tag = sys.argv[1], sys.argv[2]
cuda = None if tag == "cpu" else f"{tag[2:-1]}.{tag[-1]}"  # cu128 -> 12.8
if torch.__version__ != f"{version}+{tag}" or torch.version.cuda != cuda:
    sys.exit(
        f"torch is {torch.__version__} (CUDA {torch.version.cuda}), pinned {version}+{tag} "
        f"(CUDA {cuda}): something replaced it, or the index served another build"
    )
PY
  "$venv/bin/python" -c "import imgembed.cli, imgembed.runpod, imgembed.server.app" \
    || die "venv: the image's entry points (imgembed.cli, imgembed.runpod, imgembed.server.app) do not import"
  "$venv/bin/imgembed" --help >/dev/null
}

weights_step() {
  local venv="" cache="" config=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --venv) venv=$2; shift 2 ;;
      --cache) cache=$2; shift 2 ;;
      --config) config=$2; shift 2 ;;
      --*) die "weights: unknown option $1 (expected --venv, --cache, --config)" ;;
      *) break ;;
    esac
  done
  [ -n "$venv" ] && [ -n "$cache" ] && [ -n "$config" ] || die "weights: --venv, --cache and --config are required"
  mkdir -p "$cache"
  if [ $# -eq 0 ]; then
    echo "docker/install.sh: no MODELS baked; mount weights or let the container fetch them" >&2
    return 0
  fi
  "$venv/bin/imgembed" download --cache-dir "$cache" "$@" > "$cache/imgembed-download.json"
  mkdir -p "$(dirname "$config")"
  "$venv/bin/python" - "$cache/imgembed-download.json" "$config" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as out:
    out.write("# Written by docker/install.sh weights: the models baked into this image.\n")
    for model in summary["models"]:
        out.write(f'\n[[models]]\nname = "{model["name"]}"\n')
PY
}

user_step() {
  local name="" uid="" home="" dry_run=false owns=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --name) name=$2; shift 2 ;;
      --uid) uid=$2; shift 2 ;;
      --home) home=$2; shift 2 ;;
      --owns) owns+=("$2"); shift 2 ;;
      --dry-run) dry_run=true; shift ;;
      *) die "user: unknown option $1 (expected --name, --uid, --home, --owns, --dry-run)" ;;
    esac
  done
  [ -n "$name" ] && [ -n "$uid" ] && [ -n "$home" ] || die "user: --name, --uid and --home are required"
  [ "$uid" -gt 0 ] 2>/dev/null || die "user: --uid $uid; expected a number above 0 (not root)"
  local run=()
  $dry_run && run=(echo)
  "${run[@]}" groupadd --system --gid "$uid" "$name"
  "${run[@]}" useradd --system --uid "$uid" --gid "$uid" --home-dir "$home" --create-home --shell /usr/sbin/nologin "$name"
  for folder in ${owns[@]+"${owns[@]}"}; do
    "${run[@]}" mkdir -p "$folder"
    "${run[@]}" chown -R "$uid:$uid" "$folder"
  done
}

step=${1:-}
[ $# -gt 0 ] && shift
case "$step" in
  venv) venv_step "$@" ;;
  weights) weights_step "$@" ;;
  user) user_step "$@" ;;
  *) die "expected a step: venv, weights or user (got '${step}')" ;;
esac
