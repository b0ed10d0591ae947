// counter_step and max_period_for_range_ns: wraps, resets and the plausibility
// check between them; conversions without undefined behaviour.
#include <doctest.h>

#include <cstdint>
#include <limits>

#include "greenml/counter.hpp"

using greenml::counter_step;
using greenml::CounterStepKind;
using greenml::max_period_for_range_ns;
using greenml::saturate_i64;
using greenml::saturate_u64;

namespace {
constexpr std::uint64_t kAny = std::numeric_limits<std::uint64_t>::max();  // no plausibility limit
constexpr std::uint64_t kU64Max = std::numeric_limits<std::uint64_t>::max();
}  // namespace

TEST_CASE("counter_step: a counter that moved forward gives the plain difference") {
  CHECK(counter_step(100, 250, 999, kAny).delta == 150);
  CHECK(counter_step(100, 250, 999, kAny).kind == CounterStepKind::normal);
  CHECK(counter_step(0, 999, 999, kAny).delta == 999);
  CHECK(counter_step(500, 500, 999, kAny).delta == 0);
  CHECK(counter_step(7, 12, 0, kAny).delta == 5);
}

TEST_CASE("counter_step: the counter shows [0, max_raw] inclusive, so it wraps modulo max_raw + 1") {
  // max_energy_range_uj = 999: the counter goes ... 998, 999, 0, 1 ...
  CHECK(counter_step(999, 0, 999, kAny).delta == 1);
  CHECK(counter_step(999, 0, 999, kAny).kind == CounterStepKind::wrap);
  CHECK(counter_step(900, 100, 999, kAny).delta == 200);
  CHECK(counter_step(999, 998, 999, kAny).delta == 999);  // one short of a full lap
  CHECK(counter_step(1, 0, 999, kAny).delta == 999);
  CHECK(counter_step(500, 0, 999, kAny).delta == 500);  // lands exactly on zero
}

TEST_CASE("counter_step: a backwards step too large for the elapsed time is a reset, not a wrap") {
  // RAPL range 262143328850 uJ: at most 1 J plausible since the last read.
  constexpr std::uint64_t rapl_max = 262143328850ULL;
  const auto s = counter_step(5'000'000, 1'000, rapl_max, 1'000'000);
  CHECK(s.kind == CounterStepKind::reset);
  CHECK(s.delta == 1'000);  // restarted from 0: the new value is energy since the reset
  // A real wrap near the top stays a wrap.
  const auto w = counter_step(rapl_max - 10, 15, rapl_max, 1'000'000);
  CHECK(w.kind == CounterStepKind::wrap);
  CHECK(w.delta == 26);
}

TEST_CASE("counter_step: a reset to an arbitrary large value restarts counting from it") {
  const auto s = counter_step(5'000'000, 4'000'000, 262143328850ULL, 1'000);
  CHECK(s.kind == CounterStepKind::reset);
  CHECK(s.delta == 0);
}

TEST_CASE("counter_step: an implausible forward jump counts nothing and is a reset") {
  const auto s = counter_step(100, 100 + 10'000'000, 0, 1'000);
  CHECK(s.kind == CounterStepKind::reset);
  CHECK(s.delta == 0);
}

TEST_CASE("counter_step: a never-wrapping counter that went down counts its new value") {
  // An NVML counter reset (driver reload): it restarted from 0.
  const auto s = counter_step(100'000, 50, 0, kAny);
  CHECK(s.kind == CounterStepKind::reset);
  CHECK(s.delta == 50);
  CHECK(counter_step(kU64Max, 0, 0, kAny).delta == 0);
}

TEST_CASE("counter_step: a previous reading outside the range is not a wrap") {
  CHECK(counter_step(1000, 5, 999, kAny).kind == CounterStepKind::reset);
  CHECK(counter_step(5000, 5, 999, kAny).kind == CounterStepKind::reset);
}

TEST_CASE("counter_step: extreme values neither overflow nor underflow") {
  CHECK(counter_step(0, kU64Max, 0, kAny).delta == kU64Max);
  CHECK(counter_step(kU64Max - 1, 0, kU64Max, kAny).delta == 2);  // modulo 2^64
  CHECK(counter_step(kU64Max - 1, 5, kU64Max, kAny).delta == 7);
  CHECK(counter_step(kU64Max, 0, kU64Max, kAny).delta == 1);
}

TEST_CASE("counter_step is usable at compile time") {
  static_assert(counter_step(900, 100, 999, kAny).delta == 200);
  static_assert(counter_step(3, 4, 0, kAny).delta == 1);
}

TEST_CASE("saturating conversions never hit undefined behaviour") {
  CHECK(saturate_u64(1e30) == kU64Max);
  CHECK(saturate_u64(-5.0) == 0);
  CHECK(saturate_u64(0.0 / 0.0) == 0);
  CHECK(saturate_u64(12.7) == 12);
  CHECK(saturate_i64(1e30) == std::numeric_limits<std::int64_t>::max());
  CHECK(saturate_i64(-1e30) == std::numeric_limits<std::int64_t>::min());
}

TEST_CASE("max_period_for_range_ns: half the time to traverse the range") {
  // 262143328850 uJ at 500 W: 524.3 s to wrap, 262.1 s safe.
  const std::int64_t p = max_period_for_range_ns(262143328850ULL, 1e-6, 500.0);
  CHECK(p > 262'000'000'000LL);
  CHECK(p < 262'200'000'000LL);
  CHECK(max_period_for_range_ns(999'999, 1e-6, 1.0) == 500'000'000);
  CHECK(max_period_for_range_ns(999'999, 1e-6, 2.0) == 250'000'000);
}

TEST_CASE("max_period_for_range_ns: no range or no power means no limit, huge ranges saturate") {
  CHECK(max_period_for_range_ns(0, 1e-6, 500.0) == INT64_MAX);
  CHECK(max_period_for_range_ns(1'000'000, 1e-6, 0.0) == INT64_MAX);
  CHECK(max_period_for_range_ns(1'000'000, 1e-6, -3.0) == INT64_MAX);
  CHECK(max_period_for_range_ns(kU64Max, 1.0, 1e-9) == INT64_MAX);
}
