"""Tests of greenml._cpu_model: architecture from /proc/cpuinfo numbers, the per-vCPU and
TDP models against hand-computed values, cgroup CPU and memory limits on fake cgroup trees,
and the native ModelSource counter on fake /proc/stat and cpu.stat files."""

from __future__ import annotations

from pathlib import Path

import pytest
from greenml import _core
from greenml._config import parse_estimate, settings_from_env
from greenml._cpu_model import (
    ENV_CPU_TDP_W,
    TdpMatch,
    identify_architecture,
    lookup_tdp_w,
    parse_cpuinfo,
    plan_cpu_estimate,
    plan_dram_estimate,
    read_cgroup_cpu,
    read_cpu_model_name,
    read_cpu_socket_count,
    read_memory_gib,
    tdp_from_env,
    vcpu_power,
    vcpu_power_average,
)
from greenml._errors import ConfigError

# ------------------------------------------------------------------------ fakes


def _x86(vendor: str, family: int, model: int, stepping: int, name: str, *, cpus: int = 2,
         hypervisor: bool = True, sockets: int = 1) -> str:
    """A /proc/cpuinfo text as x86 Linux prints it, one block per logical CPU."""
    flags = "fpu vme de pse tsc msr pae mce cx8 apic sep" + (" hypervisor" if hypervisor else "")
    blocks = []
    for n in range(cpus):
        blocks.append(
            f"processor\t: {n}\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
            f"model\t\t: {model}\nmodel name\t: {name}\nstepping\t: {stepping}\n"
            f"physical id\t: {n * sockets // cpus}\nflags\t\t: {flags}\n"
        )
    return "\n".join(blocks)


def _arm(implementer: str, part: str, cpus: int = 2) -> str:
    return "\n".join(
        f"processor\t: {n}\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull\n"
        f"CPU implementer\t: {implementer}\nCPU architecture: 8\nCPU variant\t: 0x1\n"
        f"CPU part\t: {part}\nCPU revision\t: 1\n"
        for n in range(cpus)
    )


INTEL, AMD = "GenuineIntel", "AuthenticAMD"

# (description, cpuinfo text, architecture or None); numbers as real machines print them.
SAMPLES = [
    ("AWS c5: Xeon Platinum 8275CL", _x86(INTEL, 6, 85, 7, "Intel(R) Xeon(R) Platinum 8275CL "
                                          "CPU @ 3.00GHz"), "Cascade Lake"),
    ("AWS m5: Xeon Platinum 8175M", _x86(INTEL, 6, 85, 4, "Intel(R) Xeon(R) Platinum 8175M CPU "
                                         "@ 2.50GHz"), "Skylake"),
    ("AWS c6i: Xeon Platinum 8375C", _x86(INTEL, 6, 106, 6, "Intel(R) Xeon(R) Platinum 8375C "
                                          "CPU @ 2.90GHz"), "Ice Lake"),
    ("AWS m7i: Xeon Platinum 8488C", _x86(INTEL, 6, 143, 8, "Intel(R) Xeon(R) Platinum 8488C"),
     "Sapphire Rapids"),
    ("GCP C4: Xeon Platinum 8581C", _x86(INTEL, 6, 207, 2, "INTEL(R) XEON(R) PLATINUM 8581C "
                                         "CPU @ 2.30GHz"), "Emerald Rapids"),
    ("Xeon 6 (Granite Rapids)", _x86(INTEL, 6, 173, 1, "Intel(R) Xeon(R) 6972P"),
     "Granite Rapids"),
    ("AWS m4: Xeon E5-2686 v4", _x86(INTEL, 6, 79, 1, "Intel(R) Xeon(R) CPU E5-2686 v4 @ "
                                     "2.30GHz"), "Broadwell"),
    ("AWS c4: Xeon E5-2666 v3", _x86(INTEL, 6, 63, 2, "Intel(R) Xeon(R) CPU E5-2666 v3 @ "
                                     "2.90GHz"), "Haswell"),
    ("QEMU, blanked name", _x86(INTEL, 6, 85, 7, "Intel Xeon Processor (Cascadelake)"),
     "Cascade Lake"),
    ("AWS m5a: EPYC 7571", _x86(AMD, 23, 1, 2, "AMD EPYC 7571"), "EPYC 1st Gen"),
    ("AWS c5a: EPYC 7R32", _x86(AMD, 23, 49, 0, "AMD EPYC 7R32"), "EPYC 2nd Gen"),
    ("AWS c6a: EPYC 7R13", _x86(AMD, 25, 1, 1, "AMD EPYC 7R13 Processor"), "EPYC 3rd Gen"),
    ("AWS c7a: EPYC 9R14", _x86(AMD, 25, 17, 1, "AMD EPYC 9R14 96-Core Processor"),
     "EPYC 4th Gen"),
    ("this kind of VM: 'AMD EPYC', Zen 5", _x86(AMD, 26, 2, 1, "AMD EPYC"), "EPYC 5th Gen"),
    ("blanked, no model name at all", _x86(AMD, 25, 17, 1, "").replace("model name\t: \n", ""),
     "EPYC 4th Gen"),
    ("AWS m6g: Graviton2", _arm("0x41", "0xd0c"), "Graviton2"),
    ("AWS c7g: Graviton3", _arm("0x41", "0xd40"), "Graviton3"),
    ("AWS c8g: Graviton4", _arm("0x41", "0xd4f"), "Graviton4"),
    ("Raspberry Pi 4: Cortex-A72", _arm("0x41", "0xd08"), None),
    ("QEMU kvm64 default CPU", _x86(INTEL, 15, 6, 1, "Common KVM processor"), None),
    ("Hygon Dhyana", _x86("HygonGenuine", 24, 0, 1, "Hygon C86 7185 32-core Processor"), None),
]


