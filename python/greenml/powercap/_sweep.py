"""Sweeping power limits: energy and time per step at each limit, the Pareto front, and the limit
that saves the most energy within a slowdown budget.

One cycle drives both :func:`sweep` (which calls the step function itself) and
:class:`~greenml.powercap.Tuner` (which is told about each step of a training loop): set a
limit, let it settle (``settle_s`` seconds, then ``warmup_steps`` steps not counted), then
measure ``steps_per_limit`` steps with a meter, and move to the next limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from .._errors import GreenmlError
from ._limits import LimitOutOfRange, PowercapError, PowerLimit
from ._safety import LimitGuard

#: Points in an ``auto`` grid.
AUTO_POINTS = 8
#: An ``auto`` grid for a RAPL zone (which reports no minimum) starts at this fraction of its
#: maximum: lower long-term limits can make a machine crawl.
RAPL_AUTO_LOW = 0.4

Limits = Union[str, Sequence[float]]


def auto_grid(lim: PowerLimit, points: int = AUTO_POINTS) -> List[float]:
    """``points`` limits evenly spaced over the domain's range, highest first, in whole watts,
    plus its default limit when it has one."""
    if lim.max_w is None:
        raise PowercapError(f"{lim.domain} reports no maximum limit, so no grid can be chosen")
    hi = lim.max_w
    lo = lim.min_w if lim.min_w is not None else RAPL_AUTO_LOW * hi
    step = (hi - lo) / max(1, points - 1)
    grid = {round(lo + k * step) for k in range(points)}
    grid = {min(max(w, math.ceil(lo)), math.floor(hi)) for w in grid}
    if lim.default_w is not None and lo <= lim.default_w <= hi:
        grid.add(lim.default_w)
    return sorted(grid, reverse=True)


def resolve_limits(limits: Limits, lim: PowerLimit) -> List[float]:
    """The limits to visit: ``"auto"`` or explicit watts, each checked against the domain's
    constraints before anything changes."""
    if isinstance(limits, str):
        if limits != "auto":
            raise GreenmlError(f"limits={limits!r}: give 'auto' or a list of watts")
        return auto_grid(lim)
    out = [float(w) for w in limits]
    if not out:
        raise GreenmlError("limits is empty: give 'auto' or at least one limit in watts")
    if len(set(out)) != len(out):
        raise GreenmlError(f"limits={out} repeats a value")
    for w in out:
        try:
            lim.check(w)
        except LimitOutOfRange as exc:
            raise LimitOutOfRange(f"limits={out}: {exc}") from None
    return out


@dataclass(frozen=True)
class LimitPoint:
    """Per-step energy (J) and time (s) measured at one limit. ``*_se`` are standard errors of
    the means; ``energy_bound_j`` is the meter's measurement bound per step."""

    limit_w: float
    steps: int
    energy_j: float
    energy_se_j: float
    energy_bound_j: float
    time_s: float
    time_se_s: float
    device_energy_j: float  # the capped domain's own energy per step (NaN if not measured)

    @property
    def power_w(self) -> float:
        return self.energy_j / self.time_s if self.time_s > 0 else math.nan


@dataclass(frozen=True)
class Choice:
    """The limit chosen from a sweep, with the expected saving and slowdown against the
    reference (the highest limit swept), each with its standard error."""

    limit_w: float
    reference_w: float
    saving: float  # fraction of energy per step saved
    saving_se: float
    slowdown: float  # fraction of time per step added
    slowdown_se: float
    objective: str  # "energy" or "cost(eta=...)"

    def __str__(self) -> str:
        return (
            f"{self.limit_w:g} W: {100 * self.saving:.1f}% +/- {100 * self.saving_se:.1f}% "
            f"energy per step saved for {100 * self.slowdown:+.1f}% +/- "
            f"{100 * self.slowdown_se:.1f}% time, against {self.reference_w:g} W"
        )


def _ratio(a: float, a_se: float, b: float, b_se: float) -> tuple:
    """a / b - 1 with its first-order standard error; NaN (unknown) when b is not positive."""
    if not b > 0:
        return math.nan, math.nan
    r = a / b
    return r - 1.0, r * math.sqrt((a_se / a) ** 2 + (b_se / b) ** 2) if a > 0 else math.nan


def _fraction(a: float, b: float) -> float:
    """a / b, NaN when b is not positive."""
    return a / b if b > 0 else math.nan


