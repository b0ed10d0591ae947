"""``greenml.sensors(env)`` and the source selection behind it, on fake hardware."""

from __future__ import annotations

import os

import pytest

import greenml
from greenml import _core, _runtime
from greenml._config import Settings

from fakes import nvml as fk

UUID0 = "GPU-0a0a0a0a-0000-4000-8000-000000000000"
UUID1 = "GPU-1b1b1b1b-0000-4000-8000-000000000000"


def _env(powercap=None, nvml=None, **extra):
    """A minimal environment: only what the test names (never the real /sys or driver)."""
    env = {
        "GREENML_POWERCAP_ROOT": str(powercap.root) if powercap else "/nonexistent/powercap",
        "GREENML_NVML_LIBRARY": (str(nvml.library_path) if nvml
                                 else "/nonexistent/libnvidia-ml.so.1"),
    }
    env.update(extra)
    return env


def _table(sensors):
    return {s.domain: (s.source, s.measured, s.available) for s in sensors}


def _assert_reasons_consistent(sensors):
    for s in sensors:
        if s.available:
            assert s.reason == "", s
        else:
            assert s.reason.strip(), f"{s.domain} is unavailable without a reason"


@pytest.fixture
def machine(powercap, fake_nvml):
    """Two sockets (package, dram, core on 0), psys, one good GPU and one unreadable GPU."""
    powercap.add_psys()
    powercap.add_package(0, dram=True, core=True)
    powercap.add_package(1, dram=True)
    powercap.add_mmio_duplicate(0)
    fake_nvml.add_device(uuid=UUID0, energy_mj=0)
    fake_nvml.add_device(uuid=UUID1, energy_mj=None, power_mw=None)
    return powercap, fake_nvml


# ----------------------------------------------------------------- listing


def test_given_fake_machine_when_listing_sensors_then_exactly_its_domains(machine):
    powercap, nvml = machine

    sensors = greenml.sensors(env=_env(powercap, nvml))

    assert all(isinstance(s, greenml.Sensor) for s in sensors)
    assert len(sensors) == len({s.domain for s in sensors}), [s.domain for s in sensors]
    assert _table(sensors) == {
        "gpu:0": ("nvml", True, True),
        "gpu:1": ("nvml", True, False),
        "psys": ("rapl", True, True),
        "package:0": ("rapl", True, True),
        "dram:0": ("rapl", True, True),
        "core:0": ("rapl", True, True),
        "package:1": ("rapl", True, True),
        "dram:1": ("rapl", True, True),
    }  # no cpu:estimated: a model never stands in beside a measured package
    assert [s.domain for s in sensors][:2] == ["gpu:0", "gpu:1"]  # GPUs first
    _assert_reasons_consistent(sensors)
    assert "not supported" in {s.domain: s for s in sensors}["gpu:1"].reason.lower()


def test_given_cuda_visible_devices_in_env_when_listing_then_gpu_keys_follow_it(machine):
    powercap, nvml = machine

    sensors = greenml.sensors(env=_env(powercap, nvml, CUDA_VISIBLE_DEVICES="1,0",
                                       GREENML_SOURCES="nvml"))

    # gpu:0 is now the unreadable NVML device 1, gpu:1 the good NVML device 0.
    assert _table(sensors) == {"gpu:0": ("nvml", True, False), "gpu:1": ("nvml", True, True)}


def test_given_sources_rapl_when_listing_then_only_rapl_domains(machine):
    powercap, nvml = machine

    sensors = greenml.sensors(env=_env(powercap, nvml, GREENML_SOURCES="rapl"))

    assert {s.source for s in sensors} == {"rapl"}
    assert {s.domain for s in sensors} == {"psys", "package:0", "dram:0", "core:0",
                                           "package:1", "dram:1"}


def test_given_sources_nvml_when_listing_then_only_gpus(machine):
    powercap, nvml = machine

    sensors = greenml.sensors(env=_env(powercap, nvml, GREENML_SOURCES=" NVML "))

    assert _table(sensors) == {"gpu:0": ("nvml", True, True), "gpu:1": ("nvml", True, False)}


