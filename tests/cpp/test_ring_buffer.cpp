// SampleRing: ordering, overwrite-oldest accounting, and torn-read freedom
// under one producer and several concurrent readers.
#include <doctest.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "greenml/sample_ring.hpp"

using greenml::SampleRing;

namespace {

// Sanitizers slow atomics 5-50x; the stress test scales its sample count down
// so the three CI configurations stay within a few seconds each.
#if defined(__SANITIZE_THREAD__)
constexpr bool kUnderSanitizer = true;
constexpr std::uint64_t kStressSamples = 200'000;
#elif defined(__SANITIZE_ADDRESS__)
constexpr bool kUnderSanitizer = true;
constexpr std::uint64_t kStressSamples = 1'000'000;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kUnderSanitizer = true;
constexpr std::uint64_t kStressSamples = 200'000;
#elif __has_feature(address_sanitizer)
constexpr bool kUnderSanitizer = true;
constexpr std::uint64_t kStressSamples = 1'000'000;
#else
constexpr bool kUnderSanitizer = false;
constexpr std::uint64_t kStressSamples = 2'000'000;
#endif
#else
constexpr bool kUnderSanitizer = false;
constexpr std::uint64_t kStressSamples = 2'000'000;
#endif

// Every word of sample g is a function of g, so a reader can tell a torn copy
// (words from two different samples) from a consistent one.
constexpr std::uint64_t value_of(std::uint64_t g, std::size_t k) { return g * 31 + k; }

void push_sample(SampleRing& ring, std::uint64_t g) {
  std::vector<std::uint64_t> v(ring.width());
  for (std::size_t k = 0; k < v.size(); ++k) v[k] = value_of(g, k);
  ring.push(static_cast<std::int64_t>(g), v.data());
}

// Reads everything from `from` in one go (max_samples = capacity).
struct Drained {
  SampleRing::ReadResult result;
  std::vector<std::int64_t> t;
  std::vector<std::uint64_t> v;
};

Drained read_all(const SampleRing& ring, std::uint64_t from, std::size_t max_samples) {
  Drained d;
  d.t.resize(max_samples);
  d.v.resize(max_samples * ring.width());
  d.result = ring.read(from, max_samples, d.t.data(), d.v.data());
  d.t.resize(d.result.copied);
  d.v.resize(d.result.copied * ring.width());
  return d;
}

bool sample_is_consistent(std::int64_t t, const std::uint64_t* v, std::size_t width) {
  if (t < 0) return false;
  const auto g = static_cast<std::uint64_t>(t);
  for (std::size_t k = 0; k < width; ++k)
    if (v[k] != value_of(g, k)) return false;
  return true;
}

}  // namespace

TEST_CASE("ring: capacity rounds up to a power of two and zero is rejected") {
  CHECK(SampleRing(1, 1).capacity() == 1);
  CHECK(SampleRing(2, 1).capacity() == 2);
  CHECK(SampleRing(3, 1).capacity() == 4);
  CHECK(SampleRing(64, 1).capacity() == 64);
  CHECK(SampleRing(65, 1).capacity() == 128);
  CHECK(SampleRing(1000, 3).capacity() == 1024);
  CHECK(SampleRing(1000, 3).width() == 3);
  CHECK_THROWS_AS(SampleRing(0, 1), std::invalid_argument);
}

TEST_CASE("ring: an empty ring reads nothing and has no latest sample") {
  SampleRing ring(8, 2);
  CHECK(ring.head() == 0);
  const Drained d = read_all(ring, 0, 8);
  CHECK(d.result.copied == 0);
  CHECK(d.result.lost == 0);
  CHECK(d.result.next == 0);
  std::int64_t t = -7;
  std::uint64_t v[2] = {9, 9};
  CHECK_FALSE(ring.latest(&t, v));
}

TEST_CASE("ring: single thread reads back in push order with every word intact") {
  SampleRing ring(8, 3);
  for (std::uint64_t g = 0; g < 5; ++g) push_sample(ring, g);
  CHECK(ring.head() == 5);

  const Drained d = read_all(ring, 0, 8);
  REQUIRE(d.result.copied == 5);
  CHECK(d.result.lost == 0);
  CHECK(d.result.next == 5);
  for (std::size_t i = 0; i < 5; ++i) {
    CHECK(d.t[i] == static_cast<std::int64_t>(i));
    for (std::size_t k = 0; k < 3; ++k) CHECK(d.v[i * 3 + k] == value_of(i, k));
  }
}

