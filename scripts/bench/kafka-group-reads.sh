#!/usr/bin/env bash
# Feature reads in a group (examples/kafka-group-features.toml), against the
# test broker (tansu 0.6.0, sqlite storage) on loopback: two processes share
# a 4-partition topic of EVENTS generated events; hey asks the first process
# for a user whose task it runs (answered locally) and for one whose task the
# other runs (forwarded), each for 10 s with 8 workers, on the same 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTS=${EVENTS:-100000}
PORT=${KAFKA_PORT:-19396}
SHARED=${SHARED:-$PWD/../shared}
source scripts/bench/broker.sh
export FRESHET_TOPIC=reads FRESHET_GROUP=reads-g
python3 "$SHARED/workload/gen_events.py" --seed 7 --events "$EVENTS" --rate-per-s 100 --out "$WORK/in.ndjson"
"$F" kafka create-topic --topic "$FRESHET_TOPIC" --partitions 4 >/dev/null
"$F" kafka produce --topic "$FRESHET_TOPIC" --key-field user_id "$WORK/in.ndjson" >/dev/null
for n in 1 2; do
  "$F" run --config examples/kafka-group-features.toml --data-dir "$WORK/p$n" --listen "127.0.0.1:1808$n" \
    >"$WORK/p$n.out" 2>"$WORK/p$n.log" &
done
served_by() { curl -s -o /dev/null -D - "http://127.0.0.1:18081/v1/users/$1/features" | tr -d '\r' |
  awk -F': ' 'tolower($1)=="x-freshet-served-by"{print $2}'; }
local_user='' remote_user=''
for _ in $(seq 600); do
  for u in $(grep -o '"user_id": *"[^"]*"' "$WORK/in.ndjson" | head -200 | sed 's/.*"\([^"]*\)"$/\1/' | sort -u); do
    case "$(served_by "$u")" in
      127.0.0.1:18081) local_user=$u ;;
      127.0.0.1:18082) remote_user=$u ;;
    esac
  done
  [ -n "$local_user" ] && [ -n "$remote_user" ] && break
  sleep 0.5
done
[ -n "$local_user" ] && [ -n "$remote_user" ] || { echo "no local and forwarded user found" >&2; exit 1; }
sleep 15 # the input is read by now; the reads below do not race ingest
for kind in local remote; do
  user=${kind}_user
  echo "== $kind: /v1/users/${!user}/features asked of 127.0.0.1:18081"
  hey -z 10s -c 8 "http://127.0.0.1:18081/v1/users/${!user}/features" |
    grep -E "Requests/sec|50% in|99% in|^ +\[[0-9]{3}\][[:space:]]+[0-9]+ responses"
done
