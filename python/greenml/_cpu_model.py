"""Modelled domains, ``cpu:estimated`` and ``dram:estimated``, for machines with no counter.

Most ML training outside a lab runs on cloud VMs, where neither RAPL nor (on CPU
instances) NVML exists. There greenml reports a *labelled estimate* rather than
nothing, with its assumptions in one line and the model's error as its
uncertainty. ``GREENML_ESTIMATE=off`` (or ``--no-estimate``) turns estimates off.

The per-vCPU model (the default)
--------------------------------
The cloud-industry model of Cloud Carbon Footprint (CCF), from SPECpower_ssj2008::

    P_cpu(t) [W] = vCPUs x (min_w + u(t) x (max_w - min_w))

* ``min_w`` and ``max_w`` are the watts of one hardware thread at active idle and
  at full load for the CPU's micro-architecture (``data/cpu_vcpu_power.csv``,
  CCF's coefficients: averages of SPECpower results over the servers of each
  architecture; Apache-2.0, see ``data/LICENSE-data.md``).
* The architecture comes from ``/proc/cpuinfo``'s vendor, ``cpu family``,
  ``model`` and ``stepping`` numbers (ARM: ``CPU implementer`` and ``CPU part``),
  not from the model name, which VMs often blank ("AMD EPYC", "Common KVM
  processor"); see :data:`ARCHITECTURES`. An unknown architecture falls back to
  the average of all architectures in the table, and the assumptions say so.
* ``vCPUs`` are the CPUs this machine owns -- or, in a container limited by a
  cgroup CPU quota or cpuset, the limit (2 CPUs of a 64-core host are 2 vCPUs).
* ``u(t)`` is the busy share of those vCPUs: machine-wide busy time from
  ``/proc/stat`` (user + nice + system + irq + softirq; not idle, iowait or
  steal), or the cgroup's own CPU usage (``cpu.stat`` ``usage_usec`` in cgroup
  v2, ``cpuacct.usage`` in v1) when the cgroup is limited.

Unlike TDP x utilisation it has an idle term: an idle VM still draws
``vCPUs x min_w``. The native core integrates it exactly as a microjoule counter,
``vCPUs x min_w x elapsed + (max_w - min_w) x busy CPU-seconds``.

DRAM
----
``dram:estimated`` = installed memory (``MemTotal`` of ``/proc/meminfo``, or the
cgroup memory limit when lower) x 0.392 W per GiB, CCF's memory coefficient, a
constant power. It counts in totals only when no ``dram:<s>`` counter is readable
(it is not built at all when one is). SPECpower's wall power already includes
the servers' own memory, so for machines with much memory per vCPU this counts
some memory twice; the assumptions line gives the figures.

Model uncertainty
-----------------
An estimated domain's ``uncertainty_j`` is the model's relative error bound x its
energy (the sampler's error is negligible beside it). The figures, per
:func:`cpu_rel_uncertainty`:

* **+/-70 %** for an identified architecture. Source: the spread of the
  SPECpower_ssj2008 results behind the coefficients (the file
  ``data/SPECpower-2026-03-09.csv`` of the ccf-coefficients repository). Within one architecture, servers differ widely
  per thread; e.g. for EPYC 4th Gen (CCF average 0.74 W idle, 2.28 W full load per
  thread) two-socket EPYC 9754 servers publish 117-132 W idle and 644-685 W at full
  load over 512 threads (0.23-0.26 and 1.26-1.34 W per thread: 65-69 % and 41-45 %
  below the average) and EPYC 9654 servers 126-128 W and 817-827 W over 384 threads
  (0.33 and 2.13-2.15 W per thread).
* **+/-90 %** for EPYC 5th Gen: CCF's average (3.68 W idle, 8.96 W full load per
  thread) is raised by small single-socket servers (its list includes EPYC 4005
  parts); a large EPYC 9005 server publishes 150-157 W idle and 800 W at full load
  over 768 threads (2x EPYC 9965: 0.20 and 1.04 W per thread, 1/18 and 1/8.6 of the
  average). A VM on such a host is likely far below the estimate.
* **+/-100 %** for the cross-architecture average (unknown architecture): the
  table's per-thread figures lie between 0.45x and 3.6x their average at idle and
  between 0.44x and 2.35x at full load, so even this bound (down to zero, up to
  twice the estimate) may not hold for an unknown CPU.
* **+/-50 %** for ``dram:estimated`` and for the TDP model: judgment, no
  published validation of either coefficient is known to greenml.

These are bounds on a systematic error, so they add linearly over windows and
domains. Totals that mix measured and estimated domains say so.

The TDP model (an alternative)
------------------------------
``P = TDP_W x sockets x u`` with ``u`` the machine's busy share: used only when
``GREENML_CPU_TDP_W`` is set (the TDP of one package, in watts). It has no idle
term and is meant for bare metal, where you own whole packages; in a VM or a
CPU-limited container the package's TDP describes a whole chip, not your slice,
and the assumptions line says so. The rule, in short: **per-vCPU model unless
GREENML_CPU_TDP_W is set**. ``greenml sensors`` shows the table TDP of a matched
model name (``data/cpu_tdp.csv``) as a hint.

TDP matching
------------
``/proc/cpuinfo`` says e.g. ``Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz`` or
``AMD EPYC 7763 64-Core Processor``, the table ``Intel Xeon Gold 6248`` and
``AMD EPYC 7763``. Both sides are normalised (lower case; ``(R)``, ``(TM)`` and
other parenthesised notes, ``CPU``, ``Processor``, ``APU``, ``Mobile``, ``@ x.xxGHz``,
``N-Core``, ``Nth Gen``, ``with Radeon Graphics`` and vendor words removed), then
split into *words* (no digit) and *model tokens* (with a digit). The model tokens
joined together form the *model key* (``i710700k``, ``e52686v4``). A table row
is a candidate only if its model key equals the query's and its vendor does not
contradict the query's: ``exact`` when the normalised names are equal or the
row's words are all among the query's (most specific wins), else ``fuzzy`` (the
closest by :mod:`difflib`, ratio >= 0.85). A different model number never
matches, and ties with different TDPs give ``None`` rather than a wrong guess.
"""