TEST_CASE("ring: max_samples limits one read and next resumes exactly there") {
  SampleRing ring(16, 1);
  for (std::uint64_t g = 0; g < 10; ++g) push_sample(ring, g);

  const Drained first = read_all(ring, 0, 4);
  CHECK(first.result.copied == 4);
  CHECK(first.result.next == 4);
  CHECK(first.t.back() == 3);

  const Drained second = read_all(ring, first.result.next, 4);
  CHECK(second.result.copied == 4);
  CHECK(second.t.front() == 4);
  CHECK(second.result.next == 8);

  const Drained third = read_all(ring, second.result.next, 4);
  CHECK(third.result.copied == 2);
  CHECK(third.result.next == 10);
  CHECK(third.result.lost == 0);
}

TEST_CASE("ring: the slot index wraps many times while a reader keeps up without loss") {
  // Interleaved push/read, deterministic: a reader that keeps up loses nothing
  // however often the slot index wraps around the capacity.
  SampleRing ring(4, 2);
  std::uint64_t next = 0;
  std::uint64_t expected = 0;
  for (std::uint64_t round = 0; round < 50; ++round) {
    for (int i = 0; i < 3; ++i) push_sample(ring, round * 3 + i);
    const Drained d = read_all(ring, next, 4);
    CHECK(d.result.lost == 0);
    CHECK(d.result.copied == 3);
    for (std::size_t i = 0; i < d.result.copied; ++i) {
      CHECK(d.t[i] == static_cast<std::int64_t>(expected));
      CHECK(sample_is_consistent(d.t[i], &d.v[i * 2], 2));
      ++expected;
    }
    next = d.result.next;
  }
  CHECK(next == 150);
  CHECK(ring.head() == 150);
}

TEST_CASE("ring: overwrite-oldest counts exactly the overwritten samples as lost") {
  constexpr std::size_t cap = 8;
  for (std::uint64_t k : {1u, 3u, 8u, 21u}) {
    CAPTURE(k);
    SampleRing ring(cap, 2);
    for (std::uint64_t g = 0; g < cap + k; ++g) push_sample(ring, g);

    const Drained d = read_all(ring, 0, 64);
    CHECK(d.result.lost == k);
    REQUIRE(d.result.copied == cap);
    CHECK(d.t.front() == static_cast<std::int64_t>(k));  // oldest retained sample
    CHECK(d.t.back() == static_cast<std::int64_t>(cap + k - 1));
    CHECK(d.result.next == cap + k);
    for (std::size_t i = 0; i < d.result.copied; ++i) CHECK(sample_is_consistent(d.t[i], &d.v[i * 2], 2));
  }
}

TEST_CASE("ring: a partly lapped cursor loses only the overwritten part") {
  SampleRing ring(8, 1);
  for (std::uint64_t g = 0; g < 20; ++g) push_sample(ring, g);
  // Retained: [12, 20). A cursor at 10 lost 10 and 11.
  const Drained d = read_all(ring, 10, 64);
  CHECK(d.result.lost == 2);
  CHECK(d.result.copied == 8);
  CHECK(d.t.front() == 12);
  // A cursor inside the retained window loses nothing.
  const Drained e = read_all(ring, 15, 64);
  CHECK(e.result.lost == 0);
  CHECK(e.result.copied == 5);
  CHECK(e.t.front() == 15);
}

TEST_CASE("ring: a reader starting beyond head restarts at head") {
  SampleRing ring(8, 1);
  for (std::uint64_t g = 0; g < 3; ++g) push_sample(ring, g);
  const Drained d = read_all(ring, 1000, 8);
  CHECK(d.result.copied == 0);
  CHECK(d.result.lost == 0);
  CHECK(d.result.next == 3);
  // From there it sees exactly what is pushed next.
  push_sample(ring, 3);
  const Drained e = read_all(ring, d.result.next, 8);
  CHECK(e.result.copied == 1);
  CHECK(e.t.front() == 3);
}

