"""``@greenml.measure``: energy of every call of a function.

A call costs two clock reads, one ring-index read and an append; energies are resolved in
batches (when enough calls are pending, when their samples are about to leave the ring, or when
statistics are read), so the decorated function runs at full speed.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import math
import os
import threading
import warnings
import weakref
from time import monotonic_ns
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar, Union, overload

import numpy as np

from . import _carbon
from ._cuda import sync_cuda as _sync_cuda
from ._records import RecordLog, new_run_id
from ._runtime import Runtime, default_runtime
from ._steps import Reservoir
from ._windows import PendingWindows

F = TypeVar("F", bound=Callable[..., Any])

_live: "weakref.WeakSet[CallStats]" = weakref.WeakSet()


class CallStats:
    """Aggregate energy of the calls of one measured function (joules, seconds)."""

    def __init__(
        self,
        name: str,
        rt_getter: Callable[[], Runtime],
        log: Optional[str],
        sync_cuda: bool,
        region: Optional[str],
        carbon_intensity: Optional[float],
        pue: float,
        max_records: int,
    ) -> None:
        self.name = name
        self._rt_getter = rt_getter
        self._rt: Optional[Runtime] = None
        self._log = RecordLog(log) if log else None
        self._sync = sync_cuda
        self._region = region
        self._carbon_intensity = carbon_intensity
        # Validated now (a bad option fails at decoration); resolved again, from the runtime's
        # environment, once the runtime is known.
        self._intensity = _carbon.resolve_intensity(region, carbon_intensity)
        self._pue = pue
        _carbon.co2e_g(0.0, self._intensity, pue)
        self._lock = threading.Lock()
        self._pending: Optional[PendingWindows] = None
        self._mask = np.zeros(0, dtype=bool)
        self._reservoir = Reservoir(max_records)
        self._max = max_records
        self._calls = 0
        self._total_j = 0.0
        self._total_s = 0.0
        self._uncertainty_j = 0.0
        self.errors = 0
        self._run_id = new_run_id()
        _live.add(self)

    def runtime(self) -> Runtime:
        """The runtime, started (again after a fork or a stop) if it is not running."""
        rt = self._rt
        if rt is not None and not rt.is_running():
            rt.ensure_started()
        if rt is None:
            with self._lock:
                if self._rt is None:
                    rt = self._rt_getter()
                    rt.ensure_started()
                    self._pending = PendingWindows(rt, self._resolved)
                    if rt.settings.env is not None:
                        self._intensity = _carbon.resolve_intensity(
                            self._region, self._carbon_intensity, env=rt.settings.env
                        )
                    self._mask = np.array([c.in_total for c in rt.channels], dtype=bool)
                    self._rt = rt
            rt = self._rt
        return rt

    def flush(self, final: bool = True) -> None:
        """Resolves pending calls (waiting for the last counter updates when ``final``)."""
        if self._pending is not None:
            self._pending.flush(final=final)

    def _resolved(self, t0: np.ndarray, t1: np.ndarray, res: Any) -> None:
        rt = self._rt
        assert rt is not None
        mask = self._mask
        n = t0.size
        e = res.energy_j[:, mask].sum(axis=1) if mask.any() else np.full(n, math.nan)
        u = res.uncertainty_j[:, mask].sum(axis=1) if mask.any() else np.full(n, math.nan)
        d = (t1 - t0) / 1e9
        with self._lock:
            self._calls += n
            self._total_j += float(e.sum())
            self._total_s += float(d.sum())
            self._uncertainty_j += float(u.sum())
            self._reservoir.add(e, d)  # percentiles over all calls, not the first ones
        if self._log is not None:
            domains = [c.domain for c in rt.channels]
            measured = {c.domain: c.measured for c in rt.channels}
            # A modelled domain's assumptions travel with each record that reports it.
            extra = {"assumptions": {c.domain: c.detail for c in rt.channels if not c.measured}}
            if not extra["assumptions"]:
                extra = {}
            settled = res.settled.all(axis=1)
            for k in range(n):
                energy = float(e[k])
                ok = math.isfinite(energy)
                self._log.write(
                    {
                        "type": "call",
                        "name": self.name,
                        "run_id": self._run_id,
                        "pid": os.getpid(),
                        "duration_s": float(d[k]),
                        "energy_j": energy if ok else None,
                        "uncertainty_j": float(u[k]) if ok else None,
                        "by_domain": {
                            dom: float(res.energy_j[k, i]) for i, dom in enumerate(domains)
                        },
                        "measured": measured,
                        "co2e_g": _carbon.co2e_g(energy, self._intensity, self._pue)
                        if ok
                        else None,
                        "settled": bool(settled[k]),
                        **extra,
                    }
                )

    # Reading a statistic resolves every pending call first, so it is always complete.
    calls = property(lambda self: self._fresh("_calls"), doc="Calls measured (raised included).")
    total_j = property(lambda self: self._fresh("_total_j"), doc="Energy of all calls (J).")
    total_s = property(lambda self: self._fresh("_total_s"), doc="Wall time of all calls (s).")
    uncertainty_j = property(lambda self: self._fresh("_uncertainty_j"), doc="Bound (J).")

    def _fresh(self, attr: str) -> Any:
        self.flush()
        return getattr(self, attr)

    def snapshot(self) -> Tuple[int, int, float, float]:
        """(calls, errors, energy_j, duration_s) of the calls resolved so far, without waiting
        for the counter updates of the others (a later snapshot counts them); thread-safe."""
        self.flush(final=False)
        with self._lock:
            return self._calls, self.errors, self._total_j, self._total_s

    @property
    def mean_j(self) -> float:
        self.flush()
        return self.total_j / self.calls if self.calls else math.nan

    def percentile_j(self, q: float) -> float:
        """Percentile ``q`` (0-100) of energy per call, from a uniform sample of at most
        ``max_records`` of all the calls (not the first ones: no warm-up bias)."""
        self.flush()
        return self._reservoir.percentile(q)

    @property
    def co2e_g(self) -> float:
        self.flush()
        return _carbon.co2e_g(self.total_j, self._intensity, self._pue) if self.calls else 0.0

    def to_dict(self) -> Dict[str, Any]:
        self.flush()
        return {
            "name": self.name,
            "calls": self.calls,
            "errors": self.errors,
            "total_j": self.total_j,
            "total_s": self.total_s,
            "mean_j": self.total_j / self.calls if self.calls else None,
            "p50_j": self.percentile_j(50) if self.calls else None,
            "p90_j": self.percentile_j(90) if self.calls else None,
            "p99_j": self.percentile_j(99) if self.calls else None,
            "uncertainty_j": self.uncertainty_j,
            "co2e_g": self.co2e_g,
        }

    def __repr__(self) -> str:
        d = self.to_dict()
        return f"CallStats({self.name!r}: {d['calls']} calls, {d['total_j']:.4g} J)"


_warned_bookkeeping = False


def _bookkeeping_failed(exc: BaseException) -> None:
    """greenml's own failure around a call: warned once, never raised into the call."""
    global _warned_bookkeeping
    if not _warned_bookkeeping:
        _warned_bookkeeping = True
        warnings.warn(
            f"greenml could not measure a call ({exc!r}); the function ran and returned as "
            "usual, the call is not counted (warned once)",
            RuntimeWarning,
            stacklevel=3,
        )


