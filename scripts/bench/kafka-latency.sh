#!/usr/bin/env bash
# End-to-end latency through scripts/bench/kafka-latency-job.toml as it is,
# and with the source's fetch wait at 2 ms and a 1 ms publish interval,
# at each of RATES events/s (9 s each), on the test broker (tansu 0.6.0,
# ${KAFKA_STORAGE:-sqlite} storage). For BENCHMARKS.md, "End-to-end latency".
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=${KAFKA_PORT:-19555}
source scripts/bench/broker.sh
"$F" gen --events 100000 --out "$WORK/events.ndjson" 2>/dev/null
sed -e 's|^start = "latest"|start = "latest"\nproperties = { "fetch.wait.max.ms" = "2" }|' \
  -e 's|^dead_letter = "dlq"|dead_letter = "dlq"\npublish_interval = "1ms"|' \
  scripts/bench/kafka-latency-job.toml >"$WORK/short-waits.toml"
n=0
for rate in ${RATES:-1000 5000 10000}; do
  for variant in as-it-is short-waits; do
    n=$((n + 1))
    config=scripts/bench/kafka-latency-job.toml
    [ "$variant" = short-waits ] && config="$WORK/short-waits.toml"
    head -n $((rate * 9)) "$WORK/events.ndjson" >"$WORK/in.ndjson"
    "$F" kafka create-topic --topic "lat$n" --partitions 4 >/dev/null
    "$F" kafka create-topic --topic "lat$n-out" --partitions 4 >/dev/null
    FRESHET_TOPIC=lat$n "$F" run --config "$config" --listen 127.0.0.1:0 >"$WORK/job$n.log" 2>&1 &
    job=$!
    sleep 4
    echo -n "$variant, $rate events/s: "
    "$F" kafka latency --input "lat$n" --output "lat$n-out" --rate "$rate" "$WORK/in.ndjson" 2>/dev/null | tail -1
    kill "$job"
    wait "$job" 2>/dev/null || true
  done
done
