#!/usr/bin/env bash
# Builds and runs the C++ tests three times: plain (Debug), ASan+UBSan, TSan.
# Each configuration has its own build directory under build/cpp-<config>.
# Runs all three, then fails if any configure, build or test step failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

jobs="$(nproc 2>/dev/null || echo 2)"

# doctest is header-only; CI runs as root on Debian/Ubuntu images.
if [[ ! -f /usr/include/doctest/doctest.h ]]; then
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "cpp-tests: doctest is missing; install doctest-dev (apt-get install doctest-dev)" >&2
    exit 1
  fi
  echo "cpp-tests: installing doctest-dev"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends doctest-dev \
    || { apt-get update && apt-get install -y --no-install-recommends doctest-dev; }
fi

export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

# run_tests <build dir>: ctest, and for TSan one retry with ASLR off when the
# runtime rejects the kernel's address layout (high mmap_rnd_bits kernels).
run_tests() {
  local dir="$1" log
  log="$(mktemp)"
  if ctest --test-dir "$dir" --output-on-failure --timeout 300 2>&1 | tee "$log"; then
    rm -f "$log"
    return 0
  fi
  if grep -q "unexpected memory mapping" "$log"; then
    rm -f "$log"
    echo "cpp-tests: TSan rejected the memory layout; retrying with ASLR off (setarch -R)"
    setarch "$(uname -m)" -R ctest --test-dir "$dir" --output-on-failure --timeout 300
    return
  fi
  rm -f "$log"
  return 1
}

# config <name> <build type> [extra cmake args...]
config() {
  local name="$1" build_type="$2"
  shift 2
  local dir="build/cpp-${name}" start=$SECONDS
  echo
  echo "=== cpp-tests: ${name} (${build_type}${*:+, $*}) in ${dir}"
  if cmake -S . -B "$dir" -DGREENML_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE="$build_type" "$@" >/dev/null \
    && cmake --build "$dir" -j "$jobs" \
    && run_tests "$dir"; then
    echo "=== cpp-tests: ${name} passed in $((SECONDS - start)) s"
  else
    echo "=== cpp-tests: ${name} FAILED after $((SECONDS - start)) s"
    failed+=("$name")
  fi
}

# Every configuration runs even after a failure: a bug that only one
# sanitizer sees is worth knowing about alongside the others.
failed=()
total_start=$SECONDS
config plain Debug -DGREENML_SANITIZE=
config asan RelWithDebInfo -DGREENML_SANITIZE=address
# The ring orders its seqlock with acquire loads and release stores only (no
# fences), which TSan models: a weakened ordering there is a reported race.
config tsan RelWithDebInfo -DGREENML_SANITIZE=thread
echo
if ((${#failed[@]})); then
  echo "cpp-tests: FAILED: ${failed[*]} ($((SECONDS - total_start)) s)"
  exit 1
fi
echo "cpp-tests: all three configurations passed in $((SECONDS - total_start)) s"
