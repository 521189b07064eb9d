#!/usr/bin/env bash
# The `storm` target on the embedded store (not the in-memory fixture): 20,000 users with
# tokens t0..t19999 are written into a fresh SQLite store, then the load generator opens and
# authenticates 5,000 connections as fast as it can against one pinned worker, RUNS times.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
cargo build --release -p socket-server -p loadtest >&2
SS=$PWD/target/release/socket-server
LT=$PWD/target/release/loadtest
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"; [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null || true' EXIT
STORE_PATH=$DIR/store.db "$SS" user add seed >/dev/null # creates the schema
python3 - "$DIR/store.db" <<'PY'
import hashlib, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
now = "2026-01-01T00:00:00.000Z"
n = range(20000)
c.executemany("INSERT INTO users (id,name,email,created_at) VALUES (?,?,?,?)", [(f"u{i}", f"User {i}", "", now) for i in n])
c.executemany("INSERT INTO tokens (hash,user_id,created_at) VALUES (?,?,?)", [(hashlib.sha256(f"t{i}".encode()).hexdigest(), f"u{i}", now) for i in n])
c.executemany("INSERT INTO chats (id,name,created_at) VALUES (?,?,?)", [(f"c{i}", "", now) for i in n])
c.executemany("INSERT INTO participants (chat_id,user_id) VALUES (?,?)", [(f"c{i}", f"u{i}") for i in n])
c.commit()
PY
for run in $(seq 1 "$RUNS"); do
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  STORE_PATH=$DIR/store.db WS_PORT=$PORT HOST=127.0.0.1 WORKERS=1 LOG_LEVEL=warn taskset -c 0 "$SS" >"$DIR/server.log" 2>&1 &
  PID=$!
  sleep 0.7
  taskset -c 1 "$LT" --url "ws://127.0.0.1:$PORT/" --server-pid "$PID" --json storm --count 5000 2>/dev/null |
    python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"run $run: {d['connections_per_s']:,.0f} connections/s, auth p50 {d['auth']['p50_ns']/1e6:.2f} ms, p99 {d['auth']['p99_ns']/1e6:.2f} ms, {d['connected']} connected, {d['failed']} failed\")"
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
done