from __future__ import annotations

import csv
import difflib
import functools
import importlib.resources
import io
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from greenml._errors import ConfigError

__all__ = [
    "ARCHITECTURES",
    "DRAM_W_PER_GIB",
    "ENV_CPU_TDP_W",
    "CgroupCpu",
    "CpuEstimate",
    "CpuInfo",
    "DramEstimate",
    "TdpMatch",
    "VcpuPower",
    "cpu_rel_uncertainty",
    "identify_architecture",
    "lookup_tdp_w",
    "parse_cpuinfo",
    "plan_cpu_estimate",
    "plan_dram_estimate",
    "read_cgroup_cpu",
    "read_cpu_model_name",
    "read_cpu_socket_count",
    "read_memory_gib",
    "tdp_from_env",
    "vcpu_power",
    "vcpu_power_average",
]

ENV_CPU_TDP_W = "GREENML_CPU_TDP_W"
"""Environment variable: TDP of one CPU package in watts; selects the TDP model."""

_TDP_CSV = "cpu_tdp.csv"
_VCPU_CSV = "cpu_vcpu_power.csv"
_FUZZY_CUTOFF = 0.85

DRAM_W_PER_GIB = 0.392
"""Cloud Carbon Footprint's memory coefficient, watts per GiB of installed memory."""

REL_UNCERTAINTY_ARCH = 0.7
REL_UNCERTAINTY_EPYC5 = 0.9
REL_UNCERTAINTY_AVERAGE = 1.0
REL_UNCERTAINTY_TDP = 0.5
REL_UNCERTAINTY_DRAM = 0.5

# --------------------------------------------------------------------------- TDP table


@dataclass(frozen=True)
class TdpMatch:
    """A TDP found for a CPU model.

    Attributes:
        tdp_w: thermal design power of one package (socket), in watts.
        matched_name: the table row's name, or ``GREENML_CPU_TDP_W`` for an override.
        method: ``"exact"``, ``"fuzzy"`` (see the module docstring) or ``"env"``.
    """

    tdp_w: float
    matched_name: str
    method: str


class _Parsed(NamedTuple):
    """A CPU name after normalisation."""

    norm: str  # normalised name, tokens joined by single spaces
    words: frozenset[str]  # tokens without a digit (family words: xeon, gold, ryzen, ...)
    key: str  # model tokens (with a digit) concatenated, e.g. "i710700k"
    vendor: str | None  # "intel", "amd", "apple", "arm" or None


class _Row(NamedTuple):
    name: str
    tdp_w: float
    parsed: _Parsed


_PARENS = re.compile(r"\([^)]*\)")
_FREQ = re.compile(r"@?\s*\d+(?:\.\d+)?\s*[gm]hz\b")
_GEN = re.compile(r"\b\d+(?:st|nd|rd|th)\s+gen(?:eration)?\b")
_WITH = re.compile(r"\s(?:with|w/)\s.*$")
_NCORE = re.compile(r"\b[a-z0-9]+-cores?\b")
_SPLIT = re.compile(r"[\s\-_,/+]+")
_NOISE = frozenset(
    {
        "intel",
        "amd",
        "genuineintel",
        "authenticamd",
        "cpu",
        "processor",
        "apu",
        "mobile",
        "oem",
        "only",
    }
)
_INTEL_WORDS = frozenset({"xeon", "pentium", "celeron", "atom", "itanium"})
_AMD_WORDS = frozenset({"epyc", "ryzen", "opteron", "athlon", "phenom", "sempron", "turion"})


def _vendor_of_query(raw_tokens: list[str]) -> str | None:
    """Vendor of a /proc/cpuinfo name from its raw (un-filtered) tokens, or None."""
    tokens = set(raw_tokens)
    if tokens & {"intel", "genuineintel"}:
        return "intel"
    if tokens & {"amd", "authenticamd"}:
        return "amd"
    if tokens & _INTEL_WORDS:
        return "intel"
    if tokens & _AMD_WORDS:
        return "amd"
    if "apple" in tokens:
        return "apple"
    return None


def _vendor_of_row(raw_tokens: list[str]) -> str:
    """Vendor of a table row. Rows without a vendor word are AMD parts in this table
    (bare Opteron/Phenom numbers, A-series APUs, FX) except the few ARM cores."""
    tokens = set(raw_tokens)
    if "intel" in tokens:
        return "intel"
    if "apple" in tokens:
        return "apple"
    if any(t.startswith(("arm", "cortex")) for t in tokens):
        return "arm"
    return "amd"


