"""Results: what a meter, a phase or a call measured (energies in joules, time in seconds,
power in watts, carbon in grams CO2e), and the faults that touched it."""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional, Tuple

from . import _carbon
from ._baseline import Baseline
from ._records import json_number
from ._runtime import Runtime


class NothingMeasuredWarning(UserWarning):
    """No domain can be measured or estimated here: energies are NaN."""


class Measurement:
    """Energy of one window (a meter, a phase summed over its repeats, or a call).

    Energies in joules, time in seconds, power in watts, carbon in grams CO2e.
    """

    def __init__(
        self,
        *,
        name: Optional[str],
        kind: str,
        duration_s: float,
        by_domain: Dict[str, float],
        uncertainty_by_domain: Dict[str, float],
        in_total: Dict[str, bool],
        measured: Dict[str, bool],
        settled: bool,
        intensity: _carbon.CarbonIntensity,
        pue: float,
        baseline: Optional[Baseline] = None,
        items: Optional[int] = None,
        count: int = 1,
        unavailable: Optional[Dict[str, str]] = None,
        t_start_unix: Optional[float] = None,
        assumptions: Optional[Dict[str, str]] = None,
        partial_domains: Optional[Dict[str, List[Dict[str, Any]]]] = None,
        distributed: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.name = name
        #: Per estimated domain, the model's assumptions in one line.
        self.assumptions = dict(assumptions or {})
        self.kind = kind
        self.duration_s = duration_s
        self.by_domain = by_domain
        self.uncertainty_by_domain = uncertainty_by_domain
        self.measured = measured
        self.settled = settled
        self.items = items
        self.count = count
        self.unavailable = unavailable or {}
        self.t_start_unix = t_start_unix
        #: Per domain, what went wrong inside the window and when (seconds from its start):
        #: a counter reset, reads further apart than a wrap, or reads that failed.
        self.partial_domains = partial_domains or {}
        #: For a job total (``greenml.meter(distributed=True)``): how it was combined, with
        #: per-host, per-rank and per-GPU breakdowns; None for one process's own measurement.
        self.distributed = distributed
        self._in_total = in_total
        counted = [d for d in by_domain if in_total.get(d)]
        if counted:
            self.energy_j = float(sum(by_domain[d] for d in counted))
            self.uncertainty_j = float(sum(uncertainty_by_domain[d] for d in counted))
        else:
            self.energy_j = math.nan
            self.uncertainty_j = math.nan
        self.intensity = intensity
        self.pue = pue
        self.co2e_g = (
            _carbon.co2e_g(self.energy_j, intensity, pue)
            if math.isfinite(self.energy_j)
            else math.nan
        )
        self.baseline = baseline
        if baseline is not None:
            self.net_by_domain: Optional[Dict[str, float]] = {
                d: e - baseline.power_w.get(d, 0.0) * duration_s for d, e in by_domain.items()
            }
            self.net_energy_j: Optional[float] = float(
                sum(v for d, v in self.net_by_domain.items() if in_total.get(d))
            )
        else:
            self.net_by_domain = None
            self.net_energy_j = None

    @property
    def mean_power_w(self) -> float:
        return self.energy_j / self.duration_s if self.duration_s > 0 else math.nan

    @property
    def energy_per_item_j(self) -> Optional[float]:
        return self.energy_j / self.items if self.items else None

    @property
    def in_total(self) -> Dict[str, bool]:
        """Per domain: whether it counts in ``energy_j`` (zones inside another do not)."""
        return {k: self._in_total.get(k, False) for k in self.by_domain}

    @property
    def partial(self) -> bool:
        """True when some domain's energy is incomplete near an instant (see partial_domains)."""
        return bool(self.partial_domains)

    @property
    def estimated_domains(self) -> List[str]:
        return [d for d, m in self.measured.items() if not m]

    @property
    def total_kind(self) -> str:
        """``"measured"``, ``"estimated"`` or ``"mixed"``: what the total adds up."""
        kinds = {self.measured.get(d, True) for d in self.by_domain if self._in_total.get(d)}
        if kinds == {False}:
            return "estimated"
        return "mixed" if len(kinds) > 1 else "measured"

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "type": self.kind,
            "name": self.name,
            "t_start_unix": self.t_start_unix,
            "duration_s": self.duration_s,
            "energy_j": _num(self.energy_j),
            "uncertainty_j": _num(self.uncertainty_j),
            "mean_power_w": _num(self.mean_power_w),
            "by_domain": {k: _num(v) for k, v in self.by_domain.items()},
            "uncertainty_by_domain": {k: _num(v) for k, v in self.uncertainty_by_domain.items()},
            "in_total": self.in_total,
            "measured": dict(self.measured),
            "estimated_domains": self.estimated_domains,
            "total_kind": self.total_kind,
            "assumptions": dict(self.assumptions),
            "unavailable": dict(self.unavailable),
            "settled": self.settled,
            "partial": self.partial,
            "partial_domains": self.partial_domains,
            "co2e_g": _num(self.co2e_g),
            "carbon": {
                "gco2e_per_kwh": self.intensity.gco2e_per_kwh,
                "region": self.intensity.region,
                "year": self.intensity.year,
                "source": self.intensity.source,
                "pue": self.pue,
            },
            "count": self.count,
        }
        if self.distributed is not None:
            d["distributed"] = self.distributed
        if self.items is not None:
            d["items"] = self.items
            d["energy_per_item_j"] = _num(self.energy_per_item_j)
        if self.net_energy_j is not None:
            d["net_energy_j"] = _num(self.net_energy_j)
            d["net_by_domain"] = {k: _num(v) for k, v in (self.net_by_domain or {}).items()}
            d["idle_power_w"] = dict(self.baseline.power_w) if self.baseline else None
        return d

    def __repr__(self) -> str:
        est = f", estimated: {self.estimated_domains}" if self.estimated_domains else ""
        return (
            f"Measurement({self.name!r}: {self.energy_j:.4g} J +/- {self.uncertainty_j:.2g} J "
            f"in {self.duration_s:.4g} s, {self.co2e_g:.3g} gCO2e{est})"
        )


