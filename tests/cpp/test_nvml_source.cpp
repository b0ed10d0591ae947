// NvmlSource against the scripted fake libnvidia-ml (tests/fakes/fake_nvml.c).
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <atomic>
#include <utility>
#include <vector>

#include <doctest.h>

#include "greenml/nvml_source.hpp"

#ifndef GREENML_FAKE_NVML_PATH
#error "GREENML_FAKE_NVML_PATH must name the fake libnvidia-ml.so.1 built from tests/fakes/fake_nvml.c"
#endif

namespace fs = std::filesystem;
using greenml::ChannelKind;
using greenml::CudaDeviceOrder;
using greenml::DomainStatus;
using greenml::NvmlOptions;
using greenml::NvmlSource;

namespace {

const std::string kLib = GREENML_FAKE_NVML_PATH;
const std::string kUuid0 = "GPU-aaaaaaaa-1111-4111-8111-111111111111";
const std::string kUuid1 = "GPU-aabbbbbb-2222-4222-8222-222222222222";
const std::string kUuid2 = "GPU-cccccccc-3333-4333-8333-333333333333";

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// The fake with CUDA_DEVICE_ORDER=PCI_BUS_ID, for tests of machines with
// mixed GPU models that are not about CUDA's numbering.
NvmlOptions pci_order(std::optional<std::string> cvd = std::nullopt) {
  NvmlOptions o;
  o.library = kLib;
  o.cuda_visible_devices = std::move(cvd);
  o.cuda_device_order = CudaDeviceOrder::pci_bus_id;
  return o;
}

// A scripted fake: a fresh directory named by FAKE_NVML_DIR for one test.
class FakeNvml {
 public:
  FakeNvml() {
    std::string tmpl = (fs::temp_directory_path() / "greenml-fake-nvml-XXXXXX").string();
    dir_ = ::mkdtemp(tmpl.data());
    ::setenv("FAKE_NVML_DIR", dir_.c_str(), 1);
    write("count", "0");
  }
  ~FakeNvml() {
    ::unsetenv("FAKE_NVML_DIR");
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  FakeNvml(const FakeNvml&) = delete;
  FakeNvml& operator=(const FakeNvml&) = delete;

  // Written to a temporary then renamed, so the fake never reads half a file.
  void write(const std::string& rel, const std::string& text) {
    const fs::path path = dir_ / rel;
    fs::create_directories(path.parent_path());
    const fs::path tmp = path.string() + ".tmp";
    { std::ofstream(tmp) << text << "\n"; }
    fs::rename(tmp, path);
  }
  void remove(const std::string& rel) { fs::remove(dir_ / rel); }
  void set(int device, const std::string& file, const std::string& text) {
    write(std::to_string(device) + "/" + file, text);
  }

  // energy_mj < 0 or power_mw < 0: that reading is not supported.
  int add_device(const std::string& uuid, const std::string& name, long long energy_mj,
                 long long power_mw) {
    const int i = count_++;
    set(i, "uuid", uuid);
    set(i, "name", name);
    if (energy_mj >= 0) set(i, "energy_mj", std::to_string(energy_mj));
    if (power_mw >= 0) set(i, "power_mw", std::to_string(power_mw));
    write("count", std::to_string(count_));
    return i;
  }

  // From now on every NVML call appends "<pid> <call>" to calls.log.
  void log_calls() { std::ofstream(dir_ / "calls.log").flush(); }
  // The calls process `pid` made, in order.
  std::vector<std::string> calls_of(long pid) const {
    std::ifstream in(dir_ / "calls.log");
    std::vector<std::string> out;
    long who = 0;
    std::string call;
    while (in >> who >> call)
      if (who == pid) out.push_back(call);
    return out;
  }

  // The standard three-GPU machine used by the visibility tests.
  void three_gpus() {
    add_device(kUuid0, "NVIDIA A100-SXM4-40GB", 1000, 50000);
    add_device(kUuid1, "NVIDIA A100-SXM4-40GB", 2000, 60000);
    add_device(kUuid2, "NVIDIA A100-SXM4-40GB", 3000, 70000);
  }

 private:
  fs::path dir_;
  int count_ = 0;
};

struct Reading {
  std::vector<std::uint64_t> raw;
  std::vector<char> ok;  // copied from a bool array: vector<bool> has no data()
};

Reading read_all(NvmlSource& src) {
  const std::size_t n = src.channels().size();
  Reading r;
  r.raw.assign(n, 0xdeadbeefULL);
  r.ok.assign(n, 0);
  bool ok_buf[64] = {};
  REQUIRE(n <= 64);
  src.read(r.raw.data(), ok_buf);
  for (std::size_t i = 0; i < n; ++i) r.ok[i] = ok_buf[i] ? 1 : 0;
  return r;
}

const DomainStatus* find_status(const std::vector<DomainStatus>& all, const std::string& domain) {
  for (const auto& s : all)
    if (s.domain == domain) return &s;
  return nullptr;
}

// The fake's init count (nvmlInit minus nvmlShutdown) through its test hook.
// Holding our own handle keeps the library, and so its counter, loaded.
class InitCounter {
 public:
  explicit InitCounter(const std::string& lib) : handle_(::dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL)) {
    REQUIRE(handle_ != nullptr);
    fn_ = reinterpret_cast<int (*)()>(::dlsym(handle_, "fake_nvml_init_count"));
    REQUIRE((fn_ != nullptr));
  }
  ~InitCounter() { ::dlclose(handle_); }
  InitCounter(const InitCounter&) = delete;
  InitCounter& operator=(const InitCounter&) = delete;
  int operator()() const { return fn_(); }

