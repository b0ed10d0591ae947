"""Idle power per domain, measured once and subtracted from later results on request."""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional

from ._errors import GreenmlError, SensorError
from ._runtime import Runtime, default_runtime


class Baseline:
    """Idle power per domain (W), measured by :func:`idle_baseline`."""

    def __init__(self, power_w: Dict[str, float], duration_s: float, in_total: Dict[str, bool]):
        self.power_w = dict(power_w)
        self.duration_s = duration_s
        self._in_total = dict(in_total)

    @property
    def total_power_w(self) -> float:
        return float(sum(p for d, p in self.power_w.items() if self._in_total.get(d, False)))

    def to_dict(self) -> Dict[str, Any]:
        return {"power_w": dict(self.power_w), "duration_s": self.duration_s}

    def __repr__(self) -> str:
        parts = ", ".join(f"{d}={p:.2f} W" for d, p in self.power_w.items())
        return f"Baseline({parts}; over {self.duration_s:.1f} s)"


def idle_baseline(seconds: float = 10.0, *, runtime: Optional[Runtime] = None) -> Baseline:
    """Measures idle power per domain over ``seconds`` (keep the machine quiet meanwhile).

    The baseline is remembered by the runtime, so later ``meter(subtract_idle=True)`` uses it.
    """
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise GreenmlError(f"seconds={seconds!r}: give a positive idle duration, e.g. 10")
    rt = runtime if runtime is not None else default_runtime()
    from ._meter import Meter  # a baseline is measured by a meter, which may use a baseline

    m = Meter("idle", runtime=rt, sync_cuda=True)
    with m:
        time.sleep(seconds)
    r = m.result(wait=True)
    if not rt.channels:
        raise SensorError(
            "no domain can be measured or estimated here, so there is no idle power to measure; "
            "run `greenml sensors` to see why"
        )
    power = {d: e / r.duration_s for d, e in r.by_domain.items()}
    b = Baseline(power, r.duration_s, {ch.domain: ch.in_total for ch in rt.channels})
    rt.baseline = b
    return b
