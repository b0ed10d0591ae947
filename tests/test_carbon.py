"""Tests of greenml._carbon: intensity table, precedence, errors and arithmetic (no network)."""

from __future__ import annotations

import dataclasses
import math
import socket

import pytest
from greenml._carbon import (
    ENV_CARBON_INTENSITY,
    ENV_REGION,
    CarbonIntensity,
    carbon_regions,
    co2e_g,
    resolve_intensity,
)
from greenml._errors import ConfigError


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket fails the test: carbon data ships with the package."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("greenml._carbon must not use the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _row(code: str) -> dict:
    code = code.upper()
    return next(r for r in carbon_regions() if code in (r["iso2"], r["iso3"]))


# ------------------------------------------------------------------------ arithmetic


def test_co2e_arithmetic_one_kwh_with_pue() -> None:
    ci = CarbonIntensity(400.0, "custom", "custom", None, "argument")
    assert co2e_g(3.6e6, ci, pue=1.5) == pytest.approx(600.0)
    assert co2e_g(3.6e6, ci) == pytest.approx(400.0)
    assert co2e_g(0.0, ci) == 0.0
    assert co2e_g(1800.0, ci) == pytest.approx(0.2)  # 0.5 Wh at 400 g/kWh


@pytest.mark.parametrize("pue", [0.99, 0.0, -1.0, math.nan, math.inf])
def test_co2e_rejects_bad_pue(pue: float) -> None:
    ci = CarbonIntensity(400.0, "custom", "custom", None, "argument")
    with pytest.raises(ConfigError, match=r"pue=.*>= 1\.0"):
        co2e_g(1.0, ci, pue=pue)


@pytest.mark.parametrize("energy", [-1.0, math.nan, math.inf])
def test_co2e_rejects_bad_energy(energy: float) -> None:
    ci = CarbonIntensity(400.0, "custom", "custom", None, "argument")
    with pytest.raises(ConfigError, match="energy_j="):
        co2e_g(energy, ci)


# ------------------------------------------------------------------------ table


def test_table_shape_and_codes_unique() -> None:
    rows = carbon_regions()
    assert len(rows) > 200
    assert set(rows[0]) == {"iso3", "iso2", "name", "year", "gco2e_per_kwh"}
    iso2 = [r["iso2"] for r in rows if r["iso2"]]
    iso3 = [r["iso3"] for r in rows if r["iso3"]]
    assert len(iso2) == len(set(iso2)), "an alpha-2 code appears twice"
    assert len(iso3) == len(set(iso3)), "an alpha-3 code appears twice"
    for r in rows:
        assert isinstance(r["year"], int) and 2000 < r["year"] < 2100
        assert math.isfinite(r["gco2e_per_kwh"]) and r["gco2e_per_kwh"] >= 0
    names = {r["name"] for r in rows if not r["iso2"]}
    assert {"World", "EU", "OECD"} <= names
    # Namibia's code must not be read as a missing value.
    assert _row("NA")["name"] == "Namibia"


def test_carbon_regions_returns_copies() -> None:
    carbon_regions()[0]["gco2e_per_kwh"] = -5.0
    assert carbon_regions()[0]["gco2e_per_kwh"] >= 0


# ------------------------------------------------------------------------ lookup


def test_world_default_names_its_year() -> None:
    ci = resolve_intensity(env={})
    world = next(r for r in carbon_regions() if r["name"] == "World")
    assert ci.region == "World"
    assert ci.name == "World"
    assert ci.gco2e_per_kwh == world["gco2e_per_kwh"]
    assert ci.year == world["year"]
    assert str(ci.year) in ci.source and "Ember" in ci.source


@pytest.mark.parametrize("code", ["DE", "de", "De", "DEU", "deu", " dEu ", "\tde\n", "Germany"])
def test_lookup_alpha2_alpha3_any_case(code: str) -> None:
    ci = resolve_intensity(region=code)
    assert ci.region == "DEU"
    assert ci.name == "Germany"
    assert ci.gco2e_per_kwh == _row("DE")["gco2e_per_kwh"]
    assert ci.year == _row("DE")["year"]