def _call_begins(stats: CallStats) -> Optional[tuple]:
    """The start of one measured call: (runtime, ring index, t0, full-rate demand) or None."""
    try:
        rt = stats._rt
        if rt is None or not rt.is_running():
            rt = stats.runtime()
        if stats._sync:
            _sync_cuda()
        idx = rt.sampler.head - 1
        t0 = monotonic_ns()
        rt.edge(t0)
        demand = rt.needs_full_rate_in_windows
        if demand:
            rt.sampler.add_demand(1)
        return rt, idx, t0, demand
    except Exception as exc:  # noqa: BLE001 - see _bookkeeping_failed
        _bookkeeping_failed(exc)
        return None


def _call_ends(stats: CallStats, begun: Optional[tuple]) -> None:
    if begun is None:
        return
    try:
        rt, idx, t0, demand = begun
        if stats._sync:
            _sync_cuda()
        if demand:
            rt.sampler.add_demand(-1)
        t1 = monotonic_ns()
        rt.edge(t1)
        stats._pending.add(t0, t1, idx, rt.sampler.head)  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - see _bookkeeping_failed
        _bookkeeping_failed(exc)


def _wrap(func: F, stats: CallStats) -> F:
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            begun = _call_begins(stats)
            try:
                return await func(*args, **kwargs)
            except BaseException:
                stats.errors += 1
                raise
            finally:
                _call_ends(stats, begun)

        async_wrapper.energy = stats  # type: ignore[attr-defined]
        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        begun = _call_begins(stats)
        try:
            return func(*args, **kwargs)
        except BaseException:
            stats.errors += 1
            raise
        finally:
            _call_ends(stats, begun)

    wrapper.energy = stats  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


@overload
def measure(func: F) -> F: ...
@overload
def measure(
    name: Optional[str] = None,
    *,
    log: Optional[str] = None,
    sync_cuda: bool = True,
    region: Optional[str] = None,
    carbon_intensity: Optional[float] = None,
    pue: float = 1.0,
    runtime: Optional[Runtime] = None,
    max_records: int = 100_000,
) -> Callable[[F], F]: ...


def measure(  # type: ignore[misc]
    func_or_name: Union[Callable[..., Any], str, None] = None,
    *,
    log: Optional[str] = None,
    sync_cuda: bool = True,
    region: Optional[str] = None,
    carbon_intensity: Optional[float] = None,
    pue: float = 1.0,
    runtime: Optional[Runtime] = None,
    max_records: int = 100_000,
) -> Any:
    """Measures every call of a function: ``@greenml.measure`` or ``@greenml.measure("infer",
    log="energy.jsonl")``. Works on plain and ``async`` functions and on methods. The wrapped
    function gains ``.energy``, a :class:`CallStats` (calls, total_j, mean_j, percentile_j())."""

    def decorate(func: F, name: Optional[str]) -> F:
        getter = (lambda: runtime) if runtime is not None else default_runtime
        stats = CallStats(
            name or getattr(func, "__qualname__", repr(func)),
            getter,
            log,
            sync_cuda,
            region,
            carbon_intensity,
            pue,
            max_records,
        )
        return _wrap(func, stats)

    if callable(func_or_name):
        return decorate(func_or_name, None)
    return lambda func: decorate(func, func_or_name)


def _forget_in_child() -> None:
    # Calls made before a fork belong to the parent, which records and counts them; the child
    # starts with none pending, none counted, a run id of its own and locks nobody holds.
    for s in list(_live):
        s._lock = threading.Lock()
        if s._pending is not None:
            s._pending = PendingWindows(s._rt, s._resolved) if s._rt is not None else None
        s._run_id = new_run_id()
        s._calls, s._total_j, s._total_s, s._uncertainty_j, s.errors = 0, 0.0, 0.0, 0.0, 0
        s._reservoir = Reservoir(s._max)


os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def _flush_all() -> None:
    for s in list(_live):
        try:
            s.flush()
        except Exception:  # noqa: BLE001 - never fail the interpreter's exit
            pass
