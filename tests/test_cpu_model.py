"""Tests of greenml._cpu_model on temporary /proc/stat and /proc/cpuinfo files."""

from __future__ import annotations

from pathlib import Path

import pytest
from greenml._cpu_model import (
    ENV_CPU_TDP_W,
    CpuPowerModel,
    CpuTimes,
    ProcStatReader,
    TdpMatch,
    estimate_available,
    lookup_tdp_w,
    read_cpu_model_name,
    read_cpu_socket_count,
    tdp_from_env,
)
from greenml._errors import ConfigError

# ------------------------------------------------------------------------ fakes


def _stat_text(
    user: int,
    nice: int,
    system: int,
    idle: int,
    iowait: int = 0,
    irq: int = 0,
    softirq: int = 0,
    steal: int = 0,
    guest: int = 0,
    guest_nice: int = 0,
) -> str:
    fields = (user, nice, system, idle, iowait, irq, softirq, steal, guest, guest_nice)
    return (
        "cpu  " + " ".join(str(v) for v in fields) + "\n"
        "cpu0 1 2 3 4 5 6 7 8 0 0\n"
        "intr 12345 0 0\n"
        "ctxt 987654\n"
        "btime 1700000000\n"
    )


def _write_stat(path: Path, *fields: int, **named: int) -> None:
    path.write_text(_stat_text(*fields, **named))


def _cpuinfo_text(model: str | None, sockets: int = 1, cores_per_socket: int = 2) -> str:
    blocks: list[str] = []
    n = 0
    for s in range(sockets):
        for _ in range(cores_per_socket):
            lines = [f"processor\t: {n}", "vendor_id\t: GenuineIntel", "cpu family\t: 6"]
            if model is not None:
                lines.append(f"model name\t: {model}")
            lines += [f"physical id\t: {s}", f"core id\t\t: {n}", "flags\t\t: fpu vme"]
            blocks.append("\n".join(lines))
            n += 1
    return "\n\n".join(blocks) + "\n"


@pytest.fixture
def stat(tmp_path: Path) -> Path:
    p = tmp_path / "stat"
    _write_stat(p, 100, 0, 100, 800)
    return p


def _cpuinfo(tmp_path: Path, model: str | None, sockets: int = 1) -> Path:
    p = tmp_path / "cpuinfo"
    p.write_text(_cpuinfo_text(model, sockets))
    return p


# ------------------------------------------------------------------------ /proc/stat


def test_reader_parses_aggregate_line(stat: Path) -> None:
    t = ProcStatReader(str(stat)).read()
    assert t == CpuTimes(100, 0, 100, 800, 0, 0, 0, 0)


def test_reader_accepts_old_kernels_with_fewer_fields(tmp_path: Path) -> None:
    p = tmp_path / "stat"
    p.write_text("cpu  10 20 30 40\nintr 1\n")
    assert ProcStatReader(str(p)).read() == CpuTimes(10, 20, 30, 40, 0, 0, 0, 0)


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        ProcStatReader(str(tmp_path / "missing")).read()
    p = tmp_path / "stat"
    p.write_text("intr 1\n")
    with pytest.raises(ValueError, match="no aggregate 'cpu' line"):
        ProcStatReader(str(p)).read()


def test_busy_fraction_arithmetic() -> None:
    a = CpuTimes(100, 0, 100, 800, 0, 0, 0, 0)
    # +300 user, +50 nice, +100 system, +25 irq, +25 softirq = 500 busy;
    # +400 idle, +50 iowait, +50 steal = 500 not busy -> 0.5
    b = CpuTimes(400, 50, 200, 1200, 50, 25, 25, 50)
    assert ProcStatReader.busy_fraction_between(a, b) == pytest.approx(0.5)
    assert ProcStatReader.busy_fraction_between(a, a) == 0.0
    full = CpuTimes(200, 0, 200, 800, 0, 0, 0, 0)
    assert ProcStatReader.busy_fraction_between(a, full) == pytest.approx(1.0)
    idle = CpuTimes(100, 0, 100, 1800, 0, 0, 0, 0)
    assert ProcStatReader.busy_fraction_between(a, idle) == 0.0


def test_busy_fraction_ignores_counters_going_back() -> None:
    a = CpuTimes(100, 0, 100, 800, 500, 0, 0, 0)
    b = CpuTimes(200, 0, 100, 900, 400, 0, 0, 0)  # iowait went back by 100
    assert ProcStatReader.busy_fraction_between(a, b) == pytest.approx(0.5)


def test_guest_time_is_not_double_counted(tmp_path: Path) -> None:
    p = tmp_path / "stat"
    _write_stat(p, 100, 0, 0, 100, guest=0)
    r = ProcStatReader(str(p))
    a = r.read()
    _write_stat(p, 200, 0, 0, 200, guest=100)  # guest is already inside user
    assert r.busy_fraction_between(a, r.read()) == pytest.approx(0.5)


# ------------------------------------------------------------------------ the model


def test_model_watts_is_tdp_times_busy(stat: Path) -> None:
    m = CpuPowerModel(200.0, 1, str(stat))
    _write_stat(stat, 100 + 250, 0, 100 + 50, 800 + 700)  # 300 busy of 1000 ticks
    busy, watts = m.sample()
    assert busy == pytest.approx(0.3)
    assert watts == pytest.approx(200.0 * 0.3)


