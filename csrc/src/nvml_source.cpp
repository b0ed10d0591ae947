// NVIDIA GPUs through NVML. The library is dlopen'ed at run time so that
// greenml builds and runs on machines without a driver; every failure along
// the way becomes a reason in status() rather than an exception.
#include "greenml/nvml_source.hpp"

#include <dlfcn.h>
#include <time.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <exception>
#include <utility>

namespace greenml {
namespace {

// Our own spelling of the few nvml.h types we need, so that building needs
// no CUDA toolkit. The ABI is a C enum (int) and an opaque struct pointer.
using nvmlReturn_t = int;
struct nvmlDevice_st;
using nvmlDevice_t = nvmlDevice_st*;

constexpr nvmlReturn_t kNvmlSuccess = 0;
constexpr nvmlReturn_t kNvmlNotSupported = 3;

// NVML_DEVICE_UUID_V2_BUFFER_SIZE and NVML_DEVICE_NAME_V2_BUFFER_SIZE: the
// largest buffers NVML asks for, so no valid name or UUID is truncated.
constexpr unsigned int kUuidBufferSize = 96;
constexpr unsigned int kNameBufferSize = 96;

using InitFn = nvmlReturn_t (*)();
using ShutdownFn = nvmlReturn_t (*)();
using GetCountFn = nvmlReturn_t (*)(unsigned int*);
using GetHandleFn = nvmlReturn_t (*)(unsigned int, nvmlDevice_t*);
using GetStringFn = nvmlReturn_t (*)(nvmlDevice_t, char*, unsigned int);
using GetEnergyFn = nvmlReturn_t (*)(nvmlDevice_t, unsigned long long*);
using GetPowerFn = nvmlReturn_t (*)(nvmlDevice_t, unsigned int*);
using ErrorStringFn = const char* (*)(nvmlReturn_t);

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

[[nodiscard]] std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

[[nodiscard]] std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    const auto comma = s.find(',', start);
    out.push_back(trim(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
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

// One entry of the visible list: an NVML device index, or a MIG instance.
struct VisibleEntry {
  bool mig = false;
  unsigned int nvml_index = 0;
  std::string token;  // as written in CUDA_VISIBLE_DEVICES
};

// What we learn about every NVML device before applying the visible list:
// UUID matching needs all of them.
struct NvmlDeviceInfo {
  nvmlDevice_t handle = nullptr;
  nvmlReturn_t handle_rc = kNvmlSuccess;
  std::string uuid;  // empty when unknown
  nvmlReturn_t uuid_rc = kNvmlSuccess;
};

}  // namespace

struct NvmlSource::Impl {
  // Hot-path state of one channel. Atomics because status() may run on
  // another thread than read(), which the sampler calls under its lock.
  struct Probe {
    nvmlDevice_t handle = nullptr;
    bool counter = true;
    std::atomic<int> last_error{0};            // 0 = last read succeeded
    std::atomic<std::int64_t> error_since_ns{0};  // CLOCK_REALTIME of the first failure in a row
  };

  // One record of status(), with its channel when it has one.
  struct Device {
    std::string domain;
    std::string detail;
    std::string reason;  // set when the device has no channel
    int channel = -1;
    nvmlDevice_t handle = nullptr;
  };

  std::string library;
  void* lib = nullptr;
  bool initialized = false;

  ShutdownFn shutdown = nullptr;
  GetStringFn get_uuid = nullptr;
  GetStringFn get_name = nullptr;
  GetEnergyFn get_energy = nullptr;
  GetPowerFn get_power = nullptr;
  ErrorStringFn error_string = nullptr;

  std::string global_reason;  // set when nothing at all can be read
  std::vector<Device> devices;
  std::vector<ChannelInfo> channels;
  std::vector<Probe> probes;  // parallel to channels
  std::string visible_note;   // why CUDA_VISIBLE_DEVICES enumeration stopped early

  ~Impl() {
    if (initialized && shutdown != nullptr) shutdown();
    if (lib != nullptr) dlclose(lib);
  }

  template <typename Fn>
  [[nodiscard]] Fn symbol(const char* name) const noexcept {
    return reinterpret_cast<Fn>(dlsym(lib, name));
  }

  // "GPU is lost (NVML_ERROR_GPU_IS_LOST)"
  [[nodiscard]] std::string describe(nvmlReturn_t rc) const {
    if (const ErrorInfo* e = find_error(rc)) return std::string(e->text) + " (" + e->name + ")";
    const char* text = error_string != nullptr ? error_string(rc) : nullptr;
    return std::string(text != nullptr ? text : "NVML error") + " (NVML error " + std::to_string(rc) + ")";
  }

  // "; <what to do>" or nothing.
  [[nodiscard]] static std::string advice(nvmlReturn_t rc) {
    const ErrorInfo* e = find_error(rc);
    if (e == nullptr) return "; check dmesg and nvidia-smi";
    if (e->advice[0] == '\0') return {};
    return std::string("; ") + e->advice;
  }

  void open(const std::optional<std::string>& cuda_visible_devices);
  void resolve_visible(const std::optional<std::string>& cvd,
                       const std::vector<NvmlDeviceInfo>& all, std::vector<VisibleEntry>& out);
  void add_device(std::size_t position, const VisibleEntry& entry,
                  const std::vector<NvmlDeviceInfo>& all);
};

void NvmlSource::Impl::open(const std::optional<std::string>& cuda_visible_devices) {
  dlerror();  // clear any stale message so the one we report is ours
  lib = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* err = dlerror();
    global_reason = "no NVIDIA driver found: could not load " + library + " (" +
                    (err != nullptr ? err : "unknown dlopen error") +
                    "); install the NVIDIA driver, or set GREENML_NVML_LIBRARY to the path of "
                    "libnvidia-ml.so.1";
    return;
  }

  // The _v2 entry points are the ones nvml.h maps its names to since 2013;
  // a library without them is too old to trust for energy readings.
  const auto init = symbol<InitFn>("nvmlInit_v2");
  shutdown = symbol<ShutdownFn>("nvmlShutdown");
  const auto get_count = symbol<GetCountFn>("nvmlDeviceGetCount_v2");
  const auto get_handle = symbol<GetHandleFn>("nvmlDeviceGetHandleByIndex_v2");
  get_uuid = symbol<GetStringFn>("nvmlDeviceGetUUID");
  get_name = symbol<GetStringFn>("nvmlDeviceGetName");
  get_energy = symbol<GetEnergyFn>("nvmlDeviceGetTotalEnergyConsumption");
  get_power = symbol<GetPowerFn>("nvmlDeviceGetPowerUsage");
  error_string = symbol<ErrorStringFn>("nvmlErrorString");

  const std::pair<const char*, bool> required[] = {
      {"nvmlInit_v2", init != nullptr},
      {"nvmlShutdown", shutdown != nullptr},
      {"nvmlDeviceGetCount_v2", get_count != nullptr},
      {"nvmlDeviceGetHandleByIndex_v2", get_handle != nullptr},
  };
  for (const auto& [sym, present] : required) {
    if (!present) {
      global_reason = library + " lacks " + sym +
                      ": this NVIDIA driver is too old for greenml; update the NVIDIA driver";
      return;
    }
  }

  const nvmlReturn_t init_rc = init();
  if (init_rc != kNvmlSuccess) {
    global_reason = "NVML failed to initialise: " + describe(init_rc) + advice(init_rc);
    return;
  }
  initialized = true;

  unsigned int count = 0;
  const nvmlReturn_t count_rc = get_count(&count);
  if (count_rc != kNvmlSuccess) {
    global_reason = "NVML could not count the GPUs: " + describe(count_rc) + advice(count_rc);
    return;
  }

  std::vector<NvmlDeviceInfo> all(count);
  for (unsigned int i = 0; i < count; ++i) {
    auto& d = all[i];
    d.handle_rc = get_handle(i, &d.handle);
    if (d.handle_rc != kNvmlSuccess) continue;
    if (get_uuid == nullptr) {
      d.uuid_rc = 13;  // NVML_ERROR_FUNCTION_NOT_FOUND: the closest code for a missing symbol
      continue;
    }
    char buf[kUuidBufferSize] = {};
    d.uuid_rc = get_uuid(d.handle, buf, kUuidBufferSize);
    if (d.uuid_rc == kNvmlSuccess) d.uuid = buf;
  }

  std::vector<VisibleEntry> visible;
  resolve_visible(cuda_visible_devices, all, visible);

  if (visible.empty()) {
    if (!cuda_visible_devices.has_value() || count == 0) {
      global_reason =
          "no NVIDIA GPU visible: NVML found no GPU; check that nvidia-smi lists one";
    } else {
      global_reason = "no NVIDIA GPU visible: CUDA_VISIBLE_DEVICES=\"" + *cuda_visible_devices +
                      "\" hides all " + std::to_string(count) + " GPU(s) that NVML sees";
      if (!visible_note.empty()) global_reason += " (" + visible_note + ")";
      global_reason += "; unset CUDA_VISIBLE_DEVICES or list the GPUs to measure";
      visible_note.clear();
    }
    return;
  }

  for (std::size_t pos = 0; pos < visible.size(); ++pos) add_device(pos, visible[pos], all);

  probes = std::vector<Probe>(channels.size());  // Probe holds atomics: size once, fill in place
  for (const auto& dev : devices) {
    if (dev.channel < 0) continue;
    auto& probe = probes[static_cast<std::size_t>(dev.channel)];
    probe.handle = dev.handle;
    probe.counter = channels[static_cast<std::size_t>(dev.channel)].kind == ChannelKind::counter;
  }
}

// Maps CUDA_VISIBLE_DEVICES onto NVML devices the way the CUDA runtime does:
// entries are taken in order and enumeration stops at the first one that
// names no device, so the GPU a process calls cuda:<i> is our gpu:<i>.
// Sets visible_note when it stops before the end of the list.
void NvmlSource::Impl::resolve_visible(const std::optional<std::string>& cvd,
                                       const std::vector<NvmlDeviceInfo>& all,
                                       std::vector<VisibleEntry>& out) {
  if (!cvd.has_value()) {
    for (unsigned int i = 0; i < all.size(); ++i) out.push_back({false, i, std::to_string(i)});
    return;
  }
  const std::vector<std::string> tokens = split_commas(*cvd);
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    const std::string& token = tokens[t];
    std::string why;  // set when this entry stops enumeration
    VisibleEntry entry;
    entry.token = token;
    if (token.empty()) {
      why = "is empty";
    } else if (is_digits(token)) {
      // An integer is an NVML index. CUDA's own order is "fastest first"
      // unless CUDA_DEVICE_ORDER=PCI_BUS_ID, which is NVML's order; with the
      // default order the two agree only on single-model machines.
      unsigned long long idx = 0;
      bool overflow = token.size() > 9;
      if (!overflow) idx = std::stoull(token);
      if (overflow || idx >= all.size()) {
        why = "is out of range (NVML sees " + std::to_string(all.size()) + " GPU(s), indices 0.." +
              std::to_string(all.empty() ? 0 : all.size() - 1) + ")";
      } else {
        entry.nvml_index = static_cast<unsigned int>(idx);
      }
    } else if (token[0] == '-' || token[0] == '+') {
      why = "is not a GPU index or UUID";  // "-1" is the usual way to hide every GPU
    } else if (starts_with_nocase(token, "MIG-")) {
      entry.mig = true;
    } else {
      // A UUID, with or without "GPU-", or a unique prefix of one, as CUDA
      // accepts. Hex digits compare without regard to case.
      std::string needle = token;
      if (starts_with_nocase(needle, "GPU-")) needle = needle.substr(4);
      std::size_t matches = 0;
      for (unsigned int i = 0; i < all.size(); ++i) {
        std::string uuid = all[i].uuid;
        if (uuid.empty()) continue;
        if (starts_with_nocase(uuid, "GPU-")) uuid = uuid.substr(4);
        if (starts_with_nocase(uuid, needle)) {
          ++matches;
          entry.nvml_index = i;
        }
      }
      if (matches == 0) {
        why = "matches no GPU UUID NVML reports (see nvidia-smi -L)";
        if (get_uuid == nullptr) why = "cannot be matched: " + library + " lacks nvmlDeviceGetUUID";
      } else if (matches > 1) {
        why = "is a UUID prefix shared by " + std::to_string(matches) + " GPUs";
      }
    }
    if (why.empty() && !entry.mig) {
      // A GPU listed twice would count its energy twice in every total.
      for (const auto& prev : out)
        if (!prev.mig && prev.nvml_index == entry.nvml_index) why = "repeats a GPU already listed";
    }
    if (!why.empty()) {
      bool more = !token.empty();
      for (std::size_t r = t + 1; r < tokens.size(); ++r) more = more || !tokens[r].empty();
      if (more) {
        visible_note = "CUDA_VISIBLE_DEVICES entry \"" + token + "\" " + why +
                       ", so, like CUDA, greenml ignores it and every entry after it";
      }
      return;
    }
    out.push_back(entry);
  }
}

void NvmlSource::Impl::add_device(std::size_t position, const VisibleEntry& entry,
                                  const std::vector<NvmlDeviceInfo>& all) {
  Device dev;
  dev.domain = "gpu:" + std::to_string(position);
  if (entry.mig) {
    dev.reason = "CUDA_VISIBLE_DEVICES selects MIG instance " + entry.token +
                 ": MIG instances have no energy counter of their own (NVML reports energy and "
                 "power only for the whole GPU, shared by all its instances); measure on a whole "
                 "GPU (MIG disabled) to get its energy";
    devices.push_back(std::move(dev));
    return;
  }

  const NvmlDeviceInfo& info = all[entry.nvml_index];
  const std::string where = "NVML index " + std::to_string(entry.nvml_index);
  if (info.handle_rc != kNvmlSuccess) {
    dev.reason = "cannot open the GPU at " + where + ": " + describe(info.handle_rc) +
                 advice(info.handle_rc);
    devices.push_back(std::move(dev));
    return;
  }

  std::string name = "NVIDIA GPU";
  if (get_name != nullptr) {
    char buf[kNameBufferSize] = {};
    if (get_name(info.handle, buf, kNameBufferSize) == kNvmlSuccess) name = buf;
  }
  dev.handle = info.handle;
  dev.detail = name + " " + (info.uuid.empty() ? "(" + where + ")" : info.uuid);

  ChannelInfo ch;
  ch.domain = dev.domain;
  ch.source = "nvml";
  ch.measured = true;
  ch.in_total = true;
  ch.detail = dev.detail;
  ch.to_si = 1e-3;
  ch.max_raw = 0;  // a 64-bit millijoule count since driver load: never wraps in practice

  // Prefer the energy counter (Volta and newer): it integrates on the GPU
  // at its own rate, so nothing between our samples is lost.
  std::string energy_why;
  nvmlReturn_t energy_rc = kNvmlNotSupported;
  if (get_energy != nullptr) {
    unsigned long long mj = 0;
    energy_rc = get_energy(info.handle, &mj);
    if (energy_rc == kNvmlSuccess) {
      ch.kind = ChannelKind::counter;
      ch.unit = "mj";
    } else {
      energy_why = describe(energy_rc);
    }
  } else {
    energy_why = library + " lacks nvmlDeviceGetTotalEnergyConsumption";
  }

  if (energy_why.empty()) {
    dev.channel = static_cast<int>(channels.size());
    channels.push_back(std::move(ch));
    devices.push_back(std::move(dev));
    return;
  }

  // Older GPUs: sample power and let the reader integrate it.
  nvmlReturn_t power_rc = kNvmlNotSupported;
  std::string power_why;
  if (get_power != nullptr) {
    unsigned int mw = 0;
    power_rc = get_power(info.handle, &mw);
    if (power_rc == kNvmlSuccess) {
      ch.kind = ChannelKind::power;
      ch.unit = "mw";
      dev.channel = static_cast<int>(channels.size());
      channels.push_back(std::move(ch));
      devices.push_back(std::move(dev));
      return;
    }
    power_why = describe(power_rc);
  } else {
    power_why = library + " lacks nvmlDeviceGetPowerUsage";
  }

  dev.reason = "cannot read " + dev.detail + ": energy counter: " + energy_why +
               "; power: " + power_why;
  if (get_energy == nullptr || get_power == nullptr) {
    dev.reason += "; update the NVIDIA driver";
  } else if (energy_rc == kNvmlNotSupported && power_rc == kNvmlNotSupported) {
    dev.reason += "; this GPU model has no power sensor NVML can read, so it cannot be measured";
  } else {
    dev.reason += advice(power_rc != kNvmlNotSupported ? power_rc : energy_rc);
  }
  devices.push_back(std::move(dev));
}

NvmlSource::NvmlSource(const std::string& library,
                       const std::optional<std::string>& cuda_visible_devices)
    : impl_(std::make_unique<Impl>()) {
  impl_->library = library;
  try {
    impl_->open(cuda_visible_devices);
  } catch (const std::exception& e) {
    // Only allocation can throw here; keep the promise of never throwing.
    impl_->devices.clear();
    impl_->channels.clear();
    impl_->probes.clear();
    impl_->visible_note.clear();
    impl_->global_reason = std::string("internal error while probing NVML: ") + e.what();
  }
}

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
      const int err = probe.last_error.load(std::memory_order_acquire);
      if (err == kNvmlSuccess) {
        st.available = true;
      } else {
        const std::int64_t since = probe.error_since_ns.load(std::memory_order_relaxed);
        st.reason = im.describe(err) + " since " + format_since(since) + ": reading its " +
                    (probe.counter ? "energy counter" : "power") + " fails" + Impl::advice(err);
      }
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
  const std::size_t n = im.channels.size();
  for (std::size_t i = 0; i < n; ++i) {
    Impl::Probe& p = im.probes[i];
    nvmlReturn_t rc;
    if (p.counter) {
      unsigned long long mj = 0;
      rc = im.get_energy(p.handle, &mj);
      if (rc == kNvmlSuccess) raw[i] = static_cast<std::uint64_t>(mj);
    } else {
      unsigned int mw = 0;
      rc = im.get_power(p.handle, &mw);
      if (rc == kNvmlSuccess) raw[i] = mw;
    }
    ok[i] = rc == kNvmlSuccess;
    if (rc == kNvmlSuccess) {
      if (p.last_error.load(std::memory_order_relaxed) != kNvmlSuccess)
        p.last_error.store(kNvmlSuccess, std::memory_order_release);
    } else {
      // Keep the time of the first failure in a row: "lost since" matters,
      // not when we last noticed.
      if (p.last_error.load(std::memory_order_relaxed) == kNvmlSuccess)
        p.error_since_ns.store(realtime_ns(), std::memory_order_relaxed);
      p.last_error.store(rc, std::memory_order_release);
    }
  }
}

}  // namespace greenml