def _tokens(name: str) -> list[str]:
    """Lower-case tokens of a CPU name with frequencies, notes and core counts removed."""
    s = name.lower().replace("\u00ae", " ").replace("\u2122", " ")
    s = _PARENS.sub(" ", s)  # (R), (TM), (OEM Only), (9M Cache, up to 4.00 GHz), (v8l)
    s = _FREQ.sub(" ", s)  # "@ 2.90GHz", "1066 MHz"
    s = _GEN.sub(" ", s)  # "11th Gen"
    s = _WITH.sub(" ", s)  # "with Radeon Graphics", "w/ Radeon 780M Graphics"
    s = _NCORE.sub(" ", s)  # "64-Core", "Eight-Core", "64-Cores"
    return [t for t in _SPLIT.split(s) if t]


def _parse(name: str, *, is_row: bool) -> _Parsed:
    raw = _tokens(name)
    # A lone "0" is the Sandy Bridge-EP cpuinfo placeholder ("E5-2670 0 @ 2.60GHz").
    kept = [t for t in raw if t not in _NOISE and t != "0"]
    words = frozenset(t for t in kept if not any(c.isdigit() for c in t))
    key = "".join(t for t in kept if any(c.isdigit() for c in t))
    vendor = _vendor_of_row(raw) if is_row else _vendor_of_query(raw)
    return _Parsed(" ".join(kept), words, key, vendor)


@functools.lru_cache(maxsize=1)
def _tdp_table() -> tuple[dict[str, list[_Row]], tuple[_Row, ...]]:
    """The shipped TDP table, parsed once: (rows by model key, all rows)."""
    resource = importlib.resources.files("greenml").joinpath("data").joinpath(_TDP_CSV)
    rows: list[_Row] = []
    text = resource.read_text(encoding="utf-8")
    for rec in csv.DictReader(io.StringIO(text, newline="")):
        name = (rec.get("name") or "").strip()
        try:
            tdp = float(rec.get("tdp_w") or "nan")
        except ValueError:
            continue
        if not name or not math.isfinite(tdp) or tdp <= 0:
            continue
        rows.append(_Row(name, tdp, _parse(name, is_row=True)))
    by_key: dict[str, list[_Row]] = {}
    for row in rows:
        if row.parsed.key:
            by_key.setdefault(row.parsed.key, []).append(row)
    return by_key, tuple(rows)


def _unique(rows: list[_Row]) -> _Row | None:
    """The first row if all rows agree on the TDP, else None (ambiguous)."""
    if rows and all(r.tdp_w == rows[0].tdp_w for r in rows):
        return rows[0]
    return None


def lookup_tdp_w(model_name: str) -> TdpMatch | None:
    """Find the TDP of a CPU from its ``/proc/cpuinfo`` model name in the shipped table.

    Args:
        model_name: e.g. ``"AMD EPYC 7763 64-Core Processor"``.

    Returns:
        The TDP of one package (watts) with the matched row and ``method``
        (``"exact"`` or ``"fuzzy"``), or ``None`` when no row has the same model
        number or the candidates disagree; see the module docstring.
    """
    q = _parse(model_name, is_row=False)
    if not q.key:
        return None  # "Intel Xeon Processor (Cascadelake)", "Common KVM processor"
    by_key, _ = _tdp_table()
    candidates = [
        r for r in by_key.get(q.key, []) if q.vendor is None or r.parsed.vendor == q.vendor
    ]
    if not candidates:
        return None

    same = [r for r in candidates if r.parsed.norm == q.norm]
    if same:
        row = _unique(same)
        return TdpMatch(row.tdp_w, row.name, "exact") if row else None

    subset = [r for r in candidates if r.parsed.words <= q.words]
    if subset:
        best = max(len(r.parsed.words) for r in subset)
        row = _unique([r for r in subset if len(r.parsed.words) == best])
        return TdpMatch(row.tdp_w, row.name, "exact") if row else None

    scored = [(difflib.SequenceMatcher(None, q.norm, r.parsed.norm).ratio(), r) for r in candidates]
    scored = [(s, r) for s, r in scored if s >= _FUZZY_CUTOFF]
    if not scored:
        return None
    top = max(s for s, _ in scored)
    row = _unique([r for s, r in scored if s == top])
    return TdpMatch(row.tdp_w, row.name, "fuzzy") if row else None


def tdp_from_env(env: Mapping[str, str] | None = None) -> TdpMatch | None:
    """The ``GREENML_CPU_TDP_W`` override (watts per package), or None when unset or empty.

    Raises:
        ConfigError: the value is not a finite number greater than 0.
    """
    env = os.environ if env is None else env
    raw = env.get(ENV_CPU_TDP_W)
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"{ENV_CPU_TDP_W}={raw!r} is not a valid TDP: give the thermal design power "
            f"of one CPU package in watts as a number greater than 0 (e.g. "
            f"{ENV_CPU_TDP_W}=150), or unset it to look the CPU up in greenml's table."
        )
    return TdpMatch(value, ENV_CPU_TDP_W, "env")


