// Sampler: unwrap and integration (with a fake clock and a fake source whose
// readings the test sets), thread lifecycle, pacing, pause and statistics.
#include <doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "greenml/sampler.hpp"

using greenml::ChannelInfo;
using greenml::ChannelKind;
using greenml::DomainStatus;
using greenml::Sampler;
using greenml::Source;
using namespace std::chrono_literals;

namespace {

#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif
#else
constexpr bool kThreadSanitizer = false;
#endif

// modulus: the counter shows [0, modulus - 1] (max_energy_range_uj = modulus - 1); 0 = never wraps.
ChannelInfo counter_channel(const std::string& domain, std::uint64_t modulus) {
  ChannelInfo ch;
  ch.domain = domain;
  ch.source = "fake";
  ch.kind = ChannelKind::counter;
  ch.unit = "uj";
  ch.to_si = 1e-6;
  ch.max_raw = modulus == 0 ? 0 : modulus - 1;
  return ch;
}

ChannelInfo power_channel(const std::string& domain) {
  ChannelInfo ch;
  ch.domain = domain;
  ch.source = "fake";
  ch.kind = ChannelKind::power;
  ch.unit = "mw";
  ch.to_si = 1e-3;
  return ch;
}

// A source whose readings, failures and read latency the test controls, and
// which lets the test wait for the sampler to have read it.
class FakeSource final : public Source {
 public:
  explicit FakeSource(std::vector<ChannelInfo> channels, std::int64_t max_safe_period_ns = INT64_MAX)
      : channels_(std::move(channels)),
        values_(channels_.size()),
        failing_(channels_.size()),
        max_safe_period_ns_(max_safe_period_ns) {}

  [[nodiscard]] const std::vector<ChannelInfo>& channels() const override { return channels_; }
  [[nodiscard]] std::vector<DomainStatus> status() const override {
    std::vector<DomainStatus> st;
    for (const auto& ch : channels_) st.push_back({ch.domain, ch.source, true, true, ""});
    return st;
  }
  void read(std::uint64_t* raw, bool* ok) noexcept override {
    // A slow sensor (e.g. NVML on a busy GPU) is the behaviour under test
    // here, not a synchronisation device.
    const auto delay = read_delay_us.load();
    if (delay > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay));
    for (std::size_t i = 0; i < channels_.size(); ++i) {
      ok[i] = !failing_[i].load();
      if (ok[i]) raw[i] = values_[i].load();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++reads_;
    }
    cv_.notify_all();
  }
  [[nodiscard]] std::string name() const override { return "fake"; }
  [[nodiscard]] std::int64_t max_safe_period_ns() const noexcept override { return max_safe_period_ns_; }
  [[nodiscard]] bool cheap_edge_read() const noexcept override { return cheap; }
  bool cheap = false;
  // The parent's sampler thread may hold this source's lock at fork (it takes it after every
  // read): the child, where that thread does not exist, gets fresh ones.
  void after_fork_in_child() noexcept override {
    new (&mutex_) std::mutex();
    new (&cv_) std::condition_variable();
  }

  void set(std::size_t i, std::uint64_t v) { values_[i].store(v); }
  void set_failing(std::size_t i, bool failing) { failing_[i].store(failing); }

  [[nodiscard]] std::uint64_t reads() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return reads_;
  }
  // True once at least n reads have completed; false after the timeout.
  bool wait_for_reads(std::uint64_t n, std::chrono::milliseconds timeout = 5s) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return reads_ >= n; });
  }

  std::atomic<std::int64_t> read_delay_us{0};

 private:
  std::vector<ChannelInfo> channels_;
  std::vector<std::atomic<std::uint64_t>> values_;
  std::vector<std::atomic<bool>> failing_;
  std::int64_t max_safe_period_ns_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::uint64_t reads_ = 0;
};

// A clock the test moves by hand.
struct FakeClock {
  std::shared_ptr<std::atomic<std::int64_t>> now = std::make_shared<std::atomic<std::int64_t>>(0);
  [[nodiscard]] greenml::ClockFn fn() const {
    auto n = now;
    return [n] { return n->load(); };
  }
  void set(std::int64_t t_ns) const { now->store(t_ns); }
};

greenml::SamplerOptions opts(std::int64_t period_ns, std::size_t capacity,
                             greenml::ClockFn clock = {}, std::int64_t idle_period_ns = 0) {
  greenml::SamplerOptions o;
  o.period_ns = period_ns;
  o.capacity = capacity;
  o.clock = std::move(clock);
  o.idle_period_ns = idle_period_ns;
  return o;
}

struct Row {
  std::uint64_t index = 0;
  std::int64_t t = 0;
  std::vector<std::uint64_t> v;
};

