#!/usr/bin/env bash
# Restore and rebalance times of a group that keeps state, against the test
# broker (tansu 0.6.0, sqlite storage) on loopback: members run
# scripts/bench/kafka-group-users-job.toml (one count per user, USERS users)
# on a 4-partition topic keyed by user_id.
#  1. p1 reads the whole topic alone (its 4 tasks checkpoint to the changelog);
#  2. p2 joins: the group moves 2 tasks to it, which restore their state
#     from the changelog (times from p2's log lines);
#  3. p2 stops (SIGINT): p1 takes its 2 tasks back and restores them.
# STANDBY=1 runs the members with `standby = true`: p1 keeps copies of
# every task's newest checkpoint, and step 3 restores from them.
set -euo pipefail
cd "$(dirname "$0")/../.."
USERS=${USERS:-1000000}
EVENTS=${EVENTS:-2000000}
PORT=${KAFKA_PORT:-19394}
source scripts/bench/broker.sh
CONFIG=scripts/bench/kafka-group-users-job.toml
if [ "${STANDBY:-0}" = 1 ]; then
  sed 's/^scale_out = true$/scale_out = true\nstandby = true/' "$CONFIG" >"$WORK/job.toml"
  grep -q '^standby = true$' "$WORK/job.toml"
  CONFIG=$WORK/job.toml
fi
export FRESHET_TOPIC=users FRESHET_GROUP=state
"$F" gen --events "$EVENTS" --users "$USERS" --out "$WORK/events.ndjson" 2>/dev/null
"$F" kafka create-topic --topic users --partitions 4 >/dev/null
"$F" kafka produce --topic users --key-field user_id "$WORK/events.ndjson"

start() { # name -> starts a member logging to $WORK/name.log
  "$F" run --config "$CONFIG" --data-dir "$WORK/$1" --listen 127.0.0.1:0 >/dev/null 2>>"$WORK/$1.log" &
  echo $! >"$WORK/$1.pid"
}
plain() { sed 's/\x1b\[[0-9;]*m//g' "$WORK/$1.log"; }
# lines NAME: the lines the member's tasks have read, from its /metrics.
lines() {
  local addr
  addr=$(plain "$1" | grep -o 'Serving HTTP. addr=[0-9.:]*' | head -1 | cut -d= -f2)
  curl -s "http://$addr/metrics" | awk '/^freshet_source_lines_total/ {s += $2} END {printf "%d", s}'
}
T0=$(date +%s.%N); start p1
sleep 5
while [ "$(lines p1)" -lt "$EVENTS" ]; do sleep 1; done
echo "p1 read $EVENTS events alone in $(echo "$(date +%s.%N) - $T0" | bc) s"
sleep 12 # two checkpoint intervals: every task's state is in the changelog
T0=$(date +%s.%N); start p2
until [ "$(plain p2 | grep -c 'Job started')" = 2 ]; do sleep 0.1; done
echo "p2 joins: start -> its 2 tasks restored and running: $(echo "$(date +%s.%N) - $T0" | bc) s"
plain p2 | grep -E "Task restored;|Restored\." | cut -c1-220
T0=$(date +%s.%N); kill -INT "$(cat "$WORK/p2.pid")"
n=$(plain p1 | grep -c 'Job started')
until [ "$(plain p1 | grep -c 'Job started')" -ge $((n + 2)) ]; do sleep 0.1; done
echo "p2 leaves: SIGINT -> p1 runs its 2 tasks again, restored: $(echo "$(date +%s.%N) - $T0" | bc) s"
plain p1 | grep -E "Task restored;|Restored\." | tail -4 | cut -c1-220
echo "changelog:"; "$F" kafka consume --topic state-events-changelog --count 2>/dev/null | tail -1 || true
