// The sampler: one native thread that reads every source and pushes samples
// into the ring, at full rate only while something needs it.
#pragma once

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "greenml/sample_ring.hpp"
#include "greenml/source.hpp"

namespace greenml {

// Ring column layout for C channels (P of them power channels) from S sources:
//   column i < C: cumulative energy of channel i as an integer in its energy
//     unit (counters: the unwrapped counter in its raw unit; power channels:
//     the running trapezoid integral in nanojoules: uint64 holds 18 GJ);
//   column C + j: the raw power reading (mW) of the j-th power channel;
//   column C + P + s: the time (ns, CLOCK_MONOTONIC or the injected clock) at
//     which source s was read for this sample: the midpoint of its own read,
//     so a slow NVML read does not skew the RAPL channels' times.
// The ring's own per-sample time is the midpoint of the whole reading.
struct ColumnLayout {
  std::vector<double> energy_to_joules;   // per channel
  std::vector<int> power_column;          // per channel: ring column of its power, or -1
  std::vector<double> power_to_watts;     // per channel (0 for counters)
  std::vector<int> time_column;           // per channel: ring column of its source's time
  std::size_t width = 0;
};

// Something the sampler saw on one channel that results must mention.
enum class EventKind : std::uint8_t {
  counter_reset,          // a step no power draw explains: counting restarted
  possibly_missed_wraps,  // reads further apart than the counter takes to wrap
  read_failed,            // the channel stopped reading (first failure after success)
  read_recovered,         // it reads again
};

struct SamplerEvent {
  std::int64_t t_ns = 0;       // time of the reading that saw it
  std::int64_t since_ns = 0;   // the previous good reading of that channel (the event lies between)
  std::uint32_t channel = 0;
  EventKind kind = EventKind::counter_reset;
};

struct SamplerStats {
  std::uint64_t samples = 0;           // pushed by the thread
  std::uint64_t reads = 0;             // ticks of the thread (pushed or not)
  std::uint64_t manual_samples = 0;    // pushed by read_now()
  std::uint64_t missed_deadlines = 0;  // full-rate ticks skipped because a read ran late
  std::uint64_t failed_reads = 0;      // channel reads that failed, all channels
  std::vector<std::uint64_t> failed_reads_per_channel;
  std::int64_t max_lateness_ns = 0;    // worst wake-up after a deadline
  std::int64_t thread_cpu_ns = 0;      // CPU time of the sampler thread so far
  std::uint64_t events_dropped = 0;    // events beyond the kept maximum
  bool running = false;
  bool paused = false;
  bool full_rate = false;              // sampling at the user's period right now
};

using ClockFn = std::function<std::int64_t()>;  // monotonic nanoseconds

[[nodiscard]] std::int64_t monotonic_ns() noexcept;

struct SamplerOptions {
  std::int64_t period_ns = 10'000'000;  // the user's period: full rate
  std::size_t capacity = 1 << 16;       // samples kept in the ring
  // Period while nothing asks for full rate (no demand, no recent touch); 0 =
  // always full rate. Reads still happen at least every wrap-safe period.
  std::int64_t idle_period_ns = 0;
  ClockFn clock;  // timestamps of samples (default CLOCK_MONOTONIC); waits use the real clock
  // Run-long history: a copy of one pushed sample every history_period_ns (0 = none), at most
  // history_rows rows; when full, every other row goes and the period doubles, so the history
  // covers the whole life of the sampler in bounded memory.
  std::int64_t history_period_ns = 0;
  std::size_t history_rows = 1 << 15;
};

// Rows copied out of the history: ring index, time and values of each.
struct HistoryRows {
  std::vector<std::uint64_t> index;
  std::vector<std::int64_t> t;
  std::vector<std::uint64_t> values;  // rows x width
};

class Sampler {
 public:
  // Valid ranges (std::invalid_argument otherwise, naming the argument):
  static constexpr std::int64_t min_period_ns = 50'000;                 // 20 kHz
  static constexpr std::int64_t max_period_ns = 3'600'000'000'000LL;    // 1 hour
  static constexpr std::size_t max_capacity = SampleRing::max_capacity;
  static constexpr std::size_t max_ring_bytes = std::size_t{1} << 32;   // 4 GiB

