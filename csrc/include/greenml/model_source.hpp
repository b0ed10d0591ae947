// The estimated CPU domain: a power model driven by /proc/stat, for machines
// where no RAPL counter is readable.
#pragma once

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

// One counter channel, `cpu:estimated`, whose raw value is the machine's
// cumulative busy jiffies. Energy = busy jiffies x joules_per_busy_jiffy,
// i.e. TDP x utilisation integrated over time when the caller passes
// TDP / (cpus x ticks per second). measured = false: it is a model.
class ModelSource final : public Source {
 public:
  ModelSource(const std::string& stat_path, double joules_per_busy_jiffy, std::string detail);
  ~ModelSource() override;
  ModelSource(const ModelSource&) = delete;
  ModelSource& operator=(const ModelSource&) = delete;

  [[nodiscard]] const std::vector<ChannelInfo>& channels() const override { return channels_; }
  [[nodiscard]] std::vector<DomainStatus> status() const override { return status_; }
  void read(std::uint64_t* raw, bool* ok) noexcept override;
  [[nodiscard]] std::string name() const override { return "model"; }

 private:
  std::string path_;
  int fd_ = -1;
  std::vector<ChannelInfo> channels_;
  std::vector<DomainStatus> status_;
};

}  // namespace greenml