def choose(
    points: Sequence[LimitPoint],
    max_slowdown: Optional[float] = 0.05,
    cost: Optional[float] = None,
    max_power_w: Optional[float] = None,
) -> Choice:
    """The limit minimising energy per step (or, with ``cost=eta``, Zeus's cost
    ``eta * energy + (1 - eta) * max_power_w * time``) among those whose time per step, plus one
    standard error, stays within ``max_slowdown`` of the reference's (the highest limit; None =
    no budget)."""
    good = [p for p in points if p.steps > 0 and math.isfinite(p.energy_j) and p.time_s > 0]
    if not good:
        raise PowercapError("no limit has a measured step: nothing to choose from")
    ref = max(good, key=lambda p: p.limit_w)
    if cost is not None:
        if not 0.0 <= cost <= 1.0:
            raise GreenmlError(f"cost={cost!r}: give eta in [0, 1] (1 = energy only)")
        pmax = max_power_w if max_power_w is not None else ref.limit_w

        def objective(p: LimitPoint) -> float:
            return cost * p.energy_j + (1.0 - cost) * pmax * p.time_s

        name = f"cost(eta={cost:g})"
    else:

        def objective(p: LimitPoint) -> float:
            return p.energy_j

        name = "energy"
    budget = math.inf if max_slowdown is None else max_slowdown
    allowed = [
        p for p in good if p is ref or (p.time_s + p.time_se_s) <= (1.0 + budget) * ref.time_s
    ]
    best = min(allowed, key=lambda p: (objective(p), -p.limit_w))
    grow, grow_se = _ratio(best.energy_j, best.energy_se_j, ref.energy_j, ref.energy_se_j)
    slow, slow_se = _ratio(best.time_s, best.time_se_s, ref.time_s, ref.time_se_s)
    return Choice(best.limit_w, ref.limit_w, -grow, grow_se, slow, slow_se, name)


def pareto(points: Sequence[LimitPoint]) -> List[LimitPoint]:
    """The points no other beats on both energy and time per step, fastest first."""
    good = [p for p in points if p.steps > 0 and math.isfinite(p.energy_j)]
    front = [
        p
        for p in good
        if not any(
            q.energy_j <= p.energy_j
            and q.time_s <= p.time_s
            and (q.energy_j < p.energy_j or q.time_s < p.time_s)
            for q in good
        )
    ]
    return sorted(front, key=lambda p: p.time_s)