Row read_now(Sampler& s) {
  Row r;
  r.v.assign(s.layout().width, 0xdeadbeef);
  r.index = s.read_now(&r.t, r.v.data());
  return r;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TEST_CASE("sampler: the column layout puts energies first and raw powers after") {
  auto src = std::make_shared<FakeSource>(
      std::vector<ChannelInfo>{power_channel("gpu:0"), counter_channel("package:0", 1000), power_channel("gpu:1")});
  Sampler s({src}, opts(1'000'000, 16));
  const auto& l = s.layout();
  CHECK(l.width == 6);  // 3 energies, 2 powers, 1 source time
  CHECK(l.power_column == std::vector<int>{3, -1, 4});
  CHECK(l.time_column == std::vector<int>{5, 5, 5});
  REQUIRE(l.energy_to_joules.size() == 3);
  CHECK(l.energy_to_joules[0] == doctest::Approx(1e-9));  // integral kept in nJ
  CHECK(l.energy_to_joules[1] == doctest::Approx(1e-6));  // the counter's own unit
  CHECK(l.energy_to_joules[2] == doctest::Approx(1e-9));
  REQUIRE(l.power_to_watts.size() == 3);
  CHECK(l.power_to_watts[0] == doctest::Approx(1e-3));
  CHECK(l.power_to_watts[1] == 0.0);
  CHECK(l.power_to_watts[2] == doctest::Approx(1e-3));
  CHECK(s.ring().width() == 6);
  CHECK(s.ring().capacity() == 16);
  CHECK(s.channels().size() == 3);
  CHECK(s.channels()[1].domain == "package:0");
}

TEST_CASE("sampler: read_now unwraps a counter across several wraps and integrates power") {
  FakeClock clock;
  auto src = std::make_shared<FakeSource>(
      std::vector<ChannelInfo>{counter_channel("package:0", 1000), power_channel("gpu:0")});
  src->set(0, 900);
  src->set(1, 1000);  // 1 W
  clock.set(0);
  Sampler s({src}, opts(1'000'000, 64, clock.fn()));  // baseline read at t = 0

  // 900 -> 100 wraps (+200), -> 950 (+850), -> 50 wraps again (+100).
  // Power 1 W -> 3 W over 1 s: trapezoid 2 J; 3 W for 1 s: 3 J; 3 W -> 0 over
  // 0.5 s: 0.75 J.
  clock.set(1'000'000'000);
  src->set(0, 100);
  src->set(1, 3000);
  Row r0 = read_now(s);
  CHECK(r0.index == 0);
  CHECK(r0.t == 1'000'000'000);
  CHECK(r0.v[0] == 200);
  CHECK(r0.v[1] == 2'000'000'000);
  CHECK(r0.v[2] == 3000);

  clock.set(2'000'000'000);
  src->set(0, 950);
  Row r1 = read_now(s);
  CHECK(r1.index == 1);
  CHECK(r1.v[0] == 1050);
  CHECK(r1.v[1] == 5'000'000'000);
  CHECK(r1.v[2] == 3000);

  clock.set(2'500'000'000);
  src->set(0, 50);
  src->set(1, 0);
  Row r2 = read_now(s);
  CHECK(r2.index == 2);
  CHECK(r2.v[0] == 1150);
  CHECK(r2.v[1] == 5'750'000'000);
  CHECK(r2.v[2] == 0);

  // read_now pushed each sample: later readers see the same rows.
  CHECK(s.ring().head() == 3);
  const std::size_t w = s.layout().width;  // counter, integral, power, source time
  REQUIRE(w == 4);
  std::int64_t t[3];
  std::uint64_t v[12];
  const auto res = s.ring().read(0, 3, t, v);
  REQUIRE(res.copied == 3);
  CHECK(t[0] == 1'000'000'000);
  CHECK(t[2] == 2'500'000'000);
  CHECK(v[0] == 200);
  CHECK(v[w] == 1050);
  CHECK(v[2 * w] == 1150);
  CHECK(v[2 * w + 1] == 5'750'000'000);
  CHECK(v[2 * w + 3] == 2'500'000'000);  // the source's own read time

  const auto st = s.stats();
  CHECK(st.manual_samples == 3);
  CHECK(st.samples == 0);  // no thread was started
  CHECK(st.failed_reads == 0);
}

TEST_CASE("sampler: a counter that never wraps counts its new value after a reset, and says so") {
  FakeClock clock;
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 0)});
  src->set(0, 5000);
  Sampler s({src}, opts(1'000'000, 8, clock.fn()));
  clock.set(10'000'000);
  src->set(0, 7000);
  CHECK(read_now(s).v[0] == 2000);
  clock.set(20'000'000);
  src->set(0, 10);  // reset: restarted from 0, 10 counted since
  CHECK(read_now(s).v[0] == 2010);
  clock.set(30'000'000);
  src->set(0, 60);
  CHECK(read_now(s).v[0] == 2060);
  std::uint64_t next = 0;
  const auto ev = s.events(0, &next);
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].kind == greenml::EventKind::counter_reset);
  CHECK(ev[0].t_ns == 20'000'000);
  CHECK(ev[0].since_ns == 10'000'000);
  CHECK(next == 1);
  CHECK(s.events(next, &next).empty());
}

TEST_CASE("sampler: a wrapping counter that jumps back further than power explains is a reset") {
  // 50 W for 10 ms is 0.5 J; RAPL's range is 262 kJ. Going from 200 J down to
  // 0.3 J cannot be a wrap (that would be 262 kJ in 10 ms): it is a reset.
  FakeClock clock;
  ChannelInfo ch = counter_channel("package:0", 262143328851ULL);
  ch.max_power_w = 200.0;
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{ch});
  src->set(0, 200'000'000);
  Sampler s({src}, opts(1'000'000, 8, clock.fn()));
  clock.set(10'000'000);
  src->set(0, 200'500'000);  // +0.5 J
  CHECK(read_now(s).v[0] == 500'000);
  clock.set(20'000'000);
  src->set(0, 300'000);  // reset, then 0.3 J counted since
  CHECK(read_now(s).v[0] == 800'000);
  clock.set(30'000'000);
  src->set(0, 800'000);
  CHECK(read_now(s).v[0] == 1'300'000);
  std::uint64_t next = 0;
  const auto ev = s.events(0, &next);
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].kind == greenml::EventKind::counter_reset);
  CHECK(ev[0].channel == 0);
  // A genuine wrap near the top of the range stays a wrap, with no event.
  clock.set(40'000'000);
  src->set(0, 262143328851ULL - 100'000);
  (void)read_now(s);  // an implausible forward jump: a reset, counted as 0
  clock.set(50'000'000);
  src->set(0, 200'000);  // wrapped: +0.3 J
  const auto r = read_now(s);
  CHECK(r.v[0] == 1'600'000);
  CHECK(s.events(0, &next).size() == 2);
}

TEST_CASE("sampler: reads further apart than the counter takes to wrap are flagged") {
  // A 1000 uJ counter at up to 1 W wraps every 1 ms: a 5 ms gap may hide wraps.
  FakeClock clock;
  ChannelInfo ch = counter_channel("package:0", 1000);
  ch.max_power_w = 1.0;
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{ch});
  src->set(0, 100);
  Sampler s({src}, opts(1'000'000, 8, clock.fn()));
  CHECK(s.max_safe_period_ns() == 500'000);  // half the wrap time
  clock.set(400'000);
  src->set(0, 400);
  (void)read_now(s);
  std::uint64_t next = 0;
  CHECK(s.events(0, &next).empty());
  clock.set(5'400'000);
  src->set(0, 600);
  (void)read_now(s);
  const auto ev = s.events(0, &next);
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].kind == greenml::EventKind::possibly_missed_wraps);
  CHECK(ev[0].since_ns == 400'000);
}

TEST_CASE("sampler: a channel that stops and resumes reading records both, with times") {
  FakeClock clock;
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 0)});
  Sampler s({src}, opts(1'000'000, 8, clock.fn()));
  clock.set(1'000);
  src->set_failing(0, true);
  (void)read_now(s);
  clock.set(2'000);
  (void)read_now(s);  // still failing: no second event
  clock.set(3'000);
  src->set_failing(0, false);
  (void)read_now(s);
  std::uint64_t next = 0;
  const auto ev = s.events(0, &next);
  REQUIRE(ev.size() == 2);
  CHECK(ev[0].kind == greenml::EventKind::read_failed);
  CHECK(ev[0].t_ns == 1'000);
  CHECK(ev[0].since_ns == 0);
  CHECK(ev[1].kind == greenml::EventKind::read_recovered);
  CHECK(ev[1].t_ns == 3'000);
}

TEST_CASE("sampler: channels of several sources sit side by side in source order") {
  FakeClock clock;
  auto a = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 1000)});
  auto b = std::make_shared<FakeSource>(
      std::vector<ChannelInfo>{counter_channel("dram:0", 1000), power_channel("gpu:0")});
  a->set(0, 10);
  b->set(0, 20);
  b->set(1, 2000);
  Sampler s({a, b}, opts(1'000'000, 8, clock.fn()));
  REQUIRE(s.channels().size() == 3);
  CHECK(s.channels()[0].domain == "package:0");
  CHECK(s.channels()[1].domain == "dram:0");
  CHECK(s.channels()[2].domain == "gpu:0");
  CHECK(s.status().size() == 3);

  a->set(0, 15);
  b->set(0, 27);
  clock.set(500'000'000);
  const Row r = read_now(s);
  CHECK(r.v[0] == 5);
  CHECK(r.v[1] == 7);
  CHECK(r.v[2] == 1'000'000'000);  // 2 W for 0.5 s, in nJ
  CHECK(r.v[3] == 2000);
}

TEST_CASE("sampler: failed reads are counted per channel and do not corrupt the unwrap") {
  FakeClock clock;
  auto src = std::make_shared<FakeSource>(
      std::vector<ChannelInfo>{counter_channel("package:0", 1000), counter_channel("dram:0", 1000)});
  src->set(0, 100);
  src->set(1, 100);
  Sampler s({src}, opts(1'000'000, 8, clock.fn()));

  src->set_failing(0, true);
  src->set(0, 999);  // not seen
  src->set(1, 150);
  Row r = read_now(s);
  CHECK(r.v[0] == 0);  // nothing new known
  CHECK(r.v[1] == 50);
  src->set(0, 300);
  r = read_now(s);
  CHECK(r.v[0] == 0);

  auto st = s.stats();
  CHECK(st.failed_reads == 2);
  CHECK(st.failed_reads_per_channel == std::vector<std::uint64_t>{2, 0});

  // Back: the delta is taken from the last good reading (100 -> 300).
  src->set_failing(0, false);
  r = read_now(s);
  CHECK(r.v[0] == 200);
  st = s.stats();
  CHECK(st.failed_reads == 2);
  CHECK(st.failed_reads_per_channel == std::vector<std::uint64_t>{2, 0});

  // The other channel's failures land in its own slot.
  src->set_failing(1, true);
  r = read_now(s);
  CHECK(r.v[1] == 50);
  st = s.stats();
  CHECK(st.failed_reads == 3);
  CHECK(st.failed_reads_per_channel == std::vector<std::uint64_t>{2, 1});
}

TEST_CASE("sampler: invalid arguments are refused before anything is allocated") {
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 1000)});
  CHECK_THROWS_AS(Sampler({src}, opts(0, 8)), std::invalid_argument);
  CHECK_THROWS_AS(Sampler({src}, opts(-5, 8)), std::invalid_argument);
  CHECK_THROWS_AS(Sampler({src}, opts(49'999, 8)), std::invalid_argument);
  CHECK_THROWS_AS(Sampler({src}, opts(INT64_MAX, 8)), std::invalid_argument);
  CHECK_THROWS_AS(Sampler({src}, opts(1'000'000, 0)), std::invalid_argument);
  CHECK_THROWS_AS(Sampler({src}, opts(1'000'000, 1)), std::invalid_argument);
  CHECK_THROWS_AS(Sampler({src}, opts(1'000'000, std::size_t{1} << 61)), std::invalid_argument);
  CHECK_THROWS_AS(Sampler({src}, opts(1'000'000, SIZE_MAX)), std::invalid_argument);
  CHECK_THROWS_AS(Sampler({src}, opts(1'000'000, 8, {}, 10)), std::invalid_argument);
  CHECK_THROWS_AS(Sampler({src, nullptr}, opts(1'000'000, 8)), std::invalid_argument);
  try {
    Sampler bad({src}, opts(1'000'000, 0));
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("capacity=0") != std::string::npos);
  }
  Sampler s({src}, opts(1'000'000, 8));
  CHECK_THROWS_AS(s.set_period_ns(0), std::invalid_argument);
  CHECK_THROWS_AS(s.set_period_ns(INT64_MAX), std::invalid_argument);
  CHECK(s.period_ns() == 1'000'000);
  s.set_period_ns(2'000'000);
  CHECK(s.period_ns() == 2'000'000);
}

TEST_CASE("sampler: start, stop, pause and resume are idempotent") {
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 1000)});
  Sampler s({src}, opts(1'000'000, 1024));
  CHECK_FALSE(s.stats().running);

  s.start();
  s.start();
  CHECK(s.stats().running);
  REQUIRE(src->wait_for_reads(src->reads() + 3));

  s.pause();
  s.pause();
  CHECK(s.stats().paused);
  CHECK(s.stats().running);
  s.resume();
  s.resume();
  CHECK_FALSE(s.stats().paused);

  s.stop();
  s.stop();
  CHECK_FALSE(s.stats().running);
  const auto samples = s.stats().samples;
  CHECK(samples > 0);
  CHECK(s.stats().thread_cpu_ns > 0);

  // Restartable after a stop; the sample count carries on.
  s.start();
  REQUIRE(src->wait_for_reads(src->reads() + 3));
  s.stop();
  CHECK(s.stats().samples > samples);
  CHECK_FALSE(s.stats().running);
}

TEST_CASE("sampler: stop() is signalled, not waited out, with a long period or idling") {
  // The thread sleeps on a condition variable that stop() signals: no sleep
  // slices. Bound generous for loaded CI machines; typical is well under 1 ms.
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 1000)});
  for (const std::int64_t idle : {std::int64_t{0}, std::int64_t{3'000'000'000'000}}) {
    Sampler s({src}, opts(3'000'000'000'000, 16, {}, idle));  // 50 minutes
    s.start();
    std::this_thread::sleep_for(5ms);  // let it reach its wait (not a synchronisation)
    const auto t0 = std::chrono::steady_clock::now();
    s.stop();
    const double took = seconds_since(t0);
    CHECK(took < 0.05);
    MESSAGE("stop() took " << took * 1e6 << " us (idle period " << idle << " ns)");
  }
}

TEST_CASE("sampler: idle, it reads at the idle period; a touch brings an immediate read and full rate") {
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 1000)});
  Sampler s({src}, opts(1'000'000, 4096, {}, 400'000'000));  // 1 ms full, 400 ms idle
  s.start();
  REQUIRE(src->wait_for_reads(1));
  const auto idle_reads = src->reads();
  // At full rate 100 reads take 100 ms; idling they would take 40 s.
  CHECK_FALSE(src->wait_for_reads(idle_reads + 3, 150ms));
  CHECK_FALSE(s.stats().full_rate);

  const auto t0 = std::chrono::steady_clock::now();
  s.touch(200'000'000);  // full rate for 200 ms
  CHECK(src->wait_for_reads(src->reads() + 1, 1s));
  const double first = seconds_since(t0);
  CHECK(first < 0.1);  // not left to the 400 ms idle deadline
  CHECK(s.stats().full_rate);
  CHECK(src->wait_for_reads(src->reads() + 50, 2s));
  // The hold ends: back to idle reads.
  std::this_thread::sleep_for(300ms);  // past the 200 ms hold (a duration under test)
  const auto after = src->reads();
  CHECK_FALSE(src->wait_for_reads(after + 3, 150ms));
  CHECK_FALSE(s.stats().full_rate);

  // Demand holds full rate for as long as it lasts.
  s.add_demand(1);
  CHECK(src->wait_for_reads(src->reads() + 50, 2s));
  CHECK(s.stats().full_rate);
  s.add_demand(-1);
  s.stop();
  MESSAGE("first read after touch(): " << first * 1e6 << " us");
}

