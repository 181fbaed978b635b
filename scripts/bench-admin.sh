#!/usr/bin/env bash
# Admin API token latency under load: `GET /v1/connections/{id}/token` with wrk
# (Debian package `wrk`) against the release binary on the embedded default (SQLite).
# Prints wrk's latency distribution and requests/s. Usage: scripts/bench-admin.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 1; }
cargo build --release -q -p tokenvisor-server
dir="$(mktemp -d)"
token="bench-admin-token-$(head -c8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
port=17070
TOKENVISOR_DATA_DIR="$dir" TOKENVISOR_ADMIN_TOKEN="$token" TOKENVISOR_ADMIN_ADDR="127.0.0.1:$port" \
    RUST_LOG=warn ./target/release/tokenvisor serve &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
api() { curl -sf -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
# The token is valid for an hour: every answer comes from memory (no provider call).
api -d '{"name":"bench","provider":"generic","client_id":"id","client_secret":"secret","token_url":"https://auth.example.com/token"}' \
    "http://127.0.0.1:$port/v1/integrations" >/dev/null
id="$(api -d '{"tenant_id":"bench","integration":"bench","access_token":"bench-access-token","refresh_token":"bench-refresh-token","expires_in":3600}' \
    "http://127.0.0.1:$port/v1/connections" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
echo "wrk: 1 thread, 1 connection (light load), ${seconds}s"
wrk -t1 -c1 -d"${seconds}s" --latency -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/connections/$id/token"
echo "wrk: 2 threads, 32 connections (saturation), ${seconds}s, GET /v1/connections/{id}/token"
wrk -t2 -c32 -d"${seconds}s" --latency -H "Authorization: Bearer $token" \
    "http://127.0.0.1:$port/v1/connections/$id/token"
