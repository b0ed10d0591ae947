// Channels and sources: the vocabulary shared by every hardware reader.
#pragma once

#include <cstdint>
#include <climits>
#include <string>
#include <vector>

namespace greenml {

// A counter channel reports a cumulative energy that may wrap after `max_raw`;
// a power channel reports instantaneous power that the reader integrates.
enum class ChannelKind { counter, power };

struct ChannelInfo {
  std::string domain;        // contract key, e.g. "package:0", "gpu:1"
  std::string source;        // "rapl" or "nvml"
  bool measured = true;      // false for modelled domains
  bool in_total = true;      // false for zones contained in another (core, uncore, psys)
  ChannelKind kind = ChannelKind::counter;
  std::string unit;          // raw unit: "uj", "mj" (counters) or "mw" (power)
  double to_si = 1.0;        // raw -> joules (counters) or watts (power)
  // Largest raw value the counter shows before it wraps back to 0 (the
  // counter runs over [0, max_raw] inclusive, so it wraps modulo max_raw + 1);
  // 0 = never wraps.
  std::uint64_t max_raw = 0;
  // Most power (W) this channel can plausibly draw: the enforced limit or the
  // zone's max_power where the hardware says, else a generous default; 0 =
  // unknown. A counter step implying more than this over the elapsed time is
  // a reset, not a wrap.
  double max_power_w = 0.0;
  // Power channels: each reading is the mean over this trailing window (ns);
  // 0 = an instantaneous reading; -1 = unknown, or not a power channel.
  std::int64_t power_window_ns = -1;
  std::string detail;        // zone path or device name/UUID, for humans
  // The device's identity across processes: the GPU's UUID as NVML spells it
  // ("GPU-..."), so ranks that see one GPU can count it once; empty for
  // host-level domains (RAPL zones, models), which a host identity names.
  std::string uuid;
  // Relative error bound of a modelled channel (0.5 = +/-50% of its energy),
  // from the model's documented accuracy; 0 for measured channels, whose
  // error comes from sampling alone.
  double rel_uncertainty = 0.0;
};

// One record per domain the source knows about, readable or not.
struct DomainStatus {
  std::string domain;
  std::string source;
  bool measured = true;
  bool available = false;
  std::string reason;  // why not available, and how to fix it; empty when available
};

// A hardware reader. read() is called by the sampler thread and by read_now()
// under the sampler's lock, so implementations need not be reentrant.
class Source {
 public:
  virtual ~Source() = default;
  [[nodiscard]] virtual const std::vector<ChannelInfo>& channels() const = 0;
  [[nodiscard]] virtual std::vector<DomainStatus> status() const = 0;
  // Fills raw[i] for each channel i; ok[i] = false when that read failed
  // (raw[i] is then left unchanged). Never throws.
  virtual void read(std::uint64_t* raw, bool* ok) noexcept = 0;
  // Short name for diagnostics ("rapl", "nvml").
  [[nodiscard]] virtual std::string name() const = 0;
  // Longest sampling period (ns) that cannot miss a counter wrap; the
  // sampler warns when configured slower and keeps reading at least this
  // often while paused.
  [[nodiscard]] virtual std::int64_t max_safe_period_ns() const noexcept { return INT64_MAX; }
  // Called in a forked child from the atfork handler, before any read there.
  // Must only set flags (async-signal-safe): the source then re-opens or
  // re-initialises its library on its next read() in the child, and never
  // tears down state the parent still uses.
  virtual void after_fork_in_child() noexcept {}
  // True when a read costs a few microseconds and the counter updates often (RAPL, the
  // model): window edges then read it synchronously, so the edge is exact.
  [[nodiscard]] virtual bool cheap_edge_read() const noexcept { return false; }
};

}  // namespace greenml