def test_model_samples_between_successive_calls(stat: Path) -> None:
    m = CpuPowerModel(100.0, 1, str(stat))
    _write_stat(stat, 200, 0, 100, 800)  # 100 busy of 100 -> 1.0
    assert m.sample() == pytest.approx((1.0, 100.0))
    _write_stat(stat, 200, 0, 100, 1100)  # then 0 busy of 300 -> 0.0
    assert m.sample() == pytest.approx((0.0, 0.0))
    _write_stat(stat, 300, 0, 100, 1200)  # then 100 busy of 200
    assert m.sample() == pytest.approx((0.5, 50.0))


def test_model_without_elapsed_ticks_repeats_last_and_carries_interval(stat: Path) -> None:
    m = CpuPowerModel(100.0, 1, str(stat))
    assert m.sample() == (0.0, 0.0)  # nothing elapsed since construction
    _write_stat(stat, 150, 0, 100, 850)
    assert m.sample() == pytest.approx((0.5, 50.0))
    assert m.sample() == pytest.approx((0.5, 50.0))  # same file: no tick elapsed
    _write_stat(stat, 250, 0, 100, 850)
    assert m.sample() == pytest.approx((1.0, 100.0))


def test_model_sockets_multiply(stat: Path) -> None:
    m = CpuPowerModel(150.0, 2, str(stat))
    assert m.max_power_w == 300.0
    _write_stat(stat, 100 + 40, 0, 100 + 40, 800 + 120)  # 80 busy of 200 -> 0.4
    busy, watts = m.sample()
    assert busy == pytest.approx(0.4)
    assert watts == pytest.approx(150.0 * 2 * 0.4)


@pytest.mark.parametrize("tdp,sockets", [(0.0, 1), (-5.0, 1), (float("nan"), 1), (100.0, 0)])
def test_model_rejects_bad_parameters(stat: Path, tdp: float, sockets: int) -> None:
    with pytest.raises(ConfigError):
        CpuPowerModel(tdp, sockets, str(stat))


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
    assert read_cpu_model_name(str(p)) == "AMD EPYC 7763 64-Core Processor"
    assert read_cpu_socket_count(str(p)) == 2


def test_read_cpuinfo_without_fields(tmp_path: Path) -> None:
    p = tmp_path / "cpuinfo"
    p.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")  # ARM style
    assert read_cpu_model_name(str(p)) is None
    assert read_cpu_socket_count(str(p)) == 1
    missing = str(tmp_path / "missing")
    assert read_cpu_model_name(missing) is None
    assert read_cpu_socket_count(missing) == 1


# ------------------------------------------------------------------------ estimate_available


def test_estimate_from_table_with_sockets(tmp_path: Path, stat: Path) -> None:
    info = _cpuinfo(tmp_path, "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", sockets=2)
    model, why = estimate_available(env={}, cpuinfo_path=str(info), stat_path=str(stat))
    assert model is not None
    assert (model.tdp_w, model.sockets, model.max_power_w) == (150.0, 2, 300.0)
    assert model.match == TdpMatch(150.0, "Intel Xeon Gold 6248", "exact")
    assert "Intel Xeon Gold 6248" in why and "2 sockets" in why
    _write_stat(stat, 100 + 100, 0, 100, 800 + 300)  # 0.25 busy
    assert model.sample() == pytest.approx((0.25, 75.0))


def test_estimate_env_overrides_table(tmp_path: Path, stat: Path) -> None:
    info = _cpuinfo(tmp_path, "AMD EPYC 7763 64-Core Processor")
    model, why = estimate_available(
        env={ENV_CPU_TDP_W: "200"}, cpuinfo_path=str(info), stat_path=str(stat)
    )
    assert model is not None and model.tdp_w == 200.0 and model.match is not None
    assert model.match.method == "env" and ENV_CPU_TDP_W in why


def test_estimate_env_works_without_model_name(tmp_path: Path, stat: Path) -> None:
    info = _cpuinfo(tmp_path, None, sockets=1)
    model, _ = estimate_available(
        env={ENV_CPU_TDP_W: "15"}, cpuinfo_path=str(info), stat_path=str(stat)
    )
    assert model is not None and model.max_power_w == 15.0


@pytest.mark.parametrize("model_name", ["AMD EPYC 7B13", None])
def test_estimate_impossible_says_how_to_enable(
    tmp_path: Path, stat: Path, model_name: str | None
) -> None:
    info = _cpuinfo(tmp_path, model_name)
    model, why = estimate_available(env={}, cpuinfo_path=str(info), stat_path=str(stat))
    assert model is None
    assert "set GREENML_CPU_TDP_W=<watts> to enable an estimate" in why
    if model_name:
        assert model_name in why


def test_estimate_bad_env_raises(tmp_path: Path, stat: Path) -> None:
    info = _cpuinfo(tmp_path, "AMD EPYC 7763 64-Core Processor")
    with pytest.raises(ConfigError, match=ENV_CPU_TDP_W):
        estimate_available(env={ENV_CPU_TDP_W: "lots"}, cpuinfo_path=str(info), stat_path=str(stat))


def test_estimate_unreadable_stat_is_a_reason(tmp_path: Path) -> None:
    info = _cpuinfo(tmp_path, "AMD EPYC 7763 64-Core Processor")
    model, why = estimate_available(
        env={}, cpuinfo_path=str(info), stat_path=str(tmp_path / "no-stat")
    )
    assert model is None and "no-stat" in why