 private:
  void* handle_;
  int (*fn_)() = nullptr;
};

// Builds a variant of the fake with extra -D flags; empty when no C compiler.
std::string build_variant(const std::string& defines, const std::string& tag) {
#ifdef GREENML_FAKE_NVML_SOURCE
  const fs::path source = GREENML_FAKE_NVML_SOURCE;
#else
  const fs::path source = fs::path(__FILE__).parent_path().parent_path() / "fakes" / "fake_nvml.c";
#endif
  if (!fs::exists(source)) return {};
  std::string tmpl = (fs::temp_directory_path() / ("greenml-fake-nvml-" + tag + "-XXXXXX")).string();
  if (::mkdtemp(tmpl.data()) == nullptr) return {};
  const std::string out = tmpl + "/libnvidia-ml.so.1";
  const std::string cmd = "cc -shared -fPIC -O2 " + defines + " '" + source.string() + "' -o '" +
                          out + "' -lm > /dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) return {};
  return out;
}

// Runs fn in a forked child; returns the child's pid and fn's result as its
// exit status (-1 when it did not exit normally). The child leaves with
// _Exit so that nothing of the parent's (doctest, destructors) runs twice.
std::pair<long, int> in_child(const std::function<int()>& fn) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int code = 99;
    try {
      code = fn();
    } catch (...) {
    }
    std::_Exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return {static_cast<long>(pid), WIFEXITED(status) ? WEXITSTATUS(status) : -1};
}

long count_of(const std::vector<std::string>& calls, const std::string& call) {
  long n = 0;
  for (const auto& c : calls) n += c == call ? 1 : 0;
  return n;
}

// NVML index order is not PCI order here, and the models differ:
// NVML 0 is a T4 at bus 0x81, NVML 1 and 2 are A100s at 0x01 and 0x41.
void mixed_machine(FakeNvml& fake) {
  fake.add_device(kUuid0, "Tesla T4", 1000, 1);
  fake.set(0, "pci_bus_id", "0000:81:00.0");
  fake.add_device(kUuid1, "NVIDIA A100-SXM4-40GB", 2000, 1);
  fake.set(1, "pci_bus_id", "0000:01:00.0");
  fake.add_device(kUuid2, "NVIDIA A100-SXM4-40GB", 3000, 1);
  fake.set(2, "pci_bus_id", "0000:41:00.0");
}

}  // namespace

TEST_CASE("nvml: a library that cannot be loaded is one unavailable gpu record") {
  NvmlSource src("/nonexistent/greenml/libnvidia-ml.so.1", std::nullopt);
  CHECK(src.channels().empty());
  CHECK(src.name() == "nvml");
  const auto st = src.status();
  REQUIRE(st.size() == 1);
  CHECK(st[0].domain == "gpu");
  CHECK(st[0].source == "nvml");
  CHECK_FALSE(st[0].available);
  CHECK(contains(st[0].reason, "no NVIDIA driver found"));
  CHECK(contains(st[0].reason, "could not load /nonexistent/greenml/libnvidia-ml.so.1 ("));
  CHECK(contains(st[0].reason, "install the NVIDIA driver"));
  CHECK_FALSE(contains(st[0].reason, "GREENML"));  // the core knows no configuration names
  // read() on zero channels is a no-op, not a crash.
  src.read(nullptr, nullptr);
}

TEST_CASE("nvml: the caller's load hint ends the reason when the library cannot be loaded") {
  NvmlOptions o;
  o.library = "/nonexistent/greenml/libnvidia-ml.so.1";
  o.load_hint = "point SOME_SETTING at libnvidia-ml.so.1";
  NvmlSource src(o);
  const auto st = src.status();
  REQUIRE(st.size() == 1);
  CHECK(contains(st[0].reason, "install the NVIDIA driver, or point SOME_SETTING at libnvidia-ml.so.1"));
}

TEST_CASE("nvml: nvmlInit failing is one unavailable gpu record with the error") {
  FakeNvml fake;
  fake.add_device(kUuid0, "NVIDIA H100", 5, 5);
  fake.write("init_error", "9");
  InitCounter inits(kLib);
  NvmlSource src(kLib, std::nullopt);
  CHECK(src.channels().empty());
  const auto st = src.status();
  REQUIRE(st.size() == 1);
  CHECK(st[0].domain == "gpu");
  CHECK_FALSE(st[0].available);
  CHECK(contains(st[0].reason, "NVML failed to initialise"));
  CHECK(contains(st[0].reason, "NVML_ERROR_DRIVER_NOT_LOADED"));
  CHECK(contains(st[0].reason, "modprobe nvidia"));
  CHECK(inits() == 0);
}

TEST_CASE("nvml: zero devices is one gpu record saying none is visible") {
  FakeNvml fake;
  NvmlSource src(kLib, std::nullopt);
  CHECK(src.channels().empty());
  const auto st = src.status();
  REQUIRE(st.size() == 1);
  CHECK(st[0].domain == "gpu");
  CHECK_FALSE(st[0].available);
  CHECK(contains(st[0].reason, "no NVIDIA GPU visible"));
  CHECK_FALSE(contains(st[0].reason, "CUDA_VISIBLE_DEVICES"));
}

TEST_CASE("nvml: two devices with energy counters read exactly the written millijoules") {
  FakeNvml fake;
  fake.add_device(kUuid0, "NVIDIA H100 80GB HBM3", 123456789012LL, 300000);
  fake.add_device(kUuid1, "NVIDIA A100-SXM4-40GB", 7, 90000);
  InitCounter inits(kLib);
  {
    NvmlSource src(pci_order());
    CHECK(inits() == 1);  // NVML stays initialised while the source lives
    const auto& ch = src.channels();
    REQUIRE(ch.size() == 2);
    CHECK(ch[0].domain == "gpu:0");
    CHECK(ch[1].domain == "gpu:1");
    for (const auto& c : ch) {
      CHECK(c.source == "nvml");
      CHECK(c.measured);
      CHECK(c.in_total);
      CHECK(c.kind == ChannelKind::counter);
      CHECK(c.unit == "mj");
      CHECK(c.to_si == doctest::Approx(1e-3));
      CHECK(c.max_raw == 0);
    }
    CHECK(ch[0].detail == "NVIDIA H100 80GB HBM3 " + kUuid0);
    CHECK(ch[1].detail == "NVIDIA A100-SXM4-40GB " + kUuid1);

    auto r = read_all(src);
    CHECK(r.ok[0]);
    CHECK(r.ok[1]);
    CHECK(r.raw[0] == 123456789012ULL);
    CHECK(r.raw[1] == 7ULL);

    // Nothing is cached: a new counter value is read on the next call.
    fake.set(1, "energy_mj", "7000");
    r = read_all(src);
    CHECK(r.raw[1] == 7000ULL);

    const auto st = src.status();
    REQUIRE(st.size() == 2);
    for (const auto& s : st) {
      CHECK(s.available);
      CHECK(s.reason.empty());
      CHECK(s.source == "nvml");
    }
  }
  CHECK(inits() == 0);  // nvmlShutdown in the destructor
}

