#!/usr/bin/env bash
# The Debian packages some tests drive, installed where missing: `npm test` runs this first (pretest) and so
# does .ci/run.
#   redis-server                        the Redis store, rate-limit and cluster tests start their own redis-server
#   chromium                            test/web/browser.test.ts drives /usr/bin/chromium with playwright-core
#   python3-torch libopenblas0-pthread  test/train and test/scripts/gpu-compare.test.ts run PyTorch on the CPU
#                                       (/usr/bin/python3, or $PYTHON as the tests use it; OpenBLAS because
#                                       Debian's torch otherwise calls the reference BLAS, 20x slower)
#   sentencepiece                       test/convert/sentencepiece.test.ts holds our tokenizers against Debian's
#                                       spm_encode / spm_decode themselves (beside the recorded outputs)
#   mesa-vulkan-drivers (>= 24)         test/inference/webgpu.test.ts runs the WebGPU provider on the CPU through
#                                       Mesa's software Vulkan driver (lavapipe); Dawn needs Mesa 24 or later,
#                                       which Debian 12 (bookworm) has in bookworm-backports: on bookworm that
#                                       source is added (debian-backports.sources) and Mesa installed from it
# Nothing missing: exits 0 at once. Else apt-get update + apt-get install -y of exactly the missing packages,
# as root directly, else through `sudo -n` (never a password prompt); if neither can, or apt-get is not there
# (not Debian), it prints what to install and exits 1.
# Test hooks (test/scripts/test-tools.test.ts runs this with stub tools on a fake PATH): TEST_TOOLS_CHROMIUM
# (default /usr/bin/chromium) is the file checked for Chromium, TEST_TOOLS_OS_RELEASE (/etc/os-release) the
# file read for the Debian release, TEST_TOOLS_APT_SOURCES (/etc/apt/sources.list.d) where a source is added.
set -uo pipefail

python=${PYTHON:-/usr/bin/python3}
chromium=${TEST_TOOLS_CHROMIUM:-/usr/bin/chromium}
os_release=${TEST_TOOLS_OS_RELEASE:-/etc/os-release}
apt_sources=${TEST_TOOLS_APT_SOURCES:-/etc/apt/sources.list.d}

mesa_new_enough() {
  local v
  v=$(dpkg-query -W -f '${Version}' mesa-vulkan-drivers 2>/dev/null) || return 1
  dpkg --compare-versions "$v" ge 24
}

missing_packages() {
  local m=()
  command -v redis-server >/dev/null 2>&1 || m+=(redis-server)
  [ -x "$chromium" ] || m+=(chromium)
  "$python" -c 'import torch' >/dev/null 2>&1 || m+=(python3-torch)
  local blas
  blas=$(dpkg-query -W -f '${Status}' libopenblas0-pthread 2>/dev/null) || blas=
  [[ "$blas" == *" installed" ]] || m+=(libopenblas0-pthread)
  command -v spm_encode >/dev/null 2>&1 || m+=(sentencepiece)
  mesa_new_enough || m+=(mesa-vulkan-drivers)
  echo "${m[*]}"
}

fail() {
  echo "test-tools: $1" >&2
  echo "test-tools: some tests need these Debian packages; install them as root, then run npm test again:" >&2
  echo "  apt-get update && apt-get install -y $missing" >&2
  [[ " $missing " == *" mesa-vulkan-drivers "* ]] &&
    echo "  (mesa-vulkan-drivers 24 or later: on Debian 12 from bookworm-backports, apt-get install -t bookworm-backports ...)" >&2
  exit 1
}

missing=$(missing_packages)
[ -z "$missing" ] && exit 0

echo "test-tools: installing the Debian packages some tests need: $missing" >&2
command -v apt-get >/dev/null 2>&1 || fail "apt-get not found (not Debian?)"
if [ "$(id -u 2>/dev/null)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
  as_root=(sudo -n)
else
  fail "not root, and sudo -n cannot run commands as root here"
fi

# Mesa from bookworm-backports on Debian 12 (its own Mesa 22 is too old for Dawn); other releases: as it is.
codename=$(. "$os_release" 2>/dev/null && echo "${VERSION_CODENAME:-}")
packages=()
mesa_target=()
for p in $missing; do
  if [ "$p" = mesa-vulkan-drivers ] && [ "$codename" = bookworm ]; then
    mesa_target=(-t bookworm-backports mesa-vulkan-drivers)
  else
    packages+=("$p")
  fi
done
if [ ${#mesa_target[@]} -gt 0 ] && [ ! -e "$apt_sources/debian-backports.sources" ]; then
  echo "test-tools: adding bookworm-backports ($apt_sources/debian-backports.sources) for Mesa >= 24" >&2
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
    "${as_root[@]}" tee "$apt_sources/debian-backports.sources" >/dev/null || fail "cannot write $apt_sources/debian-backports.sources"
fi

"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update || fail "apt-get update failed"
if [ ${#packages[@]} -gt 0 ]; then
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}" || fail "apt-get install failed"
fi
if [ ${#mesa_target[@]} -gt 0 ]; then
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${mesa_target[@]}" || fail "apt-get install failed"
fi

still=$(missing_packages)
[ -z "$still" ] || { missing=$still; fail "still missing after apt-get install: $still"; }
echo "test-tools: installed $missing" >&2