TEST_CASE("sampler: a period slower than the wrap-safe period still reads every wrap-safe period") {
  // Must be read every 2 ms; the user asked for 1 s. Wraps between user ticks
  // are all seen: 900 -> 100 -> 800 -> 300 is +200 +700 +500.
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 1000)},
                                          2'000'000);
  src->set(0, 900);
  Sampler s({src}, opts(1'000'000'000, 1024));
  s.start();
  REQUIRE(src->wait_for_reads(src->reads() + 2, 500ms));
  for (std::uint64_t v : {100u, 800u, 300u}) {
    src->set(0, v);
    REQUIRE(src->wait_for_reads(src->reads() + 2, 500ms));  // ~4 ms, never 1 s
  }
  s.stop();
  CHECK(read_now(s).v[0] == 1400);
}

TEST_CASE("sampler: after a late read the thread rejoins its grid without a burst of samples") {
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 1000)});
  Sampler s({src}, opts(2'000'000, 4096));  // 2 ms
  s.start();
  REQUIRE(src->wait_for_reads(src->reads() + 3));
  src->read_delay_us = 30'000;  // one read takes 30 ms: 15 ticks missed
  REQUIRE(src->wait_for_reads(src->reads() + 1));
  src->read_delay_us = 0;
  const auto from = s.ring().head();
  REQUIRE(src->wait_for_reads(src->reads() + 12, 2s));
  s.stop();
  std::vector<std::int64_t> t(12);
  std::vector<std::uint64_t> v(12 * s.layout().width);
  REQUIRE(s.ring().read(from, 12, t.data(), v.data()).copied == 12);
  std::int64_t min_gap = INT64_MAX;
  for (std::size_t i = 1; i < t.size(); ++i) min_gap = std::min(min_gap, t[i] - t[i - 1]);
  // Catch-up would fire the missed ticks back to back (gaps of microseconds).
  CHECK(min_gap > 1'000'000);
  CHECK(s.stats().missed_deadlines >= 10);
  MESSAGE("smallest gap after a 30 ms read: " << min_gap / 1000 << " us");
}

