// Energy counter arithmetic: wraps, resets and the plausibility check that
// tells them apart.
#pragma once

#include <cstdint>
#include <limits>

namespace greenml {

// What happened between two readings of a counter.
enum class CounterStepKind : std::uint8_t {
  normal,  // moved forward by a plausible amount
  wrap,    // passed its maximum once and restarted from 0
  reset,   // jumped in a way no power draw explains (re-initialised, suspend, glitch)
};

struct CounterStep {
  std::uint64_t delta = 0;  // raw units counted for this step
  CounterStepKind kind = CounterStepKind::normal;
};

// A double clamped into [0, UINT64_MAX] without undefined behaviour (a plain
// cast of a double >= 2^64 or NaN to an integer is undefined).
[[nodiscard]] constexpr std::uint64_t saturate_u64(double x) noexcept {
  if (!(x > 0.0)) return 0;  // also NaN
  if (x >= 18446744073709549568.0) return std::numeric_limits<std::uint64_t>::max();
  return static_cast<std::uint64_t>(x);
}

// Same for int64.
[[nodiscard]] constexpr std::int64_t saturate_i64(double x) noexcept {
  if (x != x) return 0;
  if (x >= 9223372036854774784.0) return std::numeric_limits<std::int64_t>::max();
  if (x <= -9223372036854774784.0) return std::numeric_limits<std::int64_t>::min();
  return static_cast<std::int64_t>(x);
}

// Classifies the step from `prev` to `now` of a counter that shows values in
// [0, max_raw] and wraps to 0 after max_raw (so it counts modulo max_raw + 1;
// max_raw == 0 means it never wraps). `max_delta` is the most raw units the
// channel can plausibly have counted since `prev` (elapsed time x a generous
// maximum power); a step beyond it is a reset, never a wrap or a gain.
//
// After a reset the counter restarted from 0 at some instant since `prev`, so
// the new value is the energy counted since then and is kept when it is itself
// plausible; otherwise the counter jumped to an arbitrary value and counting
// restarts from it (delta 0). Either way the energy between `prev` and the
// reset instant is unknown: the caller records the event so results can say so.
[[nodiscard]] constexpr CounterStep counter_step(std::uint64_t prev, std::uint64_t now,
                                                 std::uint64_t max_raw,
                                                 std::uint64_t max_delta) noexcept {
  if (now >= prev) {
    const std::uint64_t d = now - prev;
    if (d <= max_delta) return {d, CounterStepKind::normal};
    return {0, CounterStepKind::reset};
  }
  if (max_raw != 0 && prev <= max_raw) {
    // (max_raw - prev) + now + 1 == distance modulo max_raw + 1; with
    // max_raw == UINT64_MAX the unsigned arithmetic wraps exactly modulo 2^64.
    const std::uint64_t d = (max_raw - prev) + now + 1;
    if (d != 0 && d <= max_delta) return {d, CounterStepKind::wrap};
  }
  return {now <= max_delta ? now : 0, CounterStepKind::reset};
}

// Longest period (ns) between reads that still sees every wrap of a counter
// showing [0, max_raw] raw units of `joules_per_raw` each, when the channel
// draws at most max_power_w. Half the time to traverse the range gives a 2x
// margin. INT64_MAX when the counter never wraps or the power is unknown.
[[nodiscard]] constexpr std::int64_t max_period_for_range_ns(std::uint64_t max_raw,
                                                             double joules_per_raw,
                                                             double max_power_w) noexcept {
  if (max_raw == 0 || !(max_power_w > 0) || !(joules_per_raw > 0)) {
    return std::numeric_limits<std::int64_t>::max();
  }
  const double seconds_to_wrap = (static_cast<double>(max_raw) + 1.0) * joules_per_raw / max_power_w;
  return saturate_i64(seconds_to_wrap * 0.5 * 1e9);
}

}  // namespace greenml
