// RaplSource against fake powercap trees laid out like /sys/class/powercap.
#include <doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "greenml/counter.hpp"
#include "greenml/rapl_source.hpp"
#include "powercap_tree.hpp"

using greenml::ChannelInfo;
using greenml::ChannelKind;
using greenml::DomainStatus;
using greenml::RaplSource;
using greenml_test::PowercapTree;

namespace {

constexpr std::uint64_t kRange = 262143328850ULL;  // a real package range, in uJ

// A two-socket server with a client-style psys zone and the MMIO duplicate
// of package 0 that recent Intel kernels add.
void build_two_socket_tree(PowercapTree& tree) {
  tree.add_zone("intel-rapl:0", "package-0", 1000);
  tree.add_zone("intel-rapl:0:0", "core", 1001);
  tree.add_zone("intel-rapl:0:1", "uncore", 1002);
  tree.add_zone("intel-rapl:0:2", "dram", 1003, 65712999613ULL);
  tree.add_zone("intel-rapl:1", "package-1", 2000);
  tree.add_zone("intel-rapl:1:0", "dram", 2001, 65712999613ULL);
  tree.add_zone("intel-rapl:2", "psys", 3000);
  tree.add_zone("intel-rapl-mmio:0", "package-0", 4000);
}

std::map<std::string, std::size_t> index_by_domain(const RaplSource& src) {
  std::map<std::string, std::size_t> idx;
  for (std::size_t i = 0; i < src.channels().size(); ++i) idx[src.channels()[i].domain] = i;
  return idx;
}

std::map<std::string, std::uint64_t> read_by_domain(RaplSource& src) {
  const std::size_t n = src.channels().size();
  std::vector<std::uint64_t> raw(n, 0);
  std::unique_ptr<bool[]> ok(new bool[n == 0 ? 1 : n]);
  for (std::size_t i = 0; i < n; ++i) ok[i] = false;
  src.read(raw.data(), ok.get());
  std::map<std::string, std::uint64_t> out;
  for (std::size_t i = 0; i < n; ++i) {
    CAPTURE(src.channels()[i].domain);
    CHECK(ok[i]);
    out[src.channels()[i].domain] = raw[i];
  }
  return out;
}

const DomainStatus* find_status(const std::vector<DomainStatus>& st, const std::string& domain) {
  for (const auto& s : st)
    if (s.domain == domain) return &s;
  return nullptr;
}

}  // namespace

TEST_CASE("rapl: a two-socket tree yields one channel per zone, keyed by zone name") {
  PowercapTree tree;
  build_two_socket_tree(tree);
  RaplSource src(tree.root());

  CHECK(src.name() == "rapl");
  const auto idx = index_by_domain(src);
  // Exactly these domains: each once (the MMIO duplicate is skipped, and the
  // subzones, which sysfs lists both flat and nested, are not read twice).
  std::vector<std::string> domains;
  for (const auto& [d, i] : idx) domains.push_back(d);
  CHECK(domains == std::vector<std::string>{"core:0", "dram:0", "dram:1", "package:0", "package:1", "psys",
                                            "uncore:0"});
  CHECK(src.channels().size() == 7);

  const std::map<std::string, bool> in_total = {{"package:0", true}, {"package:1", true}, {"dram:0", true},
                                                {"dram:1", true},    {"core:0", false},   {"uncore:0", false},
                                                {"psys", false}};
  for (const ChannelInfo& ch : src.channels()) {
    CAPTURE(ch.domain);
    CHECK(ch.source == "rapl");
    CHECK(ch.measured);
    CHECK(ch.kind == ChannelKind::counter);
    CHECK(ch.unit == "uj");
    CHECK(ch.to_si == doctest::Approx(1e-6));
    REQUIRE(in_total.count(ch.domain) == 1);
    CHECK(ch.in_total == in_total.at(ch.domain));
    CHECK_FALSE(ch.detail.empty());
  }
  CHECK(src.channels()[idx.at("package:0")].max_raw == kRange);
  CHECK(src.channels()[idx.at("dram:1")].max_raw == 65712999613ULL);

  // Every domain is reported available, none twice.
  const auto st = src.status();
  for (const auto& [d, i] : idx) {
    CAPTURE(d);
    const DomainStatus* s = find_status(st, d);
    REQUIRE(s != nullptr);
    CHECK(s->available);
    CHECK(s->reason.empty());
    CHECK(s->source == "rapl");
  }
  CHECK(st.size() == 7);
}

