#!/usr/bin/env bash
# Rebalance times of a scale-out group (examples/kafka-scale-out-job.toml)
# against the test broker (tansu 0.6.0, sqlite storage) on loopback, from
# the members' own log lines ("Kafka group rebalance: partitions ..."):
#  1. a first member starts: process start -> it owns all 4 partitions;
#  2. a second joins: its start -> both own their share;
#  3. the second stops (SIGINT, it leaves the group) -> the first owns all 4;
#  4. the second joins again and is SIGKILLed -> the first owns all 4
#     (Apache Kafka: after the session timeout, 10 s; tansu 0.6.0 keeps the
#     survivors' assignment, so this reports whether it happened within 30 s).
# ROUNDS repeats 2-3. The topic holds EVENTS events, read while this runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTS=${EVENTS:-200000}
ROUNDS=${ROUNDS:-3}
PORT=${KAFKA_PORT:-19393}
source scripts/bench/broker.sh
export FRESHET_TOPIC=grp FRESHET_GROUP=bench
"$F" gen --events "$EVENTS" --out "$WORK/events.ndjson" 2>/dev/null
"$F" kafka create-topic --topic grp --partitions 4 >/dev/null
"$F" kafka produce --topic grp --key-field user_id "$WORK/events.ndjson" >/dev/null

now() { date +%s.%N; }
start() { # name -> starts a member logging to $WORK/name.log
  "$F" run --config examples/kafka-scale-out-job.toml --data-dir "$WORK/$1" --listen 127.0.0.1:0 \
    >/dev/null 2>>"$WORK/$1.log" &
  echo $! >"$WORK/$1.pid"
}
# wait_for NAME COUNT: until NAME's latest assignment has COUNT partitions; prints seconds since $T0.
wait_for() {
  for _ in $(seq 600); do
    local last
    last=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/$1.log" 2>/dev/null | grep "Kafka group rebalance" | tail -1 || true)
    if [[ "$last" == *"assigned: ["* ]]; then
      local list=${last#*assigned: [}
      list=${list%%]*}
      if [ "$(tr ',' '\n' <<<"$list" | grep -c .)" = "$2" ]; then
        echo "$(now) - $T0" | bc
        return 0
      fi
    fi
    sleep 0.05
  done
  echo "not within 30 s"
}

T0=$(now); start p1
echo "first member, start -> owns 4 partitions: $(wait_for p1 4) s"
for round in $(seq "$ROUNDS"); do
  : >"$WORK/p2.log"
  T0=$(now); start p2
  a=$(wait_for p2 2); b=$(wait_for p1 2)
  echo "round $round: second joins, start -> 2 + 2: $b s (its own share after $a s)"
  T0=$(now); kill -INT "$(cat "$WORK/p2.pid")"
  echo "round $round: second stops (SIGINT) -> first owns 4: $(wait_for p1 4) s"
  wait "$(cat "$WORK/p2.pid")" 2>/dev/null || true
done
: >"$WORK/p2.log"
start p2; wait_for p2 2 >/dev/null; wait_for p1 2 >/dev/null
T0=$(now); kill -9 "$(cat "$WORK/p2.pid")"
echo "second killed (SIGKILL) -> first owns 4: $(wait_for p1 4)"
