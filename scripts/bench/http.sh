#!/usr/bin/env bash
# HTTP benchmarks for BENCHMARKS.md: ingest throughput, and feature-read
# latency under concurrent load while the demo generator ingests.
# Needs wrk and hey (apt-get install wrk hey). Loopback only; each phase is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/../.."
F=./target/release/freshet
PORT=${PORT:-18181}
DATA=$(mktemp -d)
cargo build --release -p freshet >/dev/null 2>&1
wait_up() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done; echo "server did not start" >&2; exit 1; }

ingest() { # $1: label; the rest: extra arguments to freshet run
  local label=$1; shift
  echo "== ingest ($label): 1000-event NDJSON batches, 2 wrk threads, 16 connections, 20 s"
  rm -rf "$DATA"; mkdir -p "$DATA"
  "$F" run --listen "127.0.0.1:$PORT" "$@" >/dev/null 2>&1 &
  PID=$!
  wait_up
  wrk -t2 -c16 -d20s --latency -s scripts/bench/ingest.lua "http://127.0.0.1:$PORT"
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^freshet_(http_ingested_events_total|events_accepted_total|ingest_log_sync_seconds_(sum|count)) '
  kill -TERM "$PID"; wait "$PID" || true
}
ingest "durable log, fsync before each 202" --data-dir "$DATA"
FRESHET_INGEST_FSYNC=never ingest "durable log, no fsync" --data-dir "$DATA"
ingest "no data dir: no log, no checkpoints"

# Acknowledgement latency below saturation: a fixed 100 batches/s (100k events/s).
"$F" gen --events 1000 --malformed-rate 0 --out "$DATA.body.ndjson" 2>/dev/null
for MODE in always never; do
  echo "== ingest at a fixed 100 requests/s of 1000 events (hey: 4 workers x 25/s, 15 s), durable log, fsync $MODE"
  rm -rf "$DATA"; mkdir -p "$DATA"
  FRESHET_INGEST_FSYNC=$MODE "$F" run --listen "127.0.0.1:$PORT" --data-dir "$DATA" >/dev/null 2>&1 &
  PID=$!
  wait_up
  hey -z 15s -c 4 -q 25 -m POST -T application/x-ndjson -D "$DATA.body.ndjson" "http://127.0.0.1:$PORT/v1/events" \
    | grep -E "Requests/sec|50% in|90% in|99% in|\[202\]|\[429\]"
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^freshet_ingest_log_sync_seconds_(sum|count) '
  kill -TERM "$PID"; wait "$PID" || true
done
rm -f "$DATA.body.ndjson"

# Reads at a fixed rate (hey -q), so latency is measured below saturation.
for RATE in 100 10000 50000; do
  echo "== feature reads at 2000 req/s (hey: 4 workers x 500/s, 15 s) while the demo generator ingests $RATE events/s"
  $F run --listen "127.0.0.1:$PORT" --data-dir "$DATA" --demo --demo-rate "$RATE" >/dev/null 2>&1 &
  PID=$!
  wait_up; sleep 3
  hey -z 15s -c 4 -q 500 "http://127.0.0.1:$PORT/v1/users/u7/features" | grep -E "Requests/sec|50% in|90% in|99% in|\[200\]"
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^freshet_pipeline_latency_seconds_(sum|count)'
  kill -TERM "$PID"; wait "$PID" || true
done
rm -rf "$DATA"
