// The sampler: one native thread that reads every source on an absolute
// deadline grid and pushes one sample per tick into the ring.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "greenml/ring_buffer.hpp"
#include "greenml/source.hpp"

namespace greenml {

// Ring column layout for C channels, P of them power channels:
//   column i < C: cumulative energy of channel i as an integer in
//     energy_unit (counters: the unwrapped counter in its raw unit;
//     power channels: the running trapezoid integral, in nanojoules: uint64
//     holds 18 GJ, ~5 MWh);
//   column C + j: the raw power reading (mW) of the j-th power channel.
struct ColumnLayout {
  std::vector<double> energy_to_joules;   // per channel
  std::vector<int> power_column;          // per channel: ring column of its power, or -1
  std::vector<double> power_to_watts;     // per channel (0 for counters)
  std::size_t width = 0;
};

struct SamplerStats {
  std::uint64_t samples = 0;           // pushed by the thread (ticks)
  std::uint64_t manual_samples = 0;    // pushed by read_now()
  std::uint64_t missed_deadlines = 0;  // ticks that woke after the next deadline
  std::uint64_t failed_reads = 0;      // channel reads that failed, all channels
  std::vector<std::uint64_t> failed_reads_per_channel;
  std::int64_t max_lateness_ns = 0;    // worst wake-up after a deadline
  std::int64_t thread_cpu_ns = 0;      // CPU time of the sampler thread so far
  bool running = false;
  bool paused = false;
};

using ClockFn = std::function<std::int64_t()>;  // monotonic nanoseconds

[[nodiscard]] std::int64_t monotonic_ns() noexcept;

class Sampler {
 public:
  // capacity: samples kept in the ring. clock: timestamp source for samples
  // (defaults to CLOCK_MONOTONIC; the deadline sleep always uses the real one).
  Sampler(std::vector<std::shared_ptr<Source>> sources, std::int64_t period_ns,
          std::size_t capacity, ClockFn clock = {});
  ~Sampler();
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;

  // All idempotent. start() after a fork in the child starts a fresh thread.
  void start();
  void stop();   // wakes the thread and joins it (within ~20 ms)
  void pause();  // no samples pushed; counters still read often enough to see wraps
  void resume();

  [[nodiscard]] std::int64_t period_ns() const noexcept { return period_ns_.load(); }
  void set_period_ns(std::int64_t period_ns);  // takes effect at the next tick

  // Reads every source now, under the same lock as the thread, and pushes the
  // result into the ring (so it also serves later readers). Returns the
  // sample's ring index; t_out/v_out get the sample.
  std::uint64_t read_now(std::int64_t* t_out, std::uint64_t* v_out);

  [[nodiscard]] const std::vector<ChannelInfo>& channels() const noexcept { return channels_; }
  [[nodiscard]] std::vector<DomainStatus> status() const;
  [[nodiscard]] const ColumnLayout& layout() const noexcept { return layout_; }
  [[nodiscard]] const SampleRing& ring() const noexcept { return ring_; }
  [[nodiscard]] SamplerStats stats() const;
  // Human-readable warnings found at construction or start (e.g. a period too
  // slow to see every counter wrap).
  [[nodiscard]] std::vector<std::string> warnings() const;
  [[nodiscard]] std::int64_t max_safe_period_ns() const noexcept { return max_safe_period_ns_; }

  // Internal: fork handlers (see sampler.cpp).
  void fork_prepare_();
  void fork_parent_();
  void fork_child_();

 private:
  static void* thread_main(void* self);
  void run();
  // Reads all sources, updates unwrap/integral state, pushes when push=true.
  // Caller holds read_mutex_.
  void sample_locked(bool push, std::int64_t* t_out, std::uint64_t* v_out);

  // Declaration order matters: channels_ is built from sources_ and fills
  // source_offset_, so both must exist first.
  std::vector<std::shared_ptr<Source>> sources_;
  std::vector<std::size_t> source_offset_;
  std::vector<ChannelInfo> channels_;
  ColumnLayout layout_;
  SampleRing ring_;
  ClockFn clock_;
  std::int64_t max_safe_period_ns_ = INT64_MAX;

  // State of the unwrap and the integrals, guarded by read_mutex_.
  mutable std::mutex read_mutex_;
  std::vector<std::uint64_t> raw_, last_raw_;
  std::unique_ptr<bool[]> ok_;
  std::vector<bool> have_last_;
  std::vector<std::uint64_t> cumulative_;   // unwrapped counters, raw unit
  std::vector<double> integral_nj_;         // power channels, nanojoules
  std::vector<std::uint64_t> last_power_raw_;
  std::vector<std::int64_t> last_power_t_;
  std::vector<std::uint64_t> row_;
  std::vector<std::uint64_t> failed_per_channel_;

  std::atomic<std::int64_t> period_ns_;
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> paused_{false};
  std::atomic<bool> running_{false};
  mutable std::mutex control_mutex_;  // serialises start/stop
  pthread_t thread_{};
  std::atomic<std::uint64_t> samples_{0}, manual_samples_{0}, missed_{0}, failed_{0};
  std::atomic<std::int64_t> max_lateness_ns_{0};
  std::atomic<std::int64_t> cpu_ns_at_stop_{0};
};

}  // namespace greenml
