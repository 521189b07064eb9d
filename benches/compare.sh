#!/usr/bin/env bash
# Reproduces every number in BENCHMARKS.md: socket-server side by side with the Bun reference
# peer (../shared/bench/bun-peer/server.ts), same load generator, same machine, same run.
#
#   benches/compare.sh                 # 3 runs of every scenario (about 14 minutes)
#   RUNS=5 benches/compare.sh          # more runs
#   SCENARIOS="chat_w1 chat_w16" benches/compare.sh
#
# Pinning: the server under test gets core 0 (WORKERS=1), the load generator core 1. Results
# (one JSON per run) and the summary table (median, min-max) go to target/bench-results/.
# Each run records `other_cores` (CPU used by anything else on the machine); a run with more
# than OTHER_MAX (default 0.10 cores) is repeated, up to 3 times.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS="${RUNS:-3}"
SCENARIOS="${SCENARIOS:-chat_w1 chat_w16 chat_rounds latency_100k connections_15k storm_5k}"
OTHER_MAX="${OTHER_MAX:-0.10}"
OUT="$ROOT/target/bench-results"
BUN_DIR="${BUN_DIR:-$HOME/.cache/socket-server-bench/bun}"
PEER="$ROOT/../shared/bench/bun-peer/server.ts"
mkdir -p "$OUT"

echo "== building (release)"
cargo build --release -p socket-server -p loadtest >&2
SS="$ROOT/target/release/socket-server"
LT="$ROOT/target/release/loadtest"

if [ ! -x "$BUN_DIR/node_modules/.bin/bun" ]; then
  echo "== installing bun from npm into $BUN_DIR"
  mkdir -p "$BUN_DIR"
  (cd "$BUN_DIR" && npm install --silent --no-audit --no-fund bun@1 >&2)
fi
BUN="$BUN_DIR/node_modules/.bin/bun"
echo "== bun $("$BUN" --version), $(nproc) cores, $(uname -r)"

PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_server() { # server rooms -> sets PID, PORT
  PORT=$(free_port)
  if [ "$1" = socket-server ]; then
    WS_PORT=$PORT HOST=127.0.0.1 WORKERS=1 LOG_LEVEL=warn \
      taskset -c 0 "$SS" --bench-fixture "20000:$2" >"$OUT/server.log" 2>&1 &
  else
    PORT=$PORT HOST=127.0.0.1 ROOMS=$2 taskset -c 0 "$BUN" run "$PEER" >"$OUT/server.log" 2>&1 &
  fi
  PID=$!
  for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null; then return; fi
    sleep 0.1
  done
  echo "server $1 did not start" >&2; cat "$OUT/server.log" >&2; exit 1
}

scenario_args() {
  case "$1" in
    chat_w1) echo "chat --clients 32 --duration 10s --warmup 2s --window 1" ;;
    chat_w16) echo "chat --clients 32 --duration 10s --warmup 2s --window 16" ;;
    # The Bun peer's own rule: every client sends 200 at once, then waits for the round.
    chat_rounds) echo "chat --clients 32 --duration 10s --warmup 2s --round-size 200" ;;
    latency_100k) echo "latency --clients 32 --senders 4 --rate 3125 --duration 10s --warmup 2s" ;;
    connections_15k) echo "connections --count 15000 --settle 3s" ;;
    storm_5k) echo "storm --count 5000" ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}

# Results of earlier runs of these scenarios (perhaps with more RUNS) must not be summarised
# with this run's.
for scenario in $SCENARIOS; do rm -f "$OUT/${scenario}"_*.json; done

for run in $(seq 1 "$RUNS"); do
  for scenario in $SCENARIOS; do
    for server in socket-server bun; do
      file="$OUT/${scenario}_${server}_${run}.json"
      # Chat scenarios put every client in one chat; connection scenarios give each user a chat
      # of its own, so presence does not turn N connections into N^2 deliveries.
      case "$scenario" in chat_* | latency_*) rooms=1 ;; *) rooms=20000 ;; esac
      for attempt in 1 2 3; do
        start_server "$server" "$rooms"
        # shellcheck disable=SC2046
        taskset -c 1 "$LT" --url "ws://127.0.0.1:$PORT/" --server-pid "$PID" --json \
          $(scenario_args "$scenario") >"$file" 2>"$OUT/loadtest.err" || {
          echo "loadtest failed ($scenario, $server)" >&2; cat "$OUT/loadtest.err" >&2; exit 1; }
        kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
        other=$(python3 -c "import json; print(json.load(open('$file')).get('measured',{}).get('other_cores',0))")
        echo "run $run $scenario $server: other cores $other"
        python3 -c "import sys; sys.exit(0 if float('$other') <= float('$OTHER_MAX') else 1)" && break
      done
    done
  done
done

python3 "$ROOT/benches/summarize.py" "$OUT" | tee "$OUT/summary.md"
