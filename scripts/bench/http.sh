#!/usr/bin/env bash
# HTTP benchmarks for BENCHMARKS.md: ingest throughput, and feature-read
# latency under concurrent load while the demo generator ingests.
# Needs wrk (apt-get install wrk). Loopback only; each phase is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/../.."
F=./target/release/freshet
PORT=${PORT:-18181}
DATA=$(mktemp -d)
cargo build --release -p freshet >/dev/null 2>&1
wait_up() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done; echo "server did not start" >&2; exit 1; }

echo "== ingest: 1000-event NDJSON batches, 2 wrk threads, 16 connections, 20 s"
$F run --listen "127.0.0.1:$PORT" --data-dir "$DATA" >/dev/null 2>&1 &
PID=$!
wait_up
wrk -t2 -c16 -d20s --latency -s scripts/bench/ingest.lua "http://127.0.0.1:$PORT"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^freshet_(http_ingested_events_total|events_accepted_total)'
kill -TERM "$PID"; wait "$PID" || true

RATE=${DEMO_RATE:-50000}
echo "== feature reads while the demo generator ingests $RATE events/s: 2 wrk threads, 16 connections, 20 s"
$F run --listen "127.0.0.1:$PORT" --data-dir "$DATA" --demo --demo-rate "$RATE" >/dev/null 2>&1 &
PID=$!
wait_up; sleep 2
wrk -t2 -c16 -d20s --latency -s scripts/bench/reads.lua "http://127.0.0.1:$PORT"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^freshet_(source_lines_total|pipeline_latency_seconds_(sum|count)|pipeline_latency_seconds_bucket.*le="0.00(1|5)")'
kill -TERM "$PID"; wait "$PID" || true

echo "== feature reads with no ingest: 1 wrk thread, 4 connections, 20 s"
$F run --listen "127.0.0.1:$PORT" --data-dir "$DATA" --demo --demo-rate 1000 >/dev/null 2>&1 &
PID=$!
wait_up; sleep 3
wrk -t1 -c4 -d20s --latency -s scripts/bench/reads.lua "http://127.0.0.1:$PORT"
kill -TERM "$PID"; wait "$PID" || true
rm -rf "$DATA"