  Sampler(std::vector<std::shared_ptr<Source>> sources, SamplerOptions options);
  ~Sampler();
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;

  // All idempotent; none waits longer than one source read (stop() joins a
  // thread woken at once). start() in a forked child starts a fresh thread.
  void start();
  void stop();
  void pause();  // nothing pushed; counters still read often enough to see wraps
  void resume();

  [[nodiscard]] std::int64_t period_ns() const noexcept { return period_ns_.load(); }
  void set_period_ns(std::int64_t period_ns);  // applies to the tick being waited for
  [[nodiscard]] std::int64_t idle_period_ns() const noexcept { return idle_period_ns_; }

  // Demand for full rate: while the count is positive the thread samples at
  // the user's period (power-only channels to integrate, traces).
  void add_demand(int delta) noexcept;
  // A window edge just happened: sample at full rate until now + hold_ns. When
  // the thread is idling it wakes and takes a sample at once. Cheap (one
  // atomic store) when already at full rate.
  void touch(std::int64_t hold_ns) noexcept;

  // Reads every source now and pushes the result into the ring (so it also
  // serves later readers). Returns the sample's ring index.
  std::uint64_t read_now(std::int64_t* t_out, std::uint64_t* v_out);
  // A window edge: reads only the sources with cheap_edge_read() and pushes a
  // sample in which the other sources keep their last values and read times.
  // Returns the sample's index; *t_out gets the cheap sources' read time (the
  // edge's time), or the clock when there is no such source (nothing pushed,
  // the index is then the newest sample's).
  std::uint64_t edge_read(std::int64_t* t_out);
  [[nodiscard]] bool has_cheap_edge_sources() const noexcept { return has_cheap_; }

  [[nodiscard]] const std::vector<ChannelInfo>& channels() const noexcept { return channels_; }
  [[nodiscard]] std::size_t source_count() const noexcept { return sources_.size(); }
  [[nodiscard]] std::vector<DomainStatus> status() const;
  [[nodiscard]] const ColumnLayout& layout() const noexcept { return layout_; }
  [[nodiscard]] const SampleRing& ring() const noexcept { return ring_; }
  [[nodiscard]] SamplerStats stats() const;
  // Events with sequence number >= from (oldest first); next_out gets the
  // number to pass next time. At most max_events are kept.
  [[nodiscard]] std::vector<SamplerEvent> events(std::uint64_t from, std::uint64_t* next_out) const;
  static constexpr std::size_t max_events = 4096;
  // Human-readable warnings (e.g. a period slower than a counter's wrap-safe
  // period: the thread then reads more often than it pushes).
  [[nodiscard]] std::vector<std::string> warnings() const;
  [[nodiscard]] std::int64_t max_safe_period_ns() const noexcept { return max_safe_period_ns_; }

  // History rows with t in [from_ns, to_ns], plus the last row before and the first after
  // (so a window edge can be placed between two rows).
  [[nodiscard]] HistoryRows history(std::int64_t from_ns, std::int64_t to_ns) const;
  // Current spacing of history rows (ns; doubles each time the history thins) and row count.
  [[nodiscard]] std::int64_t history_period_ns() const;
  [[nodiscard]] std::size_t history_size() const;
  [[nodiscard]] std::size_t history_capacity() const noexcept { return history_rows_; }

  // Internal: fork handlers (see sampler.cpp).
  void fork_prepare_();
  void fork_parent_();
  void fork_child_();

