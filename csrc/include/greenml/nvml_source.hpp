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

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace greenml
