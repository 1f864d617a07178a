#!/usr/bin/env bash
# Kafka benchmarks for BENCHMARKS.md, against the test broker (tansu 0.6.0,
# sqlite storage, shared/peers/kafka) on loopback:
#  1. throughput: a bare rdkafka consumer reading a 4-partition topic, a bare
#     consume -> produce pipe (every record written to another topic), then
#     examples/kafka-reference-job.toml (topic -> Freshet -> topics) on the same topic,
#     and scripts/bench/kafka-features-job.toml (the same features, nothing written);
#  2. end-to-end latency at a steady rate: scripts/bench/kafka-latency-job.toml
#     routes each event to an output topic; `freshet kafka latency` produces at
#     RATE events/s and reads the output (produce call -> record read back).
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTS=${EVENTS:-1000000}
RATE=${RATE:-10000}
LATENCY_EVENTS=${LATENCY_EVENTS:-200000}
PORT=${KAFKA_PORT:-19392}
source scripts/bench/broker.sh

"$F" gen --events "$EVENTS" --out "$WORK/events.ndjson" 2>/dev/null
echo "input: $EVENTS lines; tansu ${KAFKA_STORAGE:-sqlite} storage; $(nproc) cores"
"$F" kafka create-topic --topic bench --partitions 4
echo "== produce (freshet kafka produce, idempotent, keyed by user_id)"
"$F" kafka produce --topic bench --key-field user_id "$WORK/events.ndjson"

# Alternating rounds, so that the broker's drift (its sqlite storage) falls on all three alike.
for i in 1 2 3; do
  echo "== round $i: bare rdkafka consumer, whole topic"
  "$F" kafka consume --topic bench --count
  echo "== round $i: bare rdkafka pipe, whole topic -> another topic (the peer of a job that writes as it reads)"
  "$F" kafka create-topic --topic "pipe$i" --partitions 4
  "$F" kafka consume --topic bench --count --pipe-to "pipe$i"
  echo "== round $i: Freshet, reference job topic -> topics (no checkpoints)"
  FRESHET_TOPIC=bench "$F" bench --config examples/kafka-reference-job.toml --runs 1 2>/dev/null
done

echo "== Freshet: the same features, results served not written (3 runs): the read path alone"
FRESHET_TOPIC=bench "$F" bench --config scripts/bench/kafka-features-job.toml --runs 3 2>/dev/null

echo "== Freshet: reference job topic -> topics, checkpoints every 1 s"
rm -rf "$WORK/data"
/usr/bin/time -f "wall %e s, max RSS %M KB" env FRESHET_TOPIC=bench FRESHET_GROUP=bench-cp \
  "$F" run --config examples/kafka-reference-job.toml --data-dir "$WORK/data" --listen 127.0.0.1:0 2>&1 |
  grep -E 'wall|Job finished' | sed 's/\x1b\[[0-9;]*m//g'

echo "== end-to-end latency at $RATE events/s ($LATENCY_EVENTS events)"
head -n "$LATENCY_EVENTS" "$WORK/events.ndjson" >"$WORK/latency.ndjson"
"$F" kafka create-topic --topic lat --partitions 4
"$F" kafka create-topic --topic lat-out --partitions 4
FRESHET_TOPIC=lat "$F" run --config scripts/bench/kafka-latency-job.toml --listen 127.0.0.1:0 >"$WORK/job.log" 2>&1 &
JOB=$!
sleep 3
"$F" kafka latency --input lat --output lat-out --rate "$RATE" "$WORK/latency.ndjson"
kill $JOB