@pytest.mark.parametrize("code,iso3", [("fr", "FRA"), ("usa", "USA"), ("IN", "IND"), ("ky", "CYM")])
def test_lookup_several_countries(code: str, iso3: str) -> None:
    assert resolve_intensity(region=code).region == iso3


def test_lookup_aliases_for_reserved_codes() -> None:
    assert resolve_intensity(region="UK").region == "GBR"
    assert resolve_intensity(region="el").region == "GRC"


@pytest.mark.parametrize("name", ["World", "world", "EU", "eu", "OECD", "g7"])
def test_lookup_aggregates_by_name(name: str) -> None:
    ci = resolve_intensity(region=name)
    assert ci.region.lower() == name.lower()
    assert ci.year is not None


def test_result_is_frozen() -> None:
    ci = resolve_intensity(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        ci.gco2e_per_kwh = 0.0  # type: ignore[misc]


# ------------------------------------------------------------------------ precedence


def test_precedence_chain() -> None:
    env = {ENV_CARBON_INTENSITY: "123.5", ENV_REGION: "FR"}
    # intensity argument beats everything
    ci = resolve_intensity(region="DE", intensity=50.0, env=env)
    assert (ci.gco2e_per_kwh, ci.region, ci.source, ci.year) == (50.0, "custom", "argument", None)
    # region argument beats both variables
    assert resolve_intensity(region="DE", env=env).region == "DEU"
    # GREENML_CARBON_INTENSITY beats GREENML_REGION
    ci = resolve_intensity(env=env)
    assert (ci.gco2e_per_kwh, ci.region, ci.source) == (123.5, "custom", ENV_CARBON_INTENSITY)
    # GREENML_REGION beats the World default
    assert resolve_intensity(env={ENV_REGION: "fr"}).region == "FRA"
    # empty variables count as unset
    assert resolve_intensity(env={ENV_CARBON_INTENSITY: " ", ENV_REGION: ""}).region == "World"


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CARBON_INTENSITY, raising=False)
    monkeypatch.setenv(ENV_REGION, "SE")
    assert resolve_intensity().region == "SWE"
    monkeypatch.setenv(ENV_CARBON_INTENSITY, "10")
    assert resolve_intensity().gco2e_per_kwh == 10.0


def test_zero_intensity_is_allowed() -> None:
    assert resolve_intensity(intensity=0).gco2e_per_kwh == 0.0
    assert resolve_intensity(env={ENV_CARBON_INTENSITY: "0"}).gco2e_per_kwh == 0.0


def test_overridden_bad_variables_are_not_consulted() -> None:
    env = {ENV_CARBON_INTENSITY: "nope", ENV_REGION: "nowhere"}
    assert resolve_intensity(region="DE", env=env).region == "DEU"
    assert resolve_intensity(intensity=1.0, env=env).gco2e_per_kwh == 1.0


# ------------------------------------------------------------------------ errors


@pytest.mark.parametrize("raw", ["abc", "-1", "nan", "inf", "-inf", "1e999", "12 g"])
def test_bad_env_intensity_names_variable_and_value(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_intensity(env={ENV_CARBON_INTENSITY: raw})
    msg = str(info.value)
    assert ENV_CARBON_INTENSITY in msg and repr(raw) in msg
    assert "gCO2e/kWh" in msg


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, "x"])
def test_bad_intensity_argument(value: object) -> None:
    with pytest.raises(ConfigError, match="intensity="):
        resolve_intensity(intensity=value)  # type: ignore[arg-type]


def test_unknown_env_region_names_variable_value_and_fix() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_intensity(env={ENV_REGION: "Atlantis"})
    msg = str(info.value)
    assert ENV_REGION in msg and "'Atlantis'" in msg
    assert "carbon_regions()" in msg


def test_unknown_region_argument_suggests_close_match() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_intensity(region="Germny")
    msg = str(info.value)
    assert "region='Germny'" in msg
    assert "Did you mean" in msg and "Germany" in msg
    assert "carbon_regions()" in msg


def test_config_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        resolve_intensity(region="ZZZZ")


@pytest.mark.parametrize("region", ["", "   "])
def test_empty_region_argument(region: str) -> None:
    with pytest.raises(ConfigError, match="region="):
        resolve_intensity(region=region)