@pytest.mark.parametrize("text,arch", [s[1:] for s in SAMPLES], ids=[s[0] for s in SAMPLES])
def test_architecture_from_cpuinfo_numbers(text: str, arch: str | None) -> None:
    match = identify_architecture(parse_cpuinfo(text))
    assert (match.architecture if match else None) == arch
    if arch is not None:
        assert vcpu_power(arch) is not None, f"{arch} has no row in the shipped table"


def test_cpuinfo_fields() -> None:
    info = parse_cpuinfo(_x86(AMD, 26, 2, 1, "AMD EPYC", cpus=4, sockets=2))
    assert (info.vendor, info.family, info.model, info.stepping) == (AMD, 26, 2, 1)
    assert (info.model_name, info.logical_cpus, info.sockets, info.hypervisor) == (
        "AMD EPYC", 4, 2, True)
    arm = parse_cpuinfo(_arm("0x41", "0xd0c", cpus=3))
    assert (arm.implementer, arm.part, arm.logical_cpus, arm.vendor) == (0x41, 0xD0C, 3, None)
    assert parse_cpuinfo("").logical_cpus == 0


def test_every_architecture_row_is_reachable_from_cpuinfo() -> None:
    """The shipped table and the mapping agree: no row is dead, no mapping names a
    missing row (Graviton3E has no distinct part number and shares Graviton3's)."""
    from greenml._cpu_model import ARCHITECTURES, _vcpu_table

    mapped = {a.architecture for a in ARCHITECTURES}
    assert mapped <= set(_vcpu_table())
    assert set(_vcpu_table()) - mapped == {"Graviton3E"}


# ------------------------------------------------------------------------ the models


def _files(tmp_path: Path, cpuinfo: str, busy: int = 0, cpus: int = 2) -> dict:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    _write_stat(tmp_path / "stat", busy, cpus)
    (tmp_path / "self_cgroup").write_text("0::/\n")
    (tmp_path / "cgroup").mkdir(exist_ok=True)
    return dict(
        cpuinfo_path=str(tmp_path / "cpuinfo"),
        stat_path=str(tmp_path / "stat"),
        cgroup_root=str(tmp_path / "cgroup"),
        proc_self_cgroup=str(tmp_path / "self_cgroup"),
        clk_tck=100,
    )


