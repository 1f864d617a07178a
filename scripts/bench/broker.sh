# Sourced by the Kafka benchmarks (after `cd` to the repository and setting
# PORT): builds Freshet (release) as $F (or takes $FRESHET_BIN), makes a
# work directory $WORK that is removed at exit with every process started
# from it, and starts the test broker (tansu 0.6.0, shared/peers/kafka) on
# 127.0.0.1:$PORT with ${KAFKA_STORAGE:-sqlite} storage, exporting
# KAFKA_BROKERS.
TANSU_BIN=${TANSU_BIN:-${CARGO_HOME:-$HOME/.cargo}/bin/tansu}
WORK=$(mktemp -d)
# (A member still stopping once the broker is gone would wait on it: killed for good after a second.)
trap 'pkill -f "$WORK" 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; sleep 1; pkill -9 -f "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
# FRESHET_BIN runs a given build instead (an A/B of two commits: build each, copy it aside).
if [ -n "${FRESHET_BIN:-}" ]; then
  F=$FRESHET_BIN
else
  cargo build --release -p freshet >/dev/null 2>&1
  F=$PWD/target/release/freshet
fi
export KAFKA_BROKERS=127.0.0.1:$PORT
case "${KAFKA_STORAGE:-sqlite}" in
  sqlite) ENGINE=sqlite://tansu.db ;;
  memory) ENGINE=memory://tansu/ ;;
  *) echo "KAFKA_STORAGE: sqlite or memory" >&2; exit 2 ;;
esac
(cd "$WORK" && exec "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$PORT" --storage-engine "$ENGINE" >tansu.log 2>&1) &
for _ in $(seq 100); do "$F" kafka create-topic --topic probe >/dev/null 2>&1 && break; sleep 0.3; done
