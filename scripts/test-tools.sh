#!/usr/bin/env bash
# The Debian packages some tests drive, installed where missing: `npm test` runs this first (pretest) and so
# does .ci/run.
#   redis-server                        the Redis store, rate-limit and cluster tests start their own redis-server
#   chromium                            test/web/browser.test.ts drives /usr/bin/chromium with playwright-core
#   python3-torch libopenblas0-pthread  test/train and test/scripts/gpu-compare.test.ts run PyTorch on the CPU
#                                       (/usr/bin/python3, or $PYTHON as the tests use it; OpenBLAS because
#                                       Debian's torch otherwise calls the reference BLAS, 20x slower)
# Nothing missing: exits 0 at once. Else apt-get update + apt-get install -y of exactly the missing packages,
# as root directly, else through `sudo -n` (never a password prompt); if neither can, or apt-get is not there
# (not Debian), it prints what to install and exits 1.
# TEST_TOOLS_CHROMIUM (default /usr/bin/chromium) is the file checked for Chromium: a test hook
# (test/scripts/test-tools.test.ts runs this with stub tools on a fake PATH).
set -uo pipefail

python=${PYTHON:-/usr/bin/python3}
chromium=${TEST_TOOLS_CHROMIUM:-/usr/bin/chromium}

missing_packages() {
  local m=()
  command -v redis-server >/dev/null 2>&1 || m+=(redis-server)
  [ -x "$chromium" ] || m+=(chromium)
  "$python" -c 'import torch' >/dev/null 2>&1 || m+=(python3-torch)
  local blas
  blas=$(dpkg-query -W -f '${Status}' libopenblas0-pthread 2>/dev/null) || blas=
  [[ "$blas" == *" installed" ]] || m+=(libopenblas0-pthread)
  echo "${m[*]}"
}

fail() {
  echo "test-tools: $1" >&2
  echo "test-tools: some tests need these Debian packages; install them as root, then run npm test again:" >&2
  echo "  apt-get update && apt-get install -y $missing" >&2
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

"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update || fail "apt-get update failed"
# shellcheck disable=SC2086 # $missing: one word per package
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y $missing || fail "apt-get install failed"

still=$(missing_packages)
[ -z "$still" ] || { missing=$still; fail "still missing after apt-get install: $still"; }
echo "test-tools: installed $missing" >&2
