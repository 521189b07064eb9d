#!/usr/bin/env bash
# System calls per delivery (issue 12): `strace -c -f` on a socket-server during one chat run
# of the load generator, per binary given, one after the other on the same rule.
#
#   benches/syscalls.sh                               # this checkout's release build
#   benches/syscalls.sh /tmp/ss-before /tmp/ss-after  # side by side
#   ARGS="--window 16" benches/syscalls.sh            # another rule (default: --window 1)
#
# One worker on core 0, the load generator (32 clients, 10 s after 2 s of warm-up) on core 1.
# strace slows the server down, so compare counts per delivery, never the rates. Deliveries
# are the messages sent over the whole run times 32 (every member gets every message), the
# same span strace counts. Needs strace (Debian's strace) and release builds:
#   cargo build --release -p socket-server -p loadtest
set -euo pipefail
cd "$(dirname "$0")/.."
LT=${LT:-target/release/loadtest}
ARGS=${ARGS:---window 1}
[ $# -gt 0 ] || set -- target/release/socket-server
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
P=${PORT:-42100}
for ss in "$@"; do
  P=$((P + 1))
  WS_PORT=$P HOST=127.0.0.1 WORKERS=1 LOG_LEVEL=warn taskset -c 0 \
    strace -c -f -o "$OUT/strace.txt" "$ss" --bench-fixture 20000:1 >/dev/null 2>&1 &
  TRACER=$!
  until curl -sf "http://127.0.0.1:$P/readyz" >/dev/null; do sleep 0.05; done
  sent=$(taskset -c 1 "$LT" --url "ws://127.0.0.1:$P/" --json chat --clients 32 --duration 10s \
    --warmup 2s $ARGS 2>/dev/null | python3 -c 'import sys,json; print(json.load(sys.stdin)["total_sent"])')
  # SIGINT to the server (not to strace), so strace writes its table when the server exits.
  pkill -INT -P "$TRACER" || true
  wait "$TRACER" 2>/dev/null || true
  echo "== $ss ($ARGS): $sent messages, $((sent * 32)) deliveries"
  python3 - "$OUT/strace.txt" "$((sent * 32))" <<'PY'
import sys
path, deliveries = sys.argv[1], int(sys.argv[2])
rows = {}
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        rows[f[-1]] = (int(f[3]), int(f[4]) if len(f) == 6 else 0)
total = sum(c for c, _ in rows.values())
for name, (calls, errors) in sorted(rows.items(), key=lambda r: -r[1][0])[:8]:
    print(f"  {name:16} {calls:>9} calls {errors:>9} errors  {calls / deliveries:.4f} per delivery")
print(f"  {'all':16} {total:>9} calls {'':>16}  {total / deliveries:.4f} per delivery")
PY
done
