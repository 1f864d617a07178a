#!/usr/bin/env bash
# The recommender in a group (examples/kafka-group-features.toml), against
# the test broker (tansu 0.6.0, sqlite storage) on loopback, on the same 2
# cores. What the replica costs: one process reads a 4-partition topic of
# EVENTS generated events to its end (bounded = true), with and without the
# example's [recommender] section, alternating, ROUNDS times; wall time and
# peak memory to the process's end (its tasks, and with a recommender its
# replica, read everything). Then what it serves: two processes of the
# (unbounded) example, and hey asks the first for a user's recommendations
# for 10 s with 8 workers (answered by its own replica).
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTS=${EVENTS:-200000}
ROUNDS=${ROUNDS:-2}
PORT=${KAFKA_PORT:-19397}
SHARED=${SHARED:-$PWD/../shared}
source scripts/bench/broker.sh
export FRESHET_TOPIC=recs
python3 "$SHARED/workload/gen_events.py" --seed 7 --events "$EVENTS" --rate-per-s 100 --out "$WORK/in.ndjson"
"$F" kafka create-topic --topic "$FRESHET_TOPIC" --partitions 4 >/dev/null
"$F" kafka produce --topic "$FRESHET_TOPIC" --key-field user_id "$WORK/in.ndjson" >/dev/null
sed 's/^scale_out = true$/scale_out = true\nbounded = true/' examples/kafka-group-features.toml >"$WORK/with.toml"
sed "/^# Every process's replica/,\$d" "$WORK/with.toml" >"$WORK/without.toml"
grep -q '^bounded = true' "$WORK/with.toml" && ! grep -q '^\[recommender\]' "$WORK/without.toml"
for round in $(seq "$ROUNDS"); do
  for job in without with; do
    FRESHET_GROUP="bounded-$job-$round" /usr/bin/time -f "%e %M" -o "$WORK/time" \
      "$F" run --config "$WORK/$job.toml" --data-dir "$WORK/$job-$round" >/dev/null 2>"$WORK/$job-$round.log"
    read -r seconds kb <"$WORK/time"
    echo "round $round, $job the recommender: $seconds s, peak RSS $((kb / 1024)) MB"
    grep -E "Kafka source (assigned|joined)|replica (runs|read its input)|Task half read its input" \
      "$WORK/$job-$round.log" | cut -c1-160 || true
  done
done

export FRESHET_GROUP=serving
for n in 1 2; do
  "$F" run --config examples/kafka-group-features.toml --data-dir "$WORK/s$n" --listen "127.0.0.1:1809$n" \
    >"$WORK/s$n.out" 2>"$WORK/s$n.log" &
done
user=$(python3 - "$WORK/in.ndjson" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        print(json.loads(line)["user_id"])
        break
    except (ValueError, KeyError, TypeError):
        pass  # the workload carries malformed lines
PY
)
body="{\"user_id\":\"$user\",\"k\":10}"
for _ in $(seq 600); do
  curl -s -d "$body" http://127.0.0.1:18091/v1/recommend | grep -q '"cold_start":false' && break
  sleep 0.5
done
sleep 15 # the input is read by now; the requests below do not race ingest
echo "== POST /v1/recommend for $user asked of 127.0.0.1:18091"
hey -z 10s -c 8 -m POST -T application/json -d "$body" http://127.0.0.1:18091/v1/recommend |
  grep -E "Requests/sec|50% in|99% in|^ +\[[0-9]{3}\][[:space:]]+[0-9]+ responses"

# A third process joins: its replica starts from the checkpoint the owner of
# task 0 shipped, and reads the rest of the topic from there. Time from its
# start to its replica's consumer lag reaching 0 on every partition.
lag() {
  curl -s http://127.0.0.1:18093/metrics | grep '^freshet_kafka_consumer_lag{' | grep 'source="events-recommender"' |
    awk '{n++; s+=$NF} END {if (n == 4) print s; else print "none"}'
}
start=$(date +%s.%N)
"$F" run --config examples/kafka-group-features.toml --data-dir "$WORK/s3" --listen 127.0.0.1:18093 \
  >"$WORK/s3.out" 2>"$WORK/s3.log" &
for _ in $(seq 3000); do [ "$(lag)" = 0 ] && break; sleep 0.1; done
echo "== a third process's replica caught up (lag 0 on 4 partitions) $(echo "$(date +%s.%N) - $start" | bc) s after its start"
grep -E "replica (starts from|runs)" "$WORK/s3.log" | cut -c1-160 || true
for n in 1 2; do
  newest=$(ls "$WORK/s$n/recommender/checkpoints" | sort | tail -1)
  echo "p$n: newest replica checkpoint $newest, $(du -h "$WORK/s$n/recommender/checkpoints/$newest" | cut -f1)," \
    "$(grep -c 'Could not ship' "$WORK/s$n.log" || true) failed ships"
done
