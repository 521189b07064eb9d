#!/usr/bin/env bash
# Autobahn|Testsuite (RFC 6455 conformance) against `socket-server echo`.
#
#   bash autobahn/run.sh
#
# Installs wstest 0.8.2 (CPython 2.7, pinned in requirements-py27.txt) into a cache directory if it
# is not there yet, builds the release binary (or uses $SOCKET_SERVER_BIN), starts the echo on a
# free loopback port, runs `wstest -m fuzzingclient` over cases 1.* to 10.* (12.* and 13.*,
# permessage-deflate, are excluded), stops the echo and summarizes reports/servers/index.json.
# Exit status: 0 when every case is OK, NON-STRICT or INFORMATIONAL; 1 when any case is FAILED,
# UNIMPLEMENTED or otherwise not passing (they are listed with the report's details); 2 or more on a
# setup error (no Python, install failure, server did not start, runner timed out or wrote no report).
#
# Environment (all optional):
#   SOCKET_SERVER_BIN    server binary to test; default: `cargo build -p socket-server --release`
#                        and use target/release/socket-server (honours CARGO_TARGET_DIR)
#   AUTOBAHN_RUNNER      auto (default: wstest on Python 2.7, else kosoku on Python >= 3.10),
#                        wstest or kosoku
#   AUTOBAHN_PYTHON27    a CPython 2.7 interpreter; default: pyenv's 2.7.x, else python2.7 on PATH
#   AUTOBAHN_CACHE_DIR   where the runner is installed; default ${XDG_CACHE_HOME:-~/.cache}/socket-server-autobahn
#   AUTOBAHN_REPORTS_DIR default autobahn/reports
#   AUTOBAHN_CASES       space-separated case patterns; default "1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.*"
#                        (every section from 1 to 10: the suite has no section 8)
#   AUTOBAHN_TIMEOUT     seconds for the whole runner; default 900
#   AUTOBAHN_STRICT_CLOSE=1  also fail cases whose closing behavior is FAILED or UNCLEAN
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
REPORTS="${AUTOBAHN_REPORTS_DIR:-$HERE/reports}"
CACHE="${AUTOBAHN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/socket-server-autobahn}"
RUNNER="${AUTOBAHN_RUNNER:-auto}"
TIMEOUT="${AUTOBAHN_TIMEOUT:-900}"
CASES="${AUTOBAHN_CASES:-1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.*}"
EXCLUDE="12.* 13.*"
AGENT="socket-server"
WSTEST_VERSION="0.8.2"
KOSOKU_VERSION="0.1.0"
WSACCEL_VERSION="0.6.6"

log() { printf '== autobahn: %s\n' "$*"; }
die() {
  local code="$1"
  shift
  printf 'autobahn: ERROR: %s\n' "$*" >&2
  exit "$code"
}

SERVER_PID=""
RUN_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then
    kill -TERM "$RUN_PID" 2>/dev/null || true
    wait "$RUN_PID" 2>/dev/null || true
  fi
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Runner installation

# Prints a working CPython 2.7 interpreter, or nothing.
find_python27() {
  local pyenv_root c
  pyenv_root="$(pyenv root 2>/dev/null || true)"
  [ -n "$pyenv_root" ] || pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
  for c in "${AUTOBAHN_PYTHON27:-}" \
    "$pyenv_root/versions/2.7.18/bin/python" \
    $(ls -d "$pyenv_root"/versions/2.7.*/bin/python 2>/dev/null | sort -rV || true) \
    "$(command -v python2.7 2>/dev/null || true)" \
    "$(command -v python2 2>/dev/null || true)"; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    if env -u PYTHONPATH -u PYTHONHOME "$c" -c \
      'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' >/dev/null 2>&1; then
      printf '%s\n' "$c"
      return 0
    fi
  done
  return 0
}

# Prints a CPython >= 3.10 interpreter (kosoku's floor), or nothing.
find_python3() {
  local c
  for c in "${AUTOBAHN_PYTHON3:-}" "$(command -v python3 2>/dev/null || true)"; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' >/dev/null 2>&1; then
      printf '%s\n' "$c"
      return 0
    fi
  done
  return 0
}

