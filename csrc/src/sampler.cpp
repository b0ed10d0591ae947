#include "greenml/sampler.hpp"

#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "greenml/counter.hpp"

namespace greenml {

std::int64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

namespace {

// Bounds the latency of stop(), resume() and period changes. Long enough that a 10 Hz
// sampler wakes once per tick (each wake-up costs ~15-40 us of CPU in a VM).
constexpr std::int64_t max_sleep_slice_ns = 100'000'000;
constexpr std::int64_t paused_sleep_slice_ns = 20'000'000;
constexpr std::int64_t paused_poll_cap_ns = 1'000'000'000;

std::int64_t thread_cpu_ns(pthread_t thread) noexcept {
  clockid_t cid;
  if (::pthread_getcpuclockid(thread, &cid) != 0) return 0;
  timespec ts{};
  if (::clock_gettime(cid, &ts) != 0) return 0;
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

void sleep_until(std::int64_t deadline_ns) noexcept {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(deadline_ns / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(deadline_ns % 1'000'000'000);
  // Absolute deadline: a late wake-up does not push later ticks back (no drift).
  while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

// Every live sampler, for the fork handlers: the child must not believe a
// thread runs that fork() did not copy, and must not inherit a held lock.
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::vector<Sampler*>& registry() {
  static std::vector<Sampler*> r;
  return r;
}

void atfork_prepare() {
  registry_mutex().lock();
  for (Sampler* s : registry()) s->fork_prepare_();
}
void atfork_parent() {
  for (Sampler* s : registry()) s->fork_parent_();
  registry_mutex().unlock();
}
void atfork_child() {
  for (Sampler* s : registry()) s->fork_child_();
  registry_mutex().unlock();
}

void register_sampler(Sampler* s) {
  static std::once_flag once;
  std::call_once(once, [] { ::pthread_atfork(atfork_prepare, atfork_parent, atfork_child); });
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry().push_back(s);
}

void unregister_sampler(Sampler* s) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto& r = registry();
  r.erase(std::remove(r.begin(), r.end(), s), r.end());
}

ColumnLayout make_layout(const std::vector<ChannelInfo>& channels) {
  ColumnLayout l;
  const std::size_t c = channels.size();
  std::size_t next_power = c;
  for (const auto& ch : channels) {
    if (ch.kind == ChannelKind::counter) {
      l.energy_to_joules.push_back(ch.to_si);
      l.power_column.push_back(-1);
      l.power_to_watts.push_back(0.0);
    } else {
      l.energy_to_joules.push_back(1e-9);  // the integral is kept in nanojoules
      l.power_column.push_back(static_cast<int>(next_power++));
      l.power_to_watts.push_back(ch.to_si);
    }
  }
  l.width = next_power;
  return l;
}

std::vector<ChannelInfo> gather_channels(const std::vector<std::shared_ptr<Source>>& sources,
                                         std::vector<std::size_t>& offsets) {
  std::vector<ChannelInfo> all;
  for (const auto& s : sources) {
    if (!s) throw std::invalid_argument("sampler source must not be null");
    offsets.push_back(all.size());
    const auto& ch = s->channels();
    all.insert(all.end(), ch.begin(), ch.end());
  }
  return all;
}

}  // namespace

Sampler::Sampler(std::vector<std::shared_ptr<Source>> sources, std::int64_t period_ns,
                 std::size_t capacity, ClockFn clock)
    : sources_(std::move(sources)),
      channels_(gather_channels(sources_, source_offset_)),
      layout_(make_layout(channels_)),
      ring_(capacity, layout_.width),
      clock_(clock ? std::move(clock) : ClockFn(monotonic_ns)),
      period_ns_(period_ns) {
  if (period_ns <= 0) throw std::invalid_argument("sampling period must be > 0 ns");
  for (const auto& s : sources_) max_safe_period_ns_ = std::min(max_safe_period_ns_, s->max_safe_period_ns());
  const std::size_t c = channels_.size();
  raw_.assign(c, 0);
  last_raw_.assign(c, 0);
  ok_ = std::make_unique<bool[]>(c == 0 ? 1 : c);
  have_last_.assign(c, false);
  cumulative_.assign(c, 0);
  integral_nj_.assign(c, 0.0);
  last_power_raw_.assign(c, 0);
  last_power_t_.assign(c, 0);
  row_.assign(layout_.width, 0);
  failed_per_channel_.assign(c, 0);
  {
    // Baseline read: cumulative energies count from the sampler's creation.
    std::lock_guard<std::mutex> lock(read_mutex_);
    sample_locked(false, nullptr, nullptr);
  }
  register_sampler(this);
}

Sampler::~Sampler() {
  stop();
  unregister_sampler(this);
}

void Sampler::sample_locked(bool push, std::int64_t* t_out, std::uint64_t* v_out) {
  const std::int64_t before = clock_();
  for (std::size_t s = 0; s < sources_.size(); ++s) {
    const std::size_t off = source_offset_[s];
    sources_[s]->read(raw_.data() + off, ok_.get() + off);
  }
  const std::int64_t after = clock_();
  // A source read may take a while (NVML: tens of µs to ms); the midpoint is
  // the best single timestamp for the whole reading.
  const std::int64_t t = before + (after - before) / 2;

  const std::size_t c = channels_.size();
  for (std::size_t i = 0; i < c; ++i) {
    const ChannelInfo& ch = channels_[i];
    if (!ok_[i]) {
      ++failed_per_channel_[i];
      failed_.fetch_add(1, std::memory_order_relaxed);
    } else if (ch.kind == ChannelKind::counter) {
      if (have_last_[i]) cumulative_[i] += counter_delta(last_raw_[i], raw_[i], ch.max_raw);
      last_raw_[i] = raw_[i];
      have_last_[i] = true;
    } else {
      if (have_last_[i] && t > last_power_t_[i]) {
        // Trapezoid between this channel's last good reading and this one; a
        // gap of failed reads is bridged linearly rather than dropped.
        const double mean_raw = 0.5 * (static_cast<double>(last_power_raw_[i]) +
                                       static_cast<double>(raw_[i]));
        integral_nj_[i] += mean_raw * ch.to_si * static_cast<double>(t - last_power_t_[i]);
      }
      last_power_raw_[i] = raw_[i];
      last_power_t_[i] = t;
      have_last_[i] = true;
    }
    if (ch.kind == ChannelKind::counter) {
      row_[i] = cumulative_[i];
    } else {
      row_[i] = static_cast<std::uint64_t>(std::floor(integral_nj_[i]));
      row_[static_cast<std::size_t>(layout_.power_column[i])] = last_power_raw_[i];
    }
  }
  if (push) ring_.push(t, row_.data());
  if (t_out != nullptr) *t_out = t;
  if (v_out != nullptr) std::copy(row_.begin(), row_.end(), v_out);
}

std::uint64_t Sampler::read_now(std::int64_t* t_out, std::uint64_t* v_out) {
  std::lock_guard<std::mutex> lock(read_mutex_);
  sample_locked(true, t_out, v_out);
  manual_samples_.fetch_add(1, std::memory_order_relaxed);
  return ring_.head() - 1;
}

void Sampler::start() {
  std::lock_guard<std::mutex> lock(control_mutex_);
  if (running_.load()) return;
  stop_requested_.store(false);
  if (::pthread_create(&thread_, nullptr, &Sampler::thread_main, this) != 0) {
    throw std::runtime_error("could not start the sampler thread (pthread_create failed)");
  }
  running_.store(true);
}

void Sampler::stop() {
  std::lock_guard<std::mutex> lock(control_mutex_);
  if (!running_.load()) return;
  stop_requested_.store(true);
  ::pthread_join(thread_, nullptr);
  running_.store(false);
}

void Sampler::pause() { paused_.store(true); }
void Sampler::resume() { paused_.store(false); }

void Sampler::set_period_ns(std::int64_t period_ns) {
  if (period_ns <= 0) throw std::invalid_argument("sampling period must be > 0 ns");
  period_ns_.store(period_ns);
}

void* Sampler::thread_main(void* self) {
  static_cast<Sampler*>(self)->run();
  return nullptr;
}

void Sampler::run() {
  // The default 50 us timer slack makes wake-ups late at kilohertz rates; ask for at most
  // 1/20 of the period (never more than the default).
  ::prctl(PR_SET_TIMERSLACK,
          static_cast<unsigned long>(std::clamp<std::int64_t>(period_ns_.load() / 20, 1, 50'000)),
          0, 0, 0);
  std::int64_t scheduled_period = period_ns_.load();
  std::int64_t deadline = monotonic_ns() + scheduled_period;
  bool scheduled_paused = paused_.load();
  while (!stop_requested_.load(std::memory_order_relaxed)) {
    // Sleep in slices so stop() and resume() are answered promptly even when
    // the deadline is far (long period, or the slow poll while paused).
    for (;;) {
      const std::int64_t now = monotonic_ns();
      if (now >= deadline || stop_requested_.load(std::memory_order_relaxed)) break;
      if (paused_.load(std::memory_order_relaxed) != scheduled_paused) {
        deadline = now;  // pause/resume changed the schedule: re-plan from now
        break;
      }
      if (const std::int64_t p = period_ns_.load(std::memory_order_relaxed);
          !scheduled_paused && p != scheduled_period) {
        // A new period applies to the tick being waited for, not only the one after it.
        deadline += p - scheduled_period;
        scheduled_period = p;
        continue;
      }
      // While paused, answer resume() faster: the slow wrap-safe poll may be far away.
      sleep_until(std::min(deadline, now + (scheduled_paused ? paused_sleep_slice_ns
                                                             : max_sleep_slice_ns)));
    }
    if (stop_requested_.load(std::memory_order_relaxed)) break;

    const std::int64_t woke = monotonic_ns();
    const std::int64_t late = woke - deadline;
    if (late > max_lateness_ns_.load(std::memory_order_relaxed)) {
      max_lateness_ns_.store(late, std::memory_order_relaxed);
    }
    const bool paused = paused_.load(std::memory_order_relaxed);
    scheduled_paused = paused;
    {
      std::lock_guard<std::mutex> lock(read_mutex_);
      sample_locked(!paused, nullptr, nullptr);
    }
    if (!paused) samples_.fetch_add(1, std::memory_order_relaxed);

    // While paused, keep reading just often enough that no counter wrap can
    // hide between two reads, but push nothing.
    scheduled_period = period_ns_.load();
    const std::int64_t period =
        paused ? std::min(max_safe_period_ns_, paused_poll_cap_ns) : scheduled_period;
    deadline += period;
    const std::int64_t done = monotonic_ns();
    if (done > deadline) {
      // Missed one or more ticks: count them and rejoin the grid rather than
      // firing a burst of catch-up samples.
      const std::int64_t behind = (done - deadline) / period + 1;
      if (!paused) missed_.fetch_add(static_cast<std::uint64_t>(behind), std::memory_order_relaxed);
      deadline += behind * period;
    }
  }
  cpu_ns_at_stop_.fetch_add(thread_cpu_ns(::pthread_self()), std::memory_order_relaxed);
}

std::vector<DomainStatus> Sampler::status() const {
  std::vector<DomainStatus> all;
  for (const auto& s : sources_) {
    auto st = s->status();
    all.insert(all.end(), st.begin(), st.end());
  }
  return all;
}

SamplerStats Sampler::stats() const {
  SamplerStats st;
  st.samples = samples_.load();
  st.manual_samples = manual_samples_.load();
  st.missed_deadlines = missed_.load();
  st.failed_reads = failed_.load();
  st.max_lateness_ns = max_lateness_ns_.load();
  st.paused = paused_.load();
  {
    std::lock_guard<std::mutex> lock(control_mutex_);
    st.running = running_.load();
    st.thread_cpu_ns = cpu_ns_at_stop_.load() + (st.running ? thread_cpu_ns(thread_) : 0);
  }
  {
    std::lock_guard<std::mutex> lock(read_mutex_);
    st.failed_reads_per_channel = failed_per_channel_;
  }
  return st;
}

std::vector<std::string> Sampler::warnings() const {
  std::vector<std::string> out;
  const std::int64_t period = period_ns_.load();
  if (period > max_safe_period_ns_) {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "sampling period %.6g ms is longer than %.6g ms, the longest that sees every "
                  "wrap of the RAPL energy counters: energy may be under-counted; lower "
                  "GREENML_INTERVAL_MS",
                  static_cast<double>(period) * 1e-6,
                  static_cast<double>(max_safe_period_ns_) * 1e-6);
    out.emplace_back(buf);
  }
  return out;
}

void Sampler::fork_prepare_() {
  control_mutex_.lock();
  read_mutex_.lock();
}

void Sampler::fork_parent_() {
  read_mutex_.unlock();
  control_mutex_.unlock();
}

void Sampler::fork_child_() {
  // fork() copies only the calling thread: the sampler thread does not exist
  // here, so forget it without joining; start() begins a fresh one.
  running_.store(false);
  stop_requested_.store(false);
  thread_ = pthread_t{};
  read_mutex_.unlock();
  control_mutex_.unlock();
}

}  // namespace greenml