 private:
  enum class Mode : std::uint8_t { full, idle, paused };
  static void* thread_main(void* self);
  void run();
  [[nodiscard]] Mode current_mode(std::int64_t now) noexcept;
  [[nodiscard]] std::int64_t read_period(Mode mode) const noexcept;
  void tick(bool push);
  // Reads all sources (caller holds io_mutex_), then updates the unwrap and
  // integral state and pushes under state_mutex_. Returns the pushed index.
  std::uint64_t sample(bool push, std::int64_t* t_out, std::uint64_t* v_out,
                       bool cheap_only = false);
  void update_channel(std::size_t i, std::int64_t t);
  void record_event(std::int64_t t, std::int64_t since, std::size_t channel, EventKind kind);
  void signal_thread();
  void record_history(std::uint64_t index, std::int64_t t);

  // Declaration order matters: channels_ is built from sources_ and fills
  // source_offset_, so both must exist first.
  std::vector<std::shared_ptr<Source>> sources_;
  std::vector<std::size_t> source_offset_;
  std::vector<std::size_t> channel_source_;
  std::vector<ChannelInfo> channels_;
  ColumnLayout layout_;
  SampleRing ring_;
  ClockFn clock_;
  std::int64_t idle_period_ns_ = 0;
  std::int64_t max_safe_period_ns_ = INT64_MAX;
  std::vector<bool> source_cheap_;
  bool has_cheap_ = false;

  // Source reads (which may block in a driver) are serialised by io_mutex_;
  // the scratch they fill is guarded by it. Nothing else waits on it, and the
  // fork handler never takes it.
  std::mutex io_mutex_;
  std::vector<std::uint64_t> raw_;
  std::unique_ptr<bool[]> ok_;
  std::vector<std::int64_t> source_t_;

  // Unwrap and integral state and the push: short, no I/O (the fork handler
  // takes this one so a child never inherits it half-updated).
  mutable std::mutex state_mutex_;
  std::vector<std::uint64_t> last_raw_;
  std::vector<std::int64_t> last_t_;
  std::vector<bool> have_last_, failing_;
  std::vector<std::uint64_t> cumulative_;   // unwrapped counters, raw unit
  std::vector<double> integral_nj_;         // power channels, nanojoules
  std::vector<std::uint64_t> last_power_raw_;
  std::vector<std::uint64_t> row_;
  // Run-long history (see SamplerOptions), appended under state_mutex_ and read under
  // history_mutex_ (never held across I/O).
  mutable std::mutex history_mutex_;
  std::vector<std::uint64_t> history_;      // rows of [index, t, values...]
  std::int64_t history_period_ns_ = 0;
  std::int64_t next_history_ns_ = 0;
  std::size_t history_rows_ = 0;
  std::vector<SamplerEvent> events_;        // ring of the last max_events
  std::uint64_t events_total_ = 0;
  std::unique_ptr<std::atomic<std::uint64_t>[]> failed_per_channel_;

  // The thread's wake-up: one condition variable on the monotonic clock that
  // stop(), resume(), period changes and touch() signal directly.
  std::mutex wake_mutex_;
  std::condition_variable wake_cv_;
  std::uint64_t generation_ = 0;      // bumped by every control change (under wake_mutex_)
  bool stop_requested_ = false;       // under wake_mutex_
  bool sample_now_ = false;           // under wake_mutex_: touch() from idle

  std::atomic<std::int64_t> period_ns_;
  std::atomic<std::int64_t> full_rate_until_ns_{0};
  std::atomic<int> demand_{0};
  std::atomic<bool> idling_{false};
  std::atomic<bool> paused_{false};
  std::atomic<bool> running_{false};
  std::mutex control_mutex_;  // serialises start/stop
  pthread_t thread_{};
  std::atomic<std::int64_t> thread_clock_{INT64_MIN};  // CPU clock id of the thread; INT64_MIN: none
  std::atomic<std::uint64_t> samples_{0}, reads_{0}, manual_samples_{0}, missed_{0}, failed_{0};
  std::atomic<std::int64_t> max_lateness_ns_{0};
  std::atomic<std::int64_t> cpu_ns_at_stop_{0};
};

}  // namespace greenml