TEST_CASE("sampler: fork() does not wait for a source read in progress") {
  if (kThreadSanitizer) {
    MESSAGE("TSan does not support threads after a multi-threaded fork: skipped");
    return;
  }
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 1000)});
  Sampler s({src}, opts(1'000'000, 1024));
  s.start();
  REQUIRE(src->wait_for_reads(src->reads() + 2));
  src->read_delay_us = 1'500'000;  // a hung GPU read
  std::this_thread::sleep_for(20ms);  // the thread is now inside that read
  std::fflush(nullptr);
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // The child can read at once: its locks are fresh, the hung read is the parent's.
    src->read_delay_us = 0;
    const Row r = read_now(s);
    ::_exit(r.v.empty() ? 1 : 0);
  }
  const double took = seconds_since(t0);
  src->read_delay_us = 0;
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(took < 0.5);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  s.stop();
  MESSAGE("fork() during a 1.5 s read took " << took * 1e3 << " ms");
}

TEST_CASE("sampler: a destroyed sampler stops its thread") {
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 1000)});
  {
    Sampler s({src}, opts(1'000'000, 16));
    s.start();
    REQUIRE(src->wait_for_reads(src->reads() + 2));
  }
  // After the destructor no thread reads the source any more. Joined threads
  // make this exact: the count cannot move again.
  const auto reads = src->reads();
  CHECK_FALSE(src->wait_for_reads(reads + 1, 30ms));
}

