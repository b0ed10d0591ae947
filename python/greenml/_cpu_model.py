"""The ``cpu:estimated`` domain: a TDP x utilisation model for when no RAPL counter is readable.

The model
---------
When no RAPL energy counter can be read (no powercap tree, no permission, a VM, a
non-Intel/AMD platform), greenml still reports CPU energy, flagged as *estimated*::

    P_cpu(t) [W] = TDP_W x sockets x u(t)

* ``TDP_W`` is the thermal design power of one CPU package, in watts, from the
  shipped table ``data/cpu_tdp.csv`` (matched against ``/proc/cpuinfo``'s
  ``model name``), or from the environment variable ``GREENML_CPU_TDP_W``, which
  overrides the table. Both are *per socket* (per package), as vendors list them.
* ``sockets`` is the number of distinct ``physical id`` values in ``/proc/cpuinfo``
  (1 where the file shows none, as many VMs and single-socket machines do).
* ``u(t)`` is the **machine-wide** busy fraction in ``[0, 1]`` over the sampling
  interval, from the aggregate ``cpu`` line of ``/proc/stat``::

      busy  = user + nice + system + irq + softirq
      total = busy + idle + iowait + steal
      u     = delta(busy) / delta(total)

  Machine-wide rather than per-process, because the package draws power for
  every process on the machine (data loaders, the Python interpreter's helpers,
  other jobs), and a package counter -- which this model stands in for -- sees
  all of it; a per-process share would silently under-count and would not be
  comparable with a machine that has RAPL. ``guest`` and ``guest_nice`` are not
  added (the kernel already counts them inside ``user`` and ``nice``). ``steal``
  is time the hypervisor gave to someone else: it counts in the total but not as
  busy, so ``u`` is the share of wall-clock CPU time spent on this machine's work.

There is **no idle term**: at ``u = 0`` the model says 0 W, although a real
package idles at a fraction of its TDP, and no figure for that fraction is
invented here. The model is therefore a rough *upper* bound on the dynamic part
and a lower bound on nothing; treat ``cpu:estimated`` as an order of magnitude.
Known limits: TDP is a thermal rating, not a measured power (turbo can exceed it,
light loads stay well below it), and on a VM the TDP of the whole host chip is
applied to the vCPUs the guest sees, which over-estimates a small slice of a big
chip; set ``GREENML_CPU_TDP_W`` to a share that suits the slice in that case.

TDP matching
------------
``/proc/cpuinfo`` says e.g. ``Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz`` or
``AMD EPYC 7763 64-Core Processor``, the table ``Intel Xeon Gold 6248`` and
``AMD EPYC 7763``. Both sides are normalised (lower case; ``(R)``, ``(TM)`` and
other parenthesised notes, ``CPU``, ``Processor``, ``APU``, ``Mobile``, ``@ x.xxGHz``,
``N-Core``, ``Nth Gen``, ``with Radeon Graphics`` and vendor words removed), then
split into *words* (no digit) and *model tokens* (with a digit, e.g. ``i7``,
``10700k``, ``e5``, ``2686``, ``v4``). The model tokens joined together form the
*model key* (``i710700k``, ``e52686v4``), which is insensitive to ``E3-1230`` vs
``E31230``. A table row is a candidate only if its model key equals the query's
and its vendor (Intel, AMD, ...) does not contradict the query's:

1. ``exact``: the normalised names are equal, or the row's words are all among
   the query's (the most specific such row wins).
2. ``fuzzy``: otherwise, the candidate whose normalised name is closest by
   :mod:`difflib` with a ratio of at least 0.85.

A different model number never matches (``8375C`` is not ``8373C``), and rows
that tie with different TDPs give no match: ``None`` is returned rather than a
wrong guess, and the caller reports why no estimate is possible.
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
    "ENV_CPU_TDP_W",
    "CpuPowerModel",
    "CpuTimes",
    "ProcStatReader",
    "TdpMatch",
    "estimate_available",
    "lookup_tdp_w",
    "read_cpu_model_name",
    "read_cpu_socket_count",
    "tdp_from_env",
]

ENV_CPU_TDP_W = "GREENML_CPU_TDP_W"
"""Environment variable: TDP of one CPU package in watts; overrides the table."""

_TDP_CSV = "cpu_tdp.csv"
_FUZZY_CUTOFF = 0.85


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


# --------------------------------------------------------------------------- /proc/stat


class CpuTimes(NamedTuple):
    """Aggregate CPU times from the ``cpu`` line of /proc/stat, in jiffies (USER_HZ ticks)."""

    user: int
    nice: int
    system: int
    idle: int
    iowait: int
    irq: int
    softirq: int
    steal: int


class ProcStatReader:
    """Reads the machine-wide CPU time counters of ``/proc/stat``.

    Args:
        path: the stat file; injectable so tests use a temporary file.
    """

    def __init__(self, path: str = "/proc/stat") -> None:
        self.path = path

    def read(self) -> CpuTimes:
        """The current aggregate ``cpu`` line (fields missing on old kernels read as 0).

        Raises:
            OSError: the file cannot be read.
            ValueError: the file has no aggregate ``cpu`` line.
        """
        with open(self.path, encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] == "cpu":
                    values = [int(v) for v in parts[1:9]]
                    values += [0] * (8 - len(values))
                    return CpuTimes(*values)
        raise ValueError(f"{self.path} has no aggregate 'cpu' line")

    @staticmethod
    def busy_fraction_between(a: CpuTimes, b: CpuTimes) -> float:
        """Busy fraction in [0, 1] of all CPUs between readings ``a`` (earlier) and ``b``.

        ``busy = user + nice + system + irq + softirq``; the total adds ``idle``,
        ``iowait`` and ``steal``. A counter that went backwards (iowait can) counts
        as 0; with no elapsed ticks the result is 0.0.
        """
        d = [max(0, y - x) for x, y in zip(a, b)]
        dd = CpuTimes(*d)
        busy = dd.user + dd.nice + dd.system + dd.irq + dd.softirq
        total = busy + dd.idle + dd.iowait + dd.steal
        if total <= 0:
            return 0.0
        return min(1.0, busy / total)


# --------------------------------------------------------------------------- the model


class CpuPowerModel:
    """``cpu:estimated`` power: ``tdp_w x sockets x busy fraction`` (see the module docstring).

    Args:
        tdp_w: TDP of one package in watts (> 0).
        sockets: number of packages (>= 1).
        stat_path: the /proc/stat file to read utilisation from.
        match: where ``tdp_w`` came from, kept for reports; optional.

    The first reading is taken here, so the first :meth:`sample` covers the time
    since construction.

    Raises:
        ConfigError: ``tdp_w`` or ``sockets`` is out of range.
        OSError, ValueError: ``stat_path`` cannot be read or parsed.
    """

    def __init__(
        self,
        tdp_w: float,
        sockets: int = 1,
        stat_path: str = "/proc/stat",
        *,
        match: TdpMatch | None = None,
    ) -> None:
        if not math.isfinite(tdp_w) or tdp_w <= 0:
            raise ConfigError(f"tdp_w={tdp_w!r}: give the TDP of one CPU package in watts (> 0).")
        if int(sockets) != sockets or sockets < 1:
            raise ConfigError(f"sockets={sockets!r}: give the number of CPU packages (>= 1).")
        self.tdp_w = float(tdp_w)
        self.sockets = int(sockets)
        self.match = match
        self._reader = ProcStatReader(stat_path)
        self._prev = self._reader.read()
        self._last: tuple[float, float] = (0.0, 0.0)

    @property
    def max_power_w(self) -> float:
        """Power at full utilisation, in watts: ``tdp_w x sockets``."""
        return self.tdp_w * self.sockets

    def sample(self) -> tuple[float, float]:
        """``(busy_fraction, watts)`` averaged since the previous call (or construction).

        When no tick has elapsed since then (calls closer than one jiffy, usually
        10 ms), the previous result is returned and the interval is carried over
        to the next call.
        """
        now = self._reader.read()
        elapsed = sum(max(0, y - x) for x, y in zip(self._prev, now))
        if elapsed <= 0:
            return self._last
        busy = ProcStatReader.busy_fraction_between(self._prev, now)
        self._prev = now
        self._last = (busy, busy * self.max_power_w)
        return self._last

    def __repr__(self) -> str:
        return (
            f"CpuPowerModel(tdp_w={self.tdp_w:g}, sockets={self.sockets}, "
            f"stat_path={self._reader.path!r})"
        )


def estimate_available(
    env: Mapping[str, str] | None = None,
    cpuinfo_path: str = "/proc/cpuinfo",
    stat_path: str = "/proc/stat",
) -> tuple[CpuPowerModel | None, str]:
    """Build the CPU power model if this machine allows even an estimate.

    The TDP comes from ``GREENML_CPU_TDP_W`` when set, else from the table via the
    cpuinfo model name; it is multiplied by the socket count.

    Args:
        env: environment to read ``GREENML_CPU_TDP_W`` from (default ``os.environ``).
        cpuinfo_path: the cpuinfo file (model name and sockets).
        stat_path: the stat file (utilisation).

    Returns:
        ``(model, description)`` when an estimate is possible, ``(None, reason)``
        otherwise; the reason says what to do.

    Raises:
        ConfigError: ``GREENML_CPU_TDP_W`` is set to an invalid value.
    """
    match = tdp_from_env(env)
    model_name = read_cpu_model_name(cpuinfo_path)
    if match is None:
        if model_name is None:
            return None, (
                f"no CPU 'model name' in {cpuinfo_path}, so its TDP is unknown; "
                f"set {ENV_CPU_TDP_W}=<watts> to enable an estimate"
            )
        match = lookup_tdp_w(model_name)
        if match is None:
            return None, (
                f"CPU {model_name!r} has no unambiguous match in greenml's TDP table; "
                f"set {ENV_CPU_TDP_W}=<watts> to enable an estimate (the TDP of one CPU package)"
            )
    sockets = read_cpu_socket_count(cpuinfo_path)
    try:
        model = CpuPowerModel(match.tdp_w, sockets, stat_path, match=match)
    except (OSError, ValueError) as exc:
        return None, (
            f"cannot read CPU utilisation from {stat_path} ({exc}); the estimate needs a "
            f"readable Linux /proc/stat"
        )
    if match.method == "env":
        origin = f"from {ENV_CPU_TDP_W}"
    else:
        origin = f"from the table row {match.matched_name!r} ({match.method} match"
        origin += f" for {model_name!r})"
    plural = "s" if sockets != 1 else ""
    return model, (
        f"estimated as TDP x utilisation: {match.tdp_w:g} W x {sockets} socket{plural} "
        f"{origin}, machine-wide utilisation from {stat_path}"
    )
