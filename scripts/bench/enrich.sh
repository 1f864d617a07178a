#!/usr/bin/env bash
# Enrichment benchmarks for BENCHMARKS.md: examples/enrich-job.toml over a
# generated workload against the stand-in item service (crates/freshet/examples/item-service.rs)
# on loopback: a 1 ms service; the same with a response cache; the service
# down (503, breaker open); and the reference job on the same input for comparison.
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTS=${EVENTS:-300000}
PORT=${PORT:-18290}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
cargo build --release -p freshet --bins --example item-service >/dev/null 2>&1
F=./target/release/freshet
SVC=./target/release/examples/item-service
"$F" gen --events "$EVENTS" --out "$WORK/events.ndjson" 2>/dev/null
INTERACTIONS=$(grep -cE '"type":"(view|click|add_to_cart|purchase)"' "$WORK/events.ndjson" || true)
echo "input: $EVENTS lines, $INTERACTIONS interactions; $(nproc) cores"

service() { # $@: item-service arguments
  "$SVC" --listen "127.0.0.1:$PORT" "$@" 2>/dev/null &
  SVC_PID=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/stats" >/dev/null && return; sleep 0.1; done
  echo "item service did not start" >&2; exit 1
}

job() { # $1: label, $2: config; prints the job's summary and the service's call count
  local out="$WORK/out"; rm -rf "$out"; mkdir -p "$out"
  local before; before=$(curl -sf "http://127.0.0.1:$PORT/stats" || echo 0)
  FRESHET_INPUT="$WORK/events.ndjson" FRESHET_OUTPUT="$out" FRESHET_ENRICH_URL="http://127.0.0.1:$PORT" \
    "$F" run --config "$2" 2>&1 | grep -o 'Job finished.*' | sed 's/\x1b\[[0-9;]*m//g'
  local after; after=$(curl -sf "http://127.0.0.1:$PORT/stats" || echo 0)
  echo "  $1: service calls $((after - before)), enriched $(grep -c '"category"' "$out/enriched.ndjson" || true), dlq $(wc -l <"$out/dlq.ndjson")"
}

sed 's/^on_failure = "dlq"/on_failure = "dlq"\ncache = { ttl = "60s", max_entries = 100000 }/' examples/enrich-job.toml >"$WORK/cached.toml"

echo "== 1 ms service (1 runtime thread), no cache"
service --delay-ms 1 --threads 1
job "1 ms, no cache" examples/enrich-job.toml
job "1 ms, no cache (again)" examples/enrich-job.toml
echo "== 1 ms service, cache ttl 60s"
job "1 ms, cache" "$WORK/cached.toml"
kill "$SVC_PID"; wait "$SVC_PID" 2>/dev/null || true

echo "== service down (503 at once), breaker open"
service --delay-ms 0 --fail
job "down" examples/enrich-job.toml
kill "$SVC_PID"; wait "$SVC_PID" 2>/dev/null || true

echo "== reference job on the same input (no enrichment)"
FRESHET_INPUT="$WORK/events.ndjson" FRESHET_OUTPUT="$WORK/out" "$F" run --config examples/reference-job.toml 2>&1 \
  | grep -o 'Job finished.*' | sed 's/\x1b\[[0-9;]*m//g'

echo "== reference job plus a purchases flow enriched from a dead service (breaker open): the other flows' throughput"
python3 - "$WORK" <<'PY'
import sys
s = open('examples/reference-job.toml').read()
s = s.replace('# Interactions: the four event types', '''[sinks.purchases]
type = "file"
path = "${FRESHET_OUTPUT}/purchases.ndjson"

[[flows]]
name = "purchases"
when = { field = "type", eq = "purchase" }
[[flows.stages]]
type = "enrich_http"
url = "${FRESHET_ENRICH_URL}/items/{item_id}"
fields = { "item.category" = "/category" }
breaker = { open_for = "60s" }
[[flows.stages]]
type = "route"
sink = "purchases"

# Interactions: the four event types''')
open(sys.argv[1] + '/mixed.toml', 'w').write(s)
PY
service --delay-ms 0 --fail
for _ in 1 2 3; do
  for CFG in examples/reference-job.toml "$WORK/mixed.toml"; do
    echo -n "$(basename "$CFG"): "
    FRESHET_INPUT="$WORK/events.ndjson" FRESHET_OUTPUT="$WORK/out" FRESHET_ENRICH_URL="http://127.0.0.1:$PORT" "$F" run --config "$CFG" 2>&1 \
      | sed 's/\x1b\[[0-9;]*m//g' | grep -o 'events_per_s=[0-9]*'
  done
done
kill "$SVC_PID"; wait "$SVC_PID" 2>/dev/null || true
