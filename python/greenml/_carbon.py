"""Carbon: grams CO2e from joules, with the grid intensity table shipped in the package.

The table ``data/grid_carbon_intensity.csv`` holds the average carbon intensity
of electricity generation (gCO2e/kWh, Ember yearly data for the latest year
available, as republished by CO2.js; see ``data/LICENSE-data.md``) for each
country and for aggregates such as ``World``, ``EU``, ``OECD`` or ``G7``. It is
read once from package data, never from the network.

Which intensity applies (first match wins):

1. the ``intensity`` argument (gCO2e/kWh);
2. the ``region`` argument;
3. the environment variable ``GREENML_CARBON_INTENSITY`` (gCO2e/kWh);
4. the environment variable ``GREENML_REGION``;
5. the ``World`` average row.

A region is an ISO 3166 alpha-2 (``DE``) or alpha-3 (``DEU``) code, or the name
of a row (``World``, ``EU``, ``Germany``); case and surrounding space are ignored.
The exceptionally reserved codes ``UK`` and ``EL`` are accepted for ``GB`` and ``GR``.

Emissions are ``co2e_g = energy_j / 3.6e6 J/kWh x gco2e_per_kwh x pue``.
"""

from __future__ import annotations

import csv
import difflib
import functools
import importlib.resources
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from greenml._errors import ConfigError

__all__ = [
    "ENV_CARBON_INTENSITY",
    "ENV_REGION",
    "J_PER_KWH",
    "CarbonIntensity",
    "carbon_regions",
    "co2e_g",
    "resolve_intensity",
]

ENV_REGION = "GREENML_REGION"
"""Environment variable: ISO 3166 alpha-2/alpha-3 code (or row name) of the grid region."""
ENV_CARBON_INTENSITY = "GREENML_CARBON_INTENSITY"
"""Environment variable: carbon intensity in gCO2e/kWh; overrides the region."""
J_PER_KWH = 3.6e6
"""Joules in one kilowatt-hour."""

_CSV = "grid_carbon_intensity.csv"
_WORLD = "world"
_ALIASES = {"uk": "gb", "el": "gr"}  # ISO 3166 exceptionally reserved codes in common use
_FIND_CODES = "call greenml.carbon_regions() to list the valid codes"


@dataclass(frozen=True)
class CarbonIntensity:
    """The carbon intensity of the electricity a measurement is charged with.

    Attributes:
        gco2e_per_kwh: grams of CO2-equivalent per kilowatt-hour.
        region: ISO 3166 alpha-3 code, the aggregate's name (e.g. ``"World"``,
            ``"EU"``), or ``"custom"`` for a number given directly.
        name: country or region name, human-readable.
        year: year of the data, or None for a number given directly.
        source: where the number comes from, e.g. ``"Ember 2024 via CO2.js"``,
            ``"GREENML_CARBON_INTENSITY"`` or ``"argument"``.
    """

    gco2e_per_kwh: float
    region: str
    name: str
    year: int | None
    source: str


# ----------------------------------------------------------------------------- table


def _table_text() -> str:
    resource = importlib.resources.files("greenml").joinpath("data").joinpath(_CSV)
    return resource.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _table() -> tuple[tuple[dict[str, str | int | float], ...], dict[str, int]]:
    """Rows of the shipped table and an index from lower-case code or name to row number.

    Alpha-2 codes win over alpha-3 codes, which win over names, should one string
    be both (e.g. the name ``Lao`` is also the alpha-3 code ``LAO`` of that row).
    """
    records: list[dict[str, str | int | float]] = []
    for rec in csv.DictReader(io.StringIO(_table_text(), newline="")):
        records.append(
            {
                "iso3": rec["iso3"].strip(),
                "iso2": rec["iso2"].strip(),
                "name": rec["country_or_region"].strip(),
                "year": int(rec["year"]),
                "gco2e_per_kwh": float(rec["gco2e_per_kwh"]),
            }
        )
    index: dict[str, int] = {}
    for field in ("name", "iso3", "iso2"):  # later fields overwrite: iso2 > iso3 > name
        for i, rec in enumerate(records):
            key = str(rec[field]).lower()
            if key:
                index[key] = i
    for alias, code in _ALIASES.items():
        if alias not in index and code in index:
            index[alias] = index[code]
    return tuple(records), index


def carbon_regions() -> list[dict[str, str | int | float]]:
    """All rows of the shipped intensity table, as a list of dicts.

    Each dict has ``iso3``, ``iso2`` (both empty for aggregates such as World,
    EU, OECD), ``name``, ``year`` and ``gco2e_per_kwh`` (gCO2e/kWh). Pass the list
    to ``pandas.DataFrame`` for a table. The dicts are copies: changing them does
    not change greenml's data.
    """
    records, _ = _table()
    return [dict(r) for r in records]


