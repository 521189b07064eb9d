#!/usr/bin/env bash
# The README's test command: installs what the test suite needs on a fresh Debian machine,
# then runs every test (`cargo test`: unit tests, black-box tests over real sockets, the
# browser test of the demo page, and the load generator's tests).
#
# Installs, only when missing:
#   - a C compiler (the bundled SQLite builds with it)       apt-get install build-essential
#   - Chromium for the browser test                         apt-get install chromium
#   - Redis for the multi-node tests (tests/cluster.rs)     apt-get install redis-server
#   - playwright-core, which drives it (tests/browser)      npm ci
# apt-get runs through sudo when not root. Nothing is downloaded by a test tool itself.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "== installing $* (apt-get)"
  $sudo apt-get update -y
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "$@"
}

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi

if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
  echo "Node.js $(node --version) is too old for the browser test's playwright-core: install Node.js 20 or newer" >&2
  echo "(Debian 12's own nodejs package is 18; NodeSource or nvm provide 20+)" >&2
  exit 1
fi

if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "== installing playwright-core (npm ci in tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund)
fi

echo "== cargo test"
exec cargo test "$@"
