#!/usr/bin/env bash
# The reference job over Kafka as one process and as a group of three,
# against the test broker (tansu 0.6.0, sqlite storage) on loopback:
# wall time from the first process's start to the last one's exit, then
# the outputs (deduplicated by key) against ../shared/peers/flink/check_ref_job.py.
#   single: examples/kafka-reference-job.toml, one process
#   group:  examples/kafka-group-reference-job.toml, three processes
#   kill:   the group, with the third SIGKILLed at 8 s and started again 12 s later
# Each run gets its own topic of EVENTS generated events (4 partitions, keyed by user_id).
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTS=${EVENTS:-200000}
PORT=${KAFKA_PORT:-19395}
SHARED=${SHARED:-$PWD/../shared}
source scripts/bench/broker.sh
export FRESHET_CHECKPOINT_INTERVAL=1s
python3 "$SHARED/workload/gen_events.py" --seed 7 --events "$EVENTS" --disorder-ms 5000 --malformed-rate 0.001 \
  --rate-per-s 100 --out "$WORK/in.ndjson"

run() { # mode
  export FRESHET_TOPIC=ref-$1 FRESHET_GROUP=ref-$1-g
  "$F" kafka create-topic --topic "$FRESHET_TOPIC" --partitions 4 >/dev/null
  "$F" kafka produce --topic "$FRESHET_TOPIC" --key-field user_id "$WORK/in.ndjson" >/dev/null
  start() { # n config
    "$F" run --config "examples/$2" --data-dir "$WORK/$FRESHET_TOPIC-$1" >>"$WORK/$FRESHET_TOPIC-$1.log" 2>&1 &
    echo $! >"$WORK/$FRESHET_TOPIC-$1.pid"
  }
  local t0 group=kafka-group-reference-job.toml
  t0=$(date +%s.%N)
  case $1 in
    single) start 1 kafka-reference-job.toml ;;
    group) start 1 $group; start 2 $group; start 3 $group ;;
    kill) start 1 $group; start 2 $group; start 3 $group
      sleep 8; kill -9 "$(cat "$WORK/$FRESHET_TOPIC-3.pid")"; sleep 12; start 3 $group ;;
  esac
  for n in 1 2 3; do
    [ -f "$WORK/$FRESHET_TOPIC-$n.pid" ] || continue
    while kill -0 "$(cat "$WORK/$FRESHET_TOPIC-$n.pid")" 2>/dev/null; do sleep 0.2; done
  done
  echo "$1, $EVENTS events: $(echo "$(date +%s.%N) - $t0" | bc) s"
  "$F" kafka consume --topic "$FRESHET_TOPIC-user-type-5m" --values --dedup-by-key | sort >"$WORK/a.csv"
  "$F" kafka consume --topic "$FRESHET_TOPIC-item-views-1h" --values --dedup-by-key | sort >"$WORK/b.csv"
  python3 "$SHARED/peers/flink/check_ref_job.py" --input "$WORK/in.ndjson" --expect-dir "$WORK/exp" \
    --actual-a "$WORK/a.csv" --actual-b "$WORK/b.csv" | tail -1
}
for mode in ${MODES:-single group kill}; do run "$mode"; done