class SweepResult:
    """What :func:`sweep` measured: ``table`` (pandas DataFrame, one row per limit),
    ``pareto``, ``choose(max_slowdown, cost)``, ``chosen`` (for the sweep's own budget),
    ``plot(path)``, ``save(directory)``."""

    def __init__(
        self,
        device: str,
        points: List[LimitPoint],
        limit: PowerLimit,
        max_slowdown: Optional[float] = 0.05,
        cost: Optional[float] = None,
        command: Optional[str] = None,
    ) -> None:
        self.device = device
        self.points = points
        self.limit = limit
        self.max_slowdown = max_slowdown
        self.cost = cost
        self.command = command

    @property
    def reference_w(self) -> float:
        return max(p.limit_w for p in self.points if p.steps > 0)

    def choose(self, max_slowdown: Optional[float] = 0.05, cost: Optional[float] = None) -> Choice:
        return choose(self.points, max_slowdown, cost, self.limit.max_w)

    @property
    def chosen(self) -> Choice:
        """The choice for the budget and cost the sweep was given."""
        return self.choose(self.max_slowdown, self.cost)

    @property
    def best_energy_w(self) -> float:
        """The limit with the least energy per step, whatever the slowdown."""
        return self.choose(None).limit_w

    @property
    def pareto(self) -> List[LimitPoint]:
        return pareto(self.points)

    @property
    def table(self) -> Any:
        import pandas as pd

        front = {p.limit_w for p in self.pareto}
        ref = next(p for p in self.points if p.limit_w == self.reference_w)
        rows = []
        for p in self.points:
            rows.append(
                {
                    "limit_w": p.limit_w,
                    "steps": p.steps,
                    "energy_j": p.energy_j,
                    "energy_se_j": p.energy_se_j,
                    "energy_bound_j": p.energy_bound_j,
                    "time_s": p.time_s,
                    "time_se_s": p.time_se_s,
                    "power_w": p.power_w,
                    "device_energy_j": p.device_energy_j,
                    "energy_saving": 1.0 - _fraction(p.energy_j, ref.energy_j),
                    "slowdown": _fraction(p.time_s, ref.time_s) - 1.0,
                    "pareto": p.limit_w in front,
                }
            )
        return pd.DataFrame(rows)

    def to_dict(self) -> Dict[str, Any]:
        from .._records import json_numbers

        c = self.chosen
        return json_numbers(
            {
                "device": self.device,
                "command": self.command,
                "reference_w": self.reference_w,
                "max_slowdown": self.max_slowdown,
                "cost": self.cost,
                "chosen_w": c.limit_w,
                "saving": c.saving,
                "saving_se": c.saving_se,
                "slowdown": c.slowdown,
                "slowdown_se": c.slowdown_se,
                "best_energy_w": self.best_energy_w,
                "pareto_w": [p.limit_w for p in self.pareto],
                "limit": self.limit.to_dict(),
                "points": self.table.to_dict(orient="records"),
            }
        )

    def plot(self, path: Union[str, Path]) -> Path:
        """Energy and time per step against the limit (error bars: one standard error), and
        energy against time with the Pareto front and the chosen limit; written to ``path``."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        t = self.table
        c = self.chosen
        fig, (ax1, ax3) = plt.subplots(1, 2, figsize=(11, 4.2))
        ax1.errorbar(
            t.limit_w, t.energy_j, yerr=t.energy_se_j, fmt="o-", color="C0", label="energy per step"
        )
        ax1.set_xlabel("power limit (W)")
        ax1.set_ylabel("energy per step (J)", color="C0")
        ax2 = ax1.twinx()
        ax2.errorbar(
            t.limit_w, t.time_s, yerr=t.time_se_s, fmt="s--", color="C1", label="time per step"
        )
        ax2.set_ylabel("time per step (s)", color="C1")
        ax1.axvline(c.limit_w, color="C2", lw=1, ls=":")
        ax1.set_title(f"{self.device}: chosen {c.limit_w:g} W")
        front = t[t.pareto].sort_values("time_s")
        ax3.errorbar(
            t.time_s,
            t.energy_j,
            xerr=t.time_se_s,
            yerr=t.energy_se_j,
            fmt="o",
            color="0.5",
            label="limits",
        )
        ax3.plot(front.time_s, front.energy_j, "-", color="C3", label="Pareto front")
        for _, r in t.iterrows():
            ax3.annotate(
                f"{r.limit_w:g}",
                (r.time_s, r.energy_j),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        sel = t[t.limit_w == c.limit_w]
        ax3.plot(
            sel.time_s,
            sel.energy_j,
            "*",
            ms=14,
            color="C2",
            label=f"chosen ({100 * c.saving:.1f}% saved, {100 * c.slowdown:+.1f}% time)",
        )
        ax3.set_xlabel("time per step (s)")
        ax3.set_ylabel("energy per step (J)")
        ax3.legend(fontsize=8)
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out

    def save(self, directory: Union[str, Path]) -> Path:
        """Writes ``sweep.csv``, ``sweep.json`` and ``sweep.png`` into ``directory``."""
        import json

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(d / "sweep.csv", index=False)
        (d / "sweep.json").write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        self.plot(d / "sweep.png")
        return d

    def __repr__(self) -> str:
        return f"SweepResult({self.device}, {len(self.points)} limits, chosen {self.chosen})"


# ------------------------------------------------------------------------------------ the cycle


class Cycle:
    """Visits each limit in turn, driven by step boundaries: ``start()``, then ``step()`` after
    every step until ``done``. Uses ``guard`` to change limits (it restores them)."""

    def __init__(
        self,
        guard: LimitGuard,
        limit: PowerLimit,
        limits: List[float],
        steps_per_limit: int,
        warmup_steps: int,
        settle_s: float,
        runtime: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if steps_per_limit < 2:
            raise GreenmlError(
                f"steps_per_limit={steps_per_limit}: give at least 2 (a spread needs two steps)"
            )
        if warmup_steps < 0 or settle_s < 0:
            raise GreenmlError("warmup_steps and settle_s must be >= 0")
        self.guard = guard
        self.limit = limit
        self.limits = limits
        self.steps_per_limit = steps_per_limit
        self.warmup_steps = warmup_steps
        self.settle_s = settle_s
        self._runtime = runtime
        self._sleep = sleep
        self._k = -1  # index of the limit in force
        self._left = 0  # warmup steps left, then measured steps left
        self._meter: Any = None
        self._meters: List[Any] = []

    @property
    def done(self) -> bool:
        return self._k >= len(self.limits)

    @property
    def current_w(self) -> Optional[float]:
        return self.limits[self._k] if 0 <= self._k < len(self.limits) else None

    def start(self) -> None:
        from .._runtime import default_runtime

        # The sampler runs (at full rate) before the first limit settles, so the first limit's
        # steps are measured like the others, not from a sampler just started.
        rt = self._runtime if self._runtime is not None else default_runtime()
        rt.ensure_started()
        rt.edge(time.monotonic_ns())
        self._next()

    def _next(self) -> None:
        if self._meter is not None:
            self._meter.stop()
            # Settle the window (wait for the counter update after its end) before the limit
            # changes: a tail interpolated across the change would be priced at the next limit.
            self._meter.result(wait=True)
            self._meters.append(self._meter)
            self._meter = None
        self._k += 1
        if self.done:
            return
        self.guard.set(self.limit.domain, self.limits[self._k])
        if self.settle_s > 0 and not self.done:
            self._sleep(self.settle_s)
        if self.done:  # aborted meanwhile (a signal restored the limit)
            return
        self._left = self.warmup_steps
        if self._left == 0:
            self._begin_measuring()

    def _begin_measuring(self) -> None:
        from .._meter import Meter

        self._meter = Meter(
            f"powercap {self.limit.domain} {self.limits[self._k]:g} W", runtime=self._runtime
        ).start()
        self._left = self.steps_per_limit

    def step(self) -> None:
        """One step ended."""
        if self.done or self._k < 0:
            return
        self._left -= 1
        if self._meter is None:
            if self._left <= 0:
                self._begin_measuring()
            return
        self._meter.step()
        if self._left <= 0:
            self._next()

    def abort(self) -> None:
        if self._meter is not None:
            self._meter.stop()
            self._meter = None
        self._k = len(self.limits)

    def points(self) -> List[LimitPoint]:
        """The measured limits (waits for the last counter updates)."""
        out = []
        for w, m in zip(self.limits, self._meters):
            s = m.steps
            n = s.count
            res = m.result(wait=True)
            dev = res.by_domain.get(self.limit.domain, math.nan)
            out.append(
                LimitPoint(
                    limit_w=w,
                    steps=n,
                    energy_j=s.mean_j,
                    energy_se_j=s.std_j / math.sqrt(n) if n > 1 else math.nan,
                    energy_bound_j=s.uncertainty_j / n if n else math.nan,
                    time_s=s.mean_duration_s,
                    time_se_s=s.duration.std / math.sqrt(n) if n > 1 else math.nan,
                    device_energy_j=dev / n if n else math.nan,
                )
            )
        return out


def sweep(
    step_fn: Callable[[], Any],
    limits: Limits = "auto",
    steps_per_limit: int = 20,
    warmup_steps: int = 3,
    device: str = "gpu:0",
    settle_s: float = 0.5,
    *,
    max_slowdown: Optional[float] = 0.05,
    cost: Optional[float] = None,
    state_path: Optional[Union[str, Path]] = None,
    runtime: Any = None,
) -> SweepResult:
    """Calls ``step_fn()`` repeatedly under each power limit of ``device`` and measures energy
    and time per step.

    For each limit (``"auto"``: evenly over the device's range, highest first, with its default
    limit; or explicit watts, all checked before anything changes): set it, wait ``settle_s``
    seconds, run ``warmup_steps`` uncounted steps, then ``steps_per_limit`` measured ones
    through a meter (energy: every domain the meter counts, the device's own in
    ``device_energy_j``). The original limit is restored at the end and on every exit path
    (see :class:`LimitGuard`). Returns a :class:`SweepResult`; ``max_slowdown`` and ``cost``
    set its ``chosen`` limit.
    """
    from ._limits import limit_of

    guard = LimitGuard(state_path)
    lim = limit_of(device, guard.settings)
    grid = resolve_limits(limits, lim)
    lim.check(grid[0])  # privileges, before any change
    cycle = Cycle(guard, lim, grid, steps_per_limit, warmup_steps, settle_s, runtime)
    with guard:
        try:
            cycle.start()
            while not cycle.done:
                step_fn()
                cycle.step()
        finally:
            cycle.abort()
    return SweepResult(device, cycle.points(), lim, max_slowdown, cost)