TEST_CASE("sampler: the thread pushes about one sample per period") {
  auto src = std::make_shared<FakeSource>(
      std::vector<ChannelInfo>{counter_channel("package:0", 1000), power_channel("gpu:0")});
  src->set(1, 1000);
  Sampler s({src}, opts(1'000'000, 4096));  // 1 ms
  const auto t0 = std::chrono::steady_clock::now();
  s.start();
  std::this_thread::sleep_for(200ms);  // measuring a rate: the sleep is the window
  const auto st = s.stats();
  const double elapsed = seconds_since(t0);
  s.stop();

  CHECK(st.samples > 50);
  // An absolute deadline grid never fires more than once per period.
  CHECK(static_cast<double>(st.samples) <= elapsed / 1e-3 + 2);
  CHECK(st.manual_samples == 0);
  const auto final_samples = s.stats().samples;
  CHECK(s.ring().head() == final_samples);
  MESSAGE(st.samples << " samples in " << elapsed * 1e3 << " ms at a 1 ms period, max lateness "
                     << st.max_lateness_ns / 1000 << " us, missed " << st.missed_deadlines);

  // Timestamps are ordered and the power integral never goes backwards.
  std::vector<std::int64_t> t(final_samples);
  std::vector<std::uint64_t> v(final_samples * s.layout().width);
  const auto res = s.ring().read(0, final_samples, t.data(), v.data());
  REQUIRE(res.copied == final_samples);
  std::size_t disorder = 0;
  for (std::size_t i = 1; i < res.copied; ++i) {
    if (t[i] < t[i - 1]) ++disorder;
    const std::size_t w = s.layout().width;
    if (v[i * w + 1] < v[(i - 1) * w + 1]) ++disorder;
    if (v[i * w + 2] != 1000) ++disorder;
    if (static_cast<std::int64_t>(v[i * w + 3]) < static_cast<std::int64_t>(v[(i - 1) * w + 3])) ++disorder;
  }
  CHECK(disorder == 0);
}

