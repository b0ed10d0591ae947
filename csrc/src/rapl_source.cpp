#include "greenml/rapl_source.hpp"

#include <dirent.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <set>

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

// Every zone under root, by name, top-level zones first with their nested
// subzones after each (sysfs also links subzones at the top level; only the
// nested copy is used, so none is read twice).
std::vector<Zone> find_zones(const std::string& root) {
  std::vector<Zone> zones;
  for (const auto& top : list_dir(root)) {
    if (!is_top_zone(top)) continue;
    const std::string dir = root + "/" + top;
    const auto name = read_text_file(dir + "/name");
    if (!name) continue;
    const std::string top_name(trim_view(*name));
    zones.push_back({dir, top_name, ""});
    for (const auto& sub : list_dir(dir)) {
      if (!is_subzone_of(sub, top)) continue;
      const auto sub_name = read_text_file(dir + "/" + sub + "/name");
      if (sub_name) zones.push_back({dir + "/" + sub, std::string(trim_view(*sub_name)), top_name});
    }
  }
  return zones;
}

struct ZoneKey {
  std::string domain;
  bool in_total = false;
};

// The contract domain of a zone, or nullopt for a kind greenml does not
// know (never guess where an unknown zone belongs). `unnumbered` counts
// top-level zones that carry no socket number, in the order seen.
std::optional<ZoneKey> zone_key(const Zone& z, std::map<std::string, int>& unnumbered) {
  if (z.parent_name.empty()) {
    if (const std::string socket = package_socket(z.name); !socket.empty()) {
      return ZoneKey{"package:" + socket, true};
    }
    if (z.name == "psys") {
      const int n = unnumbered["psys"]++;
      return ZoneKey{n == 0 ? "psys" : "psys:" + std::to_string(n), false};
    }
    if (z.name == "dram") {  // some servers publish dram top-level, one per socket, in order
      return ZoneKey{"dram:" + std::to_string(unnumbered["dram"]++), true};
    }
    return std::nullopt;
  }
  const std::string socket = package_socket(z.parent_name);
  if (socket.empty()) return std::nullopt;
  if (z.name == "dram") return ZoneKey{"dram:" + socket, true};
  if (z.name == "core" || z.name == "uncore") return ZoneKey{z.name + ":" + socket, false};
  return std::nullopt;
}

std::uint64_t zone_max_energy_uj(const Zone& z) {
  if (auto text = read_text_file(z.dir + "/max_energy_range_uj")) {
    if (auto v = parse_u64(*text)) return *v;
  }
  return 0;
}

// Generous: twice the zone's published maximum (never under 500 W), so a
// real draw never looks like a counter reset.
double zone_max_power_w(const Zone& z) {
  if (auto text = read_text_file(z.dir + "/constraint_0_max_power_uw")) {
    if (auto v = parse_u64(*text); v && *v > 0) {
      return std::max(2.0 * static_cast<double>(*v) * 1e-6, 500.0);
    }
  }
  return unknown_zone_max_power_w;
}

}  // namespace

RaplSource::RaplSource(const std::string& root, const std::string& missing_hint) {
  const std::vector<Zone> zones = find_zones(root);
  if (zones.empty()) {
    status_.push_back({"cpu", "rapl", true, false,
                       "no RAPL zones under " + root +
                           ": the CPU or the kernel does not expose RAPL (e.g. a virtual machine, "
                           "or the intel_rapl_common module is not loaded; try `sudo modprobe "
                           "intel_rapl_msr`)" +
                           (missing_hint.empty() ? "" : "; " + missing_hint)});
    return;
  }
  std::map<std::string, int> unnumbered;
  std::set<std::string> seen;
  for (const auto& z : zones) {
    auto key = zone_key(z, unnumbered);
    // Two zones claiming one domain (a firmware or tree that repeats package-0): the first
    // wins; counting both would add the same energy twice.
    if (key && seen.insert(key->domain).second) add_zone(z.dir, key->domain, key->in_total);
  }
  if (status_.empty()) {
    status_.push_back({"cpu", "rapl", true, false,
                       "RAPL zones under " + root + " have no package, dram or psys zone"});
  }
}

void RaplSource::add_zone(const std::string& dir, const std::string& domain, bool in_total) {
  const std::string energy_path = dir + "/energy_uj";
  OpenCounterFile file(energy_path);
  if (!file.is_open()) {
    status_.push_back({domain, "rapl", true, false, access_reason(energy_path, file.open_errno())});
    return;
  }
  errno = 0;
  if (!file.read_u64()) {
    const int err = errno;
    status_.push_back({domain, "rapl", true, false,
                       err != 0 ? access_reason(energy_path, err)
                                : "cannot parse " + energy_path + " as a number of microjoules"});
    return;
  }
  const Zone z{dir, "", ""};
  ChannelInfo ch;
  ch.domain = domain;
  ch.source = "rapl";
  ch.measured = true;
  ch.in_total = in_total;
  ch.kind = ChannelKind::counter;
  ch.unit = "uj";
  ch.to_si = 1e-6;
  ch.max_raw = zone_max_energy_uj(z);  // the largest value the counter shows
  ch.max_power_w = zone_max_power_w(z);
  ch.detail = dir;
  max_safe_period_ns_ =
      std::min(max_safe_period_ns_, max_period_for_range_ns(ch.max_raw, ch.to_si, ch.max_power_w));
  channels_.push_back(ch);
  files_.push_back(std::move(file));
  status_.push_back({domain, "rapl", true, true, ""});
}

void RaplSource::read(std::uint64_t* raw, bool* ok) noexcept {
  for (std::size_t i = 0; i < files_.size(); ++i) {
    const auto v = files_[i].read_u64();
    ok[i] = v.has_value();
    if (v) raw[i] = *v;
  }
}

}  // namespace greenml
