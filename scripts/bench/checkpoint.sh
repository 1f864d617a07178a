#!/usr/bin/env bash
# Checkpoint cost for BENCHMARKS.md: the embedded default's nine features
# over a file of 1M users' events, checkpointing every second. Prints each
# checkpoint's size and duration, then kills the job (SIGKILL) after its
# largest checkpoint and times the restore of that state on restart.
# Usage: [FRESHET_CHECKPOINT_INTERVAL=1s] scripts/bench/checkpoint.sh [events] [users]
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTS=${1:-10000000}
USERS=${2:-1000000}
F=./target/release/freshet
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo build --release -p freshet >/dev/null 2>&1
$F gen --events "$EVENTS" --users "$USERS" --items 100000 --rate-per-s 2000 --out "$WORK/events.ndjson"
# The embedded default, reading the file instead of HTTP, its features not
# served (serving 1M fresh entities is its own cost, measured in http.sh).
sed -e 's/^type = "http"$/type = "file"\npath = "${FRESHET_INPUT}"/' -e '/^fsync = /d' \
  -e 's/^\[\[features\]\]$/[[features]]\nserve = false/' \
  -e "s|\${FRESHET_DATA_DIR}/dlq.ndjson|$WORK/dlq.ndjson|" \
  crates/freshet/src/default.toml > "$WORK/job.toml"
export FRESHET_INPUT="$WORK/events.ndjson" FRESHET_DATA_DIR="$WORK/data" FRESHET_LOG_FORMAT=json

INTERVAL=${FRESHET_CHECKPOINT_INTERVAL:-1s}
export FRESHET_CHECKPOINT_INTERVAL=$INTERVAL
echo "== uninterrupted run, checkpoints every $INTERVAL ($EVENTS events, $USERS users)"
/usr/bin/time -f "wall %e s, max RSS %M KiB" env RUST_LOG=freshet=debug \
  $F run --config "$WORK/job.toml" --data-dir "$WORK/data" 2>"$WORK/run.log" >/dev/null
grep -o '"checkpoint":[0-9]*,"bytes":[0-9]*,"took_ms":[0-9]*' "$WORK/run.log" || true
grep '"Job finished' "$WORK/run.log"
echo "== the same without checkpoints"
/usr/bin/time -f "wall %e s, max RSS %M KiB" env -u FRESHET_DATA_DIR $F run --config "$WORK/job.toml" 2>&1 >/dev/null | grep -E '"Job finished|wall'


echo "== killed after its largest checkpoint, then restored"
LARGEST=$(grep -o '"checkpoint":[0-9]*,"bytes":[0-9]*' "$WORK/run.log" | sort -t: -k3 -n | tail -1 | sed 's/"checkpoint":\([0-9]*\),.*/\1/')
rm -rf "$WORK/data"
RUST_LOG=freshet=debug $F run --config "$WORK/job.toml" --data-dir "$WORK/data" 2>"$WORK/kill.log" >/dev/null &
PID=$!
until grep -q "\"checkpoint\":$LARGEST,\"bytes" "$WORK/kill.log" 2>/dev/null || ! kill -0 $PID 2>/dev/null; do sleep 0.02; done
kill -KILL $PID 2>/dev/null || true; wait $PID 2>/dev/null || true
ls -l "$WORK/data/checkpoints"
$F run --config "$WORK/job.toml" --data-dir "$WORK/data" 2>&1 >/dev/null | grep -E "Restored|Job finished|error" || true
