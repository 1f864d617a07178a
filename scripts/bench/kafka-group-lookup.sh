#!/usr/bin/env bash
# Lookup tables in a group (examples/kafka-group-lookup.toml), against the
# test broker (tansu 0.6.0, sqlite storage) on loopback, on the same 2
# cores. What the process's table replica costs: one process reads a
# 4-partition topic to its end (bounded = true): the catalog (one
# item_upsert per item of the workload, keyed by item_id), then EVENTS
# generated events (keyed by user_id); with the example's lookup (each
# interaction takes its item's category from the table; the tasks start once
# the replica has loaded it) and without it (the same count per user and
# event type, no table, no replica), alternating, ROUNDS times; wall time and
# peak memory to the process's end.
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTS=${EVENTS:-200000}
ROUNDS=${ROUNDS:-2}
PORT=${KAFKA_PORT:-19397}
SHARED=${SHARED:-$PWD/../shared}
source scripts/bench/broker.sh
export FRESHET_TOPIC=lookups
python3 "$SHARED/workload/gen_events.py" --seed 7 --events "$EVENTS" --rate-per-s 100 --out "$WORK/in.ndjson"
python3 - "$WORK/in.ndjson" >"$WORK/catalog.ndjson" <<'PY'
import json, sys, zlib
items = set()
for line in open(sys.argv[1]):
    try:
        item = json.loads(line)["item_id"]
    except (ValueError, KeyError, TypeError):
        continue  # malformed lines
    if isinstance(item, str):
        items.add(item)
for item in sorted(items):
    print(json.dumps({"type": "item_upsert", "item_id": item, "category": "c%d" % (zlib.crc32(item.encode()) % 50), "ts": 1767225600000}))
PY
echo "catalog: $(wc -l <"$WORK/catalog.ndjson") items; events: $EVENTS"
"$F" kafka create-topic --topic "$FRESHET_TOPIC" --partitions 4 >/dev/null
"$F" kafka produce --topic "$FRESHET_TOPIC" --key-field item_id "$WORK/catalog.ndjson" >/dev/null
"$F" kafka produce --topic "$FRESHET_TOPIC" --key-field user_id "$WORK/in.ndjson" >/dev/null
sed -e 's/^scale_out = true$/scale_out = true\nbounded = true/' -e 's/^on_missing = "dlq".*/on_missing = "pass"/' \
  examples/kafka-group-lookup.toml >"$WORK/with.toml"
python3 - "$WORK/with.toml" >"$WORK/without.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r'\n\[\[flows\.stages\]\].*?\n\n', '\n\n', text, flags=re.S)
text = re.sub(r'\n\[tables\.items\].*?\n\n', '\n\n', text, flags=re.S)
print(text.replace('key = ["user_id", "category"]', 'key = ["user_id", "type"]'))
PY
grep -q '^bounded = true' "$WORK/with.toml" && ! grep -q 'tables' "$WORK/without.toml"
"$F" config check "$WORK/with.toml" "$WORK/without.toml" >/dev/null
for round in $(seq "$ROUNDS"); do
  for job in without with; do
    FRESHET_GROUP="bounded-$job-$round" /usr/bin/time -f "%e %M" -o "$WORK/time" \
      "$F" run --config "$WORK/$job.toml" --data-dir "$WORK/$job-$round" >/dev/null 2>"$WORK/$job-$round.log"
    read -r seconds kb <"$WORK/time"
    echo "round $round, $job the lookup: $seconds s, peak RSS $((kb / 1024)) MB"
    grep -E "lookup tables are loaded|replica read its input|Task half read its input" \
      "$WORK/$job-$round.log" | cut -c1-160 || true
  done
done
