#!/usr/bin/env bash
# Bounded fuzzing of the sysfs parsers (tests/fuzz/fuzz_sysfs.cpp) under ASan+UBSan.
#   tests/fuzz/run_fuzz.sh [SECONDS]      (default 20)
# With clang++ and libFuzzer: a libFuzzer run of SECONDS over the committed corpus (new inputs go
# to a scratch directory, not the corpus). Otherwise (gcc): fuzz_driver.cpp replays the corpus
# and runs mutated inputs for SECONDS. Either way the corpus is replayed first; any sanitizer
# report or broken invariant fails the script and leaves the input in fuzz-failure.bin (gcc) or
# crash-* (libFuzzer) in the build directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

seconds="${1:-20}"
build="${GREENML_FUZZ_BUILD:-build/fuzz}"
corpus="$PWD/tests/fuzz/corpus/sysfs"
mkdir -p "$build"
srcs=(tests/fuzz/fuzz_sysfs.cpp csrc/src/sysfs.cpp csrc/src/rapl_source.cpp)
flags=(-std=c++17 -O1 -g -fno-omit-frame-pointer -Icsrc/include
       -fsanitize=address,undefined -fno-sanitize-recover=all)
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

if command -v clang++ >/dev/null && echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' \
     | clang++ -x c++ -fsanitize=fuzzer - -o "$build/probe" 2>/dev/null; then
  clang++ "${flags[@]}" -fsanitize=fuzzer "${srcs[@]}" -o "$build/fuzz_sysfs"
  scratch="$build/new-inputs"
  mkdir -p "$scratch"
  (cd "$build" && ./fuzz_sysfs -max_total_time="$seconds" -max_len=4096 \
     -print_final_stats=1 new-inputs "$corpus")
else
  c++ "${flags[@]}" "${srcs[@]}" tests/fuzz/fuzz_driver.cpp -o "$build/fuzz_sysfs"
  (cd "$build" && ./fuzz_sysfs --seconds "$seconds" --seed "${GREENML_FUZZ_SEED:-$RANDOM}" \
     "$corpus")
fi
