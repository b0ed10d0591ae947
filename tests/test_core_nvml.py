"""NvmlSource through the Python bindings, against the fake libnvidia-ml."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import types

import pytest
from greenml import _core, _runtime
from greenml._config import Settings, settings_from_env
from greenml._errors import ConfigError

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
    assert ch.uuid == UUIDS[0]
    assert _raw(src) == {"gpu:0": (1_000, True)}
    assert _raw(src)["gpu:0"][0] * ch.to_si == pytest.approx(1.0)

    sampler = make_sampler([src])  # baseline: 1000 mJ
    fake_nvml.set_energy(0, 3_500)
    _, _, energy_j, power_w = sampler.read_now()[:4]
    assert energy_j[0] == pytest.approx(2.5, abs=1e-12)
    assert math.isnan(power_w[0])
    # A step a GPU can draw within the sampler's plausibility bound counts in full.
    fake_nvml.set_energy(0, 103_500)
    _, _, energy_j, _ = sampler.read_now()[:4]
    assert energy_j[0] == pytest.approx(102.5, abs=1e-9)


def test_given_no_energy_counter_when_reading_then_power_channel_is_integrated(fake_nvml,
                                                                             make_sampler):
    fake_nvml.add_device(uuid=UUIDS[0], energy_mj=None, power_mw=100_000)  # pre-Volta
    src = _core.NvmlSource(_lib(fake_nvml))

    (ch,) = src.channels()
    assert (ch.domain, ch.kind, ch.unit) == ("gpu:0", "power", "mw")
    assert ch.to_si == pytest.approx(1e-3)
    assert _raw(src) == {"gpu:0": (100_000, True)}

    sampler = make_sampler([src])
    _, t1, e1, p1 = sampler.read_now()[:4]
    _, t2, e2, p2 = sampler.read_now()[:4]
    assert p1[0] == pytest.approx(100.0) and p2[0] == pytest.approx(100.0)
    # Constant 100 W between the two reads: energy = 100 W x dt (floored to whole uJ).
    assert e2[0] - e1[0] == pytest.approx(100.0 * (t2 - t1) * 1e-9, abs=2e-6)

    fake_nvml.set_power(0, 200_000)
    _, t3, e3, p3 = sampler.read_now()[:4]
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
    _, _, e_lost, _ = sampler.read_now()[:4]
    stats_a = sampler.stats()
    wait_until(lambda: sampler.stats()["failed_reads_per_channel"][col["gpu:0"]]
               > stats_a["failed_reads_per_channel"][col["gpu:0"]] + 3,
               message="failures of the lost GPU stopped growing")
    _, _, e_later, _ = wait_until(
        lambda: (lambda r: r if r[2][col["gpu:1"]] > e_lost[col["gpu:1"]] + 0.05 else None)(
            sampler.read_now()[:4]),
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
    _, t1, e1, _ = sampler.read_now()[:4]
    fake_nvml.set_error(0, "power", fk.GPU_IS_LOST)
    _, _, e_fail, p_fail = sampler.read_now()[:4]
    (st,) = sampler.status()
    assert st.available is False and "power" in st.reason and "lost" in st.reason.lower()
    assert e_fail[0] == e1[0] and p_fail[0] == pytest.approx(50.0)  # holds the last good value
    fake_nvml.set_error(0, "power", None)
    _, t3, e3, _ = sampler.read_now()[:4]
    assert sampler.stats()["failed_reads_per_channel"] == [1]
    assert e3[0] - e1[0] == pytest.approx(50.0 * (t3 - t1) * 1e-9, abs=2e-6)


# ----------------------------------------------------------------- CUDA_VISIBLE_DEVICES


@pytest.fixture
def three_gpus(fake_nvml):
    for i, uuid in enumerate(UUIDS):
        fake_nvml.add_device(uuid=uuid, name="NVIDIA Fake A100", energy_mj=(i + 1) * 1_000)
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
    assert "GREENML" not in st.reason  # the core knows no configuration names


def test_given_missing_library_when_built_from_settings_then_reason_names_the_variable(tmp_path):
    missing = tmp_path / "nowhere" / "libnvidia-ml.so.1"

    src = _runtime.nvml_source(Settings(nvml_library=str(missing)), modules={})

    (st,) = src.status()
    assert str(missing) in st.reason
    assert st.reason.endswith(
        "install the NVIDIA driver, or set GREENML_NVML_LIBRARY to the path of libnvidia-ml.so.1")


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


# ----------------------------------------------------------------- CUDA device order


@pytest.fixture
def mixed_gpus(fake_nvml):
    """NVML index order is not PCI order, and the models differ (as on many workstations)."""
    fake_nvml.add_device(uuid=UUIDS[0], name="Tesla T4", energy_mj=1_000, pci_bus_id="0000:81:00.0")
    fake_nvml.add_device(uuid=UUIDS[1], name="NVIDIA A100-SXM4-40GB", energy_mj=2_000,
                         pci_bus_id="0000:01:00.0")
    fake_nvml.add_device(uuid=UUIDS[2], name="NVIDIA A100-SXM4-40GB", energy_mj=3_000,
                         pci_bus_id="0000:41:00.0")
    return fake_nvml


def _settings(fake, **env) -> Settings:
    return settings_from_env({"GREENML_NVML_LIBRARY": _lib(fake), **env})


def test_given_pci_bus_id_order_when_building_from_env_then_indices_follow_bus_order(mixed_gpus):
    src = _runtime.nvml_source(
        _settings(mixed_gpus, CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES="0,2"),
        modules={})

    # CUDA device 0 is the lowest bus (NVML 1), CUDA device 2 the highest (NVML 0, the T4).
    assert _mapping(src) == {"gpu:0": (1, 2_000), "gpu:1": (0, 1_000)}


def test_given_default_order_and_mixed_models_when_building_then_reason_instead_of_guess(
        mixed_gpus):
    src = _runtime.nvml_source(_settings(mixed_gpus, CUDA_VISIBLE_DEVICES="1"), modules={})

    assert src.channels() == []
    (st,) = src.status()
    assert (st.domain, st.available) == ("gpu:0", False)
    assert 'CUDA_VISIBLE_DEVICES entry "1" names CUDA device 1' in st.reason
    assert "Tesla T4" in st.reason and "NVIDIA A100-SXM4-40GB" in st.reason
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in st.reason
    assert "torch.cuda.init()" in st.reason  # the Python layer's way out


def test_given_default_order_and_one_model_when_building_then_bus_order_is_exact(mixed_gpus):
    mixed_gpus.add_device(uuid="GPU-44444444-dddd-4000-8000-000000000000", name="Tesla T4",
                          energy_mj=4_000, pci_bus_id="0000:02:00.0")
    src = _runtime.nvml_source(_settings(mixed_gpus, CUDA_VISIBLE_DEVICES="0,3"), modules={})
    # Four GPUs of two models: still ambiguous, every listed index is a reason.
    assert src.channels() == [] and len(src.status()) == 2

    for i in range(4):
        (mixed_gpus.dir / str(i) / "name").write_text("NVIDIA H100\n")
    src = _runtime.nvml_source(_settings(mixed_gpus, CUDA_VISIBLE_DEVICES="0,3"), modules={})
    raw = {ch.domain: v for ch, v in zip(src.channels(), src.read()[0])}
    assert raw == {"gpu:0": 2_000, "gpu:1": 1_000}  # buses 0x01 and 0x81


def _fake_torch(uuids, initialized=True):
    """Just the part of torch.cuda that greenml asks, as torch answers it."""
    props = [types.SimpleNamespace(uuid=u) for u in uuids]
    cuda = types.SimpleNamespace(is_initialized=lambda: initialized,
                                 device_count=lambda: len(props),
                                 get_device_properties=lambda i: props[i])
    return types.SimpleNamespace(cuda=cuda)


def test_given_torch_initialised_cuda_when_building_then_gpus_match_its_uuids(mixed_gpus):
    # torch prints UUIDs without the "GPU-" prefix; CUDA_VISIBLE_DEVICES is already applied.
    torch = _fake_torch([UUIDS[2][4:], UUIDS[0][4:]])

    src = _runtime.nvml_source(_settings(mixed_gpus, CUDA_VISIBLE_DEVICES="2,0"),
                               modules={"torch": torch})

    assert _mapping(src) == {"gpu:0": (2, 3_000), "gpu:1": (0, 1_000)}


def test_given_torch_absent_uninitialised_or_broken_when_asking_then_no_uuids():
    assert _runtime.cuda_runtime_uuids({}) is None
    assert _runtime.cuda_runtime_uuids({"torch": _fake_torch(["x"], initialized=False)}) is None

    def boom(i):
        raise RuntimeError("CUDA error: no kernel image")

    broken = _fake_torch(["x"])
    broken.cuda.get_device_properties = boom
    assert _runtime.cuda_runtime_uuids({"torch": broken}) is None
    assert _runtime.cuda_runtime_uuids({"torch": _fake_torch(["a", "b"])}) == ["a", "b"]


def test_given_real_torch_without_cuda_when_asking_then_no_uuids_and_no_cuda_init():
    torch = pytest.importorskip("torch")

    assert _runtime.cuda_runtime_uuids({"torch": torch}) is None
    assert not torch.cuda.is_initialized()


@pytest.mark.parametrize("value", ["pci_bus_id", "PCI", "fastest", "1"])
def test_given_invalid_cuda_device_order_when_reading_env_then_config_error(value):
    with pytest.raises(ConfigError) as info:
        settings_from_env({"CUDA_DEVICE_ORDER": value})

    message = str(info.value)
    assert f"CUDA_DEVICE_ORDER={value!r}" in message
    assert "PCI_BUS_ID" in message and "FASTEST_FIRST" in message


@pytest.mark.parametrize("value,expected", [("PCI_BUS_ID", "PCI_BUS_ID"),
                                            ("FASTEST_FIRST", "FASTEST_FIRST"),
                                            (" PCI_BUS_ID ", "PCI_BUS_ID"), ("", None)])
def test_given_cuda_device_order_when_reading_env_then_settings_hold_it(value, expected):
    assert settings_from_env({"CUDA_DEVICE_ORDER": value}).cuda_device_order == expected
    assert settings_from_env({}).cuda_device_order is None


def test_given_unknown_order_when_constructing_directly_then_value_error(fake_nvml):
    with pytest.raises(ValueError, match="PCI_BUS_ID"):
        _core.NvmlSource(_lib(fake_nvml), None, cuda_device_order="pci")


# ----------------------------------------------------------------- channel facts


def test_given_power_limits_when_listing_then_max_power_is_a_generous_bound(fake_nvml):
    fake_nvml.add_device(uuid=UUIDS[0], power_limit_mw=300_000, power_max_limit_mw=400_000)
    fake_nvml.add_device(uuid=UUIDS[1])

    a, b = _core.NvmlSource(_lib(fake_nvml)).channels()

    assert a.max_power_w == pytest.approx(600.0)  # 1.5 x the largest settable limit
    assert b.max_power_w == pytest.approx(1500.0)  # nothing known
    assert a.max_raw == 0 and a.power_window_ns == -1  # counters never wrap; no window


def test_given_power_only_gpus_when_listing_then_averaging_window_is_exposed(fake_nvml):
    fake_nvml.add_device(uuid=UUIDS[0], energy_mj=None, power_mw=1, cuda_cc="8.9")
    fake_nvml.add_device(uuid=UUIDS[1], energy_mj=None, power_mw=1, cuda_cc="7.0")
    fake_nvml.add_device(uuid=UUIDS[2], energy_mj=None, power_mw=1)

    windows = [c.power_window_ns for c in _core.NvmlSource(_lib(fake_nvml)).channels()]

    assert windows == [1_000_000_000, 0, -1]


# ----------------------------------------------------------------- the fake's mid-run events


def test_given_fake_counter_reset_when_reading_then_source_reports_the_small_value(fake_nvml):
    fake_nvml.add_device(uuid=UUIDS[0], energy_mj=9_000_000)
    fake_nvml.add_device(uuid=UUIDS[1])
    fake_nvml.set_profile(1, base_w=100.0, update_ms=1.0, t0_ns=fk.time_ns_monotonic() - 10**10)
    src = _core.NvmlSource(_lib(fake_nvml))
    before = _raw(src)
    assert before["gpu:0"] == (9_000_000, True) and before["gpu:1"][0] >= 1_000_000

    fake_nvml.reset_counter(0, 25)
    t0 = fake_nvml.reset_counter(1)
    after = _raw(src)
    now = fk.time_ns_monotonic()

    assert after["gpu:0"] == (25, True)
    assert after["gpu:1"][1] and after["gpu:1"][0] <= fk.profile_energy_mj(100.0, 0, 0, 1.0, t0, now)
    assert all(st.available for st in src.status())


def test_given_nvml_counter_reset_mid_run_when_sampling_then_new_value_counts_and_is_told(
        fake_nvml, make_sampler):
    fake_nvml.add_device(uuid=UUIDS[0], energy_mj=5_000_000)
    sampler = make_sampler([_core.NvmlSource(_lib(fake_nvml))])
    fake_nvml.set_energy(0, 5_002_000)
    e_before = sampler.read_now()[2][0]

    fake_nvml.reset_counter(0, 300)  # driver reload: the counter restarted, 0.3 J since
    e_after = sampler.read_now()[2][0]

    assert e_before == pytest.approx(2.0, abs=1e-9)
    assert e_after - e_before == pytest.approx(0.3, abs=1e-9)  # the new value, not 0
    events, _ = sampler.events()
    assert [(domain, kind) for _, _, domain, kind in events] == [("gpu:0", "counter_reset")]


def test_given_fake_gpu_lost_when_reading_then_every_read_fails_until_it_returns(fake_nvml):
    fake_nvml.add_device(uuid=UUIDS[0], energy_mj=5)
    fake_nvml.add_device(uuid=UUIDS[1], energy_mj=None, power_mw=7)
    src = _core.NvmlSource(_lib(fake_nvml))

    fake_nvml.lose(0)
    fake_nvml.lose(1)
    assert [ok for _, ok in _raw(src).values()] == [False, False]
    assert all("NVML_ERROR_GPU_IS_LOST" in st.reason for st in src.status())

    fake_nvml.lose(0, fk.SUCCESS)
    assert _raw(src)["gpu:0"] == (5, True)


# ----------------------------------------------------------------- fork

FORK_CODE = textwrap.dedent("""
    import ctypes, gc, json, os, sys, time
    from greenml import _core

    def wait(pred, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    lib = sys.argv[1]
    fake = ctypes.CDLL(lib)  # the copy _core loaded: its counts are this process's
    src = _core.NvmlSource(lib)
    s = _core.Sampler([src], 2_000_000, 1 << 12)
    s.start()
    assert wait(lambda: s.head >= 5), "parent sampler never sampled"
    parent_inits = fake.fake_nvml_init_count()

    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            h = s.head
            s.start()  # the inherited sampler starts a fresh thread in the child
            if not wait(lambda: s.head >= h + 5):
                code = 10
            elif not all(st.available for st in s.status()):
                code = 11  # reads in the child failed
            elif fake.fake_nvml_init_count() != 1:
                code = 12  # the child holds exactly its own initialisation
            s.stop()
            del s, src
            gc.collect()
            if code == 0 and fake.fake_nvml_init_count() != 0:
                code = 13  # and shuts it down once when the source goes
        except BaseException:
            import traceback; traceback.print_exc()
            code = 14
        os._exit(code)

    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
            break
        time.sleep(0.005)
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    h0 = s.head
    grew = wait(lambda: s.head >= h0 + 5)
    ok = all(st.available for st in s.status())
    print(json.dumps({"parent": os.getpid(), "child": pid, "child_code": status,
                      "inits_before": parent_inits, "inits_after": fake.fake_nvml_init_count(),
                      "parent_grew": grew, "parent_ok": ok}))
    s.stop()
""")


def test_given_sampler_running_when_process_forks_then_child_initialises_nvml_itself(fake_nvml):
    fake_nvml.add_device(uuid=UUIDS[0])
    fake_nvml.add_device(uuid=UUIDS[1])
    fake_nvml.set_profile(0, base_w=100.0, update_ms=1.0)
    fake_nvml.set_profile(1, base_w=50.0, update_ms=1.0)
    fake_nvml.log_calls()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENML_")}
    env.update(fake_nvml.env)

    proc = subprocess.run([sys.executable, "-c", FORK_CODE, _lib(fake_nvml)], env=env,
                          capture_output=True, text=True, timeout=60)

    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["child_code"] == 0, proc.stderr
    child = [call for _, call in fake_nvml.calls(r["child"])]
    # The child's first NVML call is its own nvmlInit, before any device read ...
    assert child[0] == "init", child[:10]
    assert child.count("init") == 1
    assert child.count("handle_by_uuid") == 2  # ... then the same GPUs, found by UUID
    assert child.count("energy") >= 10
    # ... and the only nvmlShutdown it calls is for that init, at the very end.
    assert child.count("shutdown") == 1 and child[-1] == "shutdown"
    # The parent's initialisation is untouched, and it went on measuring.
    parent = [call for _, call in fake_nvml.calls(r["parent"])]
    assert parent.count("init") == 1
    assert r["inits_before"] == r["inits_after"] == 1
    assert parent.count("shutdown") <= 1 and parent[-1] in ("shutdown", "energy")  # at its exit
    assert r["parent_grew"] and r["parent_ok"]
