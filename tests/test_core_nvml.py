"""NvmlSource through the Python bindings, against the fake libnvidia-ml."""

from __future__ import annotations

import math

import pytest
from greenml import _core

from fakes import nvml as fk
from fakes.powercap import PowercapTree

UUIDS = [
    "GPU-11111111-aaaa-4000-8000-000000000000",
    "GPU-22222222-bbbb-4000-8000-000000000000",
    "GPU-33333333-cccc-4000-8000-000000000000",
]


def _lib(fake) -> str:
    return str(fake.library_path)


def _raw(src):
    raw, ok = src.read()
    return {ch.domain: (v, good) for ch, v, good in zip(src.channels(), raw, ok)}


def _status(src):
    return {st.domain: st for st in src.status()}


# ----------------------------------------------------------------- channels


def test_given_energy_counter_when_reading_then_counter_channel_in_joules(fake_nvml,
                                                                          make_sampler):
    fake_nvml.add_device(uuid=UUIDS[0], name="NVIDIA H100", energy_mj=1_000, power_mw=300_000)
    src = _core.NvmlSource(_lib(fake_nvml))

    (ch,) = src.channels()
    assert (ch.domain, ch.source, ch.kind, ch.unit) == ("gpu:0", "nvml", "counter", "mj")
    assert ch.measured and ch.in_total
    assert ch.to_si == pytest.approx(1e-3)
    assert UUIDS[0] in ch.detail and "NVIDIA H100" in ch.detail
    assert _raw(src) == {"gpu:0": (1_000, True)}
    assert _raw(src)["gpu:0"][0] * ch.to_si == pytest.approx(1.0)

    sampler = make_sampler([src])  # baseline: 1000 mJ
    fake_nvml.set_energy(0, 3_500)
    _, _, energy_j, power_w = sampler.read_now()
    assert energy_j[0] == pytest.approx(2.5, abs=1e-12)
    assert math.isnan(power_w[0])
    fake_nvml.set_energy(0, 1_003_500)
    _, _, energy_j, _ = sampler.read_now()
    assert energy_j[0] == pytest.approx(1002.5, abs=1e-9)


def test_given_no_energy_counter_when_reading_then_power_channel_is_integrated(fake_nvml,
                                                                             make_sampler):
    fake_nvml.add_device(uuid=UUIDS[0], energy_mj=None, power_mw=100_000)  # pre-Volta
    src = _core.NvmlSource(_lib(fake_nvml))

    (ch,) = src.channels()
    assert (ch.domain, ch.kind, ch.unit) == ("gpu:0", "power", "mw")
    assert ch.to_si == pytest.approx(1e-3)
    assert _raw(src) == {"gpu:0": (100_000, True)}

    sampler = make_sampler([src])
    _, t1, e1, p1 = sampler.read_now()
    _, t2, e2, p2 = sampler.read_now()
    assert p1[0] == pytest.approx(100.0) and p2[0] == pytest.approx(100.0)
    # Constant 100 W between the two reads: energy = 100 W x dt (floored to whole uJ).
    assert e2[0] - e1[0] == pytest.approx(100.0 * (t2 - t1) * 1e-9, abs=2e-6)

    fake_nvml.set_power(0, 200_000)
    _, t3, e3, p3 = sampler.read_now()
    assert p3[0] == pytest.approx(200.0)
    # Trapezoid: the mean of 100 W and 200 W over the interval.
    assert e3[0] - e2[0] == pytest.approx(150.0 * (t3 - t2) * 1e-9, abs=2e-6)


def test_given_energy_error_when_constructing_then_falls_back_to_power(fake_nvml):
    fake_nvml.add_device(uuid=UUIDS[0], energy_mj=5, power_mw=70_000)
    fake_nvml.set_error(0, "energy", fk.NO_PERMISSION)

    src = _core.NvmlSource(_lib(fake_nvml))

    assert [(c.domain, c.kind) for c in src.channels()] == [("gpu:0", "power")]


def test_given_neither_energy_nor_power_when_constructing_then_unavailable_with_reason(
        fake_nvml):
    fake_nvml.add_device(uuid=UUIDS[0], energy_mj=None, power_mw=None)
    fake_nvml.add_device(uuid=UUIDS[1], energy_mj=7)

    src = _core.NvmlSource(_lib(fake_nvml))

    assert [c.domain for c in src.channels()] == ["gpu:1"]
    st = _status(src)
    assert st["gpu:0"].available is False and "not supported" in st["gpu:0"].reason.lower()
    assert st["gpu:1"].available is True and st["gpu:1"].reason == ""


