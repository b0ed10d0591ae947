// NVIDIA GPUs through NVML, loaded with dlopen at run time (never linked).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "greenml/source.hpp"

namespace greenml {

// How the CUDA runtime numbers devices (CUDA_DEVICE_ORDER).
enum class CudaDeviceOrder {
  fastest_first,  // CUDA's default: a speed heuristic first, then PCI bus order
  pci_bus_id,     // PCI bus order, the order nvidia-smi shows
};

// What decides which GPU is gpu:<i>. The core reads no environment: the
// caller passes what the process runs with.
struct NvmlOptions {
  // Path or soname handed to dlopen.
  std::string library = "libnvidia-ml.so.1";
  // The CUDA_VISIBLE_DEVICES value (nullopt = unset = every device).
  std::optional<std::string> cuda_visible_devices;
  // CUDA_DEVICE_ORDER (unset = fastest_first, as in CUDA).
  CudaDeviceOrder cuda_device_order = CudaDeviceOrder::fastest_first;
  // UUIDs of cuda:0, cuda:1, ... as the loaded CUDA runtime reports them
  // (nullopt = no runtime to ask). When given they decide gpu:<i> outright:
  // the runtime has already applied CUDA_VISIBLE_DEVICES and the order.
  std::optional<std::vector<std::string>> cuda_uuids;
  // Appended to the reason when the library cannot be loaded (how the caller
  // lets users point at another path).
  std::string load_hint;
  // Appended to the reason when CUDA's numbering of mixed GPU models cannot
  // be known (how the caller could learn it).
  std::string order_hint;
};

// One GPU's power limits in milliwatts, as NVML reports them; nullopt where
// NVML cannot tell (reason says why).
struct NvmlPowerLimits {
  std::string domain;  // gpu:<i>
  std::string detail;  // as in ChannelInfo::detail
  std::string uuid;    // the GPU's UUID (the parent GPU's for a MIG instance)
  std::optional<unsigned int> current_mw;   // nvmlDeviceGetPowerManagementLimit
  std::optional<unsigned int> default_mw;   // nvmlDeviceGetPowerManagementDefaultLimit
  std::optional<unsigned int> min_mw;       // nvmlDeviceGetPowerManagementLimitConstraints
  std::optional<unsigned int> max_mw;
  std::optional<unsigned int> enforced_mw;  // nvmlDeviceGetEnforcedPowerLimit
  // Set when the limit cannot be changed through greenml whatever the
  // privileges (no constraints, a MIG instance, no GPU); empty otherwise.
  std::string fixed_reason;
  std::string reason;  // why some values are unknown; empty when all were read
};

// The outcome of a power-limit change: code is the nvmlReturn_t (0 =
// success; nothing changed otherwise), message says what happened and what
// to do.
struct NvmlSetResult {
  int code = 0;
  std::string message;
};

class NvmlSource final : public Source {
 public:
  // Never throws: any failure becomes a reason in status().
  explicit NvmlSource(NvmlOptions options);
  // library: path or soname handed to dlopen (e.g. "libnvidia-ml.so.1").
  // cuda_visible_devices: the CUDA_VISIBLE_DEVICES value the process runs
  // with (nullopt = unset = every device).
  NvmlSource(const std::string& library, const std::optional<std::string>& cuda_visible_devices);
  ~NvmlSource() override;
  NvmlSource(const NvmlSource&) = delete;
  NvmlSource& operator=(const NvmlSource&) = delete;

  [[nodiscard]] const std::vector<ChannelInfo>& channels() const override;
  [[nodiscard]] std::vector<DomainStatus> status() const override;
  // In a forked child, the first call initialises NVML for the child and
  // finds its GPUs again by UUID before reading.
  void read(std::uint64_t* raw, bool* ok) noexcept override;
  [[nodiscard]] std::string name() const override { return "nvml"; }
  // Only sets flags; read() does the work.
  void after_fork_in_child() noexcept override;

  // Power limits of every gpu:<i> this source knows, readable or not. Reads
  // only; never needs root.
  [[nodiscard]] std::vector<NvmlPowerLimits> power_limits() const;
  // Sets gpu:<i>'s power management limit (needs root). Refuses a value
  // outside the GPU's constraints and a MIG instance (its limit is the whole
  // GPU's) without calling NVML. Never throws; not for the sampler thread.
  [[nodiscard]] NvmlSetResult set_power_limit(const std::string& domain, unsigned int limit_mw);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace greenml