TEST_CASE("nvml: a device without the energy counter falls back to power in mW") {
  FakeNvml fake;
  fake.add_device(kUuid0, "Tesla T4", 100, 70000);
  fake.add_device(kUuid1, "Tesla P100", 100, 123456);
  fake.set(1, "energy_error", "3");  // NOT_SUPPORTED, like pre-Volta GPUs
  NvmlSource src(pci_order());
  const auto& ch = src.channels();
  REQUIRE(ch.size() == 2);
  CHECK(ch[0].kind == ChannelKind::counter);
  CHECK(ch[1].kind == ChannelKind::power);
  CHECK(ch[1].unit == "mw");
  CHECK(ch[1].to_si == doctest::Approx(1e-3));
  CHECK(ch[1].domain == "gpu:1");
  const auto r = read_all(src);
  CHECK(r.ok[1]);
  CHECK(r.raw[1] == 123456ULL);
  CHECK(r.raw[0] == 100ULL);
}

TEST_CASE("nvml: a device with neither energy nor power is a reason, others keep working") {
  FakeNvml fake;
  fake.add_device(kUuid0, "GeForce GT 710", -1, -1);
  fake.add_device(kUuid1, "NVIDIA A100", 42, 1);
  NvmlSource src(pci_order());
  const auto& ch = src.channels();
  REQUIRE(ch.size() == 1);
  CHECK(ch[0].domain == "gpu:1");
  const auto r = read_all(src);
  CHECK(r.ok[0]);
  CHECK(r.raw[0] == 42ULL);
  const auto st = src.status();
  REQUIRE(st.size() == 2);
  CHECK(st[0].domain == "gpu:0");
  CHECK_FALSE(st[0].available);
  CHECK(contains(st[0].reason, "GeForce GT 710"));
  CHECK(contains(st[0].reason, "NVML_ERROR_NOT_SUPPORTED"));
  CHECK(contains(st[0].reason, "cannot be measured"));
  CHECK(st[1].available);
}

TEST_CASE("nvml: a device NVML cannot open is a reason on that device only") {
  FakeNvml fake;
  fake.add_device(kUuid0, "NVIDIA A100", 1, 1);
  fake.add_device(kUuid1, "NVIDIA A100", 2, 2);
  fake.set(0, "handle_error", "4");  // NO_PERMISSION
  NvmlSource src(pci_order());  // its model is unknown, so CUDA's default order would be too
  REQUIRE(src.channels().size() == 1);
  CHECK(src.channels()[0].domain == "gpu:1");
  const auto st = src.status();
  REQUIRE(st.size() == 2);
  CHECK_FALSE(st[0].available);
  CHECK(contains(st[0].reason, "NVML_ERROR_NO_PERMISSION"));
  CHECK(contains(st[0].reason, "/dev/nvidia"));
  CHECK(st[1].available);
  const auto r = read_all(src);
  CHECK(r.raw[0] == 2ULL);
}

TEST_CASE("nvml: GPU lost mid-run fails that device only and status says so") {
  FakeNvml fake;
  fake.add_device(kUuid0, "NVIDIA H100", 1000, 1);
  fake.add_device(kUuid1, "NVIDIA H100", 2000, 1);
  NvmlSource src(kLib, std::nullopt);
  REQUIRE(src.channels().size() == 2);
  auto r = read_all(src);
  CHECK(r.ok[0]);
  CHECK(r.ok[1]);

  fake.set(1, "energy_error", "15");  // GPU_IS_LOST
  fake.set(0, "energy_mj", "1500");
  r = read_all(src);
  CHECK(r.ok[0]);
  CHECK(r.raw[0] == 1500ULL);
  CHECK_FALSE(r.ok[1]);
  CHECK(r.raw[1] == 0xdeadbeefULL);  // left unchanged on failure

  auto st = src.status();
  REQUIRE(st.size() == 2);
  CHECK(st[0].available);
  CHECK(st[1].domain == "gpu:1");
  CHECK_FALSE(st[1].available);
  CHECK(contains(st[1].reason, "GPU is lost (NVML_ERROR_GPU_IS_LOST) since "));
  CHECK(contains(st[1].reason, " UTC ("));
  CHECK(contains(st[1].reason, "nvidia-smi"));

  // A second failure keeps reporting the first one's time.
  const std::string first = st[1].reason;
  r = read_all(src);
  CHECK_FALSE(r.ok[1]);
  CHECK(contains(src.status()[1].reason, first.substr(0, first.find(" UTC"))));

  // Recovery clears the reason.
  fake.remove("1/energy_error");
  r = read_all(src);
  CHECK(r.ok[1]);
  CHECK(r.raw[1] == 2000ULL);
  st = src.status();
  CHECK(st[1].available);
  CHECK(st[1].reason.empty());
}

TEST_CASE("nvml: status() from another thread while read() runs is race-free") {
  FakeNvml fake;
  fake.add_device(kUuid0, "NVIDIA H100", 1, 1);
  fake.add_device(kUuid1, "NVIDIA H100", 2, 2);
  NvmlSource src(kLib, std::nullopt);
  REQUIRE(src.channels().size() == 2);
  std::atomic<bool> stop{false};
  std::atomic<int> lost_seen{0};
  std::thread watcher([&] {
    while (!stop.load()) {
      for (const auto& s : src.status())
        if (!s.available && contains(s.reason, "GPU_IS_LOST")) lost_seen.fetch_add(1);
    }
  });
  for (int i = 0; i < 200; ++i) {
    if (i == 50) fake.set(0, "energy_error", "15");
    if (i == 150) fake.remove("0/energy_error");
    const auto r = read_all(src);
    CHECK(r.ok[1]);
    CHECK(static_cast<bool>(r.ok[0]) == (i < 50 || i >= 150));
  }
  stop.store(true);
  watcher.join();
  CHECK(src.status()[0].available);
}