TEST_CASE("sampler: paused, it pushes nothing but keeps reading often enough to see wraps") {
  // The counter wraps twice while paused: 900 -> 100 (+200) -> 800 (+700)
  // -> 300 (+500) = 1400. Read only before and after, it would look like a
  // single wrap (900 -> 300 = +400).
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 1000)},
                                          2'000'000);  // must be read every 2 ms
  src->set(0, 900);
  Sampler s({src}, opts(1'000'000, 1024));
  CHECK(s.max_safe_period_ns() == 2'000'000);
  s.start();
  REQUIRE(src->wait_for_reads(src->reads() + 2));
  s.pause();
  // Two reads after pause(): the second one started after it, and the
  // thread finished pushing for the first one before starting the second.
  REQUIRE(src->wait_for_reads(src->reads() + 2));
  const auto head_paused = s.ring().head();
  const auto samples_paused = s.stats().samples;

  for (std::uint64_t v : {100u, 800u, 300u}) {
    src->set(0, v);
    // +2: the first read completing may have started before the set. At a
    // 2 ms safe period two reads take ~4 ms; 500 ms means "not polling at
    // some slower, fixed paused rate".
    REQUIRE(src->wait_for_reads(src->reads() + 2, 500ms));
  }
  CHECK(s.ring().head() == head_paused);
  CHECK(s.stats().samples == samples_paused);

  std::uint64_t before_pause = 0;
  {
    std::int64_t t;
    std::vector<std::uint64_t> v(s.layout().width);
    REQUIRE(s.ring().read(head_paused - 1, 1, &t, v.data()).copied == 1);
    before_pause = v[0];
  }
  s.stop();
  src->set(0, 300);
  const Row r = read_now(s);
  CHECK(r.v[0] - before_pause == 1400);
}