TEST_CASE("rapl: read() returns the raw counters and follows rewrites") {
  PowercapTree tree;
  build_two_socket_tree(tree);
  RaplSource src(tree.root());

  auto v = read_by_domain(src);
  CHECK(v["package:0"] == 1000);  // not 4000: the MMIO duplicate is not read
  CHECK(v["core:0"] == 1001);
  CHECK(v["uncore:0"] == 1002);
  CHECK(v["dram:0"] == 1003);
  CHECK(v["package:1"] == 2000);
  CHECK(v["dram:1"] == 2001);
  CHECK(v["psys"] == 3000);

  tree.set_energy("intel-rapl:0", 5);  // wrapped
  tree.set_energy("intel-rapl:1:0", kRange - 1);
  tree.set_energy("intel-rapl:2", 123456789012ULL);
  v = read_by_domain(src);
  CHECK(v["package:0"] == 5);
  CHECK(v["dram:1"] == kRange - 1);
  CHECK(v["psys"] == 123456789012ULL);
  CHECK(v["core:0"] == 1001);
}

TEST_CASE("rapl: zone names, not directory indices, decide the domain") {
  // Directory indices shuffled against names: intel-rapl:0 is socket 1 and
  // its subzone 0 is dram; psys sits between the packages; intel-rapl:2 is
  // socket 0 with dram at subzone index 1.
  PowercapTree tree;
  tree.add_zone("intel-rapl:0", "package-1", 10);
  tree.add_zone("intel-rapl:0:0", "dram", 11);
  tree.add_zone("intel-rapl:0:1", "core", 12);
  tree.add_zone("intel-rapl:1", "psys", 20);
  tree.add_zone("intel-rapl:2", "package-0", 30);
  tree.add_zone("intel-rapl:2:0", "uncore", 31);
  tree.add_zone("intel-rapl:2:1", "dram", 32);
  RaplSource src(tree.root());

  const auto v = read_by_domain(src);
  const std::map<std::string, std::uint64_t> expected = {{"package:1", 10}, {"dram:1", 11},    {"core:1", 12},
                                                         {"psys", 20},      {"package:0", 30}, {"uncore:0", 31},
                                                         {"dram:0", 32}};
  CHECK(v == expected);
}

TEST_CASE("rapl: a missing powercap root is a reason, not a crash") {
  greenml_test::TempDir dir;
  const std::string root = (dir.path() / "no-such-powercap").string();
  RaplSource src(root);
  CHECK(src.channels().empty());
  const auto st = src.status();
  REQUIRE_FALSE(st.empty());
  for (const auto& s : st) {
    CHECK_FALSE(s.available);
    CHECK_FALSE(s.reason.empty());
    CHECK(s.source == "rapl");
  }
  CHECK(st.front().reason.find(root) != std::string::npos);  // says where it looked
  // Reading zero channels is harmless.
  src.read(nullptr, nullptr);
}

TEST_CASE("rapl: an empty powercap root, or one with only the MMIO zone, is a reason") {
  SUBCASE("empty") {
    greenml_test::TempDir dir;
    RaplSource src(dir.str());
    CHECK(src.channels().empty());
    REQUIRE_FALSE(src.status().empty());
    CHECK_FALSE(src.status().front().available);
    CHECK_FALSE(src.status().front().reason.empty());
  }
  SUBCASE("mmio only") {
    PowercapTree tree;
    tree.add_zone("intel-rapl-mmio:0", "package-0", 1);
    RaplSource src(tree.root());
    CHECK(src.channels().empty());
    REQUIRE_FALSE(src.status().empty());
    CHECK_FALSE(src.status().front().available);
  }
}