TEST_CASE("nvml: a power channel that starts failing reports its NVML error") {
  FakeNvml fake;
  fake.add_device(kUuid0, "Tesla P100", -1, 250000);
  NvmlSource src(kLib, std::nullopt);
  REQUIRE(src.channels().size() == 1);
  CHECK(src.channels()[0].kind == ChannelKind::power);
  fake.set(0, "power_error", "4");
  const auto r = read_all(src);
  CHECK_FALSE(r.ok[0]);
  const auto st = src.status();
  REQUIRE(st.size() == 1);
  CHECK_FALSE(st[0].available);
  CHECK(contains(st[0].reason, "NVML_ERROR_NO_PERMISSION"));
  CHECK(contains(st[0].reason, "power"));
}

TEST_CASE("nvml: CUDA_VISIBLE_DEVICES maps gpu:<i> to the process's order") {
  FakeNvml fake;
  fake.three_gpus();

  SUBCASE("indices reorder") {
    NvmlSource src(kLib, std::string("1,0"));
    const auto& ch = src.channels();
    REQUIRE(ch.size() == 2);
    CHECK(ch[0].domain == "gpu:0");
    CHECK(contains(ch[0].detail, kUuid1));
    CHECK(ch[1].domain == "gpu:1");
    CHECK(contains(ch[1].detail, kUuid0));
    const auto r = read_all(src);
    CHECK(r.raw[0] == 2000ULL);
    CHECK(r.raw[1] == 1000ULL);
    CHECK(src.status().size() == 2);
  }
  SUBCASE("whitespace around entries is ignored") {
    NvmlSource src(kLib, std::string(" 2 , 0 "));
    const auto r = read_all(src);
    REQUIRE(r.raw.size() == 2);
    CHECK(r.raw[0] == 3000ULL);
    CHECK(r.raw[1] == 1000ULL);
  }
  SUBCASE("full UUIDs map by UUID") {
    NvmlSource src(kLib, kUuid2 + "," + kUuid0);
    const auto r = read_all(src);
    REQUIRE(r.raw.size() == 2);
    CHECK(r.raw[0] == 3000ULL);
    CHECK(r.raw[1] == 1000ULL);
  }
  SUBCASE("a unique UUID prefix matches, with or without GPU-, in any case") {
    NvmlSource src(kLib, std::string("GPU-aab,CCCC,aaaaaaaa-1111"));
    const auto r = read_all(src);
    REQUIRE(r.raw.size() == 3);
    CHECK(r.raw[0] == 2000ULL);
    CHECK(r.raw[1] == 3000ULL);
    CHECK(r.raw[2] == 1000ULL);
  }
  SUBCASE("an ambiguous prefix stops enumeration") {
    NvmlSource src(kLib, std::string("2,GPU-aa,0"));
    const auto& ch = src.channels();
    REQUIRE(ch.size() == 1);
    CHECK(contains(ch[0].detail, kUuid2));
    const auto st = src.status();
    REQUIRE(st.size() == 2);
    CHECK(st[1].domain == "gpu");
    CHECK_FALSE(st[1].available);
    CHECK(contains(st[1].reason, "GPU-aa"));
    CHECK(contains(st[1].reason, "shared by 2 GPUs"));
  }
  SUBCASE("an invalid entry stops enumeration like CUDA") {
    NvmlSource src(kLib, std::string("0,7,1"));
    const auto& ch = src.channels();
    REQUIRE(ch.size() == 1);
    CHECK(ch[0].domain == "gpu:0");
    CHECK(contains(ch[0].detail, kUuid0));
    const auto st = src.status();
    REQUIRE(st.size() == 2);
    CHECK(st[0].available);
    const DomainStatus* note = find_status(st, "gpu");
    REQUIRE(note != nullptr);
    CHECK_FALSE(note->available);
    CHECK(contains(note->reason, "\"7\""));
    CHECK(contains(note->reason, "out of range"));
    CHECK(contains(note->reason, "every entry after it"));
  }
  SUBCASE("an unknown UUID stops enumeration") {
    NvmlSource src(kLib, std::string("GPU-ffff,0"));
    CHECK(src.channels().empty());
    const auto st = src.status();
    REQUIRE(st.size() == 1);
    CHECK(st[0].domain == "gpu");
    CHECK(contains(st[0].reason, "no NVIDIA GPU visible"));
    CHECK(contains(st[0].reason, "GPU-ffff"));
  }
  SUBCASE("a GPU listed twice is counted once") {
    NvmlSource src(kLib, std::string("1,GPU-aab"));
    REQUIRE(src.channels().size() == 1);
    CHECK(contains(src.channels()[0].detail, kUuid1));
  }
  SUBCASE("a trailing comma is not worth a note") {
    NvmlSource src(kLib, std::string("0,1,"));
    CHECK(src.channels().size() == 2);
    CHECK(src.status().size() == 2);
  }
  SUBCASE("an empty value hides every GPU") {
    NvmlSource src(kLib, std::string(""));
    CHECK(src.channels().empty());
    const auto st = src.status();
    REQUIRE(st.size() == 1);
    CHECK(st[0].domain == "gpu");
    CHECK_FALSE(st[0].available);
    CHECK(contains(st[0].reason, "no NVIDIA GPU visible"));
    CHECK(contains(st[0].reason, "CUDA_VISIBLE_DEVICES"));
    CHECK(contains(st[0].reason, "all 3 GPU(s)"));
  }
  SUBCASE("-1 hides every GPU") {
    NvmlSource src(kLib, std::string("-1"));
    CHECK(src.channels().empty());
    const auto st = src.status();
    REQUIRE(st.size() == 1);
    CHECK(contains(st[0].reason, "CUDA_VISIBLE_DEVICES=\"-1\""));
  }
  SUBCASE("a MIG instance no GPU has is a reason, not a crash") {
    NvmlSource src(kLib, std::string("MIG-4f5e6d7c-1234-5678-9abc-def012345678"));
    CHECK(src.channels().empty());
    const auto st = src.status();
    REQUIRE(st.size() == 1);
    CHECK(st[0].domain == "gpu:0");
    CHECK_FALSE(st[0].available);
    CHECK(contains(st[0].reason, "MIG instance MIG-4f5e6d7c"));
    CHECK(contains(st[0].reason, "not found (NVML_ERROR_NOT_FOUND)"));
    src.read(nullptr, nullptr);
  }
  SUBCASE("unset means every GPU in NVML order") {
    NvmlSource src(kLib, std::nullopt);
    const auto r = read_all(src);
    REQUIRE(r.raw.size() == 3);
    CHECK(r.raw[0] == 1000ULL);
    CHECK(r.raw[2] == 3000ULL);
  }
}