TEST_CASE("sampler: resume() brings samples back within a few periods") {
  // While paused the thread only polls at the wrap-safe period (200 ms here);
  // resuming must not wait for that slow poll to come round.
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 1000)},
                                          200'000'000);
  Sampler s({src}, opts(1'000'000, 1024));  // 1 ms
  s.start();
  REQUIRE(src->wait_for_reads(src->reads() + 2));
  s.pause();
  // Two reads after pause(): the second began after it, so the thread is now
  // in its slow paused poll.
  REQUIRE(src->wait_for_reads(src->reads() + 2));
  const auto samples = s.stats().samples;
  const auto t0 = std::chrono::steady_clock::now();
  s.resume();
  const bool back = src->wait_for_reads(src->reads() + 5, 2s);
  const double took = seconds_since(t0);
  s.stop();
  CHECK(back);
  CHECK(s.stats().samples > samples);
  CHECK(took < 0.15);  // a slow poll left to run out would take ~200 ms
  MESSAGE("5 reads after resume() took " << took * 1e3 << " ms at a 1 ms period");
}

TEST_CASE("sampler: the safe period is the smallest of the sources' and the counters' own") {
  auto fast = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 1000)},
                                           5'000'000);
  auto slow = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("dram:0", 1000)},
                                           50'000'000);
  auto unbounded = std::make_shared<FakeSource>(std::vector<ChannelInfo>{power_channel("gpu:0")});
  // The counters state no maximum power, so only the sources' bounds apply.
  Sampler ok({fast, slow, unbounded}, opts(1'000'000, 8));
  CHECK(ok.max_safe_period_ns() == 5'000'000);
  // A stated maximum power bounds the period too: 1000 uJ at 0.01 W wraps in 100 ms.
  ChannelInfo stated = counter_channel("psys", 1000);
  stated.max_power_w = 0.01;
  auto tight = std::make_shared<FakeSource>(std::vector<ChannelInfo>{stated});
  Sampler bounded({tight}, opts(1'000'000, 8));
  CHECK(bounded.max_safe_period_ns() == 50'000'000);

  Sampler power_only({unbounded}, opts(10'000'000'000, 8));
  CHECK(power_only.max_safe_period_ns() == INT64_MAX);
}

TEST_CASE("sampler: read_now from several threads while the thread samples keeps the ring ordered") {
  auto src = std::make_shared<FakeSource>(
      std::vector<ChannelInfo>{counter_channel("package:0", 1000), power_channel("gpu:0")});
  src->set(1, 500);
  Sampler s({src}, opts(200'000, 1 << 14));  // 0.2 ms
  std::atomic<bool> done{false};
  // A counter that keeps moving (in steps well under half the range, so the
  // unwrap stays unambiguous whenever a read sees consecutive values).
  std::thread mover([&] {
    std::uint64_t v = 0;
    while (!done.load()) {
      v = (v + 7) % 1000;
      src->set(0, v);
      std::this_thread::yield();
    }
  });
  s.start();
  constexpr int kCalls = 300;
  std::vector<std::vector<std::uint64_t>> seen(3);
  std::vector<std::thread> callers;
  for (int c = 0; c < 3; ++c) {
    callers.emplace_back([&, c] {
      for (int i = 0; i < kCalls; ++i) seen[static_cast<std::size_t>(c)].push_back(read_now(s).index);
    });
  }
  for (auto& th : callers) th.join();
  s.stop();
  done = true;
  mover.join();

  // Every call got its own ring index, increasing per caller.
  std::size_t disorder = 0;
  for (const auto& idx : seen)
    for (std::size_t i = 1; i < idx.size(); ++i)
      if (idx[i] <= idx[i - 1]) ++disorder;
  CHECK(disorder == 0);
  const auto st = s.stats();
  CHECK(st.manual_samples == 3 * kCalls);
  CHECK(s.ring().head() == st.samples + st.manual_samples);

  // The ring as a whole is one ordered history.
  const auto n = std::min<std::uint64_t>(s.ring().head(), s.ring().capacity());
  std::vector<std::int64_t> t(n);
  const std::size_t w = s.layout().width;
  std::vector<std::uint64_t> v(n * w);
  const auto res = s.ring().read(s.ring().head() - n, n, t.data(), v.data());
  REQUIRE(res.copied == n);
  for (std::size_t i = 1; i < n; ++i) {
    if (t[i] < t[i - 1]) ++disorder;
    if (v[i * w] < v[(i - 1) * w]) ++disorder;          // cumulative counter
    if (v[i * w + 1] < v[(i - 1) * w + 1]) ++disorder;  // power integral
  }
  CHECK(disorder == 0);
}

TEST_CASE("sampler: start() in a forked child runs a fresh thread") {
  if (kThreadSanitizer) {
    MESSAGE("TSan does not support starting threads after a multi-threaded fork: skipped");
    return;
  }
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 1000)});
  Sampler s({src}, opts(1'000'000, 1024));
  s.start();
  REQUIRE(src->wait_for_reads(src->reads() + 2));

  std::fflush(nullptr);  // or the child could write buffered output again
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Child: only this thread was copied. Report through the exit code.
    int rc = 0;
    if (s.stats().running) rc = 1;
    if (rc == 0) {
      s.start();
      if (!s.stats().running) rc = 2;
      else if (!src->wait_for_reads(src->reads() + 3, 5s)) rc = 3;
      s.stop();
    }
    ::_exit(rc);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  // The parent's thread is unaffected.
  CHECK(s.stats().running);
  REQUIRE(src->wait_for_reads(src->reads() + 2));
  s.stop();
}

