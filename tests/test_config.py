"""Bad input: every environment variable and ``greenml run`` option with an invalid value fails
with one clear error that names it and says what is accepted, before anything is measured or
run. An unknown grid region is an error, never a silent World average.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import greenml
from greenml import _carbon, _config


def _env(tmp: Path, **extra: str) -> dict:
    """Nothing measurable (an empty powercap tree, no NVML, no CPU model), plus ``extra``."""
    empty = tmp / "empty-powercap"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GREENML_") and k not in ("CUDA_VISIBLE_DEVICES",
                                                         "CUDA_DEVICE_ORDER")}
    env.update(GREENML_POWERCAP_ROOT=str(empty), GREENML_SOURCES="nvml,rapl",
               GREENML_NVML_LIBRARY=str(tmp / "missing" / "libnvidia-ml.so.1"))
    env.update(extra)
    return env


def _run(tmp: Path, env: dict, *options: str) -> subprocess.CompletedProcess:
    marker = tmp / "ran"
    return subprocess.run(
        [sys.executable, "-m", "greenml", "run", "--log", str(tmp / "log.jsonl"), *options, "--",
         sys.executable, "-c", f"import pathlib; pathlib.Path({str(marker)!r}).touch()"],
        env=env, capture_output=True, text=True, timeout=60,
    )


def _assert_refused(tmp: Path, proc: subprocess.CompletedProcess, name: str, accepted: str):
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1, proc.stderr  # one clear error, no traceback
    assert "Traceback" not in proc.stderr
    assert name in errors[0] and accepted in errors[0], errors[0]
    assert not (tmp / "ran").exists(), "the command ran despite the invalid value"
    assert not (tmp / "log.jsonl").exists() or not (tmp / "log.jsonl").read_text()


# (variable, invalid value, a phrase of the accepted values the message must give)
BAD_ENV = [
    ("GREENML_INTERVAL_MS", "0", "between 0.05 and 60000"),
    ("GREENML_INTERVAL_MS", "-10", "between 0.05 and 60000"),
    ("GREENML_INTERVAL_MS", "ten", "milliseconds"),
    ("GREENML_INTERVAL_MS", "nan", "between 0.05 and 60000"),
    ("GREENML_INTERVAL_MS", "0.001", "1 (1 kHz) or more"),
    ("GREENML_INTERVAL_MS", "1e9", "between 0.05 and 60000"),
    ("GREENML_SOURCES", "gpu", "nvml, rapl, model"),
    ("GREENML_SOURCES", "", "nvml, rapl, model"),
    ("GREENML_SOURCES", "nvml,,bogus", "nvml, rapl, model"),
    ("GREENML_ESTIMATE", "maybe", "on, 1, true, yes, off, 0, false, no"),
    ("GREENML_LOG_FSYNC", "2", "on, 1, true, yes, off, 0, false, no"),
    ("GREENML_REGION", "XX", "ISO 3166 alpha-2 or alpha-3 code"),
    ("GREENML_REGION", "Atlantis", "ISO 3166 alpha-2 or alpha-3 code"),
    ("GREENML_CARBON_INTENSITY", "-1", "finite number >= 0 in gCO2e/kWh"),
    ("GREENML_CARBON_INTENSITY", "lots", "finite number >= 0 in gCO2e/kWh"),
    ("GREENML_CARBON_INTENSITY", "inf", "finite number >= 0 in gCO2e/kWh"),
    ("GREENML_CPU_TDP_W", "0", "greater than 0"),
    ("GREENML_CPU_TDP_W", "-65", "greater than 0"),
    ("GREENML_CPU_TDP_W", "hot", "greater than 0"),
    ("CUDA_DEVICE_ORDER", "RANDOM", "PCI_BUS_ID"),
]


@pytest.mark.parametrize(("name", "value", "accepted"), BAD_ENV,
                         ids=[f"{n}={v!r}" for n, v, _ in BAD_ENV])
def test_given_invalid_environment_variable_when_running_then_one_error_names_it_before_running(
    tmp_path, name, value, accepted,
):
    extra = {name: value}
    if name == "GREENML_CPU_TDP_W":
        extra["GREENML_SOURCES"] = "model"  # the variable is read where the CPU model is built
    proc = _run(tmp_path, _env(tmp_path, **extra))
    _assert_refused(tmp_path, proc, f"{name}={value!r}", accepted)


BAD_OPTIONS = [
    (["--interval-ms", "0"], "--interval-ms", "between 0.05 and 60000"),
    (["--interval-ms", "-1"], "--interval-ms", "between 0.05 and 60000"),
    (["--interval-ms", "nan"], "--interval-ms", "between 0.05 and 60000"),
    (["--interval-ms", "fast"], "--interval-ms", "invalid float value"),
    (["--region", "XX"], "--region", "ISO 3166 alpha-2 or alpha-3 code"),
    (["--region", " "], "--region", "ISO 3166 alpha-2 or alpha-3 code"),
    (["--carbon-intensity", "-5"], "--carbon-intensity", "finite number >= 0 in gCO2e/kWh"),
    (["--carbon-intensity", "nan"], "--carbon-intensity", "finite number >= 0 in gCO2e/kWh"),
    (["--pue", "0.9"], "--pue", "finite number >= 1.0"),
    (["--pue", "inf"], "--pue", "finite number >= 1.0"),
    (["--pue", "0"], "--pue", "finite number >= 1.0"),
    (["--idle", "0"], "--idle", "finite number > 0"),
    (["--idle", "-2"], "--idle", "finite number > 0"),
    (["--idle", "nan"], "--idle", "finite number > 0"),
    (["--trace", "trace.txt"], "trace", ".csv or .parquet"),
    (["--trace", "/nonexistent-dir/t.csv"], "--trace", "writable path"),
    (["--json", "/nonexistent-dir/r.json"], "--json", "writable path"),
]


@pytest.mark.parametrize(("options", "name", "accepted"), BAD_OPTIONS,
                         ids=[" ".join(o) for o, _, _ in BAD_OPTIONS])
def test_given_invalid_run_option_when_running_then_one_error_names_it_before_running(
    tmp_path, options, name, accepted,
):
    proc = _run(tmp_path, _env(tmp_path), *options)
    _assert_refused(tmp_path, proc, name, accepted)


def test_given_unknown_region_when_resolving_then_error_and_never_the_world_average():
    world = _carbon.resolve_intensity(env={})
    assert world.region == "World"  # the documented default when nothing is set ...
    for lookup in (lambda: _carbon.resolve_intensity(region="Atlantis"),
                   lambda: _carbon.resolve_intensity(env={"GREENML_REGION": "Atlantis"}),
                   lambda: greenml.meter("m", region="Atlantis")):
        with pytest.raises(greenml.ConfigError, match="Atlantis.*not a known grid region"):
            lookup()  # ... but a region that is not in the table is never replaced by it


def test_given_invalid_settings_when_building_a_runtime_then_error_before_any_sampler():
    with pytest.raises(greenml.ConfigError, match="GREENML_INTERVAL_MS='0'"):
        greenml.Runtime(_config.settings_from_env({"GREENML_INTERVAL_MS": "0"}))


@pytest.mark.parametrize("kwargs", [{"pue": 0.5}, {"carbon_intensity": -1.0},
                                    {"region": "Atlantis"}, {"region": ""}])
def test_given_invalid_meter_option_when_creating_then_config_error_naming_it(kwargs):
    (name, value), = kwargs.items()
    word = {"carbon_intensity": "intensity"}.get(name, name)
    with pytest.raises(greenml.ConfigError, match=word):
        greenml.meter("m", **kwargs)
    with pytest.raises(greenml.ConfigError, match=word):
        greenml.measure("f", **kwargs)(lambda: None)