# --------------------------------------------------------------------------- /proc/cpuinfo


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_cpu_model_name(cpuinfo_path: str = "/proc/cpuinfo") -> str | None:
    """The first ``model name`` in a cpuinfo file, or None if absent or unreadable.

    ARM kernels usually print no ``model name``; that gives None too.
    """
    text = _read_text(cpuinfo_path)
    if text is None:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "model name" and value.strip():
            return value.strip()
    return None


def read_cpu_socket_count(cpuinfo_path: str = "/proc/cpuinfo") -> int:
    """Number of CPU packages: distinct ``physical id`` values in cpuinfo (at least 1).

    Returns 1 when the file is unreadable or shows no ``physical id`` (many VMs, ARM).
    """
    text = _read_text(cpuinfo_path)
    ids = set()
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "physical id":
            ids.add(value.strip())
    return max(1, len(ids))


# --------------------------------------------------------------------------- per-vCPU table


@dataclass(frozen=True)
class VcpuPower:
    """Watts of one hardware thread at active idle and at full load, by architecture."""

    architecture: str
    min_w: float
    max_w: float


@functools.lru_cache(maxsize=1)
def _vcpu_table() -> dict[str, VcpuPower]:
    resource = importlib.resources.files("greenml").joinpath("data").joinpath(_VCPU_CSV)
    table: dict[str, VcpuPower] = {}
    for rec in csv.DictReader(io.StringIO(resource.read_text(encoding="utf-8"), newline="")):
        arch = (rec.get("architecture") or "").strip()
        try:
            lo, hi = float(rec["min_w_per_vcpu"]), float(rec["max_w_per_vcpu"])
        except (KeyError, TypeError, ValueError):
            continue
        if arch and math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi:
            table[arch] = VcpuPower(arch, lo, hi)
    return table


def vcpu_power(architecture: str) -> VcpuPower | None:
    """The shipped coefficients of one architecture (a name of :data:`ARCHITECTURES`)."""
    return _vcpu_table().get(architecture)


def vcpu_power_average() -> VcpuPower:
    """The plain average of every architecture's coefficients: the fallback."""
    rows = list(_vcpu_table().values())
    return VcpuPower(
        f"average of {len(rows)} architectures",
        sum(r.min_w for r in rows) / len(rows),
        sum(r.max_w for r in rows) / len(rows),
    )


def cpu_rel_uncertainty(architecture: str | None) -> float:
    """Relative error bound of the per-vCPU model for an architecture (None = average);
    the figures and their sources are in the module docstring."""
    if architecture is None:
        return REL_UNCERTAINTY_AVERAGE
    if architecture == "EPYC 5th Gen":
        return REL_UNCERTAINTY_EPYC5
    return REL_UNCERTAINTY_ARCH


# --------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class CpuInfo:
    """What /proc/cpuinfo says about the CPU (first processor block; numbers as integers)."""

    vendor: str | None = None  # "GenuineIntel", "AuthenticAMD", or None (ARM kernels)
    family: int | None = None
    model: int | None = None
    stepping: int | None = None
    model_name: str | None = None
    implementer: int | None = None  # ARM "CPU implementer"
    part: int | None = None  # ARM "CPU part"
    logical_cpus: int = 0  # "processor" entries
    sockets: int = 1  # distinct "physical id" values (1 when none)
    hypervisor: bool = False  # the "hypervisor" flag: a virtual machine


def _int(value: str) -> int | None:
    try:
        return int(value.strip(), 0)
    except ValueError:
        return None


def parse_cpuinfo(text: str) -> CpuInfo:
    """Parses a /proc/cpuinfo text (x86 or ARM)."""
    first: dict[str, str] = {}
    processors = 0
    sockets: set[str] = set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        value = value.strip()
        if key == "processor":
            processors += 1
        elif key == "physical id":
            sockets.add(value)
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
        first.setdefault(key, value)
    return CpuInfo(
        vendor=first.get("vendor_id") or None,
        family=_int(first["cpu family"]) if "cpu family" in first else None,
        model=_int(first["model"]) if "model" in first else None,
        stepping=_int(first["stepping"]) if "stepping" in first else None,
        model_name=first.get("model name") or None,
        implementer=_int(first["cpu implementer"]) if "cpu implementer" in first else None,
        part=_int(first["cpu part"]) if "cpu part" in first else None,
        logical_cpus=processors,
        sockets=max(1, len(sockets)),
        hypervisor="hypervisor" in flags,
    )


class _Arch(NamedTuple):
    vendor: str  # cpuinfo vendor_id, or "ARM:<implementer>" for ARM
    family: int  # x86 family, or the ARM part number
    models: tuple[int, int]  # inclusive range of x86 model numbers (unused for ARM)
    steppings: tuple[int, int]  # inclusive range of steppings
    architecture: str  # a row of data/cpu_vcpu_power.csv
    note: str


_ANY = (0, 0xFFFF)
_INTEL, _AMD = "GenuineIntel", "AuthenticAMD"