TEST_CASE("ring: latest() returns the newest sample") {
  SampleRing ring(4, 2);
  std::int64_t t = -1;
  std::uint64_t v[2] = {0, 0};
  for (std::uint64_t g = 0; g < 11; ++g) {
    push_sample(ring, g);
    REQUIRE(ring.latest(&t, v));
    CHECK(t == static_cast<std::int64_t>(g));
    CHECK(v[0] == value_of(g, 0));
    CHECK(v[1] == value_of(g, 1));
  }
}

namespace {

struct ReaderOutcome {
  std::uint64_t copied = 0;
  std::uint64_t lost = 0;
  std::uint64_t next = 0;
  std::uint64_t torn = 0;            // copies whose words disagree with their index
  std::uint64_t out_of_order = 0;    // indices not strictly increasing
  std::uint64_t outside_window = 0;  // index not in [from, next) of its read
  std::uint64_t accounting_errors = 0;  // copied + lost != next - from for one read
};

// One producer pushes `total` samples; `readers` threads poll with small
// max_samples until they have accounted for every sample. Only invariants
// that hold under any interleaving are asserted: no torn copies, strictly
// increasing indices, and copied + lost == samples consumed.
std::vector<ReaderOutcome> stress(std::size_t capacity, std::size_t width, std::uint64_t total,
                                  int readers, std::size_t max_samples) {
  SampleRing ring(capacity, width);
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<ReaderOutcome> outcomes(static_cast<std::size_t>(readers));
  std::vector<std::thread> threads;

  for (int r = 0; r < readers; ++r) {
    threads.emplace_back([&, r] {
      ReaderOutcome& o = outcomes[static_cast<std::size_t>(r)];
      std::vector<std::int64_t> t(max_samples);
      std::vector<std::uint64_t> v(max_samples * width);
      std::int64_t last = -1;
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      while (o.next < total) {
        const std::uint64_t from = o.next;
        const auto res = ring.read(from, max_samples, t.data(), v.data());
        if (res.copied + res.lost != res.next - from) ++o.accounting_errors;
        for (std::size_t i = 0; i < res.copied; ++i) {
          if (!sample_is_consistent(t[i], &v[i * width], width)) ++o.torn;
          if (t[i] <= last) ++o.out_of_order;
          const auto g = static_cast<std::uint64_t>(t[i]);
          if (g < from || g >= res.next) ++o.outside_window;
          last = t[i];
        }
        o.copied += res.copied;
        o.lost += res.lost;
        o.next = res.next;
        if (res.copied == 0 && res.lost == 0) std::this_thread::yield();
      }
    });
  }

  while (ready.load() < readers) std::this_thread::yield();
  go.store(true, std::memory_order_release);
  std::vector<std::uint64_t> row(width);
  for (std::uint64_t g = 0; g < total; ++g) {
    for (std::size_t k = 0; k < width; ++k) row[k] = value_of(g, k);
    ring.push(static_cast<std::int64_t>(g), row.data());
  }
  for (auto& th : threads) th.join();
  CHECK(ring.head() == total);
  return outcomes;
}

void check_outcomes(const std::vector<ReaderOutcome>& outcomes, std::uint64_t total) {
  for (std::size_t r = 0; r < outcomes.size(); ++r) {
    const ReaderOutcome& o = outcomes[r];
    CAPTURE(r);
    CHECK(o.torn == 0);
    CHECK(o.out_of_order == 0);
    CHECK(o.outside_window == 0);
    CHECK(o.accounting_errors == 0);
    CHECK(o.next == total);
    CHECK(o.copied + o.lost == total);
    CHECK(o.copied > 0);
  }
}

}  // namespace

TEST_CASE("ring: concurrent readers on a small ring never see a torn sample") {
  // 64 slots: readers are lapped constantly, which is the point: every lap is
  // a chance to copy a slot mid-write. Only the invariants are asserted.
  const std::uint64_t total = kStressSamples;
  const auto outcomes = stress(64, 5, total, 3, 7);
  check_outcomes(outcomes, total);
  std::uint64_t lost = 0;
  for (const auto& o : outcomes) lost += o.lost;
  MESSAGE("small ring: " << total << " samples x " << outcomes.size() << " readers, lost " << lost
                         << std::string(kUnderSanitizer ? " (sanitizer build)" : ""));
}

TEST_CASE("ring: concurrent readers on a large ring account for every sample") {
  const std::uint64_t total = kStressSamples / 2;
  const auto outcomes = stress(1 << 16, 3, total, 4, 32);
  check_outcomes(outcomes, total);
  std::uint64_t lost = 0;
  for (const auto& o : outcomes) lost += o.lost;
  MESSAGE("large ring: " << total << " samples x " << outcomes.size() << " readers, lost " << lost);
}