def _write_stat(path: Path, busy_jiffies: int, cpus: int = 2, idle: int = 5_000) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice; busy split over
    # user, system and softirq so the parser's field choice matters.
    u, s, si = busy_jiffies // 2, busy_jiffies // 4, busy_jiffies - busy_jiffies // 2 - busy_jiffies // 4
    lines = [f"cpu  {u} 0 {s} {idle} 7 0 {si} 300 11 0"]
    lines += [f"cpu{i} 0 0 0 0 0 0 0 0 0 0" for i in range(cpus)]
    path.write_text("\n".join(lines) + "\nintr 1 0\nctxt 99\nbtime 1700000000\n")


def test_per_vcpu_model_against_hand_computed_values(tmp_path: Path) -> None:
    # EPYC 4th Gen: 0.7391 W idle, 2.2822 W full load per vCPU. 2 vCPUs at u = 0.5:
    # 2 x (0.7391 + 0.5 x (2.2822 - 0.7391)) = 3.0213 W.
    est, reason = plan_cpu_estimate(env={}, **_files(tmp_path, _x86(AMD, 25, 17, 1, "AMD EPYC")))
    assert reason == "" and est is not None
    assert (est.method, est.architecture, est.vcpus) == ("vcpu", "EPYC 4th Gen", 2.0)
    assert est.idle_w == pytest.approx(2 * 0.7391)
    assert est.busy_w_per_cpu == pytest.approx(2.2822 - 0.7391)
    busy_cpus = 0.5 * 2
    assert est.idle_w + est.busy_w_per_cpu * busy_cpus == pytest.approx(3.0213)
    assert est.rel_uncertainty == 0.7
    assert (est.busy_path, est.busy_format, est.busy_seconds_per_unit) == (
        str(tmp_path / "stat"), "proc_stat", 0.01)
    for part in ("per-vCPU", "2 vCPUs (VM)", "0.739 W", "1.54 W", "EPYC 4th Gen",
                 "AMD family 25 model 17", "machine-wide", "+/-70%"):
        assert part in est.assumptions, part


def test_unknown_architecture_falls_back_to_the_average_and_says_so(tmp_path: Path) -> None:
    est, _ = plan_cpu_estimate(env={}, **_files(tmp_path, _x86(INTEL, 15, 6, 1, "Common KVM "
                                                                "processor")))
    avg = vcpu_power_average()
    assert avg.architecture == "average of 20 architectures"
    assert est is not None and est.architecture is None
    assert est.idle_w == pytest.approx(2 * avg.min_w)
    assert est.busy_w_per_cpu == pytest.approx(avg.max_w - avg.min_w)
    assert est.rel_uncertainty == 1.0
    assert "average of 20 architectures" in est.assumptions
    assert "GenuineIntel family 15 model 6 is not in greenml's table" in est.assumptions


def test_average_is_the_plain_mean_of_the_table() -> None:
    avg = vcpu_power_average()
    # Hand-summed from data/cpu_vcpu_power.csv: 20.2256 / 20 and 76.256 / 20.
    assert avg.min_w == pytest.approx(1.01128)
    assert avg.max_w == pytest.approx(3.8128)


def test_tdp_model_only_when_the_variable_is_set(tmp_path: Path) -> None:
    files = _files(tmp_path, _x86(INTEL, 6, 85, 7, "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz",
                                  cpus=4, hypervisor=False, sockets=2))
    default, _ = plan_cpu_estimate(env={}, **files)
    assert default is not None and default.method == "vcpu"  # a table TDP match is only a hint
    assert ("bare metal: Intel Xeon Gold 6248 is listed at 150 W TDP "
            f"({ENV_CPU_TDP_W}=150 selects the TDP model)") in default.assumptions
    (tmp_path / "vm").mkdir()
    in_vm, _ = plan_cpu_estimate(env={}, **_files(tmp_path / "vm", _x86(
        INTEL, 6, 85, 7, "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", hypervisor=True)))
    assert in_vm is not None and "bare metal" not in in_vm.assumptions
    est, _ = plan_cpu_estimate(env={ENV_CPU_TDP_W: "150"}, **files)
    assert est is not None and est.method == "tdp"
    # 150 W x 2 sockets spread over 4 CPUs, no idle term: 75 W per busy CPU.
    assert (est.idle_w, est.busy_w_per_cpu, est.rel_uncertainty) == (0.0, 75.0, 0.5)
    assert "over-states" not in est.assumptions  # bare metal