# Serializes installs of concurrent runs into the same cache (flock is in util-linux).
lock_cache() {
  mkdir -p "$CACHE"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.lock"
    flock 9
  fi
}
unlock_cache() {
  if command -v flock >/dev/null 2>&1; then
    flock -u 9 || true
    exec 9>&-
  fi
}

# Installs wstest for $1 (a python2.7) under $CACHE; prints the prefix.
install_wstest() {
  local py="$1" key prefix start
  key="$( (cat "$HERE/requirements-py27.txt"; echo "wsaccel=$WSACCEL_VERSION"; "$py" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)"
  prefix="$CACHE/wstest-$WSTEST_VERSION-py27-$key"
  if [ -f "$prefix/.complete" ]; then
    printf '%s\n' "$prefix"
    return 0
  fi
  lock_cache
  if [ ! -f "$prefix/.complete" ]; then
    start=$(date +%s)
    log "installing wstest $WSTEST_VERSION into $prefix (python: $py)" >&2
    rm -rf "$prefix"
    # --no-deps: requirements-py27.txt is the whole closure, pinned. --only-binary: no compiler
    # needed; autobahn 0.10.9 and txaio 2.1.0 exist only as (pure-Python) sdists.
    if ! env -u PYTHONPATH -u PYTHONHOME PIP_REQUIRE_VIRTUALENV=0 "$py" -m pip install \
      --disable-pip-version-check --no-warn-script-location --no-input \
      --no-deps --only-binary :all: --no-binary autobahn,txaio \
      --prefix "$prefix" -r "$HERE/requirements-py27.txt" >"$CACHE/install.log" 2>&1; then
      tail -n 40 "$CACHE/install.log" >&2
      rm -rf "$prefix"
      die 3 "pip install of requirements-py27.txt failed (full log: $CACHE/install.log)"
    fi
    # wsaccel: C masking and UTF-8 validation for autobahn. Source only (no 2.7 wheel), so it
    # needs a C compiler and Python headers; without it wstest is slower but judges the same.
    if command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; then
      if ! env -u PYTHONPATH -u PYTHONHOME PIP_REQUIRE_VIRTUALENV=0 "$py" -m pip install \
        --disable-pip-version-check --no-warn-script-location --no-input --no-deps \
        --prefix "$prefix" "wsaccel==$WSACCEL_VERSION" >>"$CACHE/install.log" 2>&1; then
        log "note: wsaccel did not build; wstest runs with pure-Python masking (slower)" >&2
      fi
    else
      log "note: no C compiler; skipping wsaccel, wstest runs with pure-Python masking (slower)" >&2
    fi
    if ! env -u PYTHONPATH -u PYTHONHOME "$py" "$HERE/wstest_launcher.py" "$prefix" -a >&2; then
      rm -rf "$prefix"
      die 3 "wstest does not start after install (see $CACHE/install.log)"
    fi
    touch "$prefix/.complete"
    log "wstest installed in $(($(date +%s) - start)) s" >&2
  fi
  unlock_cache
  printf '%s\n' "$prefix"
}

# Installs kosoku for $1 (a python >= 3.10) in a venv under $CACHE; prints the venv.
install_kosoku() {
  local py="$1" key venv start
  key="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  venv="$CACHE/kosoku-$KOSOKU_VERSION-py$key"
  if [ -f "$venv/.complete" ]; then
    printf '%s\n' "$venv"
    return 0
  fi
  lock_cache
  if [ ! -f "$venv/.complete" ]; then
    start=$(date +%s)
    log "installing kosoku $KOSOKU_VERSION into $venv (python: $py)" >&2
    rm -rf "$venv"
    if ! "$py" -m venv "$venv" >"$CACHE/install-kosoku.log" 2>&1 ||
      ! "$venv/bin/python" -m pip install --disable-pip-version-check --no-input \
        "kosoku==$KOSOKU_VERSION" >>"$CACHE/install-kosoku.log" 2>&1; then
      tail -n 40 "$CACHE/install-kosoku.log" >&2
      rm -rf "$venv"
      die 3 "installing kosoku failed (full log: $CACHE/install-kosoku.log)"
    fi
    touch "$venv/.complete"
    log "kosoku installed in $(($(date +%s) - start)) s" >&2
  fi
  unlock_cache
  printf '%s\n' "$venv"
}