TEST_CASE("ring: latest() is never torn while the producer runs") {
  SampleRing ring(4, 4);  // tiny: the newest slot is overwritten often
  const std::uint64_t total = kStressSamples / 4;
  std::atomic<bool> done{false};
  std::uint64_t torn = 0, seen = 0, backwards = 0;
  std::thread reader([&] {
    std::int64_t t = -1, last = -1;
    std::uint64_t v[4];
    while (!done.load(std::memory_order_acquire)) {
      if (!ring.latest(&t, v)) continue;
      ++seen;
      if (!sample_is_consistent(t, v, 4)) ++torn;
      if (t < last) ++backwards;
      last = t;
    }
  });
  std::uint64_t row[4];
  for (std::uint64_t g = 0; g < total; ++g) {
    for (std::size_t k = 0; k < 4; ++k) row[k] = value_of(g, k);
    ring.push(static_cast<std::int64_t>(g), row);
  }
  done.store(true, std::memory_order_release);
  reader.join();
  CHECK(torn == 0);
  CHECK(backwards == 0);
  std::int64_t t = -1;
  std::uint64_t v[4];
  REQUIRE(ring.latest(&t, v));
  CHECK(t == static_cast<std::int64_t>(total - 1));
  MESSAGE("latest(): " << seen << " successful copies");
}

TEST_CASE("ring: latest() reports the index of the sample it copied, even when lapped") {
  // A ring of two slots and a producer that never stops: latest() is lapped
  // between reading head and copying. The index it returns must be the
  // copied sample's (t carries the index here), never a neighbour's.
  SampleRing ring(2, 1);
  const std::uint64_t total = kStressSamples;
  std::atomic<bool> done{false};
  std::uint64_t mismatched = 0, seen = 0;
  std::thread reader([&] {
    std::int64_t t = -1;
    std::uint64_t v[1];
    std::uint64_t index = 0;
    while (!done.load(std::memory_order_acquire)) {
      if (!ring.latest(&t, v, &index)) continue;
      ++seen;
      if (static_cast<std::uint64_t>(t) != index) ++mismatched;
    }
  });
  for (std::uint64_t g = 0; g < total; ++g) push_sample(ring, g);
  done.store(true, std::memory_order_release);
  reader.join();
  CHECK(mismatched == 0);
  CHECK(seen > 0);
  MESSAGE("latest() under lapping: " << seen << " copies, " << mismatched << " mismatched");
}

TEST_CASE("ring: publication is visible to ThreadSanitizer (a weakened ordering is a reported race)") {
  // The producer writes a plain (non-atomic) side array for sample g before
  // pushing g; readers read it only for samples the ring says are complete
  // (index below head, sequence 2g+2). The ring's release stores (payload,
  // final sequence, head) and the reader's acquire loads are all that order
  // the two: with them made relaxed, TSan reports a data race on `side` here
  // (checked). The ring is large enough never to be lapped, so a correct ring
  // has no race here.
  constexpr std::size_t kCapacity = 1 << 12;
  constexpr std::uint64_t kTotal = kCapacity;
  SampleRing ring(kCapacity, 1);
  std::vector<std::uint64_t> side(kTotal, 0);  // plain memory, on purpose
  std::atomic<bool> done{false};
  std::uint64_t checked = 0, wrong = 0;
  std::thread reader([&] {
    std::uint64_t next = 0;
    std::vector<std::int64_t> t(64);
    std::vector<std::uint64_t> v(64), idx(64);
    while (next < kTotal) {
      const auto res = ring.read(next, 64, t.data(), v.data(), idx.data());
      for (std::size_t i = 0; i < res.copied; ++i) {
        if (side[idx[i]] != value_of(idx[i], 0)) ++wrong;
        ++checked;
      }
      next = res.next;
      if (res.copied == 0) std::this_thread::yield();
    }
    done.store(true);
  });
  for (std::uint64_t g = 0; g < kTotal; ++g) {
    side[g] = value_of(g, 0);
    push_sample(ring, g);
  }
  reader.join();
  CHECK(done.load());
  CHECK(checked == kTotal);
  CHECK(wrong == 0);
}
