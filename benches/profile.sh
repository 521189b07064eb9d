#!/usr/bin/env bash
# Where the server core's time goes (issue 12): `perf record -e cpu-clock` on the server's core
# during one load-generator run, for socket-server and the Bun peer one after the other, then
# the share of samples in the kernel against the server's own code, and kernel nanoseconds per
# unit of work (kernel share × the run's server CPU per delivery, or per connection for storm).
#
#   benches/profile.sh                                  # chat, window 1
#   LOAD="chat --clients 32 --duration 10s --warmup 2s --round-size 200" benches/profile.sh
#   LOAD="storm --count 5000" ROOMS=20000 benches/profile.sh
#   SERVERS=socket-server benches/profile.sh
#
# Same rule as benches/compare.sh: one server worker on core 0, the load generator on core 1.
# perf samples core 0 (chat: 9 s of the measured 10 s; storm: the whole run, at 20 kHz), so it
# sees everything done there: the server's code, its system calls, and the loopback TCP work
# the kernel does on that core (softirq included), which is what the server's CPU figure
# charges. Samples of the idle task are left out of the shares. Needs perf (Debian's
# linux-perf), kernel.perf_event_paranoid <= 0 or root, and release builds:
#   cargo build --release -p socket-server -p loadtest
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SS=${SS:-target/release/socket-server}
LT=${LT:-target/release/loadtest}
LOAD=${LOAD:-chat --clients 32 --duration 10s --warmup 2s --window 1}
ROOMS=${ROOMS:-1}
SERVERS=${SERVERS:-socket-server bun}
BUN="${BUN_DIR:-$HOME/.cache/socket-server-bench/bun}/node_modules/.bin/bun"
OUT=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$OUT"' EXIT
P=${PORT:-42200}
for server in $SERVERS; do
  P=$((P + 1))
  if [ "$server" = socket-server ]; then
    WS_PORT=$P HOST=127.0.0.1 WORKERS=1 LOG_LEVEL=warn taskset -c 0 \
      "$SS" --bench-fixture "20000:$ROOMS" >/dev/null 2>&1 &
  else
    PORT=$P HOST=127.0.0.1 ROOMS=$ROOMS taskset -c 0 "$BUN" run "$ROOT/../shared/bench/bun-peer/server.ts" \
      >/dev/null 2>&1 &
  fi
  PID=$!
  until python3 -c "import socket; socket.create_connection(('127.0.0.1',$P),0.2)" 2>/dev/null; do
    sleep 0.1
  done
  case "$LOAD" in
    chat*) DELAY=2.5 SPAN=9 FREQ=4000 ;;
    *) DELAY=0 SPAN=30 FREQ=20000 ;;
  esac
  (sleep "$DELAY" && exec perf record -q -e cpu-clock -F "$FREQ" -C 0 -o "$OUT/perf.data" \
    -- sleep "$SPAN" >/dev/null 2>&1) &
  REC=$!
  sleep 0.2
  # shellcheck disable=SC2086
  taskset -c 1 "$LT" --url "ws://127.0.0.1:$P/" --server-pid "$PID" --json $LOAD \
    >"$OUT/run.json" 2>/dev/null
  case "$LOAD" in chat*) ;; *) kill -INT "$REC" 2>/dev/null || true ;; esac
  wait "$REC" || true
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  perf report -q -i "$OUT/perf.data" --sort comm,dso --stdio 2>/dev/null >"$OUT/dso.txt"
  comms=$(awk '$1 ~ /%$/ && $2 != "swapper" {print $2}' "$OUT/dso.txt" | sort -u | paste -sd,)
  perf report -q -i "$OUT/perf.data" --comms "$comms" --sort sym --stdio 2>/dev/null >"$OUT/sym.txt"
  python3 - "$server" "$LOAD" "$OUT/run.json" "$OUT/dso.txt" "$OUT/sym.txt" <<'PY'
import json, sys
server, load, run, dso, sym = sys.argv[1:]
r = json.load(open(run))
m = r.get("measured", r)["server"]
ns, unit = m["cpu_ns_per_unit"], ("connection" if load.startswith("storm") else "delivery")
rows = []
for line in open(dso):
    f = line.split()
    if f and f[0].endswith("%"):
        rows.append((float(f[0].rstrip("%")), f[1], " ".join(f[2:])))
busy = sum(p for p, comm, _ in rows if comm != "swapper") or 1.0
kernel = sum(p for p, comm, d in rows if comm != "swapper" and "kernel" in d) / busy * 100
print(f"== {server} ({load}): server {ns:.0f} ns/{unit}; kernel {kernel:.1f}% of the busy core "
      f"= {kernel / 100 * ns:.0f} ns/{unit}, everything else {100 - kernel:.1f}% "
      f"= {(100 - kernel) / 100 * ns:.0f} ns ({100 - busy:.1f}% of samples idle)")
for p, comm, d in sorted(rows, key=lambda row: -row[0])[:5]:
    print(f"   {p:5.1f}%  {comm} {d}")
print("   top symbols (idle left out):")
for line in [l for l in open(sym) if l.strip()][:10]:
    print("   " + line.rstrip())
PY
done
