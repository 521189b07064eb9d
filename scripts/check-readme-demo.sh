#!/usr/bin/env bash
# Runs the README's first command exactly as written there (read from README.md, not copied),
# waits for /healthz on the port the README names, loads the demo page at /, and stops it.
# Run from anywhere; it runs the command in the repository root, as a new user would.
# Bounded: the first release build may take a while (DEMO_CHECK_TIMEOUT seconds, default 1500).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cmd="$(scripts/readme-command.sh 1)"
port="$(grep -oE 'http://localhost:[0-9]+' README.md | head -n1 | sed 's/.*://')"
port="${port:-8080}"
timeout_s="${DEMO_CHECK_TIMEOUT:-1500}"
echo "README command 1: $cmd"
echo "expecting the demo on port $port"

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "port $port is already in use; stop whatever listens there first" >&2
  exit 1
fi
db_existed=0
[ -e socket-server.db ] && db_existed=1

log="$(mktemp)"
# A process group of its own, so stopping it stops cargo and the server it started.
setsid bash -c "$cmd" >"$log" 2>&1 &
pgid=$!
cleanup() {
  kill -TERM -- "-$pgid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pgid" 2>/dev/null || true
  if [ "$db_existed" = 0 ]; then rm -f socket-server.db socket-server.db-wal socket-server.db-shm; fi
  rm -f "$log"
}
trap cleanup EXIT

deadline=$((SECONDS + timeout_s))
until curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
  if ! kill -0 "$pgid" 2>/dev/null; then
    echo "the README's first command exited before /healthz answered; its output:" >&2
    cat "$log" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "no /healthz on port $port within ${timeout_s}s; output so far:" >&2
    tail -n 50 "$log" >&2
    exit 1
  fi
  sleep 1
done
echo "/healthz answered after ${SECONDS}s"
page="$(curl -fsS "http://127.0.0.1:$port/")"
if ! grep -q '<html' <<<"$page" || ! grep -q 'WebSocket' <<<"$page"; then
  echo "GET / did not return the demo page:" >&2
  head -c 500 <<<"$page" >&2
  exit 1
fi
echo "GET / returned the demo page ($(wc -c <<<"$page") bytes)"
echo "README command 1 works as written"
