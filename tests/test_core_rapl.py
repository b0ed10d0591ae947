"""RaplSource through the Python bindings, on a fake powercap tree."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings

import pytest
from greenml import _core

from fakes.powercap import DEFAULT_RANGE_UJ, PowercapTree


def _by_domain(channels):
    out = {}
    for ch in channels:
        assert ch.domain not in out, f"domain {ch.domain} has two channels"
        out[ch.domain] = ch
    return out


def _raw_by_domain(src):
    raw, ok = src.read()
    chans = src.channels()
    assert len(raw) == len(ok) == len(chans)
    return {ch.domain: (v, good) for ch, v, good in zip(chans, raw, ok)}


# ----------------------------------------------------------------- discovery


def test_given_shuffled_dir_indices_when_listing_then_domains_come_from_zone_names(powercap):
    # package-1 lives at intel-rapl:0 and package-0 at intel-rapl:1; subzones
    # are numbered in an unusual order too.
    powercap.add_package(1, energy_uj=111, dram=True, core=True, dir_index=0,
                         sub_order=("core", "dram"))
    powercap.add_package(0, energy_uj=222, dram=True, core=True, dir_index=1,
                         sub_order=("dram", "core"))
    powercap.set_energy("dram:1", 333)
    powercap.set_energy("core:0", 444)

    src = _core.RaplSource(str(powercap.root))

    chans = _by_domain(src.channels())
    assert set(chans) == {"package:0", "package:1", "dram:0", "dram:1", "core:0", "core:1"}
    assert chans["package:1"].detail.endswith("intel-rapl:0")
    assert chans["package:0"].detail.endswith("intel-rapl:1")
    raw = _raw_by_domain(src)
    assert raw["package:1"] == (111, True)
    assert raw["package:0"] == (222, True)
    assert raw["dram:1"] == (333, True)
    assert raw["core:0"] == (444, True)


def test_given_mmio_duplicate_when_listing_then_package_is_read_once(powercap):
    powercap.add_package(0, energy_uj=10)
    powercap.add_mmio_duplicate(0, energy_uj=99)

    src = _core.RaplSource(str(powercap.root))

    domains = [ch.domain for ch in src.channels()]
    assert sorted(domains) == ["dram:0", "package:0"]
    assert not any("intel-rapl-mmio" in ch.detail for ch in src.channels())
    assert _raw_by_domain(src)["package:0"] == (10, True)  # not the MMIO copy's 99
    assert sorted(st.domain for st in src.status()) == ["dram:0", "package:0"]


def test_given_flat_subzone_links_when_listing_then_subzones_are_not_counted_twice(powercap):
    powercap.add_package(0, dram=True, core=True, uncore=True)
    assert (powercap.root / "intel-rapl:0:0").is_symlink()  # the fake mirrors sysfs

    src = _core.RaplSource(str(powercap.root))

    assert sorted(ch.domain for ch in src.channels()) == ["core:0", "dram:0", "package:0",
                                                         "uncore:0"]


def test_given_every_zone_kind_when_listing_then_only_package_and_dram_count_in_totals(powercap):
    powercap.add_psys()
    powercap.add_package(0, dram=True, core=True, uncore=True)
    powercap.add_package(1, dram=True, core=True, uncore=True)

    src = _core.RaplSource(str(powercap.root))

    chans = _by_domain(src.channels())
    assert {d: c.in_total for d, c in chans.items()} == {
        "psys": False,
        "package:0": True, "dram:0": True, "core:0": False, "uncore:0": False,
        "package:1": True, "dram:1": True, "core:1": False, "uncore:1": False,
    }
    for ch in chans.values():
        assert (ch.source, ch.measured, ch.kind, ch.unit) == ("rapl", True, "counter", "uj")
        assert ch.to_si == pytest.approx(1e-6)
        assert ch.max_raw == DEFAULT_RANGE_UJ
    statuses = src.status()
    assert sorted(st.domain for st in statuses) == sorted(chans)
    assert all(st.available and st.reason == "" and st.source == "rapl" for st in statuses)


def test_given_second_socket_when_reading_then_each_socket_has_its_own_values(powercap):
    powercap.add_package(0, energy_uj=1_000, dram=True)
    powercap.add_package(1, energy_uj=2_000, dram=True)
    powercap.set_energy("dram:0", 3_000)
    powercap.set_energy("dram:1", 4_000)

    src = _core.RaplSource(str(powercap.root))

    assert {d: v for d, (v, ok) in _raw_by_domain(src).items()} == {
        "package:0": 1_000, "package:1": 2_000, "dram:0": 3_000, "dram:1": 4_000,
    }


# ----------------------------------------------------------------- reading


def test_given_open_source_when_values_are_rewritten_then_read_returns_what_was_written(powercap):
    powercap.add_package(0, energy_uj=5, dram=True)
    src = _core.RaplSource(str(powercap.root))

    for pkg, dram in [(123_456_789, 42), (7, 262_143_328_849), (262_143_328_849, 0)]:
        powercap.set_energy("package:0", pkg)
        powercap.set_energy("dram:0", dram)
        raw = _raw_by_domain(src)
        assert raw == {"package:0": (pkg, True), "dram:0": (dram, True)}


def test_given_garbage_in_counter_when_reading_then_that_channel_fails_alone(powercap):
    powercap.add_package(0, energy_uj=5, dram=True)
    src = _core.RaplSource(str(powercap.root))
    powercap.set_text("dram:0", "not a number\n")

    raw = _raw_by_domain(src)

    assert raw["package:0"] == (5, True)
    assert raw["dram:0"][1] is False


def test_given_missing_root_when_constructing_then_one_unavailable_record_with_a_reason(tmp_path):
    root = tmp_path / "no" / "such" / "powercap"

    src = _core.RaplSource(str(root), "set THE_ROOT_VARIABLE")

    assert src.channels() == []
    assert src.read() == ([], [])
    statuses = src.status()
    assert len(statuses) == 1
    st = statuses[0]
    assert (st.source, st.available) == ("rapl", False)
    assert str(root) in st.reason
    assert st.reason.endswith("; set THE_ROOT_VARIABLE")  # the caller says how to configure it
    # The core itself names no environment variable; the runtime adds the hint.
    assert "GREENML_" not in _core.RaplSource(str(root)).status()[0].reason
    from greenml._config import Settings
    from greenml._runtime import build_sources, sensors_of

    sources, extra = build_sources(Settings(powercap_root=str(root), sources=frozenset({"rapl"})))
    (cpu,) = [s for s in sensors_of(sources, extra) if s.source == "rapl"]
    assert "GREENML_POWERCAP_ROOT" in cpu.reason
    assert src.max_safe_period_ns > 10**18  # no counter: no wrap to worry about


def test_given_root_with_only_mmio_when_constructing_then_unavailable_not_a_crash(powercap):
    powercap.add_mmio_duplicate(0)

    src = _core.RaplSource(str(powercap.root))

    assert src.channels() == []
    assert [st.available for st in src.status()] == [False]
    assert src.status()[0].reason


@pytest.mark.skipif(os.geteuid() == 0,
                    reason="runs as root, where chmod 000 does not deny reads "
                           "(the C++ suite covers this by dropping to nobody)")
def test_given_unreadable_counter_when_constructing_then_reason_says_how_to_grant_access(
        powercap):
    powercap.add_package(0, dram=True)
    powercap.make_unreadable("package:0")

    src = _core.RaplSource(str(powercap.root))

    assert [ch.domain for ch in src.channels()] == ["dram:0"]
    st = {s.domain: s for s in src.status()}["package:0"]
    assert st.available is False
    assert "energy_uj" in st.reason and "chmod" in st.reason


def _run_forked_as_nobody(check) -> int:
    """Run ``check()`` in a forked child with uid/gid 65534; its int result is the exit code."""
    with warnings.catch_warnings():  # 3.12+ warns about fork() with threads alive
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: report through the exit code only, never through pytest
        code = 125
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = 124
            code = int(check())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to the nobody user")
def test_given_unreadable_counter_when_unprivileged_user_constructs_then_reason_not_crash(
        tmp_path):
    # tmp_path's parents are private to root: build the tree where nobody can walk.
    shared = tempfile.mkdtemp(prefix="greenml-rapl-")
    try:
        os.chmod(shared, 0o755)
        tree = PowercapTree(shared)
        tree.add_package(0, dram=True)
        for dirpath, dirnames, filenames in os.walk(shared):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
            for f in filenames:
                os.chmod(os.path.join(dirpath, f), 0o644)
        tree.make_unreadable("package:0")

        def check() -> int:
            src = _core.RaplSource(str(tree.root))
            if [ch.domain for ch in src.channels()] != ["dram:0"]:
                return 1
            st = {s.domain: s for s in src.status()}.get("package:0")
            if st is None or st.available:
                return 2
            if "energy_uj" not in st.reason or "chmod" not in st.reason:
                return 3
            return 0

        assert _run_forked_as_nobody(check) == 0
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# ----------------------------------------------------------------- wraparound


def test_given_small_range_when_counter_wraps_then_cumulative_energy_is_exact(
        powercap, make_sampler):
    powercap.add_package(0, energy_uj=900, range_uj=1000, dram=False)
    sampler = make_sampler([_core.RaplSource(str(powercap.root))])  # baseline read: 900

    cumulative_uj = []
    for value in (100, 950, 50):
        powercap.set_energy("package:0", value)
        _, _, energy_j, power_w, _ = sampler.read_now()
        cumulative_uj.append(energy_j[0] * 1e6)
        assert power_w[0] != power_w[0]  # NaN: a counter has no power column

    # max_energy_range_uj = 1000: the counter shows 0..1000 inclusive and wraps modulo 1001.
    # 900 -> 100 wraps (+201), 100 -> 950 (+850), 950 -> 50 wraps (+101).
    assert cumulative_uj == pytest.approx([201, 1051, 1152], rel=0, abs=1e-9)
    deltas = [b - a for a, b in zip([0.0] + cumulative_uj, cumulative_uj)]
    assert deltas == pytest.approx([201, 850, 101], rel=0, abs=1e-9)


def test_given_running_sampler_when_counter_wraps_many_times_then_no_wrap_is_lost(
        powercap, make_sampler):
    # Three-digit values only: the sampler thread reads while the test writes,
    # and a same-length in-place write is never seen half done.
    powercap.add_package(0, energy_uj=500, range_uj=1000, dram=True)
    powercap.set_energy("dram:0", 500)
    sampler = make_sampler([_core.RaplSource(str(powercap.root))], period_ns=1_000_000)
    cols = {ch.domain: i for i, ch in enumerate(sampler.channels())}
    sampler.start()

    values = [900, 100, 950, 150, 800, 200, 999, 300, 700, 100, 600, 400, 300]
    expected_uj = 0
    prev = 500
    indices = []
    for v in values:
        powercap.set_energy("package:0", v)
        expected_uj += (v - prev) % 1001  # the counter shows 0..1000 inclusive
        prev = v
        index, _, energy_j, _, _ = sampler.read_now()
        indices.append(index)
        assert round(energy_j[cols["package:0"]] * 1e6) == expected_uj
        assert energy_j[cols["dram:0"]] == 0.0  # untouched zone does not move

    sampler.stop()
    wraps = sum(1 for a, b in zip([500] + values, values) if b < a)
    assert wraps >= 6
    assert expected_uj == 6807  # 400+201+850+201+650+401+799+302+400+401+500+801+901
    # The thread's own samples agree with the manual ones: the column never
    # goes backwards and ends where the last read_now did.
    t, energy, _, _, _ = sampler.read(0)
    col = energy[:, cols["package:0"]]
    assert (col[1:] >= col[:-1]).all()
    assert round(col[-1] * 1e6) == expected_uj
    assert len(set(indices)) == len(values)


def test_given_two_zones_named_the_same_package_when_listing_then_one_domain_counted_once(
        powercap):
    powercap.add_package(0, energy_uj=1_000, dram=False)
    # A second top-level zone that also calls itself package-0 (seen on some firmware).
    twin = powercap.root / "intel-rapl:7"
    twin.mkdir()
    (twin / "name").write_text("package-0\n")
    (twin / "energy_uj").write_text("5000\n")
    (twin / "max_energy_range_uj").write_text("262143328850\n")
    src = _core.RaplSource(str(powercap.root))
    domains = [c.domain for c in src.channels()]
    assert domains == ["package:0"]
    assert [s.domain for s in src.status()] == ["package:0"]
