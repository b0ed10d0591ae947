// counter_delta and max_period_for_range_ns: wraparound arithmetic of energy
// counters.
#include <doctest.h>

#include <cstdint>

#include "greenml/counter.hpp"

using greenml::counter_delta;
using greenml::max_period_for_range_ns;

TEST_CASE("counter_delta: a counter that moved forward gives the plain difference") {
  CHECK(counter_delta(100, 250, 1000) == 150);
  CHECK(counter_delta(0, 999, 1000) == 999);
  CHECK(counter_delta(500, 500, 1000) == 0);
  // range 0 (never wraps) does not change forward deltas
  CHECK(counter_delta(7, 12, 0) == 5);
}

TEST_CASE("counter_delta: a reading that went backwards is exactly one wrap") {
  // range 1000: the counter runs 0..999 and then reads 0 again.
  CHECK(counter_delta(900, 100, 1000) == 200);
  CHECK(counter_delta(999, 0, 1000) == 1);    // wrap by one
  CHECK(counter_delta(999, 998, 1000) == 999);  // one short of a full lap
  CHECK(counter_delta(1, 0, 1000) == 999);
  CHECK(counter_delta(500, 0, 1000) == 500);  // lands exactly on zero
}

TEST_CASE("counter_delta: a previous reading outside the range is not trusted") {
  // prev >= range cannot come from this counter; a wrap computed from it would
  // underflow to a huge number, so it counts as zero.
  CHECK(counter_delta(1000, 5, 1000) == 0);
  CHECK(counter_delta(5000, 5, 1000) == 0);
}

TEST_CASE("counter_delta: a decrease of a never-wrapping counter is a reset, not 2^64") {
  CHECK(counter_delta(100, 50, 0) == 0);
  CHECK(counter_delta(UINT64_MAX, 0, 0) == 0);
}

TEST_CASE("counter_delta: extreme values neither overflow nor underflow") {
  CHECK(counter_delta(0, UINT64_MAX, 0) == UINT64_MAX);
  CHECK(counter_delta(0, UINT64_MAX, UINT64_MAX) == UINT64_MAX);
  CHECK(counter_delta(UINT64_MAX - 1, 0, UINT64_MAX) == 1);  // wrap by one at the top
  CHECK(counter_delta(UINT64_MAX - 1, 5, UINT64_MAX) == 6);
  // A real RAPL range (about 2^38 uJ).
  constexpr std::uint64_t rapl = 262143328850ULL;
  CHECK(counter_delta(rapl - 10, 15, rapl) == 25);
  CHECK(counter_delta(rapl - 1, rapl - 1, rapl) == 0);
}

TEST_CASE("counter_delta is usable at compile time") {
  static_assert(counter_delta(900, 100, 1000) == 200);
  static_assert(counter_delta(3, 4, 0) == 1);
}

TEST_CASE("max_period_for_range_ns: half the time to traverse the range") {
  // 262143328850 uJ at 500 W: 524.3 s to wrap, so 262.1 s is safe.
  const std::int64_t p = max_period_for_range_ns(262143328850ULL, 500.0);
  CHECK(p == doctest::Approx(262.143328850e9).epsilon(1e-9));
  CHECK(p > 262'000'000'000LL);
  CHECK(p < 263'000'000'000LL);

  // 1 J range at 1 W: wraps every second; sample at least every half second.
  CHECK(max_period_for_range_ns(1'000'000, 1.0) == 500'000'000);
  // Twice the power halves the period.
  CHECK(max_period_for_range_ns(1'000'000, 2.0) == 250'000'000);
}

TEST_CASE("max_period_for_range_ns: no range or no power means no limit") {
  CHECK(max_period_for_range_ns(0, 500.0) == INT64_MAX);
  CHECK(max_period_for_range_ns(1'000'000, 0.0) == INT64_MAX);
  CHECK(max_period_for_range_ns(1'000'000, -3.0) == INT64_MAX);
}
