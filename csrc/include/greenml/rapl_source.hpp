// Intel/AMD RAPL energy counters through the Linux powercap sysfs tree.
#pragma once

#include <string>
#include <vector>

#include "greenml/source.hpp"
#include "greenml/sysfs.hpp"

namespace greenml {

class RaplSource final : public Source {
 public:
  // root: the powercap directory (normally /sys/class/powercap). Never
  // throws: a missing tree or unreadable counter becomes a reason.
  // missing_hint ends the reason given when root holds no RAPL zone (the
  // caller knows how the root was configured; the core does not).
  explicit RaplSource(const std::string& root, const std::string& missing_hint = "");

  [[nodiscard]] const std::vector<ChannelInfo>& channels() const override { return channels_; }
  [[nodiscard]] std::vector<DomainStatus> status() const override { return status_; }
  void read(std::uint64_t* raw, bool* ok) noexcept override;
  [[nodiscard]] std::string name() const override { return "rapl"; }
  [[nodiscard]] bool cheap_edge_read() const noexcept override { return true; }

  [[nodiscard]] std::int64_t max_safe_period_ns() const noexcept override {
    return max_safe_period_ns_;
  }

 private:
  void add_zone(const std::string& dir, const std::string& domain, bool in_total);

  std::vector<ChannelInfo> channels_;
  std::vector<DomainStatus> status_;
  std::vector<OpenCounterFile> files_;
  std::int64_t max_safe_period_ns_ = INT64_MAX;
};

}  // namespace greenml