def _from_row(row: Mapping[str, str | int | float]) -> CarbonIntensity:
    year = int(row["year"])
    return CarbonIntensity(
        gco2e_per_kwh=float(row["gco2e_per_kwh"]),
        region=str(row["iso3"] or row["name"]),
        name=str(row["name"]),
        year=year,
        source=f"Ember {year} via CO2.js",
    )


def _lookup_region(value: str, what: str) -> CarbonIntensity:
    """The row for a region code or name; ``what`` names the argument or variable."""
    records, index = _table()
    key = value.strip().lower()
    i = index.get(key)
    if i is not None:
        return _from_row(records[i])
    close = difflib.get_close_matches(key, list(index), n=3, cutoff=0.75)
    hint = ""
    if close:
        shown = [
            f"{c.upper()} ({records[index[c]]['name']})"
            if len(c) <= 3
            else str(records[index[c]]["name"])
            for c in close
        ]
        hint = f" Did you mean {' or '.join(shown)}?"
    raise ConfigError(
        f"{what}={value!r} is not a known grid region.{hint} Give an ISO 3166 alpha-2 or "
        f"alpha-3 code (e.g. DE or DEU) or a region name such as World or EU; "
        f"{_FIND_CODES}, or set {ENV_CARBON_INTENSITY} to a number in gCO2e/kWh."
    )


def _check_intensity(value: float, what: str, raw: object) -> float:
    if not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"{what}={raw!r} is not a valid carbon intensity: give a finite number "
            f">= 0 in gCO2e/kWh (e.g. 400), or leave it unset to use the region's "
            f"table value."
        )
    return value


def resolve_intensity(
    region: str | None = None,
    intensity: float | None = None,
    env: Mapping[str, str] | None = None,
) -> CarbonIntensity:
    """The carbon intensity that applies, by the precedence in the module docstring.

    Args:
        region: ISO 3166 alpha-2/alpha-3 code or table name, e.g. ``"fr"``, ``"FRA"``,
            ``"World"``; overrides both environment variables.
        intensity: gCO2e/kWh; overrides everything else.
        env: environment to read ``GREENML_CARBON_INTENSITY`` and ``GREENML_REGION``
            from (default ``os.environ``). Variables set to an empty string count as unset.

    Returns:
        The intensity with its region, name, year and source.

    Raises:
        ConfigError: an unknown region or an invalid intensity (negative, not a
            number, NaN or infinite); the message names the argument or variable.
    """
    if intensity is not None:
        try:
            value = float(intensity)
        except (TypeError, ValueError):
            value = math.nan
        value = _check_intensity(value, "intensity", intensity)
        return CarbonIntensity(value, "custom", "custom (argument)", None, "argument")
    if region is not None:
        if not isinstance(region, str) or not region.strip():
            raise ConfigError(
                f"region={region!r} is not a region code: give an ISO 3166 alpha-2 or "
                f"alpha-3 code such as 'DE' or 'DEU', or None for the default; {_FIND_CODES}."
            )
        return _lookup_region(region, "region")

    env = os.environ if env is None else env
    raw = env.get(ENV_CARBON_INTENSITY, "")
    if raw.strip():
        try:
            value = float(raw.strip())
        except ValueError:
            value = math.nan
        value = _check_intensity(value, ENV_CARBON_INTENSITY, raw)
        return CarbonIntensity(
            value, "custom", f"custom ({ENV_CARBON_INTENSITY})", None, ENV_CARBON_INTENSITY
        )
    raw = env.get(ENV_REGION, "")
    if raw.strip():
        return _lookup_region(raw, ENV_REGION)

    records, index = _table()
    return _from_row(records[index[_WORLD]])


def co2e_g(energy_j: float, intensity: CarbonIntensity, pue: float = 1.0) -> float:
    """Grams of CO2e for an energy: ``energy_j / 3.6e6 x intensity.gco2e_per_kwh x pue``.

    Args:
        energy_j: energy drawn by the IT equipment, in joules (finite, >= 0).
        intensity: from :func:`resolve_intensity`.
        pue: power usage effectiveness of the data centre (facility energy over IT
            energy), dimensionless, finite and >= 1.0; 1.0 counts the IT energy only.

    Raises:
        ConfigError: ``pue`` is below 1 or not finite, or ``energy_j`` is negative
            or not finite.
    """
    if not math.isfinite(pue) or pue < 1.0:
        raise ConfigError(
            f"pue={pue!r} is not a valid power usage effectiveness: give a finite number "
            f">= 1.0 (1.0 = IT energy only; about 1.1-1.6 for data centres)."
        )
    if not math.isfinite(energy_j) or energy_j < 0:
        raise ConfigError(
            f"energy_j={energy_j!r} is not a valid energy: give a finite number of joules >= 0."
        )
    return energy_j / J_PER_KWH * intensity.gco2e_per_kwh * pue