TEST_CASE("rapl: one broken zone does not take the others down") {
  PowercapTree tree;
  tree.add_zone("intel-rapl:0", "package-0", 100);
  tree.add_zone("intel-rapl:0:0", "dram", 101);
  tree.add_zone("intel-rapl:1", "package-1", 200);
  SUBCASE("energy_uj missing") { std::filesystem::remove(tree.energy_file("intel-rapl:0:0")); }
  SUBCASE("energy_uj unparsable") { greenml_test::write_file(tree.energy_file("intel-rapl:0:0"), "n/a\n"); }

  RaplSource src(tree.root());
  const auto v = read_by_domain(src);
  CHECK(v == std::map<std::string, std::uint64_t>{{"package:0", 100}, {"package:1", 200}});
  const auto st = src.status();  // by value: keep it alive while pointing into it
  const DomainStatus* dram = find_status(st, "dram:0");
  REQUIRE(dram != nullptr);
  CHECK_FALSE(dram->available);
  CHECK(dram->reason.find("energy_uj") != std::string::npos);  // names the file
}

TEST_CASE("rapl: a failing read is reported per channel and leaves the value alone") {
  PowercapTree tree;
  tree.add_zone("intel-rapl:0", "package-0", 100);
  tree.add_zone("intel-rapl:1", "package-1", 200);
  RaplSource src(tree.root());
  const auto idx = index_by_domain(src);
  REQUIRE(idx.size() == 2);

  greenml_test::write_file(tree.energy_file("intel-rapl:1"), "garbage\n");
  std::uint64_t raw[2] = {77, 77};
  bool ok[2] = {false, false};
  src.read(raw, ok);
  CHECK(ok[idx.at("package:0")]);
  CHECK(raw[idx.at("package:0")] == 100);
  CHECK_FALSE(ok[idx.at("package:1")]);
  CHECK(raw[idx.at("package:1")] == 77);
}

TEST_CASE("rapl: the safe period comes from the smallest counter range") {
  PowercapTree big;
  big.add_zone("intel-rapl:0", "package-0", 1, kRange);
  RaplSource big_src(big.root());
  const std::int64_t big_period = big_src.max_safe_period_ns();
  // Wrap-safe at any plausible package power (<= 500 W), yet finite.
  CHECK(big_period > 0);
  CHECK(big_period <= greenml::max_period_for_range_ns(kRange, 1e-6, 500.0));
  CHECK(big_period > 1'000'000'000);  // a 2^38 uJ range never needs sub-second sampling

  PowercapTree small;
  small.add_zone("intel-rapl:0", "package-0", 1, kRange);
  small.add_zone("intel-rapl:0:0", "dram", 1, kRange / 1000);
  RaplSource small_src(small.root());
  CHECK(small_src.max_safe_period_ns() > 0);
  CHECK(small_src.max_safe_period_ns() < big_period);
  CHECK(small_src.max_safe_period_ns() <= greenml::max_period_for_range_ns(kRange / 1000, 1e-6, 500.0));

  greenml_test::TempDir empty;
  CHECK(RaplSource(empty.str()).max_safe_period_ns() == INT64_MAX);  // nothing to wrap
}

TEST_CASE("rapl: an unreadable energy_uj says how to grant access") {
  PowercapTree tree;
  tree.add_zone("intel-rapl:0", "package-0", 100);
  tree.add_zone("intel-rapl:0:0", "dram", 101);
  tree.make_world_readable();
  REQUIRE(::chmod(tree.energy_file("intel-rapl:0").c_str(), 0400) == 0);  // root-only, as on kernels >= 5.10

  // Exit codes name the first failed expectation (0 = all held).
  auto check = [&]() -> int {
    RaplSource src(tree.root());
    const auto st = src.status();
    const DomainStatus* pkg = find_status(st, "package:0");
    if (pkg == nullptr) return 1;
    if (pkg->available) return 2;
    const std::string& r = pkg->reason;
    if (r.find("energy_uj") == std::string::npos) return 3;
    const bool says_how = r.find("chmod") != std::string::npos || r.find("udev") != std::string::npos;
    if (!says_how) return 4;
    const DomainStatus* dram = find_status(st, "dram:0");
    if (dram == nullptr || !dram->available) return 5;  // the readable zone still works
    for (const auto& ch : src.channels())
      if (ch.domain == "package:0") return 6;  // no channel for an unreadable zone
    return 0;
  };

  if (::geteuid() != 0) {
    CHECK(check() == 0);
    return;
  }
  const auto rc = greenml_test::run_as_nobody(check);
  if (!rc) {
    MESSAGE("running as root without the right to drop privileges: unreadable-counter case skipped");
    return;
  }
  CHECK(*rc == 0);
}
