#!/usr/bin/env bash
# Builds .devbundle/: everything scripts/gpu-check.sh needs on a GPU machine that has no Node.js and no
# internet (an xz-compressed Node binary, the compiled app, production node_modules with only this
# platform's native files), kept under 64 MiB. Also fetches the Vulkan loader packages into .gl/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.devbundle
rm -rf "$out"
mkdir -p "$out"

npm run build >/dev/null
xz -T0 -6 -c "$(readlink -f "$(command -v node)")" > "$out/node.xz"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp package.json package-lock.json "$stage/"
(cd "$stage" && ONNXRUNTIME_NODE_INSTALL=skip npm ci --omit=dev --ignore-scripts --no-audit --no-fund >/dev/null)
ort="$stage/node_modules/onnxruntime-node/bin/napi-v6"
rm -rf "$ort/darwin" "$ort/win32" "$ort/linux/arm64"
rm -rf "$stage"/node_modules/@img/*arm* "$stage"/node_modules/@img/*darwin* "$stage"/node_modules/@img/*win32* 2>/dev/null || true
tar -C "$stage" -c node_modules | xz -T0 -6 > "$out/node_modules.tar.xz"
tar -c dist | xz -T0 -6 > "$out/dist.tar.xz"

if [ ! -d .gl ] || ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update >/dev/null
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null)
fi
du -ch "$out"/* .gl/* | tail -n 1