TEST_CASE("sampler: the run-long history thins itself and stays within its rows for a long run") {
  // A simulated week at 1 kHz through a 64-row history: rows never exceed 64,
  // the spacing doubles as it thins, and the oldest row is still near the start.
  FakeClock clock;
  auto src = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 0)});
  greenml::SamplerOptions o = opts(1'000'000, 16, clock.fn());
  o.history_period_ns = 1'000'000'000;  // 1 s
  o.history_rows = 64;
  Sampler s({src}, o);
  constexpr std::int64_t kStep = 60'000'000'000;  // one sample a minute of fake time
  constexpr int kSamples = 7 * 24 * 60;           // a week
  for (int k = 1; k <= kSamples; ++k) {
    clock.set(k * kStep);
    src->set(0, static_cast<std::uint64_t>(k) * 1000);
    (void)read_now(s);
    CHECK(s.history_size() <= 64);
  }
  const auto all = s.history(0, INT64_MAX);
  REQUIRE(all.t.size() >= 32);
  CHECK(all.t.front() == kStep);                    // the start of the week is still covered
  // and its end, to within the current row spacing
  CHECK(all.t.back() >= kSamples * kStep - s.history_period_ns());
  for (std::size_t i = 1; i < all.t.size(); ++i) CHECK(all.t[i] > all.t[i - 1]);
  CHECK(s.history_period_ns() > 1'000'000'000);
  // Each row keeps its sample's values (energy, then the source time) and ring index.
  const std::size_t w = s.layout().width;
  REQUIRE(all.values.size() == all.t.size() * w);
  for (std::size_t r = 0; r < all.t.size(); ++r) {
    const auto k = static_cast<std::uint64_t>(all.t[r] / kStep);
    CHECK(all.values[r * w] == k * 1000);
    CHECK(all.values[r * w + 1] == static_cast<std::uint64_t>(all.t[r]));
    CHECK(all.index[r] == k - 1);
  }
  // A range query returns its rows plus one on each side.
  const auto mid = s.history(all.t[10], all.t[12]);
  REQUIRE(mid.t.size() == 5);
  CHECK(mid.t.front() == all.t[9]);
  CHECK(mid.t.back() == all.t[13]);
}

TEST_CASE("sampler: an edge reads only the cheap sources; the others keep their value and time") {
  FakeClock clock;
  auto rapl = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("package:0", 0)});
  rapl->cheap = true;
  auto gpu = std::make_shared<FakeSource>(std::vector<ChannelInfo>{counter_channel("gpu:0", 0)});
  Sampler s({gpu, rapl}, opts(1'000'000, 16, clock.fn()));
  REQUIRE(s.has_cheap_edge_sources());
  clock.set(1'000);
  gpu->set(0, 500);
  rapl->set(0, 70);
  const Row full = read_now(s);  // both read at t = 1000
  const auto gpu_reads = gpu->reads();
  clock.set(2'000);
  gpu->set(0, 900);  // not read at the edge
  rapl->set(0, 80);
  std::int64_t t_edge = 0;
  const auto idx = s.edge_read(&t_edge);
  CHECK(idx == full.index + 1);
  CHECK(t_edge == 2'000);
  CHECK(gpu->reads() == gpu_reads);  // the slow source was not touched
  std::int64_t t = 0;
  std::vector<std::uint64_t> v(s.layout().width);
  REQUIRE(s.ring().read(idx, 1, &t, v.data()).copied == 1);
  const auto& l = s.layout();
  CHECK(v[0] == 500);  // gpu: its last value ...
  CHECK(static_cast<std::int64_t>(v[static_cast<std::size_t>(l.time_column[0])]) == 1'000);  // ... and time
  CHECK(v[1] == 80);  // rapl: read at the edge
  CHECK(static_cast<std::int64_t>(v[static_cast<std::size_t>(l.time_column[1])]) == 2'000);
  // Without a cheap source an edge reads nothing and reports the clock.
  Sampler plain({gpu}, opts(1'000'000, 16, clock.fn()));
  CHECK_FALSE(plain.has_cheap_edge_sources());
  clock.set(3'000);
  CHECK(plain.edge_read(&t_edge) == 0);
  CHECK(t_edge == 3'000);
  CHECK(plain.ring().head() == 0);
}