ARCHITECTURES: tuple[_Arch, ...] = (
    # Intel, family 6. Model numbers from Intel's and the Linux kernel's CPU model lists.
    _Arch(_INTEL, 6, (0x2A, 0x2A), _ANY, "Sandy Bridge", "Sandy Bridge"),
    _Arch(_INTEL, 6, (0x2D, 0x2D), _ANY, "Sandy Bridge", "Sandy Bridge-EP"),
    _Arch(_INTEL, 6, (0x3A, 0x3A), _ANY, "Ivy Bridge", "Ivy Bridge"),
    _Arch(_INTEL, 6, (0x3E, 0x3E), _ANY, "Ivy Bridge", "Ivy Bridge-EP"),
    _Arch(_INTEL, 6, (0x3C, 0x3C), _ANY, "Haswell", "Haswell"),
    _Arch(_INTEL, 6, (0x3F, 0x3F), _ANY, "Haswell", "Haswell-EP"),
    _Arch(_INTEL, 6, (0x45, 0x46), _ANY, "Haswell", "Haswell (mobile)"),
    _Arch(_INTEL, 6, (0x3D, 0x3D), _ANY, "Broadwell", "Broadwell"),
    _Arch(_INTEL, 6, (0x47, 0x47), _ANY, "Broadwell", "Broadwell"),
    _Arch(_INTEL, 6, (0x4F, 0x4F), _ANY, "Broadwell", "Broadwell-EP"),
    _Arch(_INTEL, 6, (0x56, 0x56), _ANY, "Broadwell", "Broadwell-DE"),
    _Arch(_INTEL, 6, (0x4E, 0x4E), _ANY, "Skylake", "Skylake (client)"),
    _Arch(_INTEL, 6, (0x5E, 0x5E), _ANY, "Skylake", "Skylake (client)"),
    # 0x55 is Skylake-SP up to stepping 4, Cascade Lake 5-7, Cooper Lake 10-11.
    _Arch(_INTEL, 6, (0x55, 0x55), (0, 4), "Skylake", "Skylake-SP"),
    _Arch(_INTEL, 6, (0x55, 0x55), (5, 7), "Cascade Lake", "Cascade Lake-SP"),
    _Arch(_INTEL, 6, (0x55, 0x55), (8, 0xFFFF), "Cascade Lake", "Cooper Lake (as Cascade Lake)"),
    _Arch(_INTEL, 6, (0x8E, 0x8E), _ANY, "Coffee Lake", "Kaby/Coffee/Whiskey Lake (mobile)"),
    _Arch(_INTEL, 6, (0x9E, 0x9E), _ANY, "Coffee Lake", "Kaby/Coffee Lake"),
    _Arch(_INTEL, 6, (0xA5, 0xA6), _ANY, "Coffee Lake", "Comet Lake (as Coffee Lake)"),
    _Arch(_INTEL, 6, (0x6A, 0x6A), _ANY, "Ice Lake", "Ice Lake-SP"),
    _Arch(_INTEL, 6, (0x6C, 0x6C), _ANY, "Ice Lake", "Ice Lake-D"),
    _Arch(_INTEL, 6, (0x7D, 0x7E), _ANY, "Ice Lake", "Ice Lake (client)"),
    _Arch(_INTEL, 6, (0x8F, 0x8F), _ANY, "Sapphire Rapids", "Sapphire Rapids"),
    _Arch(_INTEL, 6, (0xCF, 0xCF), _ANY, "Emerald Rapids", "Emerald Rapids"),
    _Arch(_INTEL, 6, (0xAD, 0xAE), _ANY, "Granite Rapids", "Granite Rapids"),
    # AMD: family 0x17 = Zen/Zen+ (models < 0x30) and Zen 2; 0x19 = Zen 3 and Zen 4;
    # 0x1A = Zen 5. Client parts of a generation share its server row (same cores).
    _Arch(_AMD, 0x17, (0x00, 0x2F), _ANY, "EPYC 1st Gen", "Zen/Zen+ (Naples)"),
    _Arch(_AMD, 0x17, (0x30, 0xFF), _ANY, "EPYC 2nd Gen", "Zen 2 (Rome)"),
    _Arch(_AMD, 0x19, (0x00, 0x0F), _ANY, "EPYC 3rd Gen", "Zen 3 (Milan)"),
    _Arch(_AMD, 0x19, (0x10, 0x1F), _ANY, "EPYC 4th Gen", "Zen 4 (Genoa)"),
    _Arch(_AMD, 0x19, (0x20, 0x5F), _ANY, "EPYC 3rd Gen", "Zen 3 (client)"),
    _Arch(_AMD, 0x19, (0x60, 0x7F), _ANY, "EPYC 4th Gen", "Zen 4 (client, EPYC 4004)"),
    _Arch(_AMD, 0x19, (0xA0, 0xAF), _ANY, "EPYC 4th Gen", "Zen 4c (Bergamo, Siena)"),
    _Arch(_AMD, 0x1A, (0x00, 0x1F), _ANY, "EPYC 5th Gen", "Zen 5 (Turin)"),
    _Arch(_AMD, 0x1A, (0x20, 0xFF), _ANY, "EPYC 5th Gen", "Zen 5 (client, EPYC 4005)"),
    # ARM (implementer 0x41 = Arm Ltd.): Neoverse cores, matched by part number.
    _Arch("ARM:0x41", 0xD0C, _ANY, _ANY, "Graviton2", "Neoverse N1 (Graviton2, Ampere Altra)"),
    _Arch("ARM:0x41", 0xD40, _ANY, _ANY, "Graviton3", "Neoverse V1 (Graviton3)"),
    _Arch("ARM:0x41", 0xD4F, _ANY, _ANY, "Graviton4", "Neoverse V2 (Graviton4)"),
)
"""/proc/cpuinfo numbers -> architecture rows of ``data/cpu_vcpu_power.csv``."""