TEST_CASE("nvml: the fake's time-driven profile moves only every update_ms") {
  FakeNvml fake;
  fake.add_device(kUuid0, "NVIDIA H100", 0, 0);
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const long long now_ns = static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
  // 100 W constant, counter updated every 100 ms, started 10 s ago: the
  // counter is a multiple of 100 W * 0.1 s = 10 J and about 1000 J.
  fake.set(0, "profile", "100 0 0 100 " + std::to_string(now_ns - 10000000000LL));
  NvmlSource src(kLib, std::nullopt);
  REQUIRE(src.channels().size() == 1);
  const auto r = read_all(src);
  CHECK(r.ok[0]);
  CHECK(r.raw[0] % 10000 == 0);
  CHECK(r.raw[0] >= 1000000ULL);
  CHECK(r.raw[0] <= 1100000ULL);

  fake.set(0, "energy_error", "3");
  NvmlSource power(kLib, std::nullopt);
  REQUIRE(power.channels().size() == 1);
  CHECK(power.channels()[0].kind == ChannelKind::power);
  const auto p = read_all(power);
  CHECK(p.raw[0] == 100000ULL);  // mean of a constant 100 W over the last second
}

TEST_CASE("nvml: a library without the energy symbol falls back to power") {
  const std::string lib = build_variant("-DFAKE_NVML_NO_ENERGY", "noenergy");
  if (lib.empty()) {
    MESSAGE("skipped: could not build the fake variant (no cc or no source)");
    return;
  }
  FakeNvml fake;
  fake.add_device(kUuid0, "Tesla K80", 999, 149000);
  NvmlSource src(lib, std::nullopt);
  REQUIRE(src.channels().size() == 1);
  CHECK(src.channels()[0].kind == ChannelKind::power);
  const auto r = read_all(src);
  CHECK(r.ok[0]);
  CHECK(r.raw[0] == 149000ULL);
  CHECK(src.status()[0].available);
  fs::remove_all(fs::path(lib).parent_path());
}

TEST_CASE("nvml: a library without the _v2 entry points is a reason") {
  const std::string lib = build_variant("-DFAKE_NVML_NO_V2", "nov2");
  if (lib.empty()) {
    MESSAGE("skipped: could not build the fake variant (no cc or no source)");
    return;
  }
  FakeNvml fake;
  fake.add_device(kUuid0, "NVIDIA A100", 1, 1);
  NvmlSource src(lib, std::nullopt);
  CHECK(src.channels().empty());
  const auto st = src.status();
  REQUIRE(st.size() == 1);
  CHECK(st[0].domain == "gpu");
  CHECK_FALSE(st[0].available);
  CHECK(contains(st[0].reason, "lacks nvmlInit_v2"));
  CHECK(contains(st[0].reason, "update the NVIDIA driver"));
  fs::remove_all(fs::path(lib).parent_path());
}

// ---------------------------------------------------------------- CUDA order

TEST_CASE("nvml: with CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA indices follow PCI bus order") {
  FakeNvml fake;
  mixed_machine(fake);
  SUBCASE("unset CUDA_VISIBLE_DEVICES lists every GPU in bus order") {
    NvmlSource src(pci_order());
    const auto r = read_all(src);
    REQUIRE(r.raw.size() == 3);
    CHECK(r.raw[0] == 2000ULL);  // bus 0x01
    CHECK(r.raw[1] == 3000ULL);  // bus 0x41
    CHECK(r.raw[2] == 1000ULL);  // bus 0x81
    CHECK(contains(src.channels()[2].detail, "Tesla T4"));
  }
  SUBCASE("indices name positions in bus order") {
    NvmlSource src(pci_order(std::string("2,0")));
    const auto r = read_all(src);
    REQUIRE(r.raw.size() == 2);
    CHECK(r.raw[0] == 1000ULL);
    CHECK(r.raw[1] == 2000ULL);
  }
}

TEST_CASE("nvml: with CUDA's default order, mixed models make CUDA indices a reason, not a guess") {
  FakeNvml fake;
  mixed_machine(fake);
  NvmlOptions o;
  o.library = kLib;
  SUBCASE("unset CUDA_VISIBLE_DEVICES: every GPU is a reason") {
    NvmlSource src(o);
    CHECK(src.channels().empty());
    const auto st = src.status();
    REQUIRE(st.size() == 3);
    for (int i = 0; i < 3; ++i) {
      CHECK(st[static_cast<std::size_t>(i)].domain == "gpu:" + std::to_string(i));
      CHECK_FALSE(st[static_cast<std::size_t>(i)].available);
    }
    CHECK(contains(st[1].reason, "gpu:1 is CUDA device 1"));
    CHECK(contains(st[1].reason, "Tesla T4"));
    CHECK(contains(st[1].reason, "NVIDIA A100-SXM4-40GB"));
    CHECK(contains(st[1].reason, "set CUDA_DEVICE_ORDER=PCI_BUS_ID"));
    CHECK(contains(st[1].reason, "by UUID"));
  }
  SUBCASE("UUID entries stay exact beside an index that is a reason") {
    o.cuda_visible_devices = "GPU-cccc,1";
    o.order_hint = "or ask the runtime";
    NvmlSource src(o);
    REQUIRE(src.channels().size() == 1);
    CHECK(src.channels()[0].domain == "gpu:0");
    CHECK(read_all(src).raw[0] == 3000ULL);
    const auto st = src.status();
    REQUIRE(st.size() == 2);
    CHECK(st[0].available);
    CHECK_FALSE(st[1].available);
    CHECK(contains(st[1].reason, "CUDA_VISIBLE_DEVICES entry \"1\" names CUDA device 1"));
    CHECK(contains(st[1].reason, ", or or ask the runtime"));
  }
  SUBCASE("an index listed twice still stops enumeration") {
    o.cuda_visible_devices = "0,0";
    NvmlSource src(o);
    const auto st = src.status();
    REQUIRE(st.size() == 2);
    CHECK(st[0].domain == "gpu:0");
    const DomainStatus* note = find_status(st, "gpu");
    REQUIRE(note != nullptr);
    CHECK(contains(note->reason, "repeats a GPU already listed"));
  }
  SUBCASE("an out-of-range index is out of range whatever the order") {
    o.cuda_visible_devices = "5";
    NvmlSource src(o);
    const auto st = src.status();
    REQUIRE(st.size() == 1);
    CHECK(contains(st[0].reason, "hides all 3 GPU(s)"));
  }
}

