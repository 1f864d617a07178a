#!/usr/bin/env bash
# Recommendation latency for BENCHMARKS.md: POST /v1/recommend (k=10) and
# GET /v1/items/{id}/similar at a fixed request rate (hey -q, so latency is
# measured below saturation) while the demo generator ingests at a fixed
# event rate through the embedded default (features + recommender).
# Needs hey and bc (apt-get install hey bc). Loopback only; each phase takes
# 20 s. WORKERS (default 16) hey workers share the request rate: fewer cannot
# hold 5,000 req/s on 2 cores beside a 50k events/s pipeline.
set -euo pipefail
cd "$(dirname "$0")/../.."
F=./target/release/freshet
PORT=${PORT:-18182}
DATA=$(mktemp -d)
cargo build --release -p freshet >/dev/null 2>&1
wait_up() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done; echo "server did not start" >&2; exit 1; }
BODY=$(mktemp)
echo '{"user_id":"u7","k":10}' >"$BODY"

WORKERS=${WORKERS:-16}
accepted() { curl -s "http://127.0.0.1:$PORT/metrics" | awk '$1 == "freshet_events_accepted_total" {print $2}'; }
# One hey phase; then the ingest rate the pipeline held meanwhile.
phase() {
  local before after started
  before=$(accepted); started=$(date +%s.%N)
  hey -z 15s -c "$WORKERS" -q $(((RATE + WORKERS - 1) / WORKERS)) "$@" | grep -E "Requests/sec|50% in|90% in|99% in|\[200\]"
  after=$(accepted)
  echo "  ingest meanwhile: $(echo "($after - $before) / ($(date +%s.%N) - $started)" | bc) events/s"
}

for EVENTS in ${EVENT_RATES:-10000 50000}; do
  for RATE in ${REQUEST_RATES:-1000 5000}; do
    rm -rf "$DATA"; mkdir -p "$DATA"
    "$F" run --listen "127.0.0.1:$PORT" --data-dir "$DATA" --demo --demo-rate "$EVENTS" >/dev/null 2>&1 &
    PID=$!
    wait_up; sleep 5
    echo "== POST /v1/recommend k=10 at $RATE req/s (hey: $WORKERS workers, 15 s) while ingesting $EVENTS events/s"
    phase -m POST -T application/json -D "$BODY" "http://127.0.0.1:$PORT/v1/recommend"
    echo "== GET /v1/items/i7/similar?k=10 at $RATE req/s while ingesting $EVENTS events/s"
    phase "http://127.0.0.1:$PORT/v1/items/i7/similar?k=10"
    curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^freshet_(events_accepted_total|pipeline_latency_seconds_(sum|count)) '
    kill -TERM "$PID"; wait "$PID" || true
  done
done
rm -rf "$DATA" "$BODY"
