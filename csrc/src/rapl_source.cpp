#include "greenml/rapl_source.hpp"

#include <dirent.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "greenml/counter.hpp"

namespace greenml {
namespace {

// Zones are identified by their `name` file; directory indices are not
// stable across boots or kernels.
struct Zone {
  std::string dir;     // absolute path
  std::string name;    // content of `name`
  std::string parent_name;
};

std::vector<std::string> list_dir(const std::string& path) {
  std::vector<std::string> out;
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) return out;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') out.emplace_back(e->d_name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

bool is_top_zone(const std::string& entry) {
  // intel-rapl:N (one colon). intel-rapl-mmio:N duplicates the package zone
  // through MMIO on recent Intel parts: reading both would double count.
  static const std::string prefix = "intel-rapl:";
  return entry.compare(0, prefix.size(), prefix) == 0 &&
         entry.find(':', prefix.size()) == std::string::npos;
}

bool is_subzone_of(const std::string& entry, const std::string& parent) {
  return entry.size() > parent.size() + 1 && entry.compare(0, parent.size(), parent) == 0 &&
         entry[parent.size()] == ':';
}

// "package-1" -> "1"; anything else -> "".
std::string package_socket(const std::string& name) {
  static const std::string prefix = "package-";
  if (name.compare(0, prefix.size(), prefix) != 0) return "";
  const std::string rest = name.substr(prefix.size());
  if (rest.empty() || rest.find_first_not_of("0123456789") != std::string::npos) return "";
  return rest;
}

std::string access_reason(const std::string& file, int err) {
  if (err == EACCES || err == EPERM) {
    return "cannot read " + file +
           ": RAPL energy counters are readable by root only on kernels since late 2020. "
           "Grant read access once with `sudo chmod -R a+r /sys/class/powercap/intel-rapl*` "
           "(lost at reboot), or for good with a udev rule in "
           "/etc/udev/rules.d/99-greenml-rapl.rules: "
           "SUBSYSTEM==\"powercap\", ACTION==\"add\", "
           "RUN+=\"/bin/chgrp power %S%p/energy_uj\", RUN+=\"/bin/chmod g+r %S%p/energy_uj\" "
           "and add yourself to group `power`";
  }
  return "cannot read " + file + ": " + std::strerror(err);
}

// Conservative peak draw used to size the wrap-safe period when the zone
// does not publish its power limit.
constexpr double unknown_zone_max_power_w = 1500.0;

}  // namespace

RaplSource::RaplSource(const std::string& root) {
  std::vector<Zone> zones;
  const auto entries = list_dir(root);
  for (const auto& top : entries) {
    if (!is_top_zone(top)) continue;
    const std::string dir = root + "/" + top;
    const auto name = read_text_file(dir + "/name");
    if (!name) continue;
    const std::string top_name = trimmed(*name);
    zones.push_back({dir, top_name, ""});
    // Subzones are nested directories (sysfs also links them at the top
    // level; using only the nested copy avoids reading them twice).
    for (const auto& sub : list_dir(dir)) {
      if (!is_subzone_of(sub, top)) continue;
      const auto sub_name = read_text_file(dir + "/" + sub + "/name");
      if (sub_name) zones.push_back({dir + "/" + sub, trimmed(*sub_name), top_name});
    }
  }
  if (zones.empty()) {
    status_.push_back({"cpu", "rapl", true, false,
                       "no RAPL zones under " + root +
                           ": the CPU or the kernel does not expose RAPL (e.g. a virtual machine, "
                           "or the intel_rapl_common module is not loaded; try `sudo modprobe "
                           "intel_rapl_msr`); set GREENML_POWERCAP_ROOT if the tree lives elsewhere"});
    return;
  }

  std::map<std::string, int> psys_seen;  // top-level zones without a socket number
  for (const auto& z : zones) {
    std::string domain;
    bool in_total = false;
    if (z.parent_name.empty()) {
      const std::string socket = package_socket(z.name);
      if (!socket.empty()) {
        domain = "package:" + socket;
        in_total = true;
      } else if (z.name == "psys") {
        const int n = psys_seen["psys"]++;
        domain = n == 0 ? "psys" : "psys:" + std::to_string(n);
      } else if (z.name == "dram") {
        // Some servers publish dram as a top-level zone, one per socket, in socket order.
        domain = "dram:" + std::to_string(psys_seen["dram"]++);
        in_total = true;
      } else {
        continue;  // an unknown zone kind: never guess where it belongs
      }
    } else {
      const std::string socket = package_socket(z.parent_name);
      if (socket.empty()) continue;
      if (z.name == "dram") {
        domain = "dram:" + socket;
        in_total = true;
      } else if (z.name == "core" || z.name == "uncore") {
        domain = z.name + ":" + socket;
      } else {
        continue;
      }
    }

    const std::string energy_path = z.dir + "/energy_uj";
    OpenCounterFile file(energy_path);
    if (!file.is_open()) {
      status_.push_back({domain, "rapl", true, false, access_reason(energy_path, file.open_errno())});
      continue;
    }
    errno = 0;
    if (!file.read_u64()) {
      const int err = errno;
      status_.push_back({domain, "rapl", true, false,
                         err != 0 ? access_reason(energy_path, err)
                                  : "cannot parse " + energy_path + " as a number of microjoules"});
      continue;
    }
    std::uint64_t range = 0;
    if (auto text = read_text_file(z.dir + "/max_energy_range_uj")) {
      if (auto v = parse_u64(*text)) range = *v;
    }
    double max_power_w = unknown_zone_max_power_w;
    if (auto text = read_text_file(z.dir + "/constraint_0_max_power_uw")) {
      if (auto v = parse_u64(*text); v && *v > 0) {
        max_power_w = std::max(2.0 * static_cast<double>(*v) * 1e-6, 500.0);
      }
    }
    max_safe_period_ns_ = std::min(max_safe_period_ns_, max_period_for_range_ns(range, 1e-6, max_power_w));

    ChannelInfo ch;
    ch.domain = domain;
    ch.source = "rapl";
    ch.measured = true;
    ch.in_total = in_total;
    ch.kind = ChannelKind::counter;
    ch.unit = "uj";
    ch.to_si = 1e-6;
    ch.max_raw = range;  // max_energy_range_uj is the largest value the counter shows
    ch.max_power_w = max_power_w;
    ch.detail = z.dir;
    channels_.push_back(ch);
    files_.push_back(std::move(file));
    status_.push_back({domain, "rapl", true, true, ""});
  }
  if (status_.empty()) {
    status_.push_back({"cpu", "rapl", true, false,
                       "RAPL zones under " + root + " have no package, dram or psys zone"});
  }
}

void RaplSource::read(std::uint64_t* raw, bool* ok) noexcept {
  for (std::size_t i = 0; i < files_.size(); ++i) {
    const auto v = files_[i].read_u64();
    ok[i] = v.has_value();
    if (v) raw[i] = *v;
  }
}

}  // namespace greenml