TEST_CASE("nvml: with CUDA's default order, one model means PCI bus order") {
  FakeNvml fake;
  mixed_machine(fake);
  fake.set(0, "name", "NVIDIA A100-SXM4-40GB");
  NvmlSource src(kLib, std::string("0,2"));
  const auto r = read_all(src);
  REQUIRE(r.raw.size() == 2);
  CHECK(r.raw[0] == 2000ULL);  // bus 0x01 is CUDA device 0, though NVML calls it 1
  CHECK(r.raw[1] == 1000ULL);  // bus 0x81
}

TEST_CASE("nvml: the CUDA runtime's UUIDs decide gpu:<i> outright") {
  FakeNvml fake;
  mixed_machine(fake);
  NvmlOptions o;
  o.library = kLib;
  SUBCASE("with or without the GPU- prefix, in any case") {
    o.cuda_uuids = std::vector<std::string>{"CCCCCCCC-3333-4333-8333-333333333333", kUuid0};
    NvmlSource src(o);
    const auto r = read_all(src);
    REQUIRE(r.raw.size() == 2);
    CHECK(r.raw[0] == 3000ULL);
    CHECK(r.raw[1] == 1000ULL);
    CHECK(src.status().size() == 2);
  }
  SUBCASE("a UUID prefix is not enough: the runtime gives whole UUIDs") {
    o.cuda_uuids = std::vector<std::string>{"GPU-cccccccc"};
    NvmlSource src(o);
    CHECK(src.channels().empty());
    const auto st = src.status();
    REQUIRE(st.size() == 1);
    CHECK(st[0].domain == "gpu:0");
    CHECK(contains(st[0].reason, "cuda:0 has UUID GPU-cccccccc"));
  }
  SUBCASE("a MIG instance no GPU has is a reason") {
    o.cuda_uuids = std::vector<std::string>{kUuid1, "MIG-4f5e6d7c-1234-5678-9abc-def012345678"};
    NvmlSource src(o);
    REQUIRE(src.channels().size() == 1);
    const auto st = src.status();
    REQUIRE(st.size() == 2);
    CHECK(contains(st[1].reason, "cuda:1 is MIG instance"));
  }
  SUBCASE("a runtime that sees no GPU") {
    o.cuda_uuids = std::vector<std::string>{};
    NvmlSource src(o);
    const auto st = src.status();
    REQUIRE(st.size() == 1);
    CHECK(st[0].domain == "gpu");
    CHECK(contains(st[0].reason, "the CUDA runtime sees no GPU"));
  }
}

// ---------------------------------------------------------------- MIG

namespace {
const std::string kMigA = "MIG-11111111-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
const std::string kMigB = "MIG-22222222-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
const std::string kMigC = "MIG-33333333-cccc-4ccc-8ccc-cccccccccccc";
}  // namespace

TEST_CASE("nvml: a MIG instance reports its whole GPU, once however many instances are selected") {
  FakeNvml fake;
  fake.three_gpus();
  fake.set(1, "mig_uuids", kMigA + "\n" + kMigB);
  fake.set(2, "mig_uuids", kMigC);
  SUBCASE("one instance: the parent's counter, labelled whole-GPU") {
    NvmlSource src(kLib, kMigB);
    const auto& ch = src.channels();
    REQUIRE(ch.size() == 1);
    CHECK(ch[0].domain == "gpu:0");
    CHECK(ch[0].uuid == kUuid1);
    CHECK(contains(ch[0].detail, "whole GPU NVIDIA A100-SXM4-40GB " + kUuid1));
    CHECK(contains(ch[0].detail, "MIG instance " + kMigB));
    CHECK(contains(ch[0].detail, "shared by all its instances"));
    CHECK(read_all(src).raw[0] == 2000ULL);
    CHECK(src.status()[0].available);
  }
  SUBCASE("two instances of one GPU count it once; another GPU's instance counts too") {
    NvmlSource src(kLib, kMigA + "," + kMigB + "," + kMigC);
    const auto& ch = src.channels();
    REQUIRE(ch.size() == 2);
    CHECK(ch[0].domain == "gpu:0");
    CHECK(ch[0].uuid == kUuid1);
    CHECK(ch[1].domain == "gpu:2");
    CHECK(ch[1].uuid == kUuid2);
    const auto st = src.status();
    REQUIRE(st.size() == 3);
    CHECK_FALSE(st[1].available);
    CHECK(contains(st[1].reason, "MIG instance " + kMigB));
    CHECK(contains(st[1].reason, "gpu:0 already reports whole"));
  }
  SUBCASE("an instance after its whole GPU is counted once too") {
    NvmlOptions o;
    o.library = kLib;
    o.cuda_uuids = std::vector<std::string>{kUuid1, kMigA};
    NvmlSource src(o);
    REQUIRE(src.channels().size() == 1);
    const auto st = src.status();
    REQUIRE(st.size() == 2);
    CHECK(contains(st[1].reason, "cuda:1 is MIG instance " + kMigA));
    CHECK(contains(st[1].reason, "gpu:0 already reports whole"));
  }
  SUBCASE("the CUDA runtime's MIG UUID maps the same way") {
    NvmlOptions o;
    o.library = kLib;
    o.cuda_uuids = std::vector<std::string>{kMigC};
    NvmlSource src(o);
    REQUIRE(src.channels().size() == 1);
    CHECK(src.channels()[0].uuid == kUuid2);
    CHECK(read_all(src).raw[0] == 3000ULL);
  }
}

// ---------------------------------------------------------------- power limits

