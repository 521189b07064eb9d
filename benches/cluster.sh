#!/usr/bin/env bash
# Cross-node numbers next to single-node (issue 11), on the benchmark fixture:
#   - chat, window 16: deliveries/s with 32 clients on one node, and split over two nodes
#     that share the chat through a local redis-server;
#   - latency at 100k deliveries/s (3,125 messages/s from 4 senders into a 32-client chat):
#     p50/p99, one node and two;
#   - Redis PUBLISH calls per chat message (INFO commandstats), two nodes;
#   - server CPU per delivery during the chat run: the node's, or the two nodes' summed, and
#     the two nodes plus redis-server (loadtest --server-pid takes several pids and sums).
# Every server runs one worker. Interleaved runs (RUNS, default 3); one line per measurement.
# Needs redis-server and redis-cli (Debian's redis-server), and release builds:
#   cargo build --release -p socket-server -p loadtest
set -euo pipefail
cd "$(dirname "$0")/.."
SS=${SS:-target/release/socket-server}
LT=${LT:-target/release/loadtest}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
RP=${REDIS_PORT:-46379}
for tool in redis-server redis-cli curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "cluster.sh needs $tool (apt-get install redis-server curl)" >&2; exit 1; }
done
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
REDIS=$!
PIDS=()
cleanup() { kill "${PIDS[@]}" "$REDIS" 2>/dev/null || true; }
trap cleanup EXIT
until redis-cli -p "$RP" PING >/dev/null 2>&1; do sleep 0.05; done

node() { # port [redis]
  local port=$1
  if [ "${2:-}" = redis ]; then
    WS_PORT=$port HOST=127.0.0.1 WORKERS=1 LOG_LEVEL=warn REDIS_URL="redis://127.0.0.1:$RP/" \
      NODE_ID="bench-$port" "$SS" --bench-fixture 20000:1 >/dev/null 2>&1 &
  else
    WS_PORT=$port HOST=127.0.0.1 WORKERS=1 LOG_LEVEL=warn "$SS" --bench-fixture 20000:1 \
      >/dev/null 2>&1 &
  fi
  PIDS+=($!)
  until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.05; done
}
publishes() { redis-cli -p "$RP" INFO commandstats | sed -n 's/^cmdstat_publish:calls=\([0-9]*\),.*/\1/p' | tr -d '\r' | grep . || echo 0; }
chat() { # urls pids
  "$LT" --url "$1" --server-pid "$2" --json chat --clients 32 --window 16 --duration "$DURATION" --warmup 2s 2>/dev/null \
    | python3 -c 'import sys,json; d=json.load(sys.stdin); m=d["measured"]; print(round(m["deliveries_per_s"]), d["total_sent"], d["consistent"], round(m["server"]["cpu_ns_per_unit"]))'
}
cpu() { # urls pids: server CPU per delivery only
  "$LT" --url "$1" --server-pid "$2" --json chat --clients 32 --window 16 --duration "$DURATION" --warmup 2s 2>/dev/null \
    | python3 -c 'import sys,json; d=json.load(sys.stdin); print(round(d["measured"]["server"]["cpu_ns_per_unit"]))'
}
latency() { # urls
  "$LT" --url "$1" --json latency --clients 32 --senders 4 --rate 3125 --duration "$DURATION" --warmup 2s 2>/dev/null \
    | python3 -c 'import sys,json; d=json.load(sys.stdin); l=d["latency"]; print(round(l["p50_ns"]/1e3), round(l["p99_ns"]/1e3), d["lost"])'
}

P=39700
for run in $(seq 1 "$RUNS"); do
  P=$((P + 3)); node $P
  read -r dps sent ok ns <<<"$(chat "ws://127.0.0.1:$P/" "${PIDS[0]}")"
  echo "run $run single chat-w16 deliveries/s $dps consistent $ok server_cpu_ns_per_delivery $ns"
  read -r p50 p99 lost <<<"$(latency "ws://127.0.0.1:$P/")"
  echo "run $run single latency p50_us $p50 p99_us $p99 lost $lost"
  kill "${PIDS[@]}"; PIDS=()

  node $((P + 1)) redis; node $((P + 2)) redis
  urls="ws://127.0.0.1:$((P + 1))/,ws://127.0.0.1:$((P + 2))/"
  before=$(publishes)
  read -r dps sent ok ns <<<"$(chat "$urls" "${PIDS[0]},${PIDS[1]}")"
  after=$(publishes)
  echo "run $run two-nodes chat-w16 deliveries/s $dps consistent $ok publishes_per_message $(python3 -c "print(round(($after - $before) / max($sent, 1), 3))") nodes_cpu_ns_per_delivery $ns"
  echo "run $run two-nodes chat-w16 nodes_and_redis_cpu_ns_per_delivery $(cpu "$urls" "${PIDS[0]},${PIDS[1]},$REDIS")"
  read -r p50 p99 lost <<<"$(latency "$urls")"
  echo "run $run two-nodes latency p50_us $p50 p99_us $p99 lost $lost"
  kill "${PIDS[@]}"; PIDS=()
done
