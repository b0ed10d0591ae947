// ModelSource on fake /proc/stat and cgroup files with an injected clock: the
// modelled energy is exactly idle watts x elapsed time + watts per busy CPU x
// busy CPU-seconds, whatever the read times.
#include <doctest.h>

#include <cstdint>
#include <optional>
#include <string>

#include "greenml/model_source.hpp"
#include "powercap_tree.hpp"

using greenml::BusyFormat;
using greenml::ModelSource;
using greenml::ModelSpec;
using greenml::parse_cpu_stat_usage_usec;
using greenml::parse_proc_stat_busy;
using greenml_test::TempDir;
using greenml_test::write_file;

namespace {

std::string stat_text(std::uint64_t user, std::uint64_t system, std::uint64_t softirq) {
  // user nice system idle iowait irq softirq steal guest guest_nice
  return "cpu  " + std::to_string(user) + " 0 " + std::to_string(system) + " 90000 40 0 " +
         std::to_string(softirq) + " 700 33 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1\n";
}

struct Read {
  std::uint64_t raw[2] = {0, 0};
  bool ok[2] = {false, false};
};

Read read(ModelSource& src) {
  Read r;
  src.read(r.raw, r.ok);
  return r;
}

}  // namespace

TEST_CASE("parse_proc_stat_busy adds user, nice, system, irq and softirq only") {
  CHECK(parse_proc_stat_busy("cpu  10 1 5 900 40 2 3 700 33 0") ==
        std::optional<std::uint64_t>(21));
  CHECK(parse_proc_stat_busy("cpu  10 1 5 900 40") == std::optional<std::uint64_t>(16));
  CHECK_FALSE(parse_proc_stat_busy("cpu0 10 1 5 900").has_value());
  CHECK_FALSE(parse_proc_stat_busy("cpu  x").has_value());
}

TEST_CASE("parse_cpu_stat_usage_usec finds usage_usec on any line") {
  CHECK(parse_cpu_stat_usage_usec("usage_usec 123\nuser_usec 100\n") ==
        std::optional<std::uint64_t>(123));
  CHECK(parse_cpu_stat_usage_usec("nr_periods 0\nusage_usec 7") ==
        std::optional<std::uint64_t>(7));
  CHECK_FALSE(parse_cpu_stat_usage_usec("user_usec 100\n").has_value());
  CHECK_FALSE(parse_cpu_stat_usage_usec("").has_value());
}

TEST_CASE("per-vCPU model energy against hand-computed values with a fake clock") {
  TempDir dir;
  const auto stat = dir.path() / "stat";
  write_file(stat, stat_text(1000, 200, 50));
  std::int64_t now_ns = 5'000'000'000;
  ModelSpec spec;
  spec.busy_path = stat.string();
  spec.busy_format = BusyFormat::proc_stat;
  spec.busy_seconds_per_unit = 0.01;  // USER_HZ = 100
  // EPYC 4th Gen, 2 vCPUs: idle 2 x 0.7391 W, 2.2822 - 0.7391 W per busy CPU.
  spec.cpu_idle_w = 2 * 0.7391;
  spec.cpu_busy_w_per_cpu = 2.2822 - 0.7391;
  spec.cpu_max_busy_cpus = 2;
  spec.cpu_rel_uncertainty = 0.7;
  spec.dram_w = 4 * 0.392;
  ModelSource src(spec, [&] { return now_ns; });

  REQUIRE(src.channels().size() == 2);
  CHECK(src.channels()[0].domain == "cpu:estimated");
  CHECK(src.channels()[0].unit == "uj");
  CHECK(src.channels()[0].rel_uncertainty == doctest::Approx(0.7));
  CHECK(src.channels()[0].max_power_w == doctest::Approx(2 * 0.7391 + 2 * 1.5431));
  CHECK(src.channels()[1].domain == "dram:estimated");

  // 10 s later, 1500 busy jiffies more (15 CPU-seconds: u = 0.75 of 2 vCPUs):
  // cpu = 1.4782 W x 10 s + 1.5431 W x 15 s = 14.782 + 23.1465 = 37.9285 J
  // dram = 1.568 W x 10 s = 15.68 J
  now_ns += 10'000'000'000;
  write_file(stat, stat_text(2000, 600, 150));
  Read r = read(src);
  CHECK(r.ok[0]);
  CHECK(r.ok[1]);
  CHECK(r.raw[0] == 37'928'500);
  CHECK(r.raw[1] == 15'680'000);

  // A failed parse leaves the cpu channel unread but the dram channel still counts.
  write_file(stat, "garbage\n");
  now_ns += 1'000'000'000;
  r = read(src);
  CHECK_FALSE(r.ok[0]);
  CHECK(r.ok[1]);
  CHECK(r.raw[1] == 17'248'000);

  // Counting resumes from the file's value: no busy time is invented for the gap.
  write_file(stat, stat_text(2000, 600, 150));
  r = read(src);
  CHECK(r.raw[0] == 37'928'500 + 1'478'200);  // only the idle term for the extra second
}

