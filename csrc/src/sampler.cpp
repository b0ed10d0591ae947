#include "greenml/sampler.hpp"

#include <sys/prctl.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <new>
#include <stdexcept>

#include "greenml/counter.hpp"

namespace greenml {

std::int64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

namespace {

// While paused, counters are still read this often at least (and more often
// when a counter could wrap sooner).
constexpr std::int64_t paused_read_cap_ns = 1'000'000'000;
// A channel whose source states no maximum power is assumed to draw at most
// this; only used to tell resets from wraps and gains.
constexpr double default_max_power_w = 2000.0;
// Margin on the maximum power for the plausibility check, and the time added
// to the elapsed time: a counter may publish energy that accrued up to one
// update interval (GPUs: up to ~100 ms) before the previous read.
constexpr double plausible_power_margin = 1.5;
constexpr double plausible_slack_s = 0.25;

// CPU-time clock ids of threads are negative numbers: "none" is a sentinel.
constexpr std::int64_t no_clock = INT64_MIN;

std::int64_t cpu_clock_ns(std::int64_t clock_id) noexcept {
  if (clock_id == no_clock) return 0;
  timespec ts{};
  if (::clock_gettime(static_cast<clockid_t>(clock_id), &ts) != 0) return 0;
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
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

ColumnLayout make_layout(const std::vector<ChannelInfo>& channels,
                         const std::vector<std::size_t>& channel_source, std::size_t sources) {
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
  for (std::size_t i = 0; i < c; ++i) {
    l.time_column.push_back(static_cast<int>(next_power + channel_source[i]));
  }
  l.width = next_power + sources;
  return l;
}

std::vector<ChannelInfo> gather_channels(const std::vector<std::shared_ptr<Source>>& sources,
                                         std::vector<std::size_t>& offsets,
                                         std::vector<std::size_t>& channel_source) {
  std::vector<ChannelInfo> all;
  for (std::size_t s = 0; s < sources.size(); ++s) {
    if (!sources[s]) throw std::invalid_argument("sources: a source must not be None");
    offsets.push_back(all.size());
    const auto& ch = sources[s]->channels();
    all.insert(all.end(), ch.begin(), ch.end());
    channel_source.insert(channel_source.end(), ch.size(), s);
  }
  return all;
}

void check_period(const char* name, std::int64_t period_ns) {
  if (period_ns < Sampler::min_period_ns || period_ns > Sampler::max_period_ns) {
    throw std::invalid_argument(std::string(name) + "=" + std::to_string(period_ns) +
                                " is out of range: give a period between 50000 ns (20 kHz) and "
                                "3600000000000 ns (1 hour)");
  }
}

// The ring's capacity, checked before anything is allocated.
std::size_t checked_capacity(const SamplerOptions& o, std::size_t width) {
  check_period("period_ns", o.period_ns);
  if (o.idle_period_ns != 0) check_period("idle_period_ns", o.idle_period_ns);
  if (o.history_period_ns != 0) check_period("history_period_ns", o.history_period_ns);
  if (o.history_rows < 2 || o.history_rows > (std::size_t{1} << 22)) {
    throw std::invalid_argument("history_rows=" + std::to_string(o.history_rows) +
                                " is out of range: give between 2 and 4194304 rows");
  }
  if (o.capacity < 2 || o.capacity > Sampler::max_capacity) {
    throw std::invalid_argument("capacity=" + std::to_string(o.capacity) +
                                " is out of range: give between 2 and 67108864 samples");
  }
  const double bytes = static_cast<double>(o.capacity) * 2.0 * static_cast<double>(width + 2) * 8.0;
  if (bytes > static_cast<double>(Sampler::max_ring_bytes)) {
    throw std::invalid_argument("capacity=" + std::to_string(o.capacity) + " with " +
                                std::to_string(width) +
                                " values per sample needs more than 4 GiB: give fewer samples");
  }
  return o.capacity;
}

double channel_max_power_w(const ChannelInfo& ch) {
  return ch.max_power_w > 0 ? ch.max_power_w : default_max_power_w;
}

}  // namespace

Sampler::Sampler(std::vector<std::shared_ptr<Source>> sources, SamplerOptions options)
    : sources_(std::move(sources)),
      channels_(gather_channels(sources_, source_offset_, channel_source_)),
      layout_(make_layout(channels_, channel_source_, sources_.size())),
      ring_(checked_capacity(options, layout_.width), layout_.width),
      clock_(options.clock ? std::move(options.clock) : ClockFn(monotonic_ns)),
      idle_period_ns_(options.idle_period_ns),
      history_period_ns_(options.history_period_ns),
      history_rows_(options.history_rows),
      period_ns_(options.period_ns) {
  for (const auto& s : sources_) {
    max_safe_period_ns_ = std::min(max_safe_period_ns_, s->max_safe_period_ns());
    source_cheap_.push_back(s->cheap_edge_read());
    has_cheap_ = has_cheap_ || source_cheap_.back();
  }
  for (const auto& ch : channels_) {
    // Only a stated maximum power bounds the period: a guessed one would make
    // a small counter look as if it wrapped every microsecond.
    if (ch.kind != ChannelKind::counter || ch.max_power_w <= 0) continue;
    max_safe_period_ns_ =
        std::min(max_safe_period_ns_, max_period_for_range_ns(ch.max_raw, ch.to_si, ch.max_power_w));
  }
  const std::size_t c = channels_.size();
  raw_.assign(c, 0);
  ok_ = std::make_unique<bool[]>(c == 0 ? 1 : c);
  source_t_.assign(sources_.size(), 0);
  last_raw_.assign(c, 0);
  last_t_.assign(c, 0);
  have_last_.assign(c, false);
  failing_.assign(c, false);
  cumulative_.assign(c, 0);
  integral_nj_.assign(c, 0.0);
  last_power_raw_.assign(c, 0);
  row_.assign(layout_.width, 0);
  failed_per_channel_ = std::make_unique<std::atomic<std::uint64_t>[]>(c == 0 ? 1 : c);
  for (std::size_t i = 0; i < c; ++i) failed_per_channel_[i].store(0, std::memory_order_relaxed);
  {
    // Baseline read: cumulative energies count from the sampler's creation.
    std::lock_guard<std::mutex> lock(io_mutex_);
    sample(false, nullptr, nullptr);
  }
  register_sampler(this);
}

Sampler::~Sampler() {
  stop();
  unregister_sampler(this);
}

void Sampler::record_event(std::int64_t t, std::int64_t since, std::size_t channel, EventKind kind) {
  SamplerEvent e;
  e.t_ns = t;
  e.since_ns = since;
  e.channel = static_cast<std::uint32_t>(channel);
  e.kind = kind;
  if (events_.size() < max_events) {
    events_.push_back(e);
  } else {
    events_[events_total_ % max_events] = e;
  }
  ++events_total_;
}

void Sampler::update_channel(std::size_t i, std::int64_t t) {
  const ChannelInfo& ch = channels_[i];
  if (!ok_[i]) {
    failed_per_channel_[i].fetch_add(1, std::memory_order_relaxed);
    failed_.fetch_add(1, std::memory_order_relaxed);
    if (!failing_[i] && have_last_[i]) record_event(t, last_t_[i], i, EventKind::read_failed);
    failing_[i] = true;
    return;
  }
  if (failing_[i]) {
    failing_[i] = false;
    record_event(t, last_t_[i], i, EventKind::read_recovered);
  }
  if (ch.kind == ChannelKind::counter) {
    if (have_last_[i]) {
      const double elapsed_s = static_cast<double>(std::max<std::int64_t>(0, t - last_t_[i])) * 1e-9;
      const double max_power_w = channel_max_power_w(ch);
      const std::uint64_t max_delta = saturate_u64(
          (elapsed_s + plausible_slack_s) * max_power_w * plausible_power_margin / ch.to_si);
      const CounterStep step = counter_step(last_raw_[i], raw_[i], ch.max_raw, max_delta);
      cumulative_[i] += step.delta;
      if (step.kind == CounterStepKind::reset) {
        record_event(t, last_t_[i], i, EventKind::counter_reset);
      } else if (ch.max_raw != 0 && ch.max_power_w > 0 &&
                 elapsed_s > (static_cast<double>(ch.max_raw) + 1.0) * ch.to_si / ch.max_power_w) {
        record_event(t, last_t_[i], i, EventKind::possibly_missed_wraps);
      }
    }
    last_raw_[i] = raw_[i];
  } else {
    if (have_last_[i] && t > last_t_[i]) {
      // Trapezoid between this channel's last good reading and this one; a
      // gap of failed reads is bridged linearly rather than dropped.
      const double mean_raw =
          0.5 * (static_cast<double>(last_power_raw_[i]) + static_cast<double>(raw_[i]));
      integral_nj_[i] += mean_raw * ch.to_si * static_cast<double>(t - last_t_[i]);
    }
    last_power_raw_[i] = raw_[i];
  }
  last_t_[i] = t;
  have_last_[i] = true;
}

std::uint64_t Sampler::sample(bool push, std::int64_t* t_out, std::uint64_t* v_out,
                              bool cheap_only) {
  // Each source gets the midpoint of its own read as its time. At an edge only the cheap
  // sources are read; the others keep their last values and read times in the row.
  const std::int64_t before = clock_();
  std::int64_t t_prev = before;
  for (std::size_t s = 0; s < sources_.size(); ++s) {
    if (cheap_only && !source_cheap_[s]) continue;
    const std::size_t off = source_offset_[s];
    sources_[s]->read(raw_.data() + off, ok_.get() + off);
    const std::int64_t t_after = clock_();
    source_t_[s] = t_prev + (t_after - t_prev) / 2;
    t_prev = t_after;
  }
  const std::int64_t t = before + (t_prev - before) / 2;

  std::lock_guard<std::mutex> lock(state_mutex_);
  const std::size_t c = channels_.size();
  for (std::size_t i = 0; i < c; ++i) {
    if (cheap_only && !source_cheap_[channel_source_[i]]) continue;  // row_ keeps its last value
    update_channel(i, source_t_[channel_source_[i]]);
    if (channels_[i].kind == ChannelKind::counter) {
      row_[i] = cumulative_[i];
    } else {
      row_[i] = saturate_u64(std::floor(integral_nj_[i]));
      row_[static_cast<std::size_t>(layout_.power_column[i])] = last_power_raw_[i];
    }
  }
  const std::size_t time_base = layout_.width - sources_.size();
  for (std::size_t s = 0; s < sources_.size(); ++s) {
    if (cheap_only && !source_cheap_[s]) continue;
    row_[time_base + s] = static_cast<std::uint64_t>(source_t_[s]);
  }
  const std::uint64_t index = ring_.head();
  if (push) {
    ring_.push(t, row_.data());
    if (history_period_ns_ > 0 && t >= next_history_ns_) record_history(index, t);
  }
  if (t_out != nullptr) *t_out = t;
  if (v_out != nullptr) std::copy(row_.begin(), row_.end(), v_out);
  return index;
}

void Sampler::record_history(std::uint64_t index, std::int64_t t) {
  const std::size_t stride = layout_.width + 2;
  std::lock_guard<std::mutex> lock(history_mutex_);
  if (history_.size() / stride >= history_rows_) {
    // Full: keep every other row (always the oldest: the run's start stays covered) and
    // space new rows twice as far apart.
    const std::size_t rows = history_.size() / stride;
    std::size_t kept = 0;
    for (std::size_t r = 0; r < rows; r += 2, ++kept) {
      std::copy_n(history_.begin() + static_cast<std::ptrdiff_t>(r * stride), stride,
                  history_.begin() + static_cast<std::ptrdiff_t>(kept * stride));
    }
    history_.resize(kept * stride);
    history_period_ns_ *= 2;
  }
  history_.push_back(index);
  history_.push_back(static_cast<std::uint64_t>(t));
  history_.insert(history_.end(), row_.begin(), row_.end());
  next_history_ns_ = t + history_period_ns_;
}

HistoryRows Sampler::history(std::int64_t from_ns, std::int64_t to_ns) const {
  const std::size_t stride = layout_.width + 2;
  HistoryRows out;
  std::lock_guard<std::mutex> lock(history_mutex_);
  const std::size_t rows = history_.size() / stride;
  auto t_of = [&](std::size_t r) { return static_cast<std::int64_t>(history_[r * stride + 1]); };
  std::size_t first = 0;
  while (first < rows && t_of(first) < from_ns) ++first;
  if (first > 0) --first;  // one row before the range
  for (std::size_t r = first; r < rows; ++r) {
    out.index.push_back(history_[r * stride]);
    out.t.push_back(t_of(r));
    out.values.insert(out.values.end(), history_.begin() + static_cast<std::ptrdiff_t>(r * stride + 2),
                      history_.begin() + static_cast<std::ptrdiff_t>((r + 1) * stride));
    if (t_of(r) > to_ns) break;  // one row after the range
  }
  return out;
}

std::int64_t Sampler::history_period_ns() const {
  std::lock_guard<std::mutex> lock(history_mutex_);
  return history_period_ns_;
}

std::size_t Sampler::history_size() const {
  std::lock_guard<std::mutex> lock(history_mutex_);
  return history_.size() / (layout_.width + 2);
}

std::uint64_t Sampler::read_now(std::int64_t* t_out, std::uint64_t* v_out) {
  std::lock_guard<std::mutex> lock(io_mutex_);
  const std::uint64_t index = sample(true, t_out, v_out);
  manual_samples_.fetch_add(1, std::memory_order_relaxed);
  return index;
}

std::uint64_t Sampler::edge_read(std::int64_t* t_out) {
  if (!has_cheap_) {
    if (t_out != nullptr) *t_out = clock_();
    const std::uint64_t h = ring_.head();
    return h == 0 ? 0 : h - 1;
  }
  std::lock_guard<std::mutex> lock(io_mutex_);
  const std::uint64_t index = sample(true, nullptr, nullptr, true);
  if (t_out != nullptr) {
    for (std::size_t s = 0; s < sources_.size(); ++s) {
      if (source_cheap_[s]) {
        *t_out = source_t_[s];
        break;
      }
    }
  }
  manual_samples_.fetch_add(1, std::memory_order_relaxed);
  return index;
}

void Sampler::tick(bool push) {
  {
    std::lock_guard<std::mutex> lock(io_mutex_);
    sample(push, nullptr, nullptr);
  }
  reads_.fetch_add(1, std::memory_order_relaxed);
  if (push) samples_.fetch_add(1, std::memory_order_relaxed);
}

void Sampler::signal_thread() {
  {
    std::lock_guard<std::mutex> lock(wake_mutex_);
    ++generation_;
  }
  wake_cv_.notify_one();
}

void Sampler::start() {
  std::lock_guard<std::mutex> lock(control_mutex_);
  if (running_.load()) return;
  {
    std::lock_guard<std::mutex> wake(wake_mutex_);
    stop_requested_ = false;
    sample_now_ = false;
  }
  if (::pthread_create(&thread_, nullptr, &Sampler::thread_main, this) != 0) {
    throw std::runtime_error("could not start the sampler thread (pthread_create failed)");
  }
  running_.store(true);
}

void Sampler::stop() {
  std::lock_guard<std::mutex> lock(control_mutex_);
  if (!running_.load()) return;
  {
    std::lock_guard<std::mutex> wake(wake_mutex_);
    stop_requested_ = true;
    ++generation_;
  }
  wake_cv_.notify_one();
  ::pthread_join(thread_, nullptr);
  running_.store(false);
}

void Sampler::pause() {
  if (!paused_.exchange(true)) signal_thread();
}

void Sampler::resume() {
  if (paused_.exchange(false)) signal_thread();
}

void Sampler::set_period_ns(std::int64_t period_ns) {
  check_period("period_ns", period_ns);
  if (period_ns_.exchange(period_ns) != period_ns) signal_thread();
}

void Sampler::add_demand(int delta) noexcept {
  const int before = demand_.fetch_add(delta);
  if (before <= 0 && before + delta > 0 && idling_.load()) signal_thread();
}

void Sampler::touch(std::int64_t hold_ns) noexcept {
  const std::int64_t until = monotonic_ns() + std::max<std::int64_t>(hold_ns, 0);
  std::int64_t cur = full_rate_until_ns_.load();
  while (cur < until && !full_rate_until_ns_.compare_exchange_weak(cur, until)) {
  }
  // Pairs with current_mode(): the thread publishes idling_ before it re-reads
  // full_rate_until_ns_, so either it sees this touch or this sees it idling.
  if (idling_.load()) {
    {
      std::lock_guard<std::mutex> lock(wake_mutex_);
      sample_now_ = true;
      ++generation_;
    }
    wake_cv_.notify_one();
  }
}

Sampler::Mode Sampler::current_mode(std::int64_t now) noexcept {
  if (paused_.load()) {
    idling_.store(false);
    return Mode::paused;
  }
  if (idle_period_ns_ == 0 || demand_.load() > 0 || now < full_rate_until_ns_.load()) {
    idling_.store(false);
    return Mode::full;
  }
  idling_.store(true);
  if (monotonic_ns() < full_rate_until_ns_.load()) {  // a touch raced with us
    idling_.store(false);
    return Mode::full;
  }
  return Mode::idle;
}

std::int64_t Sampler::read_period(Mode mode) const noexcept {
  std::int64_t p = paused_read_cap_ns;
  if (mode == Mode::full) p = period_ns_.load();
  if (mode == Mode::idle) p = idle_period_ns_;
  // Never busy-loop, whatever a counter's range claims.
  return std::max(min_period_ns, std::min(p, max_safe_period_ns_));
}

void* Sampler::thread_main(void* self) {
  static_cast<Sampler*>(self)->run();
  return nullptr;
}

void Sampler::run() {
  clockid_t cid{};
  thread_clock_.store(::pthread_getcpuclockid(::pthread_self(), &cid) == 0 ? static_cast<std::int64_t>(cid)
                                                                          : no_clock);
  std::int64_t applied_slack = -1;
  std::unique_lock<std::mutex> lk(wake_mutex_);
  std::uint64_t seen = generation_;
  std::int64_t now = monotonic_ns();
  Mode mode = current_mode(now);
  // anchor: the deadline of the last tick (or when the plan last changed);
  // full-rate ticks land on anchor + k x period, with no catch-up bursts.
  std::int64_t anchor = now;
  std::int64_t period = read_period(mode);
  std::int64_t deadline = anchor + period;
  while (!stop_requested_) {
    // Wake-ups at kilohertz rates need a tight timer slack; idle ones may be
    // coalesced by the kernel with others (cheaper). Set on every change.
    const std::int64_t slack = mode == Mode::full ? std::clamp<std::int64_t>(period / 20, 1, 50'000)
                                                  : std::clamp<std::int64_t>(period / 20, 50'000, 50'000'000);
    if (slack != applied_slack) {
      ::prctl(PR_SET_TIMERSLACK, static_cast<unsigned long>(slack), 0, 0, 0);
      applied_slack = slack;
    }
    const auto until = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(deadline));
    wake_cv_.wait_until(lk, until, [&] { return stop_requested_ || generation_ != seen; });
    if (stop_requested_) break;
    bool sample_now = false;
    if (generation_ != seen) {
      seen = generation_;
      sample_now = sample_now_;
      sample_now_ = false;
    }
    now = monotonic_ns();
    if (!sample_now && now < deadline) {
      // pause, resume, a new period or new demand: re-plan from the last tick.
      mode = current_mode(now);
      period = read_period(mode);
      deadline = std::max(anchor + period, now);
      continue;
    }
    const bool on_grid = !sample_now && mode == Mode::full;
    if (on_grid && now - deadline > max_lateness_ns_.load(std::memory_order_relaxed)) {
      max_lateness_ns_.store(now - deadline, std::memory_order_relaxed);
    }
    lk.unlock();
    const Mode tick_mode = current_mode(now);
    tick(tick_mode != Mode::paused);
    lk.lock();

    const std::int64_t done = monotonic_ns();
    const Mode next_mode = current_mode(done);
    const std::int64_t next_period = read_period(next_mode);
    if (on_grid && next_mode == Mode::full && next_period == period) {
      anchor = deadline;
      deadline += period;
      if (done > deadline) {
        // Missed one or more ticks: count them and rejoin the grid rather
        // than firing a burst of catch-up samples.
        const std::int64_t behind = (done - deadline) / period + 1;
        missed_.fetch_add(static_cast<std::uint64_t>(behind), std::memory_order_relaxed);
        deadline += behind * period;
        anchor = deadline - period;
      }
    } else {
      anchor = done;
      deadline = done + next_period;
    }
    mode = next_mode;
    period = next_period;
  }
  idling_.store(false);
  const std::int64_t clock_id = thread_clock_.exchange(no_clock);
  cpu_ns_at_stop_.fetch_add(cpu_clock_ns(clock_id), std::memory_order_relaxed);
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
  // Lock-free: never waits for a source read in progress.
  SamplerStats st;
  st.samples = samples_.load();
  st.reads = reads_.load();
  st.manual_samples = manual_samples_.load();
  st.missed_deadlines = missed_.load();
  st.failed_reads = failed_.load();
  st.max_lateness_ns = max_lateness_ns_.load();
  st.paused = paused_.load();
  st.running = running_.load();
  st.full_rate = st.running && !st.paused && !idling_.load();
  st.thread_cpu_ns = cpu_ns_at_stop_.load() + cpu_clock_ns(thread_clock_.load());
  st.failed_reads_per_channel.resize(channels_.size());
  for (std::size_t i = 0; i < channels_.size(); ++i) {
    st.failed_reads_per_channel[i] = failed_per_channel_[i].load(std::memory_order_relaxed);
  }
  std::lock_guard<std::mutex> lock(state_mutex_);  // held only for in-memory updates
  st.events_dropped = events_total_ > max_events ? events_total_ - max_events : 0;
  return st;
}

std::vector<SamplerEvent> Sampler::events(std::uint64_t from, std::uint64_t* next_out) const {
  std::lock_guard<std::mutex> lock(state_mutex_);
  const std::uint64_t oldest = events_total_ > max_events ? events_total_ - max_events : 0;
  std::vector<SamplerEvent> out;
  for (std::uint64_t k = std::max(from, oldest); k < events_total_; ++k) {
    out.push_back(events_[k % max_events]);
  }
  if (next_out != nullptr) *next_out = events_total_;
  return out;
}

void Sampler::fork_prepare_() {
  // Only the state and history locks, never held across I/O: fork() never
  // waits for a source read in progress (a hung GPU cannot hang os.fork()).
  state_mutex_.lock();
  history_mutex_.lock();
}

void Sampler::fork_parent_() {
  history_mutex_.unlock();
  state_mutex_.unlock();
}

void Sampler::fork_child_() {
  // fork() copies only the calling thread. The sampler thread does not exist
  // here and may have held these locks mid-read: give the child fresh ones
  // (never destroying the copies, whose owner is gone) and forget the thread
  // without joining it; start() begins a fresh one.
  new (&io_mutex_) std::mutex();
  new (&wake_mutex_) std::mutex();
  new (&wake_cv_) std::condition_variable();
  new (&control_mutex_) std::mutex();
  history_mutex_.unlock();
  state_mutex_.unlock();
  stop_requested_ = false;
  sample_now_ = false;
  running_.store(false);
  idling_.store(false);
  thread_ = pthread_t{};
  thread_clock_.store(no_clock);
  for (const auto& s : sources_) s->after_fork_in_child();
}

}  // namespace greenml