PY27=""
PY3=""
case "$RUNNER" in
  auto)
    PY27="$(find_python27)"
    if [ -n "$PY27" ]; then
      RUNNER=wstest
    else
      PY3="$(find_python3)"
      [ -n "$PY3" ] || die 3 "neither CPython 2.7 (for wstest) nor Python >= 3.10 (for kosoku) found"
      log "no CPython 2.7 found: falling back to kosoku (Autobahn's case files on a Rust runner)"
      RUNNER=kosoku
    fi
    ;;
  wstest)
    PY27="$(find_python27)"
    [ -n "$PY27" ] || die 3 "AUTOBAHN_RUNNER=wstest but no CPython 2.7 found (set AUTOBAHN_PYTHON27)"
    ;;
  kosoku)
    PY3="$(find_python3)"
    [ -n "$PY3" ] || die 3 "AUTOBAHN_RUNNER=kosoku but no Python >= 3.10 found (set AUTOBAHN_PYTHON3)"
    ;;
  *) die 2 "AUTOBAHN_RUNNER must be auto, wstest or kosoku (got '$RUNNER')" ;;
esac

if [ "$RUNNER" = wstest ]; then
  WSTEST_PREFIX="$(install_wstest "$PY27")"
  SUMMARY_PY="$PY27"
else
  KOSOKU_VENV="$(install_kosoku "$PY3")"
  SUMMARY_PY="$KOSOKU_VENV/bin/python"
fi

# ---------------------------------------------------------------------------------------------
# Server binary

if [ -n "${SOCKET_SERVER_BIN:-}" ]; then
  BIN="$SOCKET_SERVER_BIN"
else
  log "cargo build -p socket-server --release"
  (cd "$ROOT" && cargo build -p socket-server --release)
  target_dir="${CARGO_TARGET_DIR:-target}"
  case "$target_dir" in /*) ;; *) target_dir="$ROOT/$target_dir" ;; esac
  BIN="$target_dir/release/socket-server"
fi
[ -x "$BIN" ] || die 2 "server binary not found or not executable: $BIN"

# ---------------------------------------------------------------------------------------------
# Run

mkdir -p "$REPORTS"
rm -rf "$REPORTS/servers"
rm -f "$REPORTS/summary.txt" "$REPORTS/runner.log" "$REPORTS/echo-server.log" "$REPORTS/fuzzingclient.json"

# The echo binds 127.0.0.1 only. It runs in autobahn/ so that no .env of the repository root
# changes its settings; LOG_LEVEL=info keeps the "Echo listening" line.
SERVER_LOG="$REPORTS/echo-server.log"
(cd "$HERE" && LOG_LEVEL=info exec "$BIN" echo --port 0) >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
PORT=""
for _ in $(seq 1 300); do
  PORT="$(grep -F '"Echo listening"' "$SERVER_LOG" 2>/dev/null |
    sed -n 's/.*"port":\([0-9][0-9]*\).*/\1/p' | head -n 1 || true)"
  [ -n "$PORT" ] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    cat "$SERVER_LOG" >&2 || true
    die 2 "the echo server exited before listening"
  fi
  sleep 0.1
done
if [ -z "$PORT" ]; then
  cat "$SERVER_LOG" >&2 || true
  die 2 "the echo server did not log \"Echo listening\" within 30 s"
fi
log "echo server pid $SERVER_PID listening on 127.0.0.1:$PORT ($BIN)"

