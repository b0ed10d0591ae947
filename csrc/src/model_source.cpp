#include "greenml/model_source.hpp"

#include <time.h>

#include <cmath>
#include <cstring>
#include <utility>

namespace greenml {

namespace {

std::int64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// Joules as a raw microjoule counter value. The model's energies are
// non-negative and far below 2^53 uJ (285 years at 1 kW), so a double holds
// them exactly enough.
std::uint64_t to_uj(double joules) noexcept {
  if (!(joules > 0)) return 0;
  return static_cast<std::uint64_t>(std::llround(joules * 1e6));
}

bool finite_non_negative(double x) { return std::isfinite(x) && x >= 0; }

std::string_view first_line(std::string_view text) {
  const auto eol = text.find('\n');
  return eol == std::string_view::npos ? text : text.substr(0, eol);
}

}  // namespace

std::optional<std::uint64_t> parse_proc_stat_busy(std::string_view text) noexcept {
  // "cpu  user nice system idle iowait irq softirq steal guest guest_nice"
  if (text.size() < 4 || text.compare(0, 4, "cpu ") != 0) return std::nullopt;
  text.remove_prefix(4);
  std::uint64_t fields[7] = {};
  for (int i = 0; i < 7; ++i) {
    while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
    std::size_t n = 0;
    while (n < text.size() && text[n] >= '0' && text[n] <= '9') ++n;
    if (n == 0) {
      if (i >= 5) break;  // very old kernels have no irq/softirq fields: they count as 0
      return std::nullopt;
    }
    const auto v = parse_u64(text.substr(0, n));
    if (!v) return std::nullopt;
    fields[i] = *v;
    text.remove_prefix(n);
  }
  // idle (3) and iowait (4) are not busy; guest time is already inside user;
  // steal is time the hypervisor gave to another guest, not this machine's work.
  return fields[0] + fields[1] + fields[2] + fields[5] + fields[6];
}

std::optional<std::uint64_t> parse_cpu_stat_usage_usec(std::string_view text) noexcept {
  constexpr std::string_view key = "usage_usec ";
  while (!text.empty()) {
    const std::string_view line = first_line(text);
    if (line.size() > key.size() && line.compare(0, key.size(), key) == 0) {
      return parse_u64(line.substr(key.size()));
    }
    if (line.size() == text.size()) break;
    text.remove_prefix(line.size() + 1);
  }
  return std::nullopt;
}

ModelSource::ModelSource(ModelSpec spec, ClockFn clock)
    : spec_(std::move(spec)),
      clock_(clock ? std::move(clock) : ClockFn(monotonic_ns)),
      busy_file_(spec_.with_cpu ? OpenCounterFile(spec_.busy_path) : OpenCounterFile()) {
  t0_ns_ = clock_();
  if (spec_.with_cpu) add_cpu_channel();
  if (spec_.dram_w > 0 && std::isfinite(spec_.dram_w)) add_dram_channel();
}

void ModelSource::add_cpu_channel() {
  DomainStatus cpu{"cpu:estimated", "model", false, false, ""};
  const bool coefficients_ok =
      finite_non_negative(spec_.cpu_idle_w) && finite_non_negative(spec_.cpu_busy_w_per_cpu) &&
      spec_.cpu_idle_w + spec_.cpu_busy_w_per_cpu > 0 && spec_.busy_seconds_per_unit > 0 &&
      std::isfinite(spec_.busy_seconds_per_unit) && spec_.cpu_max_busy_cpus > 0 &&
      finite_non_negative(spec_.cpu_rel_uncertainty);
  std::optional<std::uint64_t> busy;
  if (!busy_file_.is_open()) {
    cpu.reason = "cannot read " + spec_.busy_path + ": " + std::strerror(busy_file_.open_errno());
  } else if (!coefficients_ok) {
    cpu.reason = "the CPU model was given no valid power coefficients (watts must be >= 0)";
  } else if (!(busy = read_busy())) {
    cpu.reason = "cannot parse the busy CPU time in " + spec_.busy_path;
  } else {
    last_busy_ = *busy;
    ChannelInfo ch;
    ch.domain = "cpu:estimated";
    ch.source = "model";
    ch.measured = false;
    ch.in_total = true;
    ch.kind = ChannelKind::counter;
    ch.unit = "uj";
    ch.to_si = 1e-6;
    ch.max_raw = 0;
    ch.max_power_w = spec_.cpu_idle_w + spec_.cpu_busy_w_per_cpu * spec_.cpu_max_busy_cpus;
    ch.detail = spec_.cpu_detail;
    ch.rel_uncertainty = spec_.cpu_rel_uncertainty;
    cpu_channel_ = static_cast<int>(channels_.size());
    channels_.push_back(std::move(ch));
    cpu.available = true;
  }
  status_.push_back(std::move(cpu));
}

void ModelSource::add_dram_channel() {
  ChannelInfo ch;
  ch.domain = "dram:estimated";
  ch.source = "model";
  ch.measured = false;
  ch.in_total = spec_.dram_in_total;
  ch.kind = ChannelKind::counter;
  ch.unit = "uj";
  ch.to_si = 1e-6;
  ch.max_raw = 0;
  ch.max_power_w = spec_.dram_w;
  ch.detail = spec_.dram_detail;
  ch.rel_uncertainty =
      finite_non_negative(spec_.dram_rel_uncertainty) ? spec_.dram_rel_uncertainty : 0.0;
  dram_channel_ = static_cast<int>(channels_.size());
  channels_.push_back(std::move(ch));
  status_.push_back({"dram:estimated", "model", false, true, ""});
}

std::optional<std::uint64_t> ModelSource::read_busy() const noexcept {
  // The aggregate /proc/stat line comes first and cpu.stat is a few lines:
  // 512 bytes hold what is parsed even with 20-digit counters.
  char buf[512];
  const auto n = busy_file_.read_prefix(buf, sizeof buf);
  if (!n) return std::nullopt;
  const std::string_view text(buf, *n);
  switch (spec_.busy_format) {
    case BusyFormat::proc_stat:
      return parse_proc_stat_busy(first_line(text));
    case BusyFormat::cgroup2_stat:
      return parse_cpu_stat_usage_usec(text);
    case BusyFormat::cgroup1_usage:
      return parse_u64(text);
  }
  return std::nullopt;
}

void ModelSource::read(std::uint64_t* raw, bool* ok) noexcept {
  if (channels_.empty()) return;
  const double elapsed_s = static_cast<double>(clock_() - t0_ns_) * 1e-9;
  if (cpu_channel_ >= 0) {
    const auto busy = read_busy();
    if (busy) {
      // A busy counter never goes back on a live system; if it does (a
      // cgroup re-created), the step counts as no busy time, not as negative.
      if (*busy > last_busy_) {
        busy_seconds_ += static_cast<double>(*busy - last_busy_) * spec_.busy_seconds_per_unit;
      }
      last_busy_ = *busy;
      raw[cpu_channel_] =
          to_uj(spec_.cpu_idle_w * elapsed_s + spec_.cpu_busy_w_per_cpu * busy_seconds_);
    }
    ok[cpu_channel_] = busy.has_value();
  }
  if (dram_channel_ >= 0) {
    raw[dram_channel_] = to_uj(spec_.dram_w * elapsed_s);
    ok[dram_channel_] = true;
  }
}

}  // namespace greenml