namespace {
// Three GPUs; gpu:0 has a 250 W limit settable from 100 W to 350 W (default 300 W).
void gpu0_with_limits(FakeNvml& fake) {
  fake.three_gpus();
  fake.set(0, "power_limit_mw", "250000");
  fake.set(0, "power_default_limit_mw", "300000");
  fake.set(0, "power_min_limit_mw", "100000");
  fake.set(0, "power_max_limit_mw", "350000");
}
}  // namespace

TEST_CASE("nvml: power limits are read without changing anything") {
  FakeNvml fake;
  gpu0_with_limits(fake);
  fake.log_calls();
  NvmlSource src(kLib, std::nullopt);
  const auto lims = src.power_limits();
  REQUIRE(lims.size() == 3);
  CHECK(lims[0].domain == "gpu:0");
  CHECK(lims[0].uuid == kUuid0);
  CHECK(lims[0].current_mw == 250000U);
  CHECK(lims[0].enforced_mw == 250000U);
  CHECK(lims[0].default_mw == 300000U);
  CHECK(lims[0].min_mw == 100000U);
  CHECK(lims[0].max_mw == 350000U);
  CHECK(lims[0].reason.empty());
  CHECK(lims[0].fixed_reason.empty());
  // A GPU whose limits NVML does not report: unknown values, reasons, and no changes.
  CHECK_FALSE(lims[1].current_mw.has_value());
  CHECK_FALSE(lims[1].max_mw.has_value());
  CHECK(contains(lims[1].reason, "current limit: not supported by this GPU"));
  CHECK(contains(lims[1].fixed_reason, "will not change its limit"));
  for (const auto& call : fake.calls_of(static_cast<long>(::getpid()))) CHECK(call != "set_limit");
}

TEST_CASE("nvml: setting a power limit checks the range, reports missing privileges, changes nothing on failure") {
  FakeNvml fake;
  gpu0_with_limits(fake);
  NvmlSource src(kLib, std::nullopt);
  const auto current = [&] { return *src.power_limits()[0].current_mw; };
  SUBCASE("inside the range: set") {
    const auto r = src.set_power_limit("gpu:0", 150000);
    CHECK(r.code == 0);
    CHECK(current() == 150000U);
  }
  SUBCASE("outside the range: refused before NVML is asked") {
    fake.log_calls();
    const auto r = src.set_power_limit("gpu:0", 400000);
    CHECK(r.code == 2);
    CHECK(contains(r.message, "accepts power limits from 100 W to 350 W, not 400 W"));
    CHECK(contains(r.message, "nothing was changed"));
    CHECK(current() == 250000U);
    for (const auto& call : fake.calls_of(static_cast<long>(::getpid()))) CHECK(call != "set_limit");
  }
  SUBCASE("without root: NO_PERMISSION says what is needed") {
    fake.set(0, "set_limit_error", "4");
    const auto r = src.set_power_limit("gpu:0", 150000);
    CHECK(r.code == 4);
    CHECK(contains(r.message, "needs root"));
    CHECK(contains(r.message, "nvidia-smi -i " + kUuid0 + " -pl WATTS"));
    CHECK(current() == 250000U);
  }
  SUBCASE("an unknown domain or a GPU without constraints") {
    CHECK(contains(src.set_power_limit("gpu:7", 150000).message, "no GPU gpu:7 here (known: gpu:0, gpu:1, gpu:2)"));
    CHECK(src.set_power_limit("gpu:1", 150000).code == 3);
  }
  SUBCASE("a MIG instance's limit is its whole GPU's: refused") {
    fake.set(0, "mig_uuids", kMigA);
    NvmlSource mig(kLib, kMigA);
    const auto lims = mig.power_limits();
    REQUIRE(lims.size() == 1);
    CHECK(lims[0].current_mw == 250000U);
    const auto r = mig.set_power_limit("gpu:0", 150000);
    CHECK(r.code == 3);
    CHECK(contains(r.message, "is MIG instance " + kMigA));
    CHECK(current() == 250000U);
  }
}

// ---------------------------------------------------------------- channel facts

TEST_CASE("nvml: max_power_w is 1.5x the largest limit the GPU can be set to, else 1500 W") {
  FakeNvml fake;
  fake.three_gpus();
  fake.set(0, "power_limit_mw", "300000");
  fake.set(0, "power_max_limit_mw", "400000");  // the limit may be raised to this while we run
  fake.set(1, "power_limit_mw", "250000");
  NvmlSource src(kLib, std::nullopt);
  const auto& ch = src.channels();
  REQUIRE(ch.size() == 3);
  CHECK(ch[0].max_power_w == doctest::Approx(600.0));
  CHECK(ch[1].max_power_w == doctest::Approx(375.0));
  CHECK(ch[2].max_power_w == doctest::Approx(1500.0));
}

TEST_CASE("nvml: a power channel's averaging window follows the GPU generation") {
  FakeNvml fake;
  fake.add_device(kUuid0, "NVIDIA RTX A6000", -1, 1);
  fake.set(0, "cuda_cc", "8.6");
  fake.add_device(kUuid1, "NVIDIA A100", -1, 1);
  fake.set(1, "cuda_cc", "8.0");
  fake.add_device(kUuid2, "NVIDIA H100", -1, 1);
  fake.set(2, "cuda_cc", "9.0");
  fake.add_device("GPU-dddddddd-4444-4444-8444-444444444444", "Tesla P100", -1, 1);
  fake.add_device("GPU-eeeeeeee-5555-4555-8555-555555555555", "NVIDIA H100", 7, 1);
  fake.set(4, "cuda_cc", "9.0");
  NvmlSource src(pci_order());
  const auto& ch = src.channels();
  REQUIRE(ch.size() == 5);
  CHECK(ch[0].power_window_ns == 1000000000LL);  // Ampere but not GA100: 1 s mean
  CHECK(ch[1].power_window_ns == 0);             // GA100: instantaneous
  CHECK(ch[2].power_window_ns == 1000000000LL);
  CHECK(ch[3].power_window_ns == -1);  // NVML cannot say which GPU it is
  CHECK(ch[4].kind == ChannelKind::counter);
  CHECK(ch[4].power_window_ns == -1);  // not a power channel
}

// ---------------------------------------------------------------- mid-run changes

