// SampleRing: lock-free, one producer, any number of readers, overwrite-oldest.
//
// Each slot carries a sequence number (a per-slot seqlock). Sample g lives in
// slot g % capacity; its sequence is 2g+1 while being written and 2g+2 once
// complete. Readers copy a slot and check the sequence before and after: a
// mismatch means the producer lapped them and the sample is counted as lost.
// The producer never waits for readers. Every payload word is an atomic
// (release stores, acquire loads), so a racing copy is never undefined
// behaviour, only discarded.
//
// "One producer" means one at a time: callers that push from several threads
// must serialise push() themselves (the sampler does, with its state lock,
// whose release/acquire orders one pusher's writes before the next one's).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>

namespace greenml {

inline constexpr std::size_t cache_line_bytes = 64;

class SampleRing {
 public:
  // capacity is rounded up to a power of two; width = values per sample.
  SampleRing(std::size_t capacity, std::size_t width) : width_(width) {
    if (capacity == 0 || capacity > max_capacity) {
      throw std::invalid_argument("ring capacity must be between 1 and 2^26 samples");
    }
    std::size_t cap = 1;
    while (cap < capacity) cap <<= 1;
    capacity_ = cap;
    mask_ = cap - 1;
    // Words per slot: sequence, timestamp, values; padded to whole cache lines
    // so the producer writing slot g does not invalidate the line a reader is
    // copying from slot g-1.
    const std::size_t words = 2 + width_;
    stride_ = (words + words_per_line - 1) / words_per_line * words_per_line;
    lines_ = std::make_unique<Line[]>(capacity_ * stride_ / words_per_line);
    for (std::size_t i = 0; i < capacity_; ++i) word(i, 0).store(0, std::memory_order_relaxed);
  }

  SampleRing(const SampleRing&) = delete;
  SampleRing& operator=(const SampleRing&) = delete;

  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] std::size_t width() const noexcept { return width_; }

  // Number of samples ever pushed; samples [head - capacity, head) may be read.
  [[nodiscard]] std::uint64_t head() const noexcept {
    // acquire: pairs with the release in push(), so every slot below head is
    // complete before a reader starts copying it.
    return head_.load(std::memory_order_acquire);
  }

  void push(std::int64_t t_ns, const std::uint64_t* values) noexcept {
    // Only the producer writes head_, so its own view can be relaxed.
    const std::uint64_t g = head_.load(std::memory_order_relaxed);
    const std::size_t slot = static_cast<std::size_t>(g & mask_);
    auto& seq = word(slot, 0);
    seq.store(2 * g + 1, std::memory_order_relaxed);
    // Each payload store is a release: the odd sequence above happens-before
    // it, so a reader whose acquire load sees a payload word of sample g also
    // sees the sequence move off its s1 when it re-checks. (Release stores and
    // acquire loads rather than bare fences: ThreadSanitizer models these.)
    word(slot, 1).store(static_cast<std::uint64_t>(t_ns), std::memory_order_release);
    for (std::size_t k = 0; k < width_; ++k)
      word(slot, 2 + k).store(values[k], std::memory_order_release);
    // release: the payload happens-before a reader's acquire load of 2g+2.
    seq.store(2 * g + 2, std::memory_order_release);
    // release: every slot below head is complete before a reader acquires head.
    head_.store(g + 1, std::memory_order_release);
  }

  struct ReadResult {
    std::uint64_t next = 0;    // index to pass as `from` next time
    std::uint64_t lost = 0;    // samples in [from, next) that were overwritten
    std::size_t copied = 0;    // samples written to the outputs
  };

  // Copies up to max_samples samples with index >= from, oldest first, into
  // t_out[copied] and v_out[copied * width] (and each sample's index into
  // idx_out[copied] when given). Never blocks the producer.
  ReadResult read(std::uint64_t from, std::size_t max_samples, std::int64_t* t_out,
                  std::uint64_t* v_out, std::uint64_t* idx_out = nullptr) const noexcept {
    ReadResult r;
    const std::uint64_t h = head();
    if (from > h) from = h;  // a cursor from the future (e.g. after a reset) restarts at head
    if (h - from > capacity_) {
      r.lost = (h - capacity_) - from;
      from = h - capacity_;
    }
    std::uint64_t g = from;
    for (; g < h && r.copied < max_samples; ++g) {
      const std::size_t slot = static_cast<std::size_t>(g & mask_);
      const auto& seq = word(slot, 0);
      // acquire: pairs with the producer's release store of 2g+2.
      const std::uint64_t s1 = seq.load(std::memory_order_acquire);
      if (s1 != 2 * g + 2) {  // already lapped (a larger sequence): lost
        ++r.lost;
        continue;
      }
      std::int64_t* t = t_out + r.copied;
      std::uint64_t* v = v_out + r.copied * width_;
      // acquire loads: each orders the re-check of seq below after it, and one
      // that reads a newer producer's word synchronises with that store.
      *t = static_cast<std::int64_t>(word(slot, 1).load(std::memory_order_acquire));
      for (std::size_t k = 0; k < width_; ++k) v[k] = word(slot, 2 + k).load(std::memory_order_acquire);
      if (seq.load(std::memory_order_relaxed) != s1) {
        ++r.lost;  // overwritten while copying: discard the torn copy
        continue;
      }
      if (idx_out != nullptr) idx_out[r.copied] = g;
      ++r.copied;
    }
    r.next = g;
    return r;
  }

  // Copies the newest complete sample and the index of the sample it copied;
  // false when the ring is empty (or a reader lapped eight times in a row).
  [[nodiscard]] bool latest(std::int64_t* t_out, std::uint64_t* v_out,
                            std::uint64_t* index_out = nullptr) const noexcept {
    for (int attempt = 0; attempt < 8; ++attempt) {
      const std::uint64_t h = head();
      if (h == 0) return false;
      std::uint64_t copied_index = 0;
      // read() may skip ahead when lapped; the index it reports is the truth.
      if (read(h - 1, 1, t_out, v_out, &copied_index).copied == 1) {
        if (index_out != nullptr) *index_out = copied_index;
        return true;
      }
    }
    return false;
  }

  // Largest capacity accepted: 2^26 samples (the caller bounds memory further).
  static constexpr std::size_t max_capacity = std::size_t{1} << 26;

 private:
  static constexpr std::size_t words_per_line = cache_line_bytes / sizeof(std::uint64_t);
  struct alignas(cache_line_bytes) Line {
    std::atomic<std::uint64_t> w[words_per_line];
  };
  static_assert(sizeof(Line) == cache_line_bytes, "a Line is exactly one cache line");
  static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "payload atomics must be lock-free");

  [[nodiscard]] std::atomic<std::uint64_t>& word(std::size_t slot, std::size_t k) const noexcept {
    const std::size_t idx = slot * stride_ + k;
    return lines_[idx / words_per_line].w[idx % words_per_line];
  }

  std::size_t width_;
  std::size_t capacity_ = 0;
  std::size_t mask_ = 0;
  std::size_t stride_ = 0;
  std::unique_ptr<Line[]> lines_;
  // Own cache line: readers poll head_ while the producer writes slots.
  alignas(cache_line_bytes) std::atomic<std::uint64_t> head_{0};
};

}  // namespace greenml
