// NVIDIA GPUs through NVML. The library is dlopen'ed at run time so that
// greenml builds and runs on machines without a driver; every failure along
// the way becomes a reason in status() rather than an exception.
#include "greenml/nvml_source.hpp"
#include "greenml/sysfs.hpp"

#include <dlfcn.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <exception>
#include <numeric>
#include <set>
#include <string_view>
#include <tuple>
#include <utility>

namespace greenml {
namespace {

// Our own spelling of the few nvml.h types we need, so that building needs
// no CUDA toolkit. The ABI is a C enum (int) and an opaque struct pointer.
using nvmlReturn_t = int;
struct nvmlDevice_st;
using nvmlDevice_t = nvmlDevice_st*;

constexpr nvmlReturn_t kNvmlSuccess = 0;
constexpr nvmlReturn_t kNvmlInvalidArgument = 2;
constexpr nvmlReturn_t kNvmlNotSupported = 3;
constexpr nvmlReturn_t kNvmlNoPermission = 4;
constexpr nvmlReturn_t kNvmlNotFound = 6;
constexpr nvmlReturn_t kNvmlFunctionNotFound = 13;  // the closest code for a missing symbol

// NVML_DEVICE_UUID_V2_BUFFER_SIZE and NVML_DEVICE_NAME_V2_BUFFER_SIZE: the
// largest buffers NVML asks for, so no valid name or UUID is truncated.
constexpr unsigned int kUuidBufferSize = 96;
constexpr unsigned int kNameBufferSize = 96;

// nvml.h's nvmlPciInfo_t, the layout nvmlDeviceGetPciInfo_v3 fills.
struct NvmlPciInfo {
  char bus_id_legacy[16];
  unsigned int domain;
  unsigned int bus;
  unsigned int device;
  unsigned int pci_device_id;
  unsigned int pci_subsystem_id;
  char bus_id[32];
};
static_assert(sizeof(NvmlPciInfo) == 68, "nvmlPciInfo_t is 68 bytes in nvml.h");

using InitFn = nvmlReturn_t (*)();
using ShutdownFn = nvmlReturn_t (*)();
using GetCountFn = nvmlReturn_t (*)(unsigned int*);
using GetHandleFn = nvmlReturn_t (*)(unsigned int, nvmlDevice_t*);
using GetHandleByUuidFn = nvmlReturn_t (*)(const char*, nvmlDevice_t*);
using GetStringFn = nvmlReturn_t (*)(nvmlDevice_t, char*, unsigned int);
using GetEnergyFn = nvmlReturn_t (*)(nvmlDevice_t, unsigned long long*);
using GetUintFn = nvmlReturn_t (*)(nvmlDevice_t, unsigned int*);
using GetLimitRangeFn = nvmlReturn_t (*)(nvmlDevice_t, unsigned int*, unsigned int*);
using SetUintFn = nvmlReturn_t (*)(nvmlDevice_t, unsigned int);
using GetMigParentFn = nvmlReturn_t (*)(nvmlDevice_t, nvmlDevice_t*);
using GetPciFn = nvmlReturn_t (*)(nvmlDevice_t, NvmlPciInfo*);
using GetComputeCapabilityFn = nvmlReturn_t (*)(nvmlDevice_t, int*, int*);
using ErrorStringFn = const char* (*)(nvmlReturn_t);

// The NVML entry points greenml uses; each is null when the library lacks it.
struct NvmlApi {
  InitFn init = nullptr;
  ShutdownFn shutdown = nullptr;
  GetCountFn get_count = nullptr;
  GetHandleFn get_handle = nullptr;
  GetHandleByUuidFn get_handle_by_uuid = nullptr;
  GetStringFn get_uuid = nullptr;
  GetStringFn get_name = nullptr;
  GetPciFn get_pci = nullptr;
  GetEnergyFn get_energy = nullptr;
  GetUintFn get_power = nullptr;
  GetUintFn get_enforced_limit = nullptr;
  GetUintFn get_limit = nullptr;
  GetUintFn get_default_limit = nullptr;
  GetLimitRangeFn get_limit_range = nullptr;
  SetUintFn set_limit = nullptr;
  GetMigParentFn get_mig_parent = nullptr;
  GetComputeCapabilityFn get_compute_capability = nullptr;
  ErrorStringFn error_string = nullptr;
};

struct ErrorInfo {
  nvmlReturn_t code;
  const char* name;    // the nvml.h enumerator, so users can search for it
  const char* text;    // what happened, in words
  const char* advice;  // what to do about it; empty when nothing can be done
};

// Our own words rather than nvmlErrorString's, because a reason must say
// what to do, and NVML's strings ("Unknown Error") do not.
constexpr ErrorInfo kErrors[] = {
    {1, "NVML_ERROR_UNINITIALIZED", "NVML is not initialised",
     "this is a greenml bug, please report it"},
    {2, "NVML_ERROR_INVALID_ARGUMENT", "invalid argument", "this is a greenml bug, please report it"},
    {3, "NVML_ERROR_NOT_SUPPORTED", "not supported by this GPU", ""},
    {4, "NVML_ERROR_NO_PERMISSION", "permission denied",
     "run as a user allowed to query the GPU (check the permissions of /dev/nvidia*)"},
    {5, "NVML_ERROR_ALREADY_INITIALIZED", "NVML is already initialised", ""},
    {6, "NVML_ERROR_NOT_FOUND", "not found", ""},
    {7, "NVML_ERROR_INSUFFICIENT_SIZE", "buffer too small", "this is a greenml bug, please report it"},
    {8, "NVML_ERROR_INSUFFICIENT_POWER", "the GPU's external power cables are not attached properly",
     "check the GPU's power connectors"},
    {9, "NVML_ERROR_DRIVER_NOT_LOADED", "the NVIDIA kernel driver is not loaded",
     "load it (modprobe nvidia) or install the NVIDIA driver; in a container, run it with the "
     "NVIDIA container toolkit (e.g. docker run --gpus all)"},
    {10, "NVML_ERROR_TIMEOUT", "the driver timed out", "retry; if it persists check dmesg"},
    {11, "NVML_ERROR_IRQ_ISSUE", "the driver detected an interrupt problem",
     "check dmesg for NVIDIA errors"},
    {12, "NVML_ERROR_LIBRARY_NOT_FOUND", "NVML could not load a library it needs",
     "reinstall the NVIDIA driver"},
    {13, "NVML_ERROR_FUNCTION_NOT_FOUND", "this driver lacks the function",
     "update the NVIDIA driver"},
    {14, "NVML_ERROR_CORRUPTED_INFOROM", "the GPU's infoROM is corrupted",
     "see nvidia-smi -q and contact the GPU vendor"},
    {15, "NVML_ERROR_GPU_IS_LOST", "GPU is lost",
     "it fell off the bus or became inaccessible; check dmesg for Xid errors and nvidia-smi, "
     "then reset the GPU (nvidia-smi -r) or reboot"},
    {16, "NVML_ERROR_RESET_REQUIRED", "the GPU needs a reset", "reset it (nvidia-smi -r) or reboot"},
    {17, "NVML_ERROR_OPERATING_SYSTEM", "the operating system blocked the GPU control device",
     "check dmesg and the permissions of /dev/nvidia*"},
    {18, "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
     "the NVML library and the loaded kernel driver have different versions",
     "reboot (or reload the nvidia kernel modules) after the driver upgrade"},
    {19, "NVML_ERROR_IN_USE", "the GPU is in use", "retry later"},
    {20, "NVML_ERROR_MEMORY", "the driver ran out of memory", "free host memory and retry"},
    {21, "NVML_ERROR_NO_DATA", "no data", ""},
    {999, "NVML_ERROR_UNKNOWN", "unknown NVML error", "check dmesg and nvidia-smi"},
};

[[nodiscard]] const ErrorInfo* find_error(nvmlReturn_t code) noexcept {
  for (const auto& e : kErrors)
    if (e.code == code) return &e;
  return nullptr;
}

[[nodiscard]] bool is_digits(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

[[nodiscard]] char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

[[nodiscard]] bool starts_with_nocase(const std::string& s, const std::string& prefix) {
  if (s.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i)
    if (lower(s[i]) != lower(prefix[i])) return false;
  return true;
}

[[nodiscard]] std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    const auto comma = s.find(',', start);
    const std::string_view part(s.data() + start, (comma == std::string::npos ? s.size() : comma) - start);
    out.emplace_back(trim_view(part));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

// "GPU-1234abcd-..." and "1234abcd-..." name the same GPU: CUDA and torch
// sometimes leave the prefix out.
[[nodiscard]] std::string without_gpu_prefix(const std::string& uuid) {
  return starts_with_nocase(uuid, "GPU-") ? uuid.substr(4) : uuid;
}

[[nodiscard]] std::int64_t realtime_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

// "2024-05-01 12:00:03 UTC (4.2 s ago)": absolute time to match against
// dmesg, relative time because that is what a human asks first.
[[nodiscard]] std::string format_since(std::int64_t when_ns) {
  const std::time_t secs = static_cast<std::time_t>(when_ns / 1000000000LL);
  std::tm tm{};
  char stamp[64] = "an unknown time";
  if (gmtime_r(&secs, &tm) != nullptr) std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S UTC", &tm);
  double ago_s = static_cast<double>(realtime_ns() - when_ns) / 1e9;
  if (ago_s < 0) ago_s = 0;
  char buf[128];
  std::snprintf(buf, sizeof buf, "%s (%.1f s ago)", stamp, ago_s);
  return buf;
}

// What we learn about every NVML device before choosing the visible ones:
// UUID matching and CUDA's numbering need all of them.
struct NvmlDeviceInfo {
  nvmlDevice_t handle = nullptr;
  nvmlReturn_t handle_rc = kNvmlSuccess;
  std::string uuid;  // empty when unknown
  std::string name;  // empty when unknown
  bool has_pci = false;
  std::tuple<unsigned int, unsigned int, unsigned int> pci{};  // domain, bus, device
};

// One gpu:<i>, before it is opened.
struct VisibleEntry {
  enum class Kind {
    gpu,            // a whole GPU: nvml_index
    mig,            // a MIG instance: no energy of its own
    unknown_order,  // CUDA device cuda_index, whose NVML device cannot be known
    unmatched,      // a CUDA runtime UUID that no NVML device has
  };
  Kind kind = Kind::gpu;
  unsigned int nvml_index = 0;
  unsigned int cuda_index = 0;
  std::string token;  // as the user or the runtime wrote it
};

// CUDA's numbering of every device NVML sees, when it can be known.
struct CudaOrder {
  bool exact = false;
  std::vector<unsigned int> to_nvml;  // CUDA index -> NVML index, when exact
  std::string models;                 // the differing models, when not exact
};

// CUDA enumerates by PCI bus id (CUDA_DEVICE_ORDER=PCI_BUS_ID, and ties
// under FASTEST_FIRST). NVML's own index order is documented as unstable
// across reboots, so sort by bus id; when one cannot be read, NVML order is
// what is left (NVML enumerates by PCI bus too in practice).
[[nodiscard]] std::vector<unsigned int> pci_order(const std::vector<NvmlDeviceInfo>& all) {
  std::vector<unsigned int> order(all.size());
  std::iota(order.begin(), order.end(), 0U);
  const bool all_known =
      std::all_of(all.begin(), all.end(), [](const NvmlDeviceInfo& d) { return d.has_pci; });
  if (all_known)
    std::stable_sort(order.begin(), order.end(),
                     [&](unsigned int a, unsigned int b) { return all[a].pci < all[b].pci; });
  return order;
}

// "NVIDIA A100-SXM4-40GB, Tesla T4" when the devices are not all one model
// (an unreadable name counts as different: it cannot be shown to be the
// same); empty when they are.
[[nodiscard]] std::string differing_models(const std::vector<NvmlDeviceInfo>& all) {
  std::set<std::string> names;
  for (const auto& d : all) names.insert(d.name.empty() ? "a GPU whose name NVML cannot read" : d.name);
  if (names.size() <= 1 || all.size() <= 1) return {};
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

struct NvmlSource::Impl {
  // Where a channel's last failure happened, for status().
  enum Stage : int {
    stage_read = 0,          // reading the counter or power
    stage_child_init = 1,    // nvmlInit in a forked child
    stage_child_lookup = 2,  // finding the GPU again in a forked child
  };

  // Hot-path state of one channel. Atomics because status() may run on
  // another thread than read(), which the sampler calls under its lock.
  struct Probe {
    nvmlDevice_t handle = nullptr;
    bool counter = true;
    bool usable = true;  // false after a forked child could not reopen it; read() only
    unsigned int nvml_index = 0;
    std::string uuid;  // NVML's spelling, to find the GPU again after a fork
    std::atomic<int> last_error{0};               // 0 = last read succeeded
    std::atomic<std::int64_t> error_since_ns{0};  // CLOCK_REALTIME of the first failure in a row
    std::atomic<int> stage{stage_read};
  };

  // One record of status(), with its channel when it has one.
  struct Device {
    std::string domain;
    std::string detail;
    std::string reason;  // set when the device has no channel
    int channel = -1;
    nvmlDevice_t handle = nullptr;  // set once the GPU is open
    unsigned int nvml_index = 0;
    std::string uuid;
    std::string mig;  // the MIG instance's UUID when gpu:<i> is one
  };

  NvmlOptions opt;
  void* lib = nullptr;
  NvmlApi api;
  // The process that loaded the library (the only one that may unload it)
  // and the one whose nvmlInit we hold (the only one that may shut it down).
  pid_t opener_pid = 0;
  pid_t init_owner_pid = 0;
  // Set in a forked child by after_fork_in_child(): lock-free, so setting it
  // is async-signal-safe.
  std::atomic<bool> reopen_pending{false};
  static_assert(std::atomic<bool>::is_always_lock_free, "after_fork_in_child must not lock");

  std::string global_reason;  // set when nothing at all can be read
  std::vector<Device> devices;
  std::vector<ChannelInfo> channels;
  std::vector<Probe> probes;  // parallel to channels
  std::string visible_note;   // why CUDA_VISIBLE_DEVICES enumeration stopped early
  std::string order_models;   // the differing models when CUDA's order is unknown

  ~Impl() {
    const pid_t self = getpid();
    // A forked child shares its parent's driver objects through inherited
    // file descriptors: shutting down the parent's initialisation there
    // would free them under the parent. A child shuts down only its own.
    if (init_owner_pid == self && api.shutdown != nullptr) api.shutdown();
    // dlclose would run the library's destructors on that shared state too;
    // in a child the mapping goes away with the process.
    if (lib != nullptr && opener_pid == self) dlclose(lib);
  }

  template <typename Fn>
  [[nodiscard]] Fn symbol(const char* name) const noexcept {
    return reinterpret_cast<Fn>(dlsym(lib, name));
  }

  // "GPU is lost (NVML_ERROR_GPU_IS_LOST)"
  [[nodiscard]] std::string describe(nvmlReturn_t rc) const {
    if (const ErrorInfo* e = find_error(rc)) return std::string(e->text) + " (" + e->name + ")";
    const char* text = api.error_string != nullptr ? api.error_string(rc) : nullptr;
    return std::string(text != nullptr ? text : "NVML error") + " (NVML error " + std::to_string(rc) + ")";
  }

  // "; <what to do>" or nothing.
  [[nodiscard]] static std::string advice(nvmlReturn_t rc) {
    const ErrorInfo* e = find_error(rc);
    if (e == nullptr) return "; check dmesg and nvidia-smi";
    if (e->advice[0] == '\0') return {};
    return std::string("; ") + e->advice;
  }

  // Opening, in order; each step sets global_reason and returns false when
  // nothing can be read.
  void open();
  [[nodiscard]] bool load_library();
  [[nodiscard]] bool resolve_symbols();
  [[nodiscard]] bool initialise();
  [[nodiscard]] bool enumerate(std::vector<NvmlDeviceInfo>& all);
  [[nodiscard]] NvmlDeviceInfo describe_device(unsigned int index) const;
  void explain_nothing_visible(std::size_t nvml_count);
  void build_probes();

  // Which GPU is gpu:<i>.
  [[nodiscard]] std::vector<VisibleEntry> resolve_visible(const std::vector<NvmlDeviceInfo>& all);
  [[nodiscard]] CudaOrder cuda_order(const std::vector<NvmlDeviceInfo>& all) const;
  [[nodiscard]] std::vector<VisibleEntry> from_runtime(const std::vector<std::string>& uuids,
                                                       const std::vector<NvmlDeviceInfo>& all) const;
  [[nodiscard]] std::vector<VisibleEntry> from_list(const std::string& cvd,
                                                    const std::vector<NvmlDeviceInfo>& all,
                                                    const CudaOrder& order);
  [[nodiscard]] std::string parse_entry(const std::string& token,
                                        const std::vector<NvmlDeviceInfo>& all,
                                        const CudaOrder& order, VisibleEntry& entry) const;
  [[nodiscard]] std::string match_uuid_prefix(const std::string& token,
                                              const std::vector<NvmlDeviceInfo>& all,
                                              VisibleEntry& entry) const;

  // Opening one gpu:<i>.
  void add_device(std::size_t position, const VisibleEntry& entry,
                  const std::vector<NvmlDeviceInfo>& all);
  void open_gpu(Device& dev, const NvmlDeviceInfo& info, unsigned int nvml_index);
  void open_mig(Device& dev, const VisibleEntry& entry, const std::vector<NvmlDeviceInfo>& all);
  [[nodiscard]] std::string counted_by(unsigned int nvml_index) const;
  [[nodiscard]] nvmlReturn_t try_energy(nvmlDevice_t handle) const;
  [[nodiscard]] nvmlReturn_t try_power(nvmlDevice_t handle) const;
  [[nodiscard]] std::string unreadable_reason(const std::string& detail, nvmlReturn_t energy_rc,
                                              nvmlReturn_t power_rc) const;
  [[nodiscard]] std::string mig_reason(const VisibleEntry& entry) const;
  [[nodiscard]] std::string order_reason(const VisibleEntry& entry) const;
  [[nodiscard]] double max_power_w(nvmlDevice_t handle) const;
  [[nodiscard]] std::int64_t power_window_ns(nvmlDevice_t handle) const;

  // Power limits.
  [[nodiscard]] NvmlPowerLimits limits_of(const Device& dev) const;
  [[nodiscard]] std::optional<unsigned int> read_limit(GetUintFn fn, const char* what,
                                                       nvmlDevice_t handle,
                                                       std::string& reason) const;

  // After a fork.
  void reopen_in_child() noexcept;
  static void record(Probe& p, nvmlReturn_t rc, Stage stage) noexcept;
  [[nodiscard]] std::string failure_reason(const Device& dev, const Probe& p) const;
};

void NvmlSource::Impl::open() {
  if (!load_library() || !resolve_symbols() || !initialise()) return;
  std::vector<NvmlDeviceInfo> all;
  if (!enumerate(all)) return;
  const std::vector<VisibleEntry> visible = resolve_visible(all);
  if (visible.empty()) {
    explain_nothing_visible(all.size());
    return;
  }
  for (std::size_t pos = 0; pos < visible.size(); ++pos) add_device(pos, visible[pos], all);
  build_probes();
}

bool NvmlSource::Impl::load_library() {
  dlerror();  // clear any stale message so the one we report is ours
  lib = dlopen(opt.library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib != nullptr) {
    opener_pid = getpid();
    return true;
  }
  const char* err = dlerror();
  global_reason = "no NVIDIA driver found: could not load " + opt.library + " (" +
                  (err != nullptr ? err : "unknown dlopen error") + "); install the NVIDIA driver";
  if (!opt.load_hint.empty()) global_reason += ", or " + opt.load_hint;
  return false;
}

bool NvmlSource::Impl::resolve_symbols() {
  // The _v2 entry points are the ones nvml.h maps its names to since 2013;
  // a library without them is too old to trust for energy readings.
  api.init = symbol<InitFn>("nvmlInit_v2");
  api.shutdown = symbol<ShutdownFn>("nvmlShutdown");
  api.get_count = symbol<GetCountFn>("nvmlDeviceGetCount_v2");
  api.get_handle = symbol<GetHandleFn>("nvmlDeviceGetHandleByIndex_v2");
  api.get_handle_by_uuid = symbol<GetHandleByUuidFn>("nvmlDeviceGetHandleByUUID");
  api.get_uuid = symbol<GetStringFn>("nvmlDeviceGetUUID");
  api.get_name = symbol<GetStringFn>("nvmlDeviceGetName");
  api.get_pci = symbol<GetPciFn>("nvmlDeviceGetPciInfo_v3");
  api.get_energy = symbol<GetEnergyFn>("nvmlDeviceGetTotalEnergyConsumption");
  api.get_power = symbol<GetUintFn>("nvmlDeviceGetPowerUsage");
  api.get_enforced_limit = symbol<GetUintFn>("nvmlDeviceGetEnforcedPowerLimit");
  api.get_limit = symbol<GetUintFn>("nvmlDeviceGetPowerManagementLimit");
  api.get_default_limit = symbol<GetUintFn>("nvmlDeviceGetPowerManagementDefaultLimit");
  api.get_limit_range = symbol<GetLimitRangeFn>("nvmlDeviceGetPowerManagementLimitConstraints");
  api.set_limit = symbol<SetUintFn>("nvmlDeviceSetPowerManagementLimit");
  api.get_mig_parent = symbol<GetMigParentFn>("nvmlDeviceGetDeviceHandleFromMigDeviceHandle");
  api.get_compute_capability = symbol<GetComputeCapabilityFn>("nvmlDeviceGetCudaComputeCapability");
  api.error_string = symbol<ErrorStringFn>("nvmlErrorString");

  const std::pair<const char*, bool> required[] = {
      {"nvmlInit_v2", api.init != nullptr},
      {"nvmlShutdown", api.shutdown != nullptr},
      {"nvmlDeviceGetCount_v2", api.get_count != nullptr},
      {"nvmlDeviceGetHandleByIndex_v2", api.get_handle != nullptr},
  };
  for (const auto& [sym, present] : required) {
    if (!present) {
      global_reason = opt.library + " lacks " + sym +
                      ": this NVIDIA driver is too old for greenml; update the NVIDIA driver";
      return false;
    }
  }
  return true;
}

bool NvmlSource::Impl::initialise() {
  const nvmlReturn_t rc = api.init();
  if (rc != kNvmlSuccess) {
    global_reason = "NVML failed to initialise: " + describe(rc) + advice(rc);
    return false;
  }
  init_owner_pid = getpid();
  return true;
}

bool NvmlSource::Impl::enumerate(std::vector<NvmlDeviceInfo>& all) {
  unsigned int count = 0;
  const nvmlReturn_t rc = api.get_count(&count);
  if (rc != kNvmlSuccess) {
    global_reason = "NVML could not count the GPUs: " + describe(rc) + advice(rc);
    return false;
  }
  all.clear();
  for (unsigned int i = 0; i < count; ++i) all.push_back(describe_device(i));
  return true;
}

NvmlDeviceInfo NvmlSource::Impl::describe_device(unsigned int index) const {
  NvmlDeviceInfo d;
  d.handle_rc = api.get_handle(index, &d.handle);
  if (d.handle_rc != kNvmlSuccess) return d;
  char buf[kUuidBufferSize > kNameBufferSize ? kUuidBufferSize : kNameBufferSize] = {};
  if (api.get_uuid != nullptr && api.get_uuid(d.handle, buf, kUuidBufferSize) == kNvmlSuccess)
    d.uuid = buf;
  buf[0] = '\0';
  if (api.get_name != nullptr && api.get_name(d.handle, buf, kNameBufferSize) == kNvmlSuccess)
    d.name = buf;
  NvmlPciInfo pci{};
  if (api.get_pci != nullptr && api.get_pci(d.handle, &pci) == kNvmlSuccess) {
    d.has_pci = true;
    d.pci = {pci.domain, pci.bus, pci.device};
  }
  return d;
}

void NvmlSource::Impl::explain_nothing_visible(std::size_t nvml_count) {
  if (nvml_count == 0) {
    global_reason = "no NVIDIA GPU visible: NVML found no GPU; check that nvidia-smi lists one";
  } else if (opt.cuda_uuids.has_value()) {
    global_reason = "no NVIDIA GPU visible: the CUDA runtime sees no GPU, though NVML sees " +
                    std::to_string(nvml_count) + "; check CUDA_VISIBLE_DEVICES";
  } else if (!opt.cuda_visible_devices.has_value()) {
    global_reason = "no NVIDIA GPU visible: NVML found no GPU; check that nvidia-smi lists one";
  } else {
    global_reason = "no NVIDIA GPU visible: CUDA_VISIBLE_DEVICES=\"" + *opt.cuda_visible_devices +
                    "\" hides all " + std::to_string(nvml_count) + " GPU(s) that NVML sees";
    if (!visible_note.empty()) global_reason += " (" + visible_note + ")";
    global_reason += "; unset CUDA_VISIBLE_DEVICES or list the GPUs to measure";
  }
  visible_note.clear();
}

void NvmlSource::Impl::build_probes() {
  probes = std::vector<Probe>(channels.size());  // Probe holds atomics: size once, fill in place
  for (const auto& dev : devices) {
    if (dev.channel < 0) continue;
    const auto i = static_cast<std::size_t>(dev.channel);
    probes[i].handle = dev.handle;
    probes[i].counter = channels[i].kind == ChannelKind::counter;
    probes[i].nvml_index = dev.nvml_index;
    probes[i].uuid = dev.uuid;
  }
}

// ---------------------------------------------------------------- visibility

// The GPU a process calls cuda:<i> is our gpu:<i>. The CUDA runtime, when
// the caller could ask it, says so exactly; otherwise CUDA_VISIBLE_DEVICES is
// mapped the way the runtime maps it.
std::vector<VisibleEntry> NvmlSource::Impl::resolve_visible(const std::vector<NvmlDeviceInfo>& all) {
  if (opt.cuda_uuids.has_value()) return from_runtime(*opt.cuda_uuids, all);
  const CudaOrder order = cuda_order(all);
  order_models = order.models;
  if (opt.cuda_visible_devices.has_value()) return from_list(*opt.cuda_visible_devices, all, order);
  std::vector<VisibleEntry> out;
  for (unsigned int k = 0; k < all.size(); ++k) {
    VisibleEntry entry;
    entry.token = std::to_string(k);
    const std::string why = parse_entry(entry.token, all, order, entry);
    if (why.empty()) out.push_back(entry);
  }
  return out;
}

CudaOrder NvmlSource::Impl::cuda_order(const std::vector<NvmlDeviceInfo>& all) const {
  CudaOrder order;
  order.to_nvml = pci_order(all);
  if (opt.cuda_device_order == CudaDeviceOrder::pci_bus_id) {
    order.exact = true;
    return order;
  }
  // FASTEST_FIRST ranks devices by a speed heuristic and breaks ties by PCI
  // bus id. Identical models tie, so the order is PCI order; different
  // models are ranked by rules NVML does not expose.
  order.models = differing_models(all);
  order.exact = order.models.empty();
  return order;
}

std::vector<VisibleEntry> NvmlSource::Impl::from_runtime(const std::vector<std::string>& uuids,
                                                         const std::vector<NvmlDeviceInfo>& all) const {
  std::vector<VisibleEntry> out;
  for (unsigned int k = 0; k < uuids.size(); ++k) {
    VisibleEntry entry;
    entry.token = uuids[k];
    entry.cuda_index = k;
    entry.kind = VisibleEntry::Kind::unmatched;
    if (starts_with_nocase(entry.token, "MIG-")) entry.kind = VisibleEntry::Kind::mig;
    const std::string wanted = without_gpu_prefix(entry.token);
    for (unsigned int i = 0; i < all.size() && entry.kind == VisibleEntry::Kind::unmatched; ++i) {
      const std::string have = without_gpu_prefix(all[i].uuid);
      if (!have.empty() && have.size() == wanted.size() && starts_with_nocase(have, wanted)) {
        entry.kind = VisibleEntry::Kind::gpu;
        entry.nvml_index = i;
      }
    }
    out.push_back(entry);
  }
  return out;
}

// Entries are taken in order and enumeration stops at the first one that
// names no device, as in the CUDA runtime. Sets visible_note when it stops
// before the end of the list.
std::vector<VisibleEntry> NvmlSource::Impl::from_list(const std::string& cvd,
                                                      const std::vector<NvmlDeviceInfo>& all,
                                                      const CudaOrder& order) {
  std::vector<VisibleEntry> out;
  const std::vector<std::string> tokens = split_commas(cvd);
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    VisibleEntry entry;
    entry.token = tokens[t];
    std::string why = parse_entry(tokens[t], all, order, entry);
    // A GPU listed twice would count its energy twice in every total. Two
    // equal CUDA indices are the same GPU even when which one is unknown.
    for (const auto& prev : out) {
      if (!why.empty() || prev.kind != entry.kind) continue;
      if ((entry.kind == VisibleEntry::Kind::gpu && prev.nvml_index == entry.nvml_index) ||
          (entry.kind == VisibleEntry::Kind::unknown_order && prev.cuda_index == entry.cuda_index))
        why = "repeats a GPU already listed";
    }
    if (why.empty()) {
      out.push_back(entry);
      continue;
    }
    const bool more = std::any_of(tokens.begin() + static_cast<std::ptrdiff_t>(t), tokens.end(),
                                  [](const std::string& s) { return !s.empty(); });
    if (more) {
      visible_note = "CUDA_VISIBLE_DEVICES entry \"" + tokens[t] + "\" " + why +
                     ", so, like CUDA, greenml ignores it and every entry after it";
    }
    return out;
  }
  return out;
}

// Fills entry from one CUDA_VISIBLE_DEVICES token; returns why it names no
// device, or empty.
std::string NvmlSource::Impl::parse_entry(const std::string& token,
                                          const std::vector<NvmlDeviceInfo>& all,
                                          const CudaOrder& order, VisibleEntry& entry) const {
  if (token.empty()) return "is empty";
  if (is_digits(token)) {
    // An integer is a CUDA index: a position in CUDA's order of all devices.
    const bool overflow = token.size() > 9;
    const unsigned long long k = overflow ? 0 : std::stoull(token);
    if (overflow || k >= all.size()) {
      return "is out of range (NVML sees " + std::to_string(all.size()) + " GPU(s), indices 0.." +
             std::to_string(all.empty() ? 0 : all.size() - 1) + ")";
    }
    entry.cuda_index = static_cast<unsigned int>(k);
    if (order.exact) {
      entry.kind = VisibleEntry::Kind::gpu;
      entry.nvml_index = order.to_nvml[entry.cuda_index];
    } else {
      entry.kind = VisibleEntry::Kind::unknown_order;
    }
    return {};
  }
  if (token[0] == '-' || token[0] == '+') return "is not a GPU index or UUID";  // "-1" hides all
  if (starts_with_nocase(token, "MIG-")) {
    entry.kind = VisibleEntry::Kind::mig;
    return {};
  }
  return match_uuid_prefix(token, all, entry);
}

// A UUID, with or without "GPU-", or a unique prefix of one, as CUDA
// accepts. Hex digits compare without regard to case.
std::string NvmlSource::Impl::match_uuid_prefix(const std::string& token,
                                                const std::vector<NvmlDeviceInfo>& all,
                                                VisibleEntry& entry) const {
  const std::string needle = without_gpu_prefix(token);
  std::size_t matches = 0;
  for (unsigned int i = 0; i < all.size(); ++i) {
    const std::string uuid = without_gpu_prefix(all[i].uuid);
    if (!uuid.empty() && starts_with_nocase(uuid, needle)) {
      ++matches;
      entry.kind = VisibleEntry::Kind::gpu;
      entry.nvml_index = i;
    }
  }
  if (matches == 1) return {};
  if (matches > 1) return "is a UUID prefix shared by " + std::to_string(matches) + " GPUs";
  if (api.get_uuid == nullptr) return "cannot be matched: " + opt.library + " lacks nvmlDeviceGetUUID";
  return "matches no GPU UUID NVML reports (see nvidia-smi -L)";
}

// ---------------------------------------------------------------- devices

void NvmlSource::Impl::add_device(std::size_t position, const VisibleEntry& entry,
                                  const std::vector<NvmlDeviceInfo>& all) {
  Device dev;
  dev.domain = "gpu:" + std::to_string(position);
  switch (entry.kind) {
    case VisibleEntry::Kind::gpu:
      dev.reason = counted_by(entry.nvml_index);
      if (dev.reason.empty()) open_gpu(dev, all[entry.nvml_index], entry.nvml_index);
      break;
    case VisibleEntry::Kind::mig:
      open_mig(dev, entry, all);
      break;
    case VisibleEntry::Kind::unknown_order:
      dev.reason = order_reason(entry);
      break;
    case VisibleEntry::Kind::unmatched:
      dev.reason = "the CUDA runtime's device cuda:" + std::to_string(entry.cuda_index) +
                   " has UUID " + entry.token +
                   ", which no GPU NVML reports has (a MIG instance, or a GPU this NVML cannot "
                   "see); compare nvidia-smi -L with the devices CUDA lists";
      break;
  }
  devices.push_back(std::move(dev));
}

std::string NvmlSource::Impl::mig_reason(const VisibleEntry& entry) const {
  const std::string who =
      opt.cuda_uuids.has_value()
          ? "the CUDA runtime's device cuda:" + std::to_string(entry.cuda_index) + " is"
          : std::string("CUDA_VISIBLE_DEVICES selects");
  return who + " MIG instance " + entry.token;
}

// A MIG instance has no energy counter of its own: NVML reports energy and
// power only for the whole GPU. gpu:<i> then reports its parent GPU, labelled
// as the whole GPU's, and once however many of its instances are selected.
void NvmlSource::Impl::open_mig(Device& dev, const VisibleEntry& entry,
                                const std::vector<NvmlDeviceInfo>& all) {
  dev.mig = entry.token;
  const std::string what = mig_reason(entry);
  if (api.get_handle_by_uuid == nullptr || api.get_mig_parent == nullptr) {
    dev.reason = what + ", but " + opt.library + " lacks " +
                 (api.get_handle_by_uuid == nullptr
                      ? "nvmlDeviceGetHandleByUUID"
                      : "nvmlDeviceGetDeviceHandleFromMigDeviceHandle") +
                 " to find the GPU it is part of; update the NVIDIA driver";
    return;
  }
  nvmlDevice_t mig = nullptr;
  nvmlDevice_t parent = nullptr;
  nvmlReturn_t rc = api.get_handle_by_uuid(entry.token.c_str(), &mig);
  if (rc == kNvmlSuccess) rc = api.get_mig_parent(mig, &parent);
  if (rc != kNvmlSuccess) {
    dev.reason = what + ", whose GPU NVML cannot find: " + describe(rc) +
                 (rc == kNvmlNotFound ? "; compare the MIG UUIDs of nvidia-smi -L" : advice(rc));
    return;
  }
  // Handles are stable within a process; the UUID decides if they are not.
  char buf[kUuidBufferSize] = {};
  const bool have_uuid =
      api.get_uuid != nullptr && api.get_uuid(parent, buf, kUuidBufferSize) == kNvmlSuccess;
  std::optional<unsigned int> index;
  for (unsigned int i = 0; i < all.size() && !index; ++i) {
    if (all[i].handle == parent || (have_uuid && !all[i].uuid.empty() && all[i].uuid == buf))
      index = i;
  }
  if (!index) {
    dev.reason = what + ", whose GPU is none of the " + std::to_string(all.size()) +
                 " GPU(s) NVML lists; compare nvidia-smi -L";
    return;
  }
  dev.reason = counted_by(*index);
  if (!dev.reason.empty()) {
    dev.reason = what + ", on " + dev.reason;
    return;
  }
  open_gpu(dev, all[*index], *index);
}

// Empty when no earlier gpu:<i> reports NVML device nvml_index, else a
// reason naming the one that does: a GPU's energy counts once.
std::string NvmlSource::Impl::counted_by(unsigned int nvml_index) const {
  for (const auto& d : devices) {
    if (d.handle == nullptr || d.nvml_index != nvml_index) continue;
    return "the GPU " + (d.uuid.empty() ? "at NVML index " + std::to_string(nvml_index) : d.uuid) +
           " that " + d.domain + " already reports whole (its energy counts once)";
  }
  return {};
}

std::string NvmlSource::Impl::order_reason(const VisibleEntry& entry) const {
  const std::string k = std::to_string(entry.cuda_index);
  std::string r = opt.cuda_visible_devices.has_value()
                      ? "CUDA_VISIBLE_DEVICES entry \"" + entry.token + "\" names CUDA device " + k
                      : "gpu:" + k + " is CUDA device " + k;
  r += ", but which GPU that is cannot be known: with CUDA_DEVICE_ORDER=FASTEST_FIRST (CUDA's "
       "default) CUDA ranks different models (here " +
       order_models + ") by a speed heuristic NVML does not expose, and greenml does not guess; set "
       "CUDA_DEVICE_ORDER=PCI_BUS_ID, or name the GPUs by UUID in CUDA_VISIBLE_DEVICES (see "
       "nvidia-smi -L)";
  if (!opt.order_hint.empty()) r += ", or " + opt.order_hint;
  return r;
}

void NvmlSource::Impl::open_gpu(Device& dev, const NvmlDeviceInfo& info, unsigned int nvml_index) {
  const std::string where = "NVML index " + std::to_string(nvml_index);
  if (info.handle_rc != kNvmlSuccess) {
    dev.reason = "cannot open the GPU at " + where + ": " + describe(info.handle_rc) +
                 advice(info.handle_rc);
    return;
  }
  dev.handle = info.handle;
  dev.nvml_index = nvml_index;
  dev.uuid = info.uuid;
  dev.detail = (info.name.empty() ? std::string("NVIDIA GPU") : info.name) + " " +
               (info.uuid.empty() ? "(" + where + ")" : info.uuid);
  if (!dev.mig.empty()) {
    dev.detail = "whole GPU " + dev.detail + " (MIG instance " + dev.mig +
                 "; energy is the whole GPU's, shared by all its instances)";
  }

  // Prefer the energy counter (Volta and newer): it integrates on the GPU
  // at its own rate, so nothing between our samples is lost. Older GPUs:
  // sample power and let the reader integrate it.
  const nvmlReturn_t energy_rc = try_energy(info.handle);
  const nvmlReturn_t power_rc = energy_rc == kNvmlSuccess ? kNvmlSuccess : try_power(info.handle);
  if (energy_rc != kNvmlSuccess && power_rc != kNvmlSuccess) {
    dev.reason = unreadable_reason(dev.detail, energy_rc, power_rc);
    return;
  }
  ChannelInfo ch;
  ch.domain = dev.domain;
  ch.source = "nvml";
  ch.detail = dev.detail;
  ch.uuid = info.uuid;
  ch.kind = energy_rc == kNvmlSuccess ? ChannelKind::counter : ChannelKind::power;
  ch.unit = energy_rc == kNvmlSuccess ? "mj" : "mw";
  ch.to_si = 1e-3;
  ch.max_raw = 0;  // a 64-bit millijoule count since driver load: never wraps in practice
  ch.max_power_w = max_power_w(info.handle);
  if (ch.kind == ChannelKind::power) ch.power_window_ns = power_window_ns(info.handle);
  dev.channel = static_cast<int>(channels.size());
  channels.push_back(std::move(ch));
}

nvmlReturn_t NvmlSource::Impl::try_energy(nvmlDevice_t handle) const {
  unsigned long long mj = 0;
  return api.get_energy != nullptr ? api.get_energy(handle, &mj) : kNvmlFunctionNotFound;
}

nvmlReturn_t NvmlSource::Impl::try_power(nvmlDevice_t handle) const {
  unsigned int mw = 0;
  return api.get_power != nullptr ? api.get_power(handle, &mw) : kNvmlFunctionNotFound;
}

std::string NvmlSource::Impl::unreadable_reason(const std::string& detail, nvmlReturn_t energy_rc,
                                                nvmlReturn_t power_rc) const {
  std::string r = "cannot read " + detail + ": energy counter: " +
                  (api.get_energy == nullptr
                       ? opt.library + " lacks nvmlDeviceGetTotalEnergyConsumption"
                       : describe(energy_rc)) +
                  "; power: " +
                  (api.get_power == nullptr ? opt.library + " lacks nvmlDeviceGetPowerUsage"
                                            : describe(power_rc));
  if (api.get_energy == nullptr || api.get_power == nullptr) return r + "; update the NVIDIA driver";
  if (energy_rc == kNvmlNotSupported && power_rc == kNvmlNotSupported)
    return r + "; this GPU model has no power sensor NVML can read, so it cannot be measured";
  return r + advice(power_rc != kNvmlNotSupported ? power_rc : energy_rc);
}

// Most power (W) the GPU can plausibly draw; the sampler takes a counter step
// implying more as a reset. The enforced limit can be raised while we run
// (nvidia-smi -pl, a power-cap sweep) up to the board's largest settable
// limit, so the larger of the two counts; a GPU also overshoots its limit for
// short spells (the power controller holds it on average), hence 1.5x. With
// neither readable, 1500 W is above the board power of any single NVIDIA GPU.
double NvmlSource::Impl::max_power_w(nvmlDevice_t handle) const {
  constexpr double kMargin = 1.5;
  constexpr double kUnknownW = 1500.0;
  unsigned int limit_mw = 0;
  unsigned int enforced = 0;
  unsigned int lo = 0;
  unsigned int hi = 0;
  if (api.get_enforced_limit != nullptr && api.get_enforced_limit(handle, &enforced) == kNvmlSuccess)
    limit_mw = enforced;
  if (api.get_limit_range != nullptr && api.get_limit_range(handle, &lo, &hi) == kNvmlSuccess)
    limit_mw = std::max(limit_mw, hi);
  return limit_mw > 0 ? kMargin * static_cast<double>(limit_mw) * 1e-3 : kUnknownW;
}

// NVML documents nvmlDeviceGetPowerUsage as the mean over the last second on
// Ampere except GA100 and newer (compute capability 8.6 and up), and as
// instantaneous on GA100 (8.0) and older; unknown when NVML cannot say which
// the GPU is.
std::int64_t NvmlSource::Impl::power_window_ns(nvmlDevice_t handle) const {
  int major = 0;
  int minor = 0;
  if (api.get_compute_capability == nullptr ||
      api.get_compute_capability(handle, &major, &minor) != kNvmlSuccess)
    return -1;
  return std::make_pair(major, minor) >= std::make_pair(8, 6) ? 1000000000LL : 0;
}

// ---------------------------------------------------------------- power limits

std::optional<unsigned int> NvmlSource::Impl::read_limit(GetUintFn fn, const char* what,
                                                         nvmlDevice_t handle,
                                                         std::string& reason) const {
  unsigned int mw = 0;
  const nvmlReturn_t rc = fn != nullptr ? fn(handle, &mw) : kNvmlFunctionNotFound;
  if (rc == kNvmlSuccess) return mw;
  reason += std::string(reason.empty() ? "" : "; ") + what + ": " +
            (fn == nullptr ? opt.library + " lacks the function" : describe(rc));
  return std::nullopt;
}

NvmlPowerLimits NvmlSource::Impl::limits_of(const Device& dev) const {
  NvmlPowerLimits out;
  out.domain = dev.domain;
  out.detail = dev.detail;
  out.uuid = dev.uuid;
  if (dev.handle == nullptr) {
    out.reason = dev.reason;
    out.fixed_reason = "greenml cannot open this GPU: " + dev.reason;
    return out;
  }
  out.current_mw = read_limit(api.get_limit, "current limit", dev.handle, out.reason);
  out.default_mw = read_limit(api.get_default_limit, "default limit", dev.handle, out.reason);
  out.enforced_mw = read_limit(api.get_enforced_limit, "enforced limit", dev.handle, out.reason);
  unsigned int lo = 0;
  unsigned int hi = 0;
  const nvmlReturn_t rc = api.get_limit_range != nullptr ? api.get_limit_range(dev.handle, &lo, &hi)
                                                         : kNvmlFunctionNotFound;
  if (rc == kNvmlSuccess) {
    out.min_mw = lo;
    out.max_mw = hi;
  } else {
    out.reason += std::string(out.reason.empty() ? "" : "; ") + "constraints: " +
                  (api.get_limit_range == nullptr ? opt.library + " lacks the function"
                                                  : describe(rc));
  }
  if (!dev.mig.empty()) {
    out.fixed_reason = "gpu:" + dev.domain.substr(4) + " is MIG instance " + dev.mig +
                       ": its power limit is the whole GPU's, shared by every instance, so "
                       "greenml does not change it; an administrator can (nvidia-smi -i " +
                       dev.uuid + " -pl WATTS)";
  } else if (api.set_limit == nullptr) {
    out.fixed_reason = opt.library + " lacks nvmlDeviceSetPowerManagementLimit; update the "
                       "NVIDIA driver";
  } else if (!out.min_mw || !out.max_mw || !out.current_mw) {
    out.fixed_reason = "NVML does not report this GPU's " +
                       std::string(!out.current_mw ? "current power limit" : "limit constraints") +
                       ", so greenml will not change its limit (it could not restore it, or "
                       "check a value against the GPU's range)";
  }
  return out;
}

// ---------------------------------------------------------------- fork

// NVML's state came with the fork's copy of memory, but the driver objects
// behind it belong to the parent: the child initialises NVML for itself and
// finds its GPUs again by UUID, so it reads the same GPUs as the parent.
void NvmlSource::Impl::reopen_in_child() noexcept {
  reopen_pending.store(false, std::memory_order_relaxed);
  if (probes.empty()) return;  // nothing to read, so nothing to initialise
  const nvmlReturn_t init_rc = api.init();
  if (init_rc != kNvmlSuccess) {
    for (auto& p : probes) record(p, init_rc, stage_child_init);
    return;
  }
  init_owner_pid = getpid();
  for (auto& p : probes) {
    nvmlDevice_t handle = nullptr;
    // A GPU whose UUID NVML could not tell is found by index: the child runs
    // on the same machine, so the index names the same GPU.
    const nvmlReturn_t rc = (!p.uuid.empty() && api.get_handle_by_uuid != nullptr)
                                ? api.get_handle_by_uuid(p.uuid.c_str(), &handle)
                                : api.get_handle(p.nvml_index, &handle);
    if (rc != kNvmlSuccess) {
      record(p, rc, stage_child_lookup);
      continue;
    }
    p.handle = handle;
    p.usable = true;
    p.stage.store(stage_read, std::memory_order_relaxed);
  }
}

// Keeps the time of the first failure in a row: "lost since" matters, not
// when we last noticed. A failure before any read (stage other than read)
// also retires the probe: its handle is not this process's.
void NvmlSource::Impl::record(Probe& p, nvmlReturn_t rc, Stage stage) noexcept {
  if (rc == kNvmlSuccess) {
    if (p.last_error.load(std::memory_order_relaxed) != kNvmlSuccess)
      p.last_error.store(kNvmlSuccess, std::memory_order_release);
    return;
  }
  if (stage != stage_read) p.usable = false;
  if (p.last_error.load(std::memory_order_relaxed) == kNvmlSuccess)
    p.error_since_ns.store(realtime_ns(), std::memory_order_relaxed);
  p.stage.store(stage, std::memory_order_relaxed);
  p.last_error.store(rc, std::memory_order_release);
}

std::string NvmlSource::Impl::failure_reason(const Device& dev, const Probe& p) const {
  const int err = p.last_error.load(std::memory_order_acquire);
  const std::string since = " since " + format_since(p.error_since_ns.load(std::memory_order_relaxed));
  const std::string pid = std::to_string(static_cast<long>(getpid()));
  switch (p.stage.load(std::memory_order_relaxed)) {
    case stage_child_init:
      return "NVML failed to initialise in this forked process (pid " + pid + "): " +
             describe(err) + since + advice(err) + "; the parent process keeps measuring";
    case stage_child_lookup:
      return "cannot find " + dev.detail + " again in this forked process (pid " + pid + "): " +
             describe(err) + since + advice(err);
    default:
      return describe(err) + since + ": reading its " + (p.counter ? "energy counter" : "power") +
             " fails" + advice(err);
  }
}

// ---------------------------------------------------------------- public

NvmlSource::NvmlSource(NvmlOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->opt = std::move(options);
  try {
    impl_->open();
  } catch (const std::exception& e) {
    // Only allocation can throw here; keep the promise of never throwing.
    impl_->devices.clear();
    impl_->channels.clear();
    impl_->probes.clear();
    impl_->visible_note.clear();
    impl_->global_reason = std::string("internal error while probing NVML: ") + e.what();
  }
}

NvmlSource::NvmlSource(const std::string& library,
                       const std::optional<std::string>& cuda_visible_devices)
    : NvmlSource([&] {
        NvmlOptions o;
        o.library = library;
        o.cuda_visible_devices = cuda_visible_devices;
        return o;
      }()) {}

NvmlSource::~NvmlSource() = default;

const std::vector<ChannelInfo>& NvmlSource::channels() const { return impl_->channels; }

std::vector<DomainStatus> NvmlSource::status() const {
  const Impl& im = *impl_;
  std::vector<DomainStatus> out;
  if (!im.global_reason.empty()) {
    out.push_back({"gpu", "nvml", true, false, im.global_reason});
    return out;
  }
  for (const auto& dev : im.devices) {
    DomainStatus st{dev.domain, "nvml", true, false, dev.reason};
    if (dev.channel >= 0) {
      const auto& probe = im.probes[static_cast<std::size_t>(dev.channel)];
      st.available = probe.last_error.load(std::memory_order_acquire) == kNvmlSuccess;
      if (!st.available) st.reason = im.failure_reason(dev, probe);
    }
    out.push_back(std::move(st));
  }
  if (!im.visible_note.empty()) {
    out.push_back({"gpu", "nvml", true, false,
                   im.visible_note + "; fix CUDA_VISIBLE_DEVICES if those GPUs should be measured"});
  }
  return out;
}

void NvmlSource::read(std::uint64_t* raw, bool* ok) noexcept {
  Impl& im = *impl_;
  if (im.reopen_pending.load(std::memory_order_relaxed)) im.reopen_in_child();
  const std::size_t n = im.channels.size();
  for (std::size_t i = 0; i < n; ++i) {
    Impl::Probe& p = im.probes[i];
    if (!p.usable) {
      ok[i] = false;  // never touch a handle this process did not get from NVML
      continue;
    }
    nvmlReturn_t rc;
    if (p.counter) {
      unsigned long long mj = 0;
      rc = im.api.get_energy(p.handle, &mj);
      if (rc == kNvmlSuccess) raw[i] = static_cast<std::uint64_t>(mj);
    } else {
      unsigned int mw = 0;
      rc = im.api.get_power(p.handle, &mw);
      if (rc == kNvmlSuccess) raw[i] = mw;
    }
    ok[i] = rc == kNvmlSuccess;
    Impl::record(p, rc, Impl::stage_read);
  }
}

std::vector<NvmlPowerLimits> NvmlSource::power_limits() const {
  std::vector<NvmlPowerLimits> out;
  for (const auto& dev : impl_->devices) out.push_back(impl_->limits_of(dev));
  return out;
}

NvmlSetResult NvmlSource::set_power_limit(const std::string& domain, unsigned int limit_mw) {
  const Impl& im = *impl_;
  const auto it = std::find_if(im.devices.begin(), im.devices.end(),
                               [&](const Impl::Device& d) { return d.domain == domain; });
  if (it == im.devices.end()) {
    std::string known;
    for (const auto& d : im.devices) known += (known.empty() ? "" : ", ") + d.domain;
    return {kNvmlInvalidArgument,
            "no GPU " + domain + " here (" +
                (known.empty() ? (im.global_reason.empty() ? std::string("NVML sees no GPU")
                                                           : im.global_reason)
                               : "known: " + known) +
                "); nothing was changed"};
  }
  const NvmlPowerLimits lim = im.limits_of(*it);
  if (!lim.fixed_reason.empty()) return {kNvmlNotSupported, lim.fixed_reason + "; nothing was changed"};
  const auto watts = [](unsigned int mw) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g W", static_cast<double>(mw) / 1000.0);
    return std::string(buf);
  };
  if (limit_mw < *lim.min_mw || limit_mw > *lim.max_mw) {
    return {kNvmlInvalidArgument, domain + " (" + it->detail + ") accepts power limits from " +
                                      watts(*lim.min_mw) + " to " + watts(*lim.max_mw) + ", not " +
                                      watts(limit_mw) + "; nothing was changed"};
  }
  const nvmlReturn_t rc = im.api.set_limit(it->handle, limit_mw);
  if (rc == kNvmlSuccess) return {};
  std::string msg = "cannot set the power limit of " + domain + " (" + it->detail + ") to " +
                    watts(limit_mw) + ": " + im.describe(rc);
  if (rc == kNvmlNoPermission) {
    msg += "; changing a GPU power limit needs root: run as root (e.g. sudo), or have an "
           "administrator set it (nvidia-smi -i " + it->uuid + " -pl WATTS)";
  } else {
    msg += Impl::advice(rc);
  }
  return {rc, msg + "; nothing was changed"};
}

void NvmlSource::after_fork_in_child() noexcept {
  impl_->reopen_pending.store(true, std::memory_order_relaxed);
}

}  // namespace greenml
