#!/usr/bin/env bash
# The stack's ceiling against the product's hit path, in the same run: a bare ASGI hello app and
# `GET /v1/items/{sku}` served from the coherent cache (Redis), both on granian with 2 workers,
# wrk closed-loop GETs. Needs wrk, redis-server, PostgreSQL and the venv.
# Usage: bench/hello_ceiling.sh [seconds=8] [connections=32]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
connections=${2:-32}
schema=sk_hello_$$
redis_port=6391
export PGOPTIONS="-c client_min_messages=warning"
database="postgresql://postgres@127.0.0.1:5432/test?search_path=$schema"
log=$(mktemp)
psql -h 127.0.0.1 -U postgres -d test -qc "CREATE SCHEMA $schema"
redis-server --port $redis_port --bind 127.0.0.1 --save "" --appendonly no --daemonize yes >/dev/null
cleanup() {
  pkill -f "port 830[34]" || true
  redis-cli -p $redis_port shutdown nosave >/dev/null 2>&1 || true
  sleep 1
  psql -h 127.0.0.1 -U postgres -d test -qc "DROP SCHEMA $schema CASCADE"
}
trap cleanup EXIT

wait_up() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; exit 1; }
measure() { # measure NAME URL [wrk args...]
  local name=$1 url=$2; shift 2
  wrk -t2 -c"$connections" -d"${seconds}s" --latency "$@" "$url" \
    | awk -v name="$name" '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
                           END {print name": "rps" req/s, p50 "p50", p99 "p99}'
}

(cd bench && ../.venv/bin/granian --interface asgi --workers 2 --port 8303 --no-ws \
  --log-level warning hello_app:app >>"$log" 2>&1 &)
wait_up http://127.0.0.1:8303/
.venv/bin/stockkeeper serve --port 8304 --workers 2 --database "$database" \
  --cache "redis://127.0.0.1:$redis_port/0" >"$log.sk" 2>&1 &
wait_up http://127.0.0.1:8304/healthz
token=$(grep '^sk_' "$log.sk")
curl -sf -X PUT http://127.0.0.1:8304/v1/items/A-1 -H "Authorization: Bearer $token" \
  -d '{"on_hand": 7}' >/dev/null
curl -sf http://127.0.0.1:8304/v1/items/A-1 -H "Authorization: Bearer $token" >/dev/null

for round in 1 2; do
  measure "round $round, bare ASGI hello" http://127.0.0.1:8303/v1/items/A-1
  measure "round $round, stockkeeper GET (cache hit)" http://127.0.0.1:8304/v1/items/A-1 \
    -H "Authorization: Bearer $token"
done