TEST_CASE("a cgroup v2 cpu.stat busy counter in microseconds") {
  TempDir dir;
  const auto cpu_stat = dir.path() / "cpu.stat";
  write_file(cpu_stat, "usage_usec 1000000\nuser_usec 800000\nsystem_usec 200000\n");
  std::int64_t now_ns = 0;
  ModelSpec spec;
  spec.busy_path = cpu_stat.string();
  spec.busy_format = BusyFormat::cgroup2_stat;
  spec.busy_seconds_per_unit = 1e-6;
  spec.cpu_idle_w = 0.0;
  spec.cpu_busy_w_per_cpu = 2.0;
  ModelSource src(spec, [&] { return now_ns; });
  REQUIRE(src.channels().size() == 1);  // dram_w = 0: no dram channel

  now_ns = 1'000'000'000;
  write_file(cpu_stat, "usage_usec 2500000\nuser_usec 800000\nsystem_usec 200000\n");
  CHECK(read(src).raw[0] == 3'000'000);  // 1.5 CPU-s x 2 W
}

TEST_CASE("bad coefficients or files are reasons that name no configuration variable") {
  TempDir dir;
  ModelSpec spec;
  spec.busy_path = (dir.path() / "missing").string();
  spec.cpu_idle_w = 1.0;
  ModelSource missing(spec);
  CHECK(missing.channels().empty());
  REQUIRE(missing.status().size() == 1);
  CHECK(missing.status()[0].reason.find("cannot read") != std::string::npos);

  write_file(dir.path() / "stat", stat_text(1, 1, 1));
  spec.busy_path = (dir.path() / "stat").string();
  spec.cpu_idle_w = -1.0;
  ModelSource negative(spec);
  CHECK(negative.channels().empty());
  CHECK(negative.status()[0].reason.find("coefficients") != std::string::npos);
  CHECK(negative.status()[0].reason.find("GREENML") == std::string::npos);
}

TEST_CASE("with_cpu = false gives dram:estimated alone, whatever the busy file") {
  std::int64_t now_ns = 0;
  ModelSpec spec;
  spec.with_cpu = false;
  spec.busy_path = "/nonexistent/stat";
  spec.dram_w = 2.0;
  ModelSource src(spec, [&] { return now_ns; });
  REQUIRE(src.channels().size() == 1);
  CHECK(src.channels()[0].domain == "dram:estimated");
  REQUIRE(src.status().size() == 1);
  CHECK(src.status()[0].available);

  now_ns = 3'000'000'000;
  std::uint64_t raw = 0;
  bool ok = false;
  src.read(&raw, &ok);
  CHECK(ok);
  CHECK(raw == 6'000'000);  // 2 W x 3 s
}