def test_given_nothing_readable_when_listing_then_reasons_and_no_exception(tmp_path):
    sensors = greenml.sensors(env=_env(GREENML_SOURCES="nvml,rapl"))

    assert _table(sensors) == {"gpu": ("nvml", True, False), "cpu": ("rapl", True, False)}
    reasons = {s.domain: s.reason for s in sensors}
    assert "GREENML_NVML_LIBRARY" in reasons["gpu"]
    assert "/nonexistent/powercap" in reasons["cpu"]


# ----------------------------------------------------------------- the CPU model


def test_given_no_package_and_tdp_in_env_when_listing_then_cpu_estimated_is_available(
        powercap):
    powercap.add_psys()  # psys alone is no package counter

    sensors = greenml.sensors(env=_env(powercap, GREENML_SOURCES="rapl,model",
                                       GREENML_CPU_TDP_W="100"))

    assert _table(sensors) == {"psys": ("rapl", True, True),
                               "cpu:estimated": ("model", False, True),
                               "dram:estimated": ("model", False, True)}
    _assert_reasons_consistent(sensors)


def test_given_no_package_and_model_not_selected_when_listing_then_no_estimate(tmp_path):
    sensors = greenml.sensors(env=_env(GREENML_SOURCES="rapl", GREENML_CPU_TDP_W="100"))

    assert "cpu:estimated" not in {s.domain for s in sensors}


def test_given_package_measured_when_listing_then_model_is_not_added_even_if_selected(powercap):
    powercap.add_package(0)

    sensors = greenml.sensors(env=_env(powercap, GREENML_SOURCES="rapl,model",
                                       GREENML_CPU_TDP_W="100"))

    assert {s.domain for s in sensors} == {"package:0", "dram:0"}