TEST_CASE("nvml: a counter reset is reported as the new small value, not hidden") {
  FakeNvml fake;
  fake.add_device(kUuid0, "NVIDIA H100", 5000000, 1);
  NvmlSource src(kLib, std::nullopt);
  CHECK(read_all(src).raw[0] == 5000000ULL);
  fake.set(0, "energy_mj", "12");  // driver reload: the counter starts again
  const auto r = read_all(src);
  CHECK(r.ok[0]);
  CHECK(r.raw[0] == 12ULL);
  CHECK(src.status()[0].available);
}

TEST_CASE("nvml: a counter that stops being supported after working is a reason") {
  FakeNvml fake;
  fake.add_device(kUuid0, "NVIDIA H100", 5000, 1);
  NvmlSource src(kLib, std::nullopt);
  CHECK(read_all(src).ok[0]);
  fake.set(0, "energy_error", "3");
  CHECK_FALSE(read_all(src).ok[0]);
  const auto st = src.status();
  CHECK_FALSE(st[0].available);
  CHECK(contains(st[0].reason, "(NVML_ERROR_NOT_SUPPORTED) since "));
  CHECK(contains(st[0].reason, "energy counter"));
}

// ---------------------------------------------------------------- fork

TEST_CASE("nvml: a forked child initialises NVML itself and shuts down only its own init") {
  FakeNvml fake;
  fake.three_gpus();
  fake.log_calls();
  InitCounter inits(kLib);
  auto src = std::make_unique<NvmlSource>(kLib, std::nullopt);
  REQUIRE(inits() == 1);

  const auto [child, code] = in_child([&] {
    src->after_fork_in_child();
    if (inits() != 0) return 10;  // the parent's init is not the child's
    const auto r = read_all(*src);
    if (!(r.ok[0] && r.ok[1] && r.ok[2])) return 11;
    if (r.raw[0] != 1000 || r.raw[2] != 3000) return 12;
    if (inits() != 1) return 13;
    if (!src->status()[1].available) return 14;
    src.reset();
    return inits() == 0 ? 0 : 15;  // its own init, shut down once
  });
  CHECK(code == 0);

  const auto calls = fake.calls_of(child);
  REQUIRE_FALSE(calls.empty());
  CHECK(calls.front() == "init");  // before any device call
  CHECK(count_of(calls, "init") == 1);
  CHECK(count_of(calls, "handle_by_uuid") == 3);  // the same GPUs, found by UUID
  CHECK(count_of(calls, "energy") == 3);
  CHECK(count_of(calls, "shutdown") == 1);
  CHECK(calls.back() == "shutdown");

  // The parent's initialisation and readings are untouched.
  CHECK(inits() == 1);
  const auto r = read_all(*src);
  CHECK(r.ok[0]);
  CHECK(r.raw[1] == 2000ULL);
  src.reset();
  CHECK(inits() == 0);
}

TEST_CASE("nvml: a forked child that never read calls nothing in NVML, even on destruction") {
  FakeNvml fake;
  fake.three_gpus();
  fake.log_calls();
  InitCounter inits(kLib);
  auto src = std::make_unique<NvmlSource>(kLib, std::nullopt);

  SUBCASE("told by the after-fork hook") {
    const auto [child, code] = in_child([&] {
      src->after_fork_in_child();
      src.reset();
      return 0;
    });
    CHECK(code == 0);
    CHECK(fake.calls_of(child).empty());
  }
  SUBCASE("not told: the destructor still sees another process") {
    const auto [child, code] = in_child([&] {
      src.reset();
      return 0;
    });
    CHECK(code == 0);
    CHECK(fake.calls_of(child).empty());
  }
  SUBCASE("a grandchild does not shut down its parent's own init") {
    const auto [child, code] = in_child([&] {
      src->after_fork_in_child();
      if (!read_all(*src).ok[0]) return 20;
      const auto [grandchild, inner] = in_child([&] {
        src.reset();
        return 0;
      });
      if (inner != 0) return 21;
      if (!fake.calls_of(grandchild).empty()) return 22;
      return inits() == 1 ? 0 : 23;
    });
    CHECK(code == 0);
    CHECK(count_of(fake.calls_of(child), "shutdown") == 0);
  }
  CHECK(inits() == 1);
}

TEST_CASE("nvml: a forked child that cannot initialise NVML gets a reason, not a crash") {
  FakeNvml fake;
  fake.three_gpus();
  auto src = std::make_unique<NvmlSource>(kLib, std::nullopt);
  const auto [child, code] = in_child([&] {
    fake.write("init_error", "9");  // DRIVER_NOT_LOADED
    src->after_fork_in_child();
    auto r = read_all(*src);
    if (r.ok[0] || r.ok[1] || r.ok[2]) return 30;
    r = read_all(*src);  // no retry loop, no crash
    if (r.ok[0]) return 31;
    const auto st = src->status();
    if (st.size() != 3 || st[0].available) return 32;
    if (!contains(st[0].reason, "NVML failed to initialise in this forked process")) return 33;
    if (!contains(st[0].reason, "NVML_ERROR_DRIVER_NOT_LOADED")) return 34;
    return 0;
  });
  (void)child;
  CHECK(code == 0);
  fake.remove("init_error");
  CHECK(read_all(*src).ok[0]);  // the parent keeps measuring
}

TEST_CASE("nvml: a forked child that cannot find a GPU again by UUID loses only that GPU") {
  FakeNvml fake;
  fake.three_gpus();
  auto src = std::make_unique<NvmlSource>(kLib, std::nullopt);
  const auto [child, code] = in_child([&] {
    fake.set(1, "uuid", "GPU-99999999-9999-4999-8999-999999999999");
    src->after_fork_in_child();
    const auto r = read_all(*src);
    if (!r.ok[0] || r.ok[1] || !r.ok[2]) return 40;
    const auto st = src->status();
    if (!st[0].available || st[1].available) return 41;
    if (!contains(st[1].reason, "cannot find NVIDIA A100-SXM4-40GB " + kUuid1 + " again")) return 42;
    if (!contains(st[1].reason, "NVML_ERROR_NOT_FOUND")) return 43;
    return 0;
  });
  (void)child;
  CHECK(code == 0);
  fake.set(1, "uuid", kUuid1);
  CHECK(read_all(*src).ok[1]);
}
