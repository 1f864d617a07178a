#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for a short while;
# fails if any target finds a crash (its reproducer is left in
# fuzz/artifacts/<target>/; replay it with `cargo fuzz run <target> <file>`).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
#   SECONDS_PER_TARGET  how long each target runs (libFuzzer -max_total_time);
#                       else $FUZZ_SECONDS, else 20
#   TARGET...           decode, config, checkpoint, json_scan (default: all)
#   FUZZ_SANITIZER      address (default) or none
#   FUZZ_JOBS           cargo build jobs (default: cargo's, one per core)
#
# Inputs that reach new code are kept in fuzz/target/corpus/<target>/
# (ignored by git); the committed seeds in fuzz/corpus/<target>/ are only read.
#
# On the stable toolchain: cargo-fuzz asks rustc for sanitizer-coverage
# instrumentation (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*),
# which stable accepts, plus -Zsanitizer=address, which only a nightly
# compiler accepts. RUSTC_BOOTSTRAP=1 lets stable rustc take that -Z flag, and
# stable's rust-std for x86_64-unknown-linux-gnu ships the AddressSanitizer
# runtime, so the default build works with the stable toolchain alone.
# FUZZ_SANITIZER=none needs no -Z flag (and no RUSTC_BOOTSTRAP) and runs about
# twice as fast, but no longer catches memory errors in dependencies' unsafe
# code. Either way the targets are built optimised with debug assertions and
# overflow checks on (cargo-fuzz's default), so integer overflow is a crash.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-${FUZZ_SECONDS:-20}}"
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode config checkpoint json_scan)
sanitizer="${FUZZ_SANITIZER:-address}"
case "$seconds" in
  '' | *[!0-9]*)
    echo "error: seconds per target must be a whole number, got '$seconds'" >&2
    exit 2
    ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
if [ -n "${FUZZ_JOBS:-}" ]; then
  export CARGO_BUILD_JOBS="$FUZZ_JOBS"
fi

echo "== cargo fmt --check (fuzz crate)"
cargo fmt --manifest-path fuzz/Cargo.toml --check

# The same flags for build and run, so run does not rebuild.
flags=(--sanitizer "$sanitizer")
echo "== cargo fuzz build (${sanitizer} sanitizer)"
if [ $# -gt 0 ]; then
  for t in "${targets[@]}"; do cargo fuzz build "${flags[@]}" "$t"; done
else
  cargo fuzz build "${flags[@]}"
fi

mkdir -p fuzz/target/logs
failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/target/corpus/$t"
  log="fuzz/target/logs/$t.log"
  echo "== fuzz $t for ${seconds}s"
  if cargo fuzz run "${flags[@]}" "$t" "fuzz/target/corpus/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    # "Done 123456 runs in 20 second(s)", and the final corpus size.
    awk -v t="$t" '
      /^Done [0-9]+ runs in [0-9]+ second/ { runs = $2; secs = $5 }
      /DONE/ { for (i = 1; i <= NF; i++) if ($i == "corp:") corp = $(i + 1) }
      END { printf "   %s: %d runs in %d s, %d exec/s, corpus %s (entries/bytes)\n", t, runs, secs, secs ? runs / secs : runs, corp }
    ' "$log"
  else
    failed+=("$t")
    echo "   $t FAILED; the end of its log ($log):"
    tail -n 60 "$log"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "error: fuzz targets found crashes: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
  exit 1
fi
echo "== fuzz: no crashes"
