#!/usr/bin/env bash
# Fuzzes every reader of user files (config + --set overrides, sweep file, export + cost table,
# data-set files) with libFuzzer under AddressSanitizer and UndefinedBehaviorSanitizer.
#   scripts/fuzz.sh [SECONDS]     seconds per target (default 30); needs clang (Debian: clang)
#   scripts/fuzz.sh --runs N      N inputs per target instead (seeded: the same run wherever the
#                                 readers are deterministic; what scripts/test.sh runs)
# Seeded (-seed=1) and started from the shipped configs, the golden export and small data-set
# files (tests/fuzz/seeds/). A crash stops with the input kept as build-fuzz/crash-*; once it is
# fixed, add the input to tests/fuzz/regress/<target>/: every file there is replayed on each run,
# and by ctest (fuzz_replay.<target>, any compiler) on every test run.
set -euo pipefail
cd "$(dirname "$0")/.."
limit="-max_total_time=${1:-30}"
what="${1:-30} s"
if [ "${1:-}" = "--runs" ]; then
  [ -n "${2:-}" ] || { echo "fuzz: --runs needs a number" >&2; exit 2; }
  limit="-runs=$2"
  what="$2 inputs"
fi
command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (apt-get install clang)" >&2; exit 1; }
# -O1 with line tables: quicker to build than -O2 -g, and reports still name file and line.
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
  -DAUTOREP_FUZZ=ON -DAUTOREP_SANITIZE=ON -DAUTOREP_BUILD_TESTS=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzz_config fuzz_sweep fuzz_export fuzz_data

corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
mkdir -p "$corpus"/{config,sweep,export,data}
cp configs/*.json "$corpus/config/"
cp configs/sweep-*.json "$corpus/sweep/"
cp tests/data/golden-export.json configs/cost-*.json "$corpus/export/"
cp tests/fuzz/seeds/data/* "$corpus/data/"  # first byte: reader (see tests/fuzz/fuzz_data.cpp)
for t in config sweep export data; do
  [ -d "tests/fuzz/regress/$t" ] && cp tests/fuzz/regress/$t/* "$corpus/$t/" 2>/dev/null || true
  echo "fuzz: $t for $what"
  log="build-fuzz/fuzz_$t.log"
  (cd build-fuzz && ASAN_OPTIONS=detect_leaks=0 tests/fuzz/fuzz_$t -seed=1 "$limit" \
     -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 "$corpus/$t") >"$log" 2>&1 ||
    { tail -40 "$log"; echo "fuzz: $t FAILED (input kept in build-fuzz/)" >&2; exit 1; }
  echo "fuzz: $t ok: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') executions, 0 crashes"
done