@dataclass(frozen=True)
class ArchMatch:
    architecture: str
    note: str  # e.g. "Zen 5 (Turin)"
    cpuid: str  # e.g. "AMD family 26 model 2"


def identify_architecture(info: CpuInfo) -> ArchMatch | None:
    """The micro-architecture from vendor, family, model and stepping (ARM: implementer and
    part), or None when the table has no row for them."""
    if info.implementer is not None and info.part is not None:
        vendor = f"ARM:{info.implementer:#x}"
        for a in ARCHITECTURES:
            if a.vendor == vendor and a.family == info.part:
                return ArchMatch(a.architecture, a.note, f"ARM part {info.part:#x}")
        return None
    if info.vendor is None or info.family is None or info.model is None:
        return None
    stepping = info.stepping if info.stepping is not None else 0
    short = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(info.vendor, info.vendor)
    for a in ARCHITECTURES:
        if (
            a.vendor == info.vendor
            and a.family == info.family
            and a.models[0] <= info.model <= a.models[1]
            and a.steppings[0] <= stepping <= a.steppings[1]
        ):
            cpuid = f"{short} family {info.family} model {info.model}"
            return ArchMatch(a.architecture, a.note, cpuid)
    return None


# --------------------------------------------------------------------------- cgroups


@dataclass(frozen=True)
class CgroupCpu:
    """The CPUs this process's cgroup may use, and where its busy time is counted.

    Attributes:
        vcpus: CPUs owned: the host's, or the quota / cpuset limit when lower (may be
            fractional for a quota such as 1.5 CPUs).
        limited: True when a quota or cpuset owns fewer CPUs than the host has.
        limit: how the limit was found, for the assumptions line ("" when not limited).
        usage_path: the cgroup's busy-time file, or None.
        usage_format: "cgroup2_stat" (cpu.stat, usage_usec) or "cgroup1_usage" (ns).
    """

    vcpus: float
    limited: bool
    limit: str
    usage_path: str | None
    usage_format: str


def _parse_cpu_list(text: str) -> int | None:
    """Number of CPUs in a list like ``0-3,8,10-11``; None when malformed or empty."""
    n = 0
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            return None
        if b < a:
            return None
        n += b - a + 1
    return n or None


