#!/usr/bin/env bash
# Read path (GET /v1/items/{sku}, every read from PostgreSQL) under granian and uvicorn, same
# app, same run, so the ratio survives this noisy machine. Needs wrk and the venv.
# Usage: bench/read_path_servers.sh [seconds=8] [connections=64]
# Install first: .venv/bin/pip install -e '.[bench]'; apt-get install wrk
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
connections=${2:-64}
schema=sk_bench_$$
export PGOPTIONS="-c client_min_messages=warning"
export STOCKKEEPER_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test?search_path=$schema"
log=$(mktemp)
psql -h 127.0.0.1 -U postgres -d test -qc "CREATE SCHEMA $schema"
cleanup() {
  pkill -f "port 830[12]" || true
  sleep 1
  psql -h 127.0.0.1 -U postgres -d test -qc "DROP SCHEMA $schema CASCADE"
}
trap cleanup EXIT

wait_up() { for _ in $(seq 100); do curl -sf "$1/healthz" >/dev/null && return 0; sleep 0.1; done; exit 1; }
measure() { # measure NAME URL
  wrk -t2 -c"$connections" -d"${seconds}s" -H "Authorization: Bearer $token" "$2/v1/items/BENCH-1" \
    | awk -v name="$1" '/Latency/ {lat=$2} /Requests\/sec/ {print name": "$2" req/s, mean latency "lat}'
}

.venv/bin/stockkeeper serve --port 8301 --workers 2 >"$log" 2>&1 &
wait_up http://127.0.0.1:8301
token=$(grep '^sk_' "$log")
curl -sf -X PUT http://127.0.0.1:8301/v1/items/BENCH-1 -H "Authorization: Bearer $token" \
  -d '{"on_hand": 100}' >/dev/null
measure "granian 2 workers" http://127.0.0.1:8301
pkill -f "port 8301"

.venv/bin/uvicorn --factory stockkeeper.http.app:create_app --workers 2 --port 8302 \
  --loop uvloop --http httptools --no-access-log --log-level warning >>"$log" 2>&1 &
wait_up http://127.0.0.1:8302
measure "uvicorn 2 workers" http://127.0.0.1:8302