# ----------------------------------------------------------------- failures mid-run


def test_given_two_gpus_when_one_is_lost_mid_run_then_only_its_channel_fails(
        fake_nvml, make_sampler, wait_until):
    fake_nvml.add_device(uuid=UUIDS[0], energy_mj=0)
    fake_nvml.add_device(uuid=UUIDS[1], energy_mj=0)
    fake_nvml.set_profile(0, base_w=200.0, update_ms=1.0)
    fake_nvml.set_profile(1, base_w=100.0, update_ms=1.0)
    src = _core.NvmlSource(_lib(fake_nvml))
    sampler = make_sampler([src], period_ns=2_000_000)
    col = {ch.domain: i for i, ch in enumerate(sampler.channels())}
    sampler.start()
    wait_until(lambda: sampler.head >= 5, message="sampler produced no samples")
    assert sampler.stats()["failed_reads_per_channel"] == [0, 0]
    assert all(st.available for st in sampler.status())

    fake_nvml.set_error(0, "energy", fk.GPU_IS_LOST)
    failed_0 = wait_until(lambda: sampler.stats()["failed_reads_per_channel"][col["gpu:0"]] >= 3,
                          message="reads of the lost GPU never failed")
    assert failed_0
    _, _, e_lost, _ = sampler.read_now()
    stats_a = sampler.stats()
    wait_until(lambda: sampler.stats()["failed_reads_per_channel"][col["gpu:0"]]
               > stats_a["failed_reads_per_channel"][col["gpu:0"]] + 3,
               message="failures of the lost GPU stopped growing")
    _, _, e_later, _ = wait_until(
        lambda: (lambda r: r if r[2][col["gpu:1"]] > e_lost[col["gpu:1"]] + 0.05 else None)(
            sampler.read_now()),
        message="the healthy GPU's energy stopped moving")

    stats_b = sampler.stats()
    assert stats_b["failed_reads_per_channel"][col["gpu:1"]] == 0
    assert stats_b["failed_reads"] == stats_b["failed_reads_per_channel"][col["gpu:0"]]
    # The lost GPU's energy is frozen at its last good value, not reset or jumped.
    assert e_later[col["gpu:0"]] == e_lost[col["gpu:0"]]
    st = {s.domain: s for s in sampler.status()}
    assert st["gpu:0"].available is False
    assert "lost" in st["gpu:0"].reason.lower()
    assert "NVML_ERROR_GPU_IS_LOST" in st["gpu:0"].reason
    assert st["gpu:1"].available is True and st["gpu:1"].reason == ""

    # Recovery: once reads succeed again the domain is available again.
    fake_nvml.set_error(0, "energy", None)
    wait_until(lambda: {s.domain: s for s in sampler.status()}["gpu:0"].available,
               message="gpu:0 did not become available again after the error cleared")


def test_given_power_channel_when_reads_fail_then_gap_is_bridged_and_reason_names_power(
        fake_nvml, make_sampler):
    fake_nvml.add_device(uuid=UUIDS[0], energy_mj=None, power_mw=50_000)
    sampler = make_sampler([_core.NvmlSource(_lib(fake_nvml))])
    _, t1, e1, _ = sampler.read_now()
    fake_nvml.set_error(0, "power", fk.GPU_IS_LOST)
    _, _, e_fail, p_fail = sampler.read_now()
    (st,) = sampler.status()
    assert st.available is False and "power" in st.reason and "lost" in st.reason.lower()
    assert e_fail[0] == e1[0] and p_fail[0] == pytest.approx(50.0)  # holds the last good value
    fake_nvml.set_error(0, "power", None)
    _, t3, e3, _ = sampler.read_now()
    assert sampler.stats()["failed_reads_per_channel"] == [1]
    assert e3[0] - e1[0] == pytest.approx(50.0 * (t3 - t1) * 1e-9, abs=2e-6)


# ----------------------------------------------------------------- CUDA_VISIBLE_DEVICES


@pytest.fixture
def three_gpus(fake_nvml):
    for i, uuid in enumerate(UUIDS):
        fake_nvml.add_device(uuid=uuid, name=f"NVIDIA Fake {i}", energy_mj=(i + 1) * 1_000)
    return fake_nvml


def _mapping(src):
    """gpu:<i> -> the NVML device behind it (by UUID), and its raw energy."""
    out = {}
    for ch, (value, ok) in zip(src.channels(), zip(*src.read())):
        (which,) = [k for k, u in enumerate(UUIDS) if u in ch.detail]
        assert ok
        out[ch.domain] = (which, value)
    return out