def test_tdp_model_in_a_vm_warns_that_a_package_overstates_a_slice(tmp_path: Path) -> None:
    est, _ = plan_cpu_estimate(env={ENV_CPU_TDP_W: "100"},
                               **_files(tmp_path, _x86(AMD, 26, 2, 1, "AMD EPYC")))
    assert est is not None and est.method == "tdp"
    assert "over-states" in est.assumptions and f"unset {ENV_CPU_TDP_W}" in est.assumptions


def test_bad_tdp_variable_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=ENV_CPU_TDP_W):
        plan_cpu_estimate(env={ENV_CPU_TDP_W: "lots"}, **_files(tmp_path, _x86(AMD, 26, 2, 1, "")))


def test_unreadable_stat_is_a_reason(tmp_path: Path) -> None:
    files = _files(tmp_path, _x86(AMD, 26, 2, 1, "AMD EPYC"))
    files["stat_path"] = str(tmp_path / "missing")
    est, reason = plan_cpu_estimate(env={}, **files)
    assert est is None and "missing" in reason and "/proc/stat" in reason


# ------------------------------------------------------------------------ cgroups


def _cg2(tmp_path: Path, path: str = "/docker/abc", **files: str) -> tuple[str, str]:
    root = tmp_path / "cg2"
    (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    for rel, text in files.items():
        (root / rel.replace("__", "/").replace("_DOT_", ".")).write_text(text)
    own = tmp_path / "self_cgroup_v2"
    own.write_text(f"0::{path}\n")
    return str(root), str(own)


def test_cgroup_v2_quota_of_two_cpus_on_a_64_cpu_host(tmp_path: Path) -> None:
    root, own = _cg2(tmp_path, **{
        "docker__abc__cpu_DOT_max": "200000 100000\n",
        "docker__abc__cpuset_DOT_cpus_DOT_effective": "0-63\n",
        "docker__abc__cpu_DOT_stat": "usage_usec 5000000\nuser_usec 4000000\n",
    })
    cg = read_cgroup_cpu(64, root, own)
    assert (cg.vcpus, cg.limited) == (2.0, True)
    assert cg.limit == "cpu.max 200000 100000"
    assert cg.usage_path == str(Path(root) / "docker/abc/cpu.stat")
    assert cg.usage_format == "cgroup2_stat"


def test_cgroup_v2_parent_quota_and_cpuset_the_smallest_wins(tmp_path: Path) -> None:
    root, own = _cg2(tmp_path, **{
        "docker__cpu_DOT_max": "150000 100000\n",  # a parent's quota limits its children
        "docker__abc__cpu_DOT_max": "max 100000\n",
        "docker__abc__cpuset_DOT_cpus_DOT_effective": "0-1,4-5\n",
        "docker__abc__cpu_DOT_stat": "usage_usec 1\n",
    })
    assert read_cgroup_cpu(64, root, own).vcpus == 1.5
    (Path(root) / "docker/cpu.max").write_text("max 100000\n")
    cg = read_cgroup_cpu(64, root, own)
    assert (cg.vcpus, cg.limit) == (4.0, "cpuset of 4 CPUs")


def test_cgroup_v2_without_limits_is_the_whole_machine(tmp_path: Path) -> None:
    root, own = _cg2(tmp_path, **{
        "docker__abc__cpu_DOT_max": "max 100000\n",
        "docker__abc__cpuset_DOT_cpus_DOT_effective": "0-7\n",
        "docker__abc__cpu_DOT_stat": "usage_usec 1\n",
    })
    cg = read_cgroup_cpu(8, root, own)
    assert (cg.vcpus, cg.limited, cg.limit) == (8.0, False, "")


def test_cgroup_v2_namespace_sees_its_own_cgroup_at_the_mount_root(tmp_path: Path) -> None:
    # Inside a container's cgroup namespace /proc/self/cgroup says "0::/" and the mount's
    # root directory is the container's cgroup.
    root, own = _cg2(tmp_path, path="/", **{"cpu_DOT_max": "100000 100000\n",
                                            "cpu_DOT_stat": "usage_usec 7\n"})
    cg = read_cgroup_cpu(16, root, own)
    assert (cg.vcpus, cg.usage_path) == (1.0, str(Path(root) / "cpu.stat"))


def test_cgroup_v1_quota_cpuset_and_cpuacct(tmp_path: Path) -> None:
    root = tmp_path / "cg1"
    for d in ("cpu,cpuacct/kubepods/pod1", "cpuset/kubepods/pod1", "memory"):
        (root / d).mkdir(parents=True)
    (root / "cpu,cpuacct/kubepods/pod1/cpu.cfs_quota_us").write_text("300000\n")
    (root / "cpu,cpuacct/kubepods/pod1/cpu.cfs_period_us").write_text("100000\n")
    (root / "cpu,cpuacct/kubepods/pod1/cpuacct.usage").write_text("123456789\n")
    (root / "cpuset/kubepods/pod1/cpuset.cpus").write_text("0-31\n")
    own = tmp_path / "self_cgroup_v1"
    own.write_text("5:cpuset:/kubepods/pod1\n4:cpu,cpuacct:/kubepods/pod1\n3:memory:/\n")
    cg = read_cgroup_cpu(32, str(root), str(own))
    assert (cg.vcpus, cg.limited, cg.usage_format) == (3.0, True, "cgroup1_usage")
    assert cg.usage_path == str(root / "cpu,cpuacct/kubepods/pod1/cpuacct.usage")
    (root / "cpu,cpuacct/kubepods/pod1/cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpuset/kubepods/pod1/cpuset.cpus").write_text("2,5\n")
    assert read_cgroup_cpu(32, str(root), str(own)).vcpus == 2.0


def test_container_limited_to_two_cpus_is_two_vcpus_counted_from_its_cgroup(
        tmp_path: Path) -> None:
    files = _files(tmp_path, _x86(AMD, 25, 1, 1, "AMD EPYC 7R13 Processor", cpus=64))
    root, own = _cg2(tmp_path, **{"docker__abc__cpu_DOT_max": "200000 100000\n",
                                  "docker__abc__cpu_DOT_stat": "usage_usec 1\n"})
    files.update(cgroup_root=root, proc_self_cgroup=own)
    est, _ = plan_cpu_estimate(env={}, **files)
    assert est is not None and est.vcpus == 2.0
    assert est.idle_w == pytest.approx(2 * 0.4556)  # EPYC 3rd Gen
    assert (est.busy_format, est.busy_seconds_per_unit) == ("cgroup2_stat", 1e-6)
    assert "2 vCPUs (cpu.max 200000 100000 of 64 host CPUs)" in est.assumptions


def test_memory_from_meminfo_or_a_lower_cgroup_limit(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684092 kB\nMemFree:         1000 kB\n")
    root, own = _cg2(tmp_path, **{"docker__abc__memory_DOT_max": "max\n"})
    gib, origin = read_memory_gib(str(meminfo), root, own)
    assert (gib, origin) == (pytest.approx(24684092 / 2**20), "MemTotal")
    (Path(root) / "docker/abc/memory.max").write_text(f"{4 * 2**30}\n")
    assert read_memory_gib(str(meminfo), root, own) == (4.0, "cgroup memory.max")
    dram, _ = plan_dram_estimate(str(meminfo), root, own)
    assert dram is not None and dram.power_w == pytest.approx(4 * 0.392)
    assert dram.rel_uncertainty == 0.5 and "4 GiB (cgroup memory.max)" in dram.assumptions
    none, reason = plan_dram_estimate(str(tmp_path / "missing"), root + "-no", own)
    assert none is None and "missing" in reason


# ------------------------------------------------------------------------ GREENML_ESTIMATE


@pytest.mark.parametrize("value,expected", [("on", True), ("1", True), ("true", True),
                                            ("TRUE", True), ("off", False), ("0", False),
                                            ("false", False), (" Off ", False)])
def test_estimate_setting(value: str, expected: bool) -> None:
    assert parse_estimate(value) is expected
    assert settings_from_env({"GREENML_ESTIMATE": value}).estimate is expected


@pytest.mark.parametrize("value", ["", "maybe", "2", "disable"])
def test_estimate_setting_rejects_other_values(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_env({"GREENML_ESTIMATE": value})
    msg = str(info.value)
    assert "GREENML_ESTIMATE" in msg and repr(value) in msg and "off" in msg and "on" in msg


def test_estimate_is_on_by_default() -> None:
    assert settings_from_env({}).estimate is True


# ------------------------------------------------------------------------ native counter


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = 0


def _source(path: Path, fmt: str, unit: float, idle_w: float, busy_w: float, **kw):
    return _core.ModelSource(str(path), fmt, unit, idle_w, busy_w, 4.0, **kw)


def _energy_j(src) -> float:
    raw, ok = src.read()
    assert ok[0]
    return raw[0] * src.channels()[0].to_si


def test_native_busy_term_from_proc_stat_jiffies(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    _write_stat(stat, 1_000)
    src = _source(stat, "proc_stat", 0.01, 0.0, 1.5431, cpu_rel_uncertainty=0.7,
                  cpu_detail="assumptions")
    (ch,) = src.channels()
    assert (ch.domain, ch.kind, ch.unit, ch.measured, ch.in_total) == (
        "cpu:estimated", "counter", "uj", False, True)
    assert (ch.rel_uncertainty, ch.detail, ch.source) == (0.7, "assumptions", "model")
    assert _energy_j(src) == 0.0
    _write_stat(stat, 1_300)  # 300 busy jiffies = 3 CPU-seconds (steal and guest excluded)
    assert _energy_j(src) == pytest.approx(3 * 1.5431, abs=1e-6)
    _write_stat(stat, 1_200)  # a counter going back adds nothing...
    assert _energy_j(src) == pytest.approx(3 * 1.5431, abs=1e-6)
    _write_stat(stat, 1_250)  # ...and counting resumes from where it went
    assert _energy_j(src) == pytest.approx(3.5 * 1.5431, abs=1e-6)


def test_native_busy_term_from_cgroup_files(tmp_path: Path) -> None:
    stat2 = tmp_path / "cpu.stat"
    stat2.write_text("usage_usec 1000000\nuser_usec 900000\nsystem_usec 100000\n")
    src2 = _source(stat2, "cgroup2_stat", 1e-6, 0.0, 2.0)
    stat2.write_text("usage_usec 3500000\nuser_usec 900000\nsystem_usec 100000\n")
    assert _energy_j(src2) == pytest.approx(2.5 * 2.0, abs=1e-6)
    usage1 = tmp_path / "cpuacct.usage"
    usage1.write_text("1000000000\n")
    src1 = _source(usage1, "cgroup1_usage", 1e-9, 0.0, 2.0)
    usage1.write_text("1250000000\n")
    assert _energy_j(src1) == pytest.approx(0.25 * 2.0, abs=1e-6)


def test_native_idle_and_dram_terms_grow_with_elapsed_time(tmp_path: Path) -> None:
    import time

    stat = tmp_path / "stat"
    _write_stat(stat, 1_000)
    t0 = time.monotonic_ns()
    src = _source(stat, "proc_stat", 0.01, 2.0, 1.0, dram_w=9.0, dram_rel_uncertainty=0.5,
                  dram_detail="dram assumptions")
    t1 = time.monotonic_ns()
    assert [c.domain for c in src.channels()] == ["cpu:estimated", "dram:estimated"]
    dram = src.channels()[1]
    assert (dram.in_total, dram.rel_uncertainty, dram.detail) == (True, 0.5, "dram assumptions")
    t2 = time.monotonic_ns()
    raw, ok = src.read()
    t3 = time.monotonic_ns()
    assert ok == [True, True]
    # elapsed lies between (t2 - t1) and (t3 - t0): the bounds of the source's own clock reads
    lo_s, hi_s = (t2 - t1) / 1e9, (t3 - t0) / 1e9
    assert 2.0 * lo_s - 1e-6 <= raw[0] * 1e-6 <= 2.0 * hi_s + 1e-6
    assert 9.0 * lo_s - 1e-6 <= raw[1] * 1e-6 <= 9.0 * hi_s + 1e-6


@pytest.mark.parametrize("idle_w,busy_w", [(0.0, 0.0), (-1.0, 2.0), (1.0, float("nan"))])
def test_native_rejects_bad_coefficients_with_a_reason(tmp_path: Path, idle_w, busy_w) -> None:
    stat = tmp_path / "stat"
    _write_stat(stat, 1)
    src = _source(stat, "proc_stat", 0.01, idle_w, busy_w)
    assert src.channels() == []
    (st,) = src.status()
    assert not st.available and "coefficients" in st.reason
    assert "GREENML" not in st.reason  # the core knows no configuration names


def test_native_unknown_busy_format_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="busy_format='jiffies'"):
        _source(tmp_path / "stat", "jiffies", 0.01, 1.0, 1.0)


def test_native_unreadable_or_unparsable_busy_file_is_a_reason(tmp_path: Path) -> None:
    src = _source(tmp_path / "missing", "proc_stat", 0.01, 1.0, 1.0)
    assert src.channels() == [] and "cannot read" in src.status()[0].reason
    bad = tmp_path / "cpu.stat"
    bad.write_text("user_usec 5\n")
    src = _source(bad, "cgroup2_stat", 1e-6, 1.0, 1.0)
    assert src.channels() == [] and "cannot parse" in src.status()[0].reason


# ------------------------------------------------------------------------ TDP table


@pytest.mark.parametrize(
    "cpuinfo_name,table_name,tdp_w",
    [
        ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "Intel Xeon Platinum 8375C", 300.0),
        ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763", 280.0),
        ("Intel(R) Core(TM) i7-10700K CPU @ 3.80GHz", "Intel Core i7-10700K", 125.0),
        ("Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", "Intel Xeon E5-2686 v4", 145.0),
        ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "Intel Xeon Gold 6248", 150.0),
        ("AMD EPYC 9654 96-Core Processor", "AMD EPYC 9654", 360.0),
        ("AMD Ryzen 9 5950X 16-Core Processor", "AMD Ryzen 9 5950X", 105.0),
        ("AMD Ryzen 7 5800H with Radeon Graphics", "AMD Ryzen 7 5800H", 45.0),
        ("11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz", "Intel Core i7-1165G7", 28.0),
        ("Intel(R) Core(TM)2 Duo CPU     E8400  @ 3.00GHz", "Intel Core 2 Duo E8400", 65.0),
        # Sandy Bridge-EP prints a lone "0" where later parts print "v2", "v3", ...
        ("Intel(R) Xeon(R) CPU E5-2690 0 @ 2.90GHz", "Intel Xeon E5-2690", 135.0),
        ("Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz", "Intel Xeon E5-2690 v4", 135.0),
        ("Intel(R) Xeon(R) CPU E3-1230 V2 @ 3.30GHz", "Intel Xeon E3-1230 v2", 69.0),
        # Some parts print the model number without its hyphen.
        ("Intel(R) Xeon(R) CPU E31230 @ 3.20GHz", "Intel Xeon E3-1230", 80.0),
        ("AMD FX(tm)-8350 Eight-Core Processor", "AMD FX-8350", 125.0),
        ("AMD Ryzen 5 3500 6-Core Processor", "AMD Ryzen 5 3500 (OEM Only)", 65.0),
    ],
)
def test_lookup_realistic_names(cpuinfo_name: str, table_name: str, tdp_w: float) -> None:
    assert lookup_tdp_w(cpuinfo_name) == TdpMatch(tdp_w, table_name, "exact")


def test_lookup_suffix_letters_matter() -> None:
    # Gold 6238 (140 W) and 6238R (165 W) are different parts.
    m = lookup_tdp_w("Intel(R) Xeon(R) Gold 6238R CPU @ 2.20GHz")
    assert m is not None and m.matched_name == "Intel Xeon Gold 6238R" and m.tdp_w == 165.0
    m = lookup_tdp_w("Intel(R) Xeon(R) Gold 6238 CPU @ 2.10GHz")
    assert m is not None and m.matched_name == "Intel Xeon Gold 6238" and m.tdp_w == 140.0


def test_lookup_vendor_is_respected() -> None:
    # The table also has bare AMD Opteron numbers ("6238"); an Intel part never gets them.
    m = lookup_tdp_w("AMD Opteron(tm) Processor 6238")
    assert m is not None and m.tdp_w == 115.0 and "Intel" not in m.matched_name
    assert lookup_tdp_w("Intel(R) Xeon(R) CPU 6238") is None


def test_lookup_fuzzy_only_on_the_same_model_number() -> None:
    m = lookup_tdp_w("Intel(R) Xeon(R) Platinium 8160 CPU @ 2.10GHz")  # misspelt family
    assert m == TdpMatch(150.0, "Intel Xeon Platinum 8160", "fuzzy")


@pytest.mark.parametrize(
    "name",
    [
        "Intel(R) Xeon(R) Platinum 8374C CPU @ 2.70GHz",  # between 8373C and 8375C: no guess
        "Intel(R) Xeon(R) Platinum 8488C",
        "AMD EPYC 7B13",
        "AMD EPYC 9R14 96-Core Processor",
        "Intel Xeon Processor (Cascadelake)",  # QEMU: no model number at all
        "Common KVM processor",
        "QEMU Virtual CPU version 2.5+",
        "",
    ],
)
def test_lookup_unknown_gives_none(name: str) -> None:
    assert lookup_tdp_w(name) is None


def test_lookup_ambiguous_rows_give_none() -> None:
    # The table lists the Core 2 Quad Q6600 twice (95 W and 105 W steppings).
    assert lookup_tdp_w("Intel(R) Core(TM)2 Quad CPU    Q6600  @ 2.40GHz") is None


# ------------------------------------------------------------------------ env override


def test_env_override() -> None:
    assert tdp_from_env({ENV_CPU_TDP_W: " 95.5 "}) == TdpMatch(95.5, ENV_CPU_TDP_W, "env")
    assert tdp_from_env({}) is None
    assert tdp_from_env({ENV_CPU_TDP_W: ""}) is None


@pytest.mark.parametrize("raw", ["abc", "0", "-10", "nan", "inf", "100W"])
def test_env_override_bad_value(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        tdp_from_env({ENV_CPU_TDP_W: raw})
    msg = str(info.value)
    assert ENV_CPU_TDP_W in msg and repr(raw) in msg and "watts" in msg


def test_env_default_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CPU_TDP_W, "42")
    assert tdp_from_env() == TdpMatch(42.0, ENV_CPU_TDP_W, "env")


# ------------------------------------------------------------------------ /proc/cpuinfo


def test_read_model_name_and_sockets(tmp_path: Path) -> None:
    p = _cpuinfo(tmp_path, "AMD EPYC 7763 64-Core Processor", sockets=2)


def _cpuinfo(tmp_path: Path, model: str | None, sockets: int = 1) -> Path:
    p = tmp_path / "cpuinfo"
    text = _x86(INTEL, 6, 85, 7, model or "", cpus=2 * sockets, sockets=sockets)
    if model is None:
        text = text.replace("model name\t: \n", "")
    p.write_text(text)
    return p