json_list() {
  local out="" x
  for x in "$@"; do out="$out${out:+, }\"$x\""; done
  printf '[%s]' "$out"
}
set -f # the case patterns contain '*'
CASES_JSON="$(json_list $CASES)"
EXCLUDE_JSON="$(json_list $EXCLUDE)"
RUN_ARGS=()
if [ "$RUNNER" = kosoku ]; then
  for c in $CASES; do RUN_ARGS+=(-i "$c"); done
  for c in $EXCLUDE; do RUN_ARGS+=(-x "$c"); done
fi
set +f

SPEC="$REPORTS/fuzzingclient.json"
cat >"$SPEC" <<EOF
{
  "options": {"failByDrop": false},
  "outdir": "$REPORTS/servers",
  "servers": [{"agent": "$AGENT", "url": "ws://127.0.0.1:$PORT"}],
  "cases": $CASES_JSON,
  "exclude-cases": $EXCLUDE_JSON,
  "exclude-agent-cases": {}
}
EOF

RUNNER_LOG="$REPORTS/runner.log"
if [ "$RUNNER" = wstest ]; then
  log "wstest -m fuzzingclient -s $SPEC (cases: $CASES; excluded: $EXCLUDE; timeout ${TIMEOUT}s)"
  # Run in $REPORTS: wstest may write relative files into its working directory.
  (cd "$REPORTS" && exec env -u PYTHONPATH -u PYTHONHOME timeout -k 10 "$TIMEOUT" \
    "$PY27" "$HERE/wstest_launcher.py" "$WSTEST_PREFIX" -m fuzzingclient -s "$SPEC") \
    >"$RUNNER_LOG" 2>&1 &
else
  log "kosoku -m fuzzingclient 127.0.0.1:$PORT ${RUN_ARGS[*]} (timeout ${TIMEOUT}s)"
  (cd "$REPORTS" && exec timeout -k 10 "$TIMEOUT" "$KOSOKU_VENV/bin/kosoku" -m fuzzingclient \
    "127.0.0.1:$PORT" "${RUN_ARGS[@]}" -o "$REPORTS/servers") >"$RUNNER_LOG" 2>&1 &
fi
RUN_PID=$!
run_start=$(date +%s)
run_rc=0
wait "$RUN_PID" || run_rc=$?
RUN_PID=""
run_secs=$(($(date +%s) - run_start))
log "$RUNNER finished in ${run_secs} s (exit $run_rc; log: $RUNNER_LOG)"

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  log "WARNING: the echo server died during the run; its log:"
  tail -n 40 "$SERVER_LOG" || true
fi
kill -TERM "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""

if [ "$run_rc" -eq 124 ] || [ "$run_rc" -eq 137 ]; then
  tail -n 40 "$RUNNER_LOG" || true
  die 4 "$RUNNER did not finish within ${TIMEOUT} s (raise AUTOBAHN_TIMEOUT?)"
fi
if [ ! -f "$REPORTS/servers/index.json" ]; then
  tail -n 40 "$RUNNER_LOG" || true
  die 4 "$RUNNER exited $run_rc without writing $REPORTS/servers/index.json"
fi

SUM_ARGS=(--summary-file "$REPORTS/summary.txt")
[ "$RUNNER" = wstest ] && SUM_ARGS+=(--agent "$AGENT")
[ "${AUTOBAHN_STRICT_CLOSE:-0}" = 1 ] && SUM_ARGS+=(--strict-close)
sum_rc=0
env -u PYTHONPATH -u PYTHONHOME "$SUMMARY_PY" "$HERE/summarize.py" "$REPORTS/servers" "${SUM_ARGS[@]}" || sum_rc=$?
log "HTML report: $REPORTS/servers/index.html; summary: $REPORTS/summary.txt"
if [ "$sum_rc" -eq 0 ]; then
  log "PASS ($RUNNER, ${run_secs} s)"
elif [ "$sum_rc" -eq 1 ]; then
  log "FAIL: some cases did not pass (listed above)"
else
  die 4 "could not read the report"
fi
exit "$sum_rc"
