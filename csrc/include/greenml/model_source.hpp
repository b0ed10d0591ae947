// Modelled domains (cpu:estimated, dram:estimated) for machines where no
// counter is readable: cloud VMs, containers, platforms without RAPL.
//
// Each modelled domain is a cumulative *counter* channel in microjoules, like a
// RAPL zone, rather than a power channel: the energy between any two reads is
// then exactly the model's energy over that interval (idle watts x elapsed
// time + watts per busy CPU x busy CPU-seconds), whatever the sampling period,
// and window edges interpolate the same way as for measured counters. A power
// channel would need a utilisation per sample, which /proc/stat resolves only
// to one jiffy (10 ms): at a 10 ms period it would read 0% or 100% busy.
//
// The core knows no configuration names: the caller (the Python layer) chooses
// the files, the coefficients and the texts that explain them.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "greenml/source.hpp"
#include "greenml/sysfs.hpp"

namespace greenml {

// Busy jiffies (user + nice + system + irq + softirq) from the aggregate
// "cpu" line of a /proc/stat text; nullopt when the line is missing or bad.
[[nodiscard]] std::optional<std::uint64_t> parse_proc_stat_busy(std::string_view text) noexcept;

// The `usage_usec` value of a cgroup v2 cpu.stat text; nullopt when absent.
[[nodiscard]] std::optional<std::uint64_t> parse_cpu_stat_usage_usec(
    std::string_view text) noexcept;

// Where the busy CPU time comes from.
enum class BusyFormat {
  proc_stat,     // /proc/stat aggregate line, jiffies (the whole machine)
  cgroup2_stat,  // cgroup v2 cpu.stat, usage_usec (one cgroup)
  cgroup1_usage  // cgroup v1 cpuacct.usage, one number in ns (one cgroup)
};

struct ModelSpec {
  // false: no cpu:estimated at all (a package counter measures the CPU), only
  // dram:estimated; busy_path and the cpu_* fields are then unused.
  bool with_cpu = true;
  std::string busy_path;
  BusyFormat busy_format = BusyFormat::proc_stat;
  double busy_seconds_per_unit = 0.01;  // 1/USER_HZ, 1e-6 or 1e-9 by format
  // CPU: P = cpu_idle_w + cpu_busy_w_per_cpu x (busy CPUs), i.e. the per-vCPU
  // model vcpus x (min + u x (max - min)) with u = busy CPUs / vcpus.
  double cpu_idle_w = 0.0;
  double cpu_busy_w_per_cpu = 0.0;
  double cpu_max_busy_cpus = 1.0;  // CPUs that can be busy at once (plausibility bound)
  double cpu_rel_uncertainty = 0.0;
  std::string cpu_detail;
  // DRAM: constant power; 0 = no dram:estimated channel.
  double dram_w = 0.0;
  double dram_rel_uncertainty = 0.0;
  bool dram_in_total = true;
  std::string dram_detail;
};

class ModelSource final : public Source {
 public:
  using ClockFn = std::function<std::int64_t()>;  // ns on CLOCK_MONOTONIC's timeline

  // `clock` is injectable for tests; by default CLOCK_MONOTONIC, the sampler's
  // timeline, so the idle term matches the sample timestamps.
  explicit ModelSource(ModelSpec spec, ClockFn clock = {});

  [[nodiscard]] const std::vector<ChannelInfo>& channels() const override { return channels_; }
  [[nodiscard]] std::vector<DomainStatus> status() const override { return status_; }
  void read(std::uint64_t* raw, bool* ok) noexcept override;
  [[nodiscard]] std::string name() const override { return "model"; }
  [[nodiscard]] bool cheap_edge_read() const noexcept override { return true; }

 private:
  [[nodiscard]] std::optional<std::uint64_t> read_busy() const noexcept;
  void add_cpu_channel();
  void add_dram_channel();

  ModelSpec spec_;
  ClockFn clock_;
  OpenCounterFile busy_file_;
  std::vector<ChannelInfo> channels_;
  std::vector<DomainStatus> status_;
  int cpu_channel_ = -1;
  int dram_channel_ = -1;
  std::int64_t t0_ns_ = 0;
  std::uint64_t last_busy_ = 0;
  double busy_seconds_ = 0.0;  // busy CPU-seconds since construction (never decreases)
};

}  // namespace greenml