@pytest.fixture
def fake_proc(tmp_path):
    """A cpuinfo naming a CPU no table knows, and a /proc/stat the test can advance."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Acme Frobnicator 9000\nphysical id\t: 0\n\n"
                       "processor\t: 1\nmodel name\t: Acme Frobnicator 9000\nphysical id\t: 0\n")
    stat = tmp_path / "stat"

    def set_busy(busy: int, idle: int = 10_000) -> None:
        text = f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 {busy} 0 0 {idle} 0 0 0 0 0 0\n"
        fd = os.open(stat, os.O_RDWR | os.O_CREAT, 0o644)  # in place: the source keeps it open
        try:
            os.pwrite(fd, text.encode(), 0)
            os.ftruncate(fd, len(text))
        finally:
            os.close(fd)

    set_busy(1_000)
    return cpuinfo, stat, set_busy


def _settings(cpuinfo, stat, env, root="/nonexistent/powercap"):
    return Settings(powercap_root=root, sources=frozenset({"rapl", "model"}),
                    cpuinfo_path=str(cpuinfo), proc_stat_path=str(stat), env=env)


def test_given_unknown_cpu_and_no_tdp_when_listing_then_estimate_uses_the_average_and_says_so(
        fake_proc):
    cpuinfo, stat, _ = fake_proc

    sources, extra = _runtime.build_sources(_settings(cpuinfo, stat, env={}))
    sensors = _runtime.sensors_of(sources, extra)

    assert _table(sensors)["cpu:estimated"] == ("model", False, True)
    (ch,) = [c for s in sources for c in s.channels() if c.domain == "cpu:estimated"]
    assert "per-vCPU model" in ch.detail and "average of 20 architectures" in ch.detail
    assert ch.rel_uncertainty == 1.0


def test_given_estimates_off_when_listing_then_model_domains_say_why(fake_proc):
    cpuinfo, stat, _ = fake_proc
    from dataclasses import replace

    settings = replace(_settings(cpuinfo, stat, env={}), estimate=False)
    sources, extra = _runtime.build_sources(settings)
    sensors = _runtime.sensors_of(sources, extra)

    assert [s.name for s in sources] == ["rapl"]
    reasons = {s.domain: s.reason for s in sensors if s.source == "model"}
    assert set(reasons) == {"cpu:estimated", "dram:estimated"}
    assert all("GREENML_ESTIMATE=off" in r for r in reasons.values())


def test_given_unknown_cpu_and_tdp_when_sampling_then_estimate_is_tdp_times_utilisation(
        fake_proc, make_sampler):
    cpuinfo, stat, set_busy = fake_proc

    sources, extra = _runtime.build_sources(_settings(cpuinfo, stat,
                                                      env={"GREENML_CPU_TDP_W": "100"}))
    sensors = _runtime.sensors_of(sources, extra)

    assert _table(sensors)["cpu:estimated"] == ("model", False, True)
    sampler = make_sampler(sources)
    (col,) = [i for i, c in enumerate(sampler.channels()) if c.domain == "cpu:estimated"]
    ch = sampler.channels()[col]
    assert (ch.measured, ch.in_total, ch.source) == (False, True, "model")
    # Both CPUs of the fake machine busy for 0.1 s: 2 x ticks / 10 busy jiffies -> TDP x 0.1 s.
    # (A bigger jump between two reads would exceed what the channel can draw: a reset.)
    set_busy(1_000 + 2 * os.sysconf("SC_CLK_TCK") // 10)
    energy = sampler.read_now()[2]
    assert energy[col] == pytest.approx(10.0, rel=1e-6)


def test_given_invalid_tdp_when_model_is_consulted_then_config_error_names_it(tmp_path):
    with pytest.raises(greenml.ConfigError, match="GREENML_CPU_TDP_W") as info:
        greenml.sensors(env=_env(GREENML_SOURCES="rapl,model", GREENML_CPU_TDP_W="lots"))
    assert "'lots'" in str(info.value)


# ----------------------------------------------------------------- invalid settings


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "0.001", "1e9", ""])
def test_given_invalid_interval_when_listing_then_config_error_names_variable_and_value(value):
    with pytest.raises(greenml.ConfigError) as info:
        greenml.sensors(env=_env(GREENML_INTERVAL_MS=value))
    message = str(info.value)
    assert "GREENML_INTERVAL_MS" in message
    assert repr(value) in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, greenml.GreenmlError)


@pytest.mark.parametrize("value", ["rapl,foo", "gpu", ",", "cuda"])
def test_given_invalid_sources_when_listing_then_config_error_names_variable_and_value(value):
    with pytest.raises(greenml.ConfigError) as info:
        greenml.sensors(env=_env(GREENML_SOURCES=value))
    message = str(info.value)
    assert "GREENML_SOURCES" in message
    assert repr(value) in message


@pytest.mark.parametrize("value, expected_ns", [("10", 10_000_000), ("0.5", 500_000),
                                                ("1", 1_000_000)])
def test_given_valid_interval_when_reading_settings_then_period_in_ns(value, expected_ns):
    from greenml._config import settings_from_env

    assert settings_from_env(_env(GREENML_INTERVAL_MS=value)).interval_ns == expected_ns
    greenml.sensors(env=_env(GREENML_INTERVAL_MS=value, GREENML_SOURCES="rapl"))  # no raise


def test_given_sensors_when_env_is_explicit_then_process_environment_is_ignored(
        machine, monkeypatch):
    powercap, nvml = machine
    monkeypatch.setenv("GREENML_SOURCES", "bogus")  # would raise if read
    monkeypatch.setenv("GREENML_INTERVAL_MS", "bogus")

    sensors = greenml.sensors(env=_env(powercap, nvml, GREENML_SOURCES="nvml"))

    assert {s.domain for s in sensors} == {"gpu:0", "gpu:1"}


def test_given_fake_nvml_lost_gpu_when_listing_then_sensor_reason_is_not_a_crash(fake_nvml):
    fake_nvml.add_device(uuid=UUID0, energy_mj=0)
    fake_nvml.set_error(0, "handle", fk.GPU_IS_LOST)

    sensors = greenml.sensors(env=_env(nvml=fake_nvml, GREENML_SOURCES="nvml"))

    (s,) = sensors
    assert (s.domain, s.available) == ("gpu:0", False)
    assert "lost" in s.reason.lower()


def test_given_core_module_when_imported_then_sources_are_core_types(powercap):
    powercap.add_package(0)
    sources, extra = _runtime.build_sources(Settings(powercap_root=str(powercap.root),
                                                     sources=frozenset({"rapl"}), env={}))
    assert [type(s) for s in sources] == [_core.RaplSource] and extra == []
