#!/usr/bin/env bash
# Smoke mode of the fuzz targets: build every target with cargo-fuzz
# (libFuzzer) and run each one for a short time from the committed corpus.
#
#   fuzz/smoke.sh                      # every target, FUZZ_SMOKE_SECS (10) s each
#   FUZZ_SMOKE_SECS=60 fuzz/smoke.sh frame_stream wal_recovery
#
# Works on a stable toolchain: cargo-fuzz passes nightly-only flags
# (-Zsanitizer, -Cpasses=sancov-module), so on stable this script sets
# RUSTC_BOOTSTRAP=1 for the fuzz build only. The address sanitizer is used
# when the toolchain ships its runtime (stable does on x86_64 Linux); else
# `--sanitizer none` (coverage-guided fuzzing still works, only ASan's checks
# of unsafe code are lost). FUZZ_SANITIZER overrides the choice.
#
# cargo-fuzz itself is installed, pinned, into $FUZZ_TARGET_DIR/tools if it
# is not on PATH. Builds go to $FUZZ_TARGET_DIR (default
# ${CARGO_TARGET_DIR:-<repo>/target}/fuzz) so their instrumented flags never
# invalidate the normal build cache. The committed corpus is read, never
# written: new inputs go to a scratch corpus under $FUZZ_TARGET_DIR.
# A crash fails the script and prints the input's path and the replay command.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
secs=${FUZZ_SMOKE_SECS:-10}
ftd=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}/fuzz}
mkdir -p "$ftd"
ftd=$(cd "$ftd" && pwd)
cargo=${CARGO:-cargo}

tools="$ftd/tools"
export PATH="$tools/bin:$PATH"
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz-smoke: installing cargo-fuzz $CARGO_FUZZ_VERSION into $tools"
  "$cargo" install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$tools"
fi

if ! rustc --version | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
fi
host=$(rustc -vV | sed -n 's/^host: //p')
sysroot=$(rustc --print sysroot)
if [[ -z "${FUZZ_SANITIZER:-}" ]]; then
  if ls "$sysroot/lib/rustlib/$host/lib/"librustc-*_rt.asan.a >/dev/null 2>&1; then
    FUZZ_SANITIZER=address
  else
    FUZZ_SANITIZER=none
  fi
fi

cd "$root"
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo fuzz list)
fi
echo "fuzz-smoke: $(rustc --version), RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP:-unset}, sanitizer=$FUZZ_SANITIZER, ${secs}s x ${#targets[@]} targets"

start=$(date +%s)
cargo fuzz build --sanitizer "$FUZZ_SANITIZER" --target-dir "$ftd"
echo "fuzz-smoke: build took $(( $(date +%s) - start ))s"

failed=0
for t in "${targets[@]}"; do
  scratch="$ftd/smoke-corpus/$t"
  artifacts="$ftd/artifacts/$t/"
  mkdir -p "$scratch" "$artifacts"
  log="$ftd/smoke-$t.log"
  if cargo fuzz run --sanitizer "$FUZZ_SANITIZER" --target-dir "$ftd" "$t" \
       "$scratch" "fuzz/corpus/$t" -- \
       -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
       -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "fuzz-smoke: ok   $t: ${runs:-?} execs, ${rate:-?}/s, ${cov:-cov: ?}"
  else
    failed=1
    echo "fuzz-smoke: FAIL $t (log: $log)"
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -20 || true
    echo "  replay: cargo fuzz run $t <artifact from $artifacts>"
  fi
done
echo "fuzz-smoke: total $(( $(date +%s) - start ))s"
exit $failed
