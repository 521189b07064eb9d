#!/usr/bin/env bash
# Full soak run: connect/disconnect churn plus traffic against a release build for SOAK_SECS
# seconds (default 600), sampling the server's RSS and open fds, which must end flat.
# The same test runs for 12 s in `cargo test`. SOAK_BACKEND=fixture uses the in-memory
# benchmark fixture instead of the SQLite store.
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECS="${SOAK_SECS:-600}" cargo test --release --test soak -- --nocapture