def test_given_cuda_visible_devices_reordered_when_listing_then_gpu_keys_follow_cuda_order(
        three_gpus):
    src = _core.NvmlSource(_lib(three_gpus), "2,0")

    assert _mapping(src) == {"gpu:0": (2, 3_000), "gpu:1": (0, 1_000)}
    assert sorted(s.domain for s in src.status()) == ["gpu:0", "gpu:1"]


def test_given_cuda_visible_devices_unset_when_listing_then_every_gpu_in_nvml_order(three_gpus):
    src = _core.NvmlSource(_lib(three_gpus), None)

    assert _mapping(src) == {"gpu:0": (0, 1_000), "gpu:1": (1, 2_000), "gpu:2": (2, 3_000)}


def test_given_uuids_in_cuda_visible_devices_when_listing_then_they_map_to_devices(three_gpus):
    # A full UUID, and a unique prefix without "GPU-" in another case, as CUDA accepts.
    src = _core.NvmlSource(_lib(three_gpus), f"{UUIDS[1]},33333333-CCCC")

    assert _mapping(src) == {"gpu:0": (1, 2_000), "gpu:1": (2, 3_000)}


def test_given_an_invalid_entry_when_listing_then_enumeration_stops_there_like_cuda(three_gpus):
    src = _core.NvmlSource(_lib(three_gpus), "1,7,0")

    assert _mapping(src) == {"gpu:0": (1, 2_000)}
    notes = [s for s in src.status() if s.domain == "gpu"]
    assert len(notes) == 1 and not notes[0].available
    assert '"7"' in notes[0].reason and "CUDA_VISIBLE_DEVICES" in notes[0].reason


def test_given_cuda_visible_devices_hides_all_when_listing_then_reason_says_so(three_gpus):
    src = _core.NvmlSource(_lib(three_gpus), "-1")

    assert src.channels() == []
    (st,) = src.status()
    assert (st.domain, st.available) == ("gpu", False)
    assert "CUDA_VISIBLE_DEVICES" in st.reason and "-1" in st.reason


# ----------------------------------------------------------------- no driver


def test_given_missing_library_when_constructing_then_one_reason_and_no_crash(tmp_path):
    missing = tmp_path / "nowhere" / "libnvidia-ml.so.1"

    src = _core.NvmlSource(str(missing))

    assert src.channels() == []
    assert src.read() == ([], [])
    (st,) = src.status()
    assert (st.domain, st.source, st.available) == ("gpu", "nvml", False)
    assert str(missing) in st.reason
    assert "GREENML_NVML_LIBRARY" in st.reason


def test_given_driver_not_loaded_when_constructing_then_reason_says_what_to_do(fake_nvml):
    fake_nvml.add_device(uuid=UUIDS[0])
    fake_nvml.set_init_error(fk.DRIVER_NOT_LOADED)

    src = _core.NvmlSource(_lib(fake_nvml))

    assert src.channels() == []
    (st,) = src.status()
    assert st.available is False and "driver" in st.reason.lower()


def test_given_no_gpus_when_constructing_then_reason_not_crash(fake_nvml):
    src = _core.NvmlSource(_lib(fake_nvml))

    assert src.channels() == []
    (st,) = src.status()
    assert st.available is False and st.reason


# ----------------------------------------------------------------- totals


def test_given_psys_package_dram_core_and_gpu_when_sampling_then_totals_never_overlap(
        tmp_path, fake_nvml, make_sampler):
    tree = PowercapTree(tmp_path / "tree")
    tree.add_psys(dir_index=0)
    tree.add_package(0, dram=True, core=True, uncore=True, dir_index=1)
    tree.add_package(1, dram=True, core=True, dir_index=2)
    tree.add_mmio_duplicate(0)
    fake_nvml.add_device(uuid=UUIDS[0], energy_mj=1)
    fake_nvml.add_device(uuid=UUIDS[1], energy_mj=None, power_mw=10_000)

    sampler = make_sampler([_core.NvmlSource(_lib(fake_nvml)),
                            _core.RaplSource(str(tree.root))])

    channels = sampler.channels()
    domains = [c.domain for c in channels]
    assert len(domains) == len(set(domains)), f"a domain is read twice: {domains}"
    assert {c.domain for c in channels if c.in_total} == {
        "package:0", "dram:0", "package:1", "dram:1", "gpu:0", "gpu:1"}
    assert {c.domain for c in channels if not c.in_total} == {
        "psys", "core:0", "uncore:0", "core:1"}