def _cgroup_paths(proc_self_cgroup: str) -> dict[str, str]:
    """Controller -> cgroup path, from /proc/self/cgroup; "" is the cgroup v2 hierarchy."""
    out: dict[str, str] = {}
    for line in (_read_text(proc_self_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def _candidates(root: str, sub: str, path: str) -> list[str]:
    """Directories to look in: the cgroup's own under the mount, then the mount itself (inside
    a container's cgroup namespace the mount's root is the container's cgroup)."""
    base = os.path.join(root, sub) if sub else root
    own = os.path.join(base, path.lstrip("/"))
    return [own, base] if own.rstrip("/") != base.rstrip("/") else [base]


def _first_dir_with(dirs: list[str], name: str) -> str | None:
    for d in dirs:
        if os.path.exists(os.path.join(d, name)):
            return d
    return None


def read_cgroup_cpu(
    host_cpus: int,
    cgroup_root: str = "/sys/fs/cgroup",
    proc_self_cgroup: str = "/proc/self/cgroup",
) -> CgroupCpu:
    """CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``) and
    cpuset (``cpuset.cpus.effective`` / ``cpuset.effective_cpus`` / ``cpuset.cpus``) of this
    process's cgroup; the smallest limit on the way to the root counts. Unreadable files mean
    no limit."""
    paths = _cgroup_paths(proc_self_cgroup)
    limits: list[tuple[float, str]] = []
    usage: str | None = None
    fmt = ""
    if os.path.exists(os.path.join(cgroup_root, "cgroup.controllers")):  # cgroup v2
        path = paths.get("", "/")
        dirs = _candidates(cgroup_root, "", path)
        own = _first_dir_with(dirs, "cpu.stat") or dirs[-1]
        d = own
        while True:  # every ancestor's quota applies
            quota = (_read_text(os.path.join(d, "cpu.max")) or "").split()
            if len(quota) == 2 and quota[0] != "max":
                q, p = _int(quota[0]), _int(quota[1])
                if q and p and q > 0 and p > 0:
                    limits.append((q / p, f"cpu.max {q} {p}"))
            if os.path.normpath(d) == os.path.normpath(cgroup_root):
                break
            d = os.path.dirname(d.rstrip("/"))
            if not d.startswith(os.path.normpath(cgroup_root)):
                break
        n = _parse_cpu_list(_read_text(os.path.join(own, "cpuset.cpus.effective")) or "")
        if n:
            limits.append((float(n), f"cpuset of {n} CPUs"))
        if os.path.exists(os.path.join(own, "cpu.stat")):
            usage, fmt = os.path.join(own, "cpu.stat"), "cgroup2_stat"
    else:  # cgroup v1: one hierarchy per controller
        for sub in ("cpu", "cpu,cpuacct"):
            d = _first_dir_with(
                _candidates(cgroup_root, sub, paths.get("cpu", "/")), "cpu.cfs_quota_us"
            )
            if d is None:
                continue
            q = _int(_read_text(os.path.join(d, "cpu.cfs_quota_us")) or "")
            p = _int(_read_text(os.path.join(d, "cpu.cfs_period_us")) or "")
            if q and p and q > 0 and p > 0:
                limits.append((q / p, f"cpu.cfs_quota_us {q} / cpu.cfs_period_us {p}"))
            break
        dirs = _candidates(cgroup_root, "cpuset", paths.get("cpuset", "/"))
        for name in ("cpuset.effective_cpus", "cpuset.cpus"):
            d = _first_dir_with(dirs, name)
            n = _parse_cpu_list(_read_text(os.path.join(d, name)) or "") if d else None
            if n:
                limits.append((float(n), f"cpuset of {n} CPUs"))
                break
        for sub in ("cpuacct", "cpu,cpuacct"):
            d = _first_dir_with(
                _candidates(cgroup_root, sub, paths.get("cpuacct", "/")), "cpuacct.usage"
            )
            if d is not None:
                usage, fmt = os.path.join(d, "cpuacct.usage"), "cgroup1_usage"
                break
    host = float(max(1, host_cpus))
    lower = [(v, why) for v, why in limits if v < host]
    if not lower:
        return CgroupCpu(host, False, "", usage, fmt)
    v, why = min(lower)
    return CgroupCpu(v, True, why, usage, fmt)


def read_memory_gib(
    meminfo_path: str = "/proc/meminfo",
    cgroup_root: str = "/sys/fs/cgroup",
    proc_self_cgroup: str = "/proc/self/cgroup",
) -> tuple[float, str] | None:
    """Memory this machine or cgroup owns, in GiB, and where the figure came from:
    ``MemTotal``, or the cgroup limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) when
    lower. None when neither can be read."""
    total: float | None = None
    for line in (_read_text(meminfo_path) or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "MemTotal":
            parts = value.split()
            kib = _int(parts[0]) if parts else None
            if kib:
                total = kib / 2**20
            break
    paths = _cgroup_paths(proc_self_cgroup)
    limit: float | None = None
    if os.path.exists(os.path.join(cgroup_root, "cgroup.controllers")):
        d = _first_dir_with(_candidates(cgroup_root, "", paths.get("", "/")), "memory.max")
        raw = _read_text(os.path.join(d, "memory.max")) if d else None
        name = "memory.max"
    else:
        dirs = _candidates(cgroup_root, "memory", paths.get("memory", "/"))
        d = _first_dir_with(dirs, "memory.limit_in_bytes")
        raw = _read_text(os.path.join(d, "memory.limit_in_bytes")) if d else None
        name = "memory.limit_in_bytes"
    b = _int(raw) if raw and raw.strip() != "max" else None
    if b and b > 0:
        limit = b / 2**30
    if limit is not None and (total is None or limit < total):
        return limit, f"cgroup {name}"
    if total is not None:
        return total, "MemTotal"
    return None


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class CpuEstimate:
    """What ``cpu:estimated`` will model: ``P = idle_w + busy_w_per_cpu x busy CPUs``.

    For the per-vCPU model ``idle_w = vcpus x min_w`` and ``busy_w_per_cpu = max_w - min_w``;
    for the TDP model ``idle_w = 0`` and ``busy_w_per_cpu = TDP x sockets / host CPUs``.
    """

    method: str  # "vcpu" or "tdp"
    idle_w: float
    busy_w_per_cpu: float
    max_busy_cpus: float
    rel_uncertainty: float
    busy_path: str
    busy_format: str  # "proc_stat", "cgroup2_stat" or "cgroup1_usage"
    busy_seconds_per_unit: float
    assumptions: str  # one line, shown next to every estimate
    architecture: str | None = None
    vcpus: float = 0.0


@dataclass(frozen=True)
class DramEstimate:
    gib: float
    power_w: float
    rel_uncertainty: float
    assumptions: str


def _fmt_cpus(v: float) -> str:
    return f"{v:g}"


def plan_cpu_estimate(
    env: Mapping[str, str] | None = None,
    cpuinfo_path: str = "/proc/cpuinfo",
    stat_path: str = "/proc/stat",
    cgroup_root: str = "/sys/fs/cgroup",
    proc_self_cgroup: str = "/proc/self/cgroup",
    clk_tck: int = 100,
) -> tuple[CpuEstimate | None, str]:
    """Chooses and parametrises the CPU model for this machine (see the module docstring).

    Returns:
        ``(estimate, "")``, or ``(None, reason)`` when even an estimate is impossible (no
        readable /proc/stat, say); the reason says what to do.

    Raises:
        ConfigError: ``GREENML_CPU_TDP_W`` is set to an invalid value.
    """
    tdp = tdp_from_env(env)
    text = _read_text(cpuinfo_path)
    info = parse_cpuinfo(text or "")
    host_cpus = info.logical_cpus or _count_stat_cpus(stat_path) or (os.cpu_count() or 1)
    cg = read_cgroup_cpu(host_cpus, cgroup_root, proc_self_cgroup)
    if cg.limited and cg.usage_path is not None:
        busy_path, busy_format = cg.usage_path, cg.usage_format
        unit = 1e-6 if busy_format == "cgroup2_stat" else 1e-9
        whose = f"the cgroup's CPU time ({cg.usage_path})"
    else:
        busy_path, busy_format, unit = stat_path, "proc_stat", 1.0 / max(1, clk_tck)
        whose = f"machine-wide busy time ({stat_path})"
        if cg.limited:
            whose += ", not the cgroup's (its usage file is unreadable): may over-count"
    if _read_text(busy_path) is None:
        return None, (
            f"cannot read {busy_path}, so CPU utilisation is unknown; the estimate needs a "
            "readable Linux /proc/stat (or cgroup cpu.stat)"
        )
    owned = f"{_fmt_cpus(cg.vcpus)} vCPU{'s' if cg.vcpus != 1 else ''}"
    if cg.limited:
        owned += f" ({cg.limit} of {host_cpus} host CPUs)"
    elif info.hypervisor:
        owned += " (VM)"

    if tdp is not None:
        sockets = info.sockets
        pkg_w = tdp.tdp_w * sockets
        slice_note = ""
        if info.hypervisor or cg.limited:
            slice_note = (
                "; a VM or container owns a slice of the package, so its TDP likely "
                f"over-states this machine: unset {ENV_CPU_TDP_W} for the per-vCPU model"
            )
        return CpuEstimate(
            method="tdp",
            idle_w=0.0,
            busy_w_per_cpu=pkg_w / host_cpus,
            max_busy_cpus=float(host_cpus),
            rel_uncertainty=REL_UNCERTAINTY_TDP,
            busy_path=busy_path,
            busy_format=busy_format,
            busy_seconds_per_unit=unit,
            assumptions=(
                f"TDP model ({ENV_CPU_TDP_W}): {tdp.tdp_w:g} W x {sockets} socket"
                f"{'s' if sockets != 1 else ''} x utilisation of {host_cpus} CPUs, no idle "
                f"term; u from {whose}; +/-{REL_UNCERTAINTY_TDP:.0%}{slice_note}"
            ),
            vcpus=float(host_cpus),
        ), ""

    match = identify_architecture(info)
    coeffs = vcpu_power(match.architecture) if match else None
    if match and coeffs:
        arch_text = f"{match.architecture} ({match.cpuid}: {match.note})"
        rel = cpu_rel_uncertainty(match.architecture)
    else:
        coeffs = vcpu_power_average()
        what = (
            f"{info.vendor} family {info.family} model {info.model}"
            if info.family is not None
            else (f"ARM part {info.part:#x}" if info.part is not None else "unidentified CPU")
        )
        arch_text = f"{coeffs.architecture} ({what} is not in greenml's table)"
        rel = cpu_rel_uncertainty(None)
    hint = ""
    if not info.hypervisor and not cg.limited and info.model_name:
        listed = lookup_tdp_w(info.model_name)
        if listed is not None:
            hint = (
                f"; bare metal: {listed.matched_name} is listed at {listed.tdp_w:g} W TDP "
                f"({ENV_CPU_TDP_W}={listed.tdp_w:g} selects the TDP model)"
            )
    return CpuEstimate(
        method="vcpu",
        idle_w=cg.vcpus * coeffs.min_w,
        busy_w_per_cpu=coeffs.max_w - coeffs.min_w,
        max_busy_cpus=float(host_cpus),
        rel_uncertainty=rel,
        busy_path=busy_path,
        busy_format=busy_format,
        busy_seconds_per_unit=unit,
        assumptions=(
            f"per-vCPU model (Cloud Carbon Footprint, SPECpower): {owned} x "
            f"({coeffs.min_w:.3g} W + u x {coeffs.max_w - coeffs.min_w:.3g} W), {arch_text}; "
            f"u from {whose}; +/-{rel:.0%}{hint}"
        ),
        architecture=match.architecture if match else None,
        vcpus=cg.vcpus,
    ), ""


def _count_stat_cpus(stat_path: str) -> int:
    text = _read_text(stat_path) or ""
    return sum(1 for line in text.splitlines() if re.match(r"cpu\d+\s", line))


def plan_dram_estimate(
    meminfo_path: str = "/proc/meminfo",
    cgroup_root: str = "/sys/fs/cgroup",
    proc_self_cgroup: str = "/proc/self/cgroup",
) -> tuple[DramEstimate | None, str]:
    """``dram:estimated``: memory owned x :data:`DRAM_W_PER_GIB`, or ``(None, reason)``."""
    mem = read_memory_gib(meminfo_path, cgroup_root, proc_self_cgroup)
    if mem is None:
        return None, f"cannot read the installed memory from {meminfo_path}"
    gib, origin = mem
    w = gib * DRAM_W_PER_GIB
    return DramEstimate(
        gib=gib,
        power_w=w,
        rel_uncertainty=REL_UNCERTAINTY_DRAM,
        assumptions=(
            f"{gib:.3g} GiB ({origin}) x {DRAM_W_PER_GIB} W/GiB (Cloud Carbon Footprint) = "
            f"{w:.3g} W constant; +/-{REL_UNCERTAINTY_DRAM:.0%}"
        ),
    ), ""