#: A channel whose source states no maximum power is assumed to draw at most this (W).
_DEFAULT_MAX_POWER_W = 2000.0


def max_power_w(ch: Any) -> float:
    p = float(getattr(ch, "max_power_w", 0.0))
    return p if p > 0 else _DEFAULT_MAX_POWER_W


def partial_events(rt: Runtime, spans: List[Tuple[int, int]]) -> Dict[str, List[Dict[str, Any]]]:
    """Per domain, the sampler events that touch any of ``spans`` ([t0, t1] in ns): what, when
    (s from the first span's start) and how long a stretch of unknown energy lies inside them."""
    events = rt.events()
    if not events or not spans:
        return {}
    origin = spans[0][0]
    now = time.monotonic_ns()
    # A failure lasts from the last good reading until the channel reads again (or now).
    stretches = []
    failing: Dict[str, Any] = {}
    for ev in events:
        if ev.kind == "read_failed":
            failing[ev.domain] = ev
        elif ev.kind == "read_recovered":
            start = failing.pop(ev.domain, None)
            if start is not None:
                stretches.append(("read_failed", ev.domain, start.since_ns, ev.t_ns))
        else:
            stretches.append((ev.kind, ev.domain, ev.since_ns, ev.t_ns))
    stretches += [("read_failed", d, ev.since_ns, now) for d, ev in failing.items()]
    out: Dict[str, List[Dict[str, Any]]] = {}
    for kind, domain, a, b in stretches:
        overlap = sum(max(0, min(b, t1) - max(a, t0)) for t0, t1 in spans)
        if overlap <= 0:
            continue
        out.setdefault(domain, []).append(
            {
                "event": kind,
                "from_s": (a - origin) / 1e9,
                "to_s": (b - origin) / 1e9,
                "unknown_s": overlap / 1e9,
            }
        )
    return out


def _num(x: Optional[float]) -> Optional[float]:
    return json_number(None if x is None else float(x))
