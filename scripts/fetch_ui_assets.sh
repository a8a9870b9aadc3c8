#!/usr/bin/env bash
# Installs onnxruntime-web from the npm registry, at the version and integrity hashes pinned in
# ui/package-lock.json, and copies the files the browser page (/ui) loads into
# src/imgembed/ui/vendor/, with a manifest.json naming the version and each file's SHA-256.
#
#   scripts/fetch_ui_assets.sh           install when the vendor folder is missing or stale
#   scripts/fetch_ui_assets.sh --force   reinstall
#
# Needs node and npm (Debian: apt-get install -y nodejs npm). Run once at set-up; afterwards the
# page works offline, served by imgembed alone. npm runs with --ignore-scripts: only the package's
# prebuilt dist/ files are used, no install script of any dependency runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ui="$root/ui"
vendor="$root/src/imgembed/ui/vendor"
dist="$ui/node_modules/onnxruntime-web/dist"
# The WebAssembly build (every browser with WebAssembly) and the WebGPU build (used where the
# browser offers navigator.gpu), each with the Emscripten loader and binary it imports.
files=(
  ort.wasm.min.mjs
  ort-wasm-simd-threaded.mjs
  ort-wasm-simd-threaded.wasm
  ort.webgpu.min.mjs
  ort-wasm-simd-threaded.asyncify.mjs
  ort-wasm-simd-threaded.asyncify.wasm
)

if [ "${1:-}" != "--force" ] && [ -f "$vendor/manifest.json" ] \
  && [ "$vendor/manifest.json" -nt "$ui/package-lock.json" ]; then
  exit 0
fi
command -v npm >/dev/null || {
  echo "fetch_ui_assets: npm not found; install Node.js and npm (Debian: apt-get install -y nodejs npm)" >&2
  exit 1
}
echo "fetch_ui_assets: installing onnxruntime-web from the npm registry" >&2
(cd "$ui" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)

version=$(node -p "require('$ui/node_modules/onnxruntime-web/package.json').version")
mkdir -p "$(dirname "$vendor")"
staging=$(mktemp -d "$root/src/imgembed/ui/.vendor-XXXXXX")
trap 'rm -rf "$staging"' EXIT
for name in "${files[@]}"; do
  cp "$dist/$name" "$staging/$name"
done
(
  cd "$staging"
  printf '{\n  "package": "onnxruntime-web",\n  "version": "%s",\n  "license": "MIT",\n  "files": {\n' "$version"
  last=$((${#files[@]} - 1))
  for index in "${!files[@]}"; do
    name=${files[$index]}
    separator=$([ "$index" -eq "$last" ] && echo "" || echo ",")
    printf '    "%s": "%s"%s\n' "$name" "$(sha256sum "$name" | cut -d' ' -f1)" "$separator"
  done
  printf '  }\n}\n'
) >"$staging/manifest.json.tmp"
mv "$staging/manifest.json.tmp" "$staging/manifest.json"
rm -rf "$vendor"
mv "$staging" "$vendor"
chmod 755 "$vendor"
trap - EXIT
echo "fetch_ui_assets: onnxruntime-web $version -> $vendor ($(du -sh "$vendor" | cut -f1))" >&2
