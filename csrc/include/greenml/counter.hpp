// Wraparound arithmetic for energy counters.
#pragma once

#include <cstdint>

namespace greenml {

// Energy between two readings of a counter that wraps to 0 after range - 1.
// A reading that went backwards is taken as exactly one wrap: the sampler
// guarantees (see min_period_for_range) that two wraps cannot hide between
// samples. range == 0 means the counter never wraps; a decrease is then a
// reset and counts as zero rather than as 2^64.
[[nodiscard]] constexpr std::uint64_t counter_delta(std::uint64_t prev, std::uint64_t now,
                                                    std::uint64_t range) noexcept {
  if (now >= prev) return now - prev;
  if (range == 0 || prev >= range) return 0;
  return (range - prev) + now;
}

// Longest sampling period (ns) that still sees every wrap of a counter with
// the given range when the zone draws at most max_power_w. Half the time to
// traverse the range gives a 2x margin.
[[nodiscard]] constexpr std::int64_t max_period_for_range_ns(std::uint64_t range_uj,
                                                             double max_power_w) noexcept {
  if (range_uj == 0 || max_power_w <= 0) return INT64_MAX;
  const double seconds_to_wrap = static_cast<double>(range_uj) * 1e-6 / max_power_w;
  return static_cast<std::int64_t>(seconds_to_wrap * 0.5 * 1e9);
}

}  // namespace greenml
