// NVIDIA GPUs through NVML, loaded with dlopen at run time (never linked).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "greenml/source.hpp"

namespace greenml {

class NvmlSource final : public Source {
 public:
  // library: path or soname handed to dlopen (e.g. "libnvidia-ml.so.1").
  // cuda_visible_devices: the CUDA_VISIBLE_DEVICES value the process runs
  // with (nullopt = unset = every device, in NVML order). Never throws: any
  // failure becomes a reason in status().
  NvmlSource(const std::string& library, const std::optional<std::string>& cuda_visible_devices);
  ~NvmlSource() override;
  NvmlSource(const NvmlSource&) = delete;
  NvmlSource& operator=(const NvmlSource&) = delete;

  [[nodiscard]] const std::vector<ChannelInfo>& channels() const override;
  [[nodiscard]] std::vector<DomainStatus> status() const override;
  void read(std::uint64_t* raw, bool* ok) noexcept override;
  [[nodiscard]] std::string name() const override { return "nvml"; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace greenml
