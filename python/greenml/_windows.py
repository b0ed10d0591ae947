"""From ring samples to window energies: the bridge between the sampler and the integrator.

A *window* is what a meter, a phase, a step or a decorated call measures: a start and an end
on the CLOCK_MONOTONIC timeline, the ring index at the start, and (for windows that may outlive
the ring's history) a copy of the newest sample at the start. Opening and closing a window costs
no I/O; energies are resolved later, in batches, from the samples around the window edges.
"""

from __future__ import annotations

import threading
import time
import warnings
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _integrate
from ._runtime import Runtime

# Whole-range reads up to this many samples; beyond it only the samples around each edge.
_CONTIGUOUS_READ_MAX = 20_000
# History read before each window start: more than the slowest GPU counter's update period.
_HISTORY_NS = 300_000_000
# Staleness bound of RAPL counters: they update about every 1 ms.
_RAPL_MAX_UPDATE_NS = 2_000_000
# A GPU energy counter updates every 20-100 ms; wait at most this long for the update that
# covers a window's end when settling.
_MAX_SETTLE_WAIT_NS = 250_000_000
# A window whose end is this much older than the newest sample is final even if no counter
# update followed it (a domain drawing no power never updates its counter).
SETTLE_HORIZON_NS = 500_000_000


# RAPL counters count in units of the hardware's energy unit (15.3-61 uJ), not of 1 uJ.
_RAPL_QUANTUM_J = 61e-6


def _resolution_j(ch: object) -> float:
    if ch.kind != "counter":
        return 0.0
    if ch.source == "rapl":
        return _RAPL_QUANTUM_J
    return float(ch.to_si)


@dataclass
class Window:
    """One measured interval. ``t1_ns`` is None while open."""

    t0_ns: int
    idx0: int
    start_row: Optional[Tuple[int, int, np.ndarray, np.ndarray]] = None
    t1_ns: Optional[int] = None
    idx1: Optional[int] = None


@dataclass
class Resolved:
    """Per-window, per-channel results (arrays of shape [windows, channels])."""

    energy_j: np.ndarray
    uncertainty_j: np.ndarray
    settled: np.ndarray
    short: np.ndarray

    def rows(self, sl: slice) -> "Resolved":
        """The results of a subset of the windows."""
        return Resolved(self.energy_j[sl], self.uncertainty_j[sl], self.settled[sl], self.short[sl])


@dataclass
class _Samples:
    index: np.ndarray
    t_ns: np.ndarray
    energy_j: np.ndarray  # [n, C] cumulative
    power_w: np.ndarray  # [n, C], NaN for counters
    channel_t_ns: np.ndarray  # [n, C] when each channel's source was read


_warned_short: set = set()


def open_window(rt: Runtime) -> Window:
    """Starts a window now. Where the machine has cheap counters (RAPL, the model) they are read
    synchronously and the window starts at that reading, so its edge is exact for them; slow
    counters (GPUs) are placed between ring samples. Otherwise it costs a clock read and one
    ring-slot copy (the start row). After a quiet spell, when the sampler was idling, every
    source is read once."""
    if rt.cheap_edges:
        idx, t0 = rt.sampler.edge_read()
        if rt.edge(t0):
            rt.sampler.read_now()
        return Window(t0_ns=t0, idx0=idx)
    t0 = time.monotonic_ns()
    if rt.edge(t0):
        row = rt.sampler.read_now()
    else:
        row = rt.sampler.latest()
    return Window(t0_ns=t0, idx0=row[0] if row is not None else 0, start_row=row)


def close_window(rt: Runtime, w: Window) -> None:
    if rt.cheap_edges:
        _, w.t1_ns = rt.sampler.edge_read()
    else:
        w.t1_ns = time.monotonic_ns()
    if rt.edge(w.t1_ns):
        rt.sampler.read_now()
    w.idx1 = rt.sampler.head


class WindowResolver:
    """Resolves windows of one runtime: reads the ring once per batch, integrates per channel."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.channels = rt.channels
        self._resolution = np.array([_resolution_j(c) for c in rt.channels])
        # A modelled domain's error is the model's (a relative bound), not the sampler's.
        self._model_rel = [float(getattr(c, "rel_uncertainty", 0.0)) for c in rt.channels]
        self._max_update = [
            float(_RAPL_MAX_UPDATE_NS) if c.source == "rapl" else None for c in rt.channels
        ]

    def counter_power_w(
        self,
        i: int,
        channel_t_ns: np.ndarray,
        energy_j: np.ndarray,
        at_ns: np.ndarray,
        span_ns: int,
    ) -> np.ndarray:
        """Mean power (W) of counter channel ``i`` over ``[at - span, at]`` for each ``at``, from
        the same curve its energies come from (each increment spread over its own update
        interval), so a trace agrees with the window energies. NaN where undefined."""
        fresh = np.ones(channel_t_ns.size, dtype=bool)
        fresh[1:] = channel_t_ns[1:] > channel_t_ns[:-1]  # edge samples repeat other sources
        t, e = channel_t_ns[fresh], energy_j[fresh]
        out = np.full(at_ns.size, np.nan)
        if t.size < 2:
            return out
        curve = _integrate.prepare(
            _integrate.Trace.counter(
                t,
                np.maximum.accumulate(e),
                resolution_j=float(self._resolution[i]),
                max_update_interval_ns=self._max_update[i],
            )
        )
        b = np.maximum(at_ns.astype(np.int64), t[0])
        a = np.maximum(b - int(span_ns), t[0])
        ok = b > a
        if ok.any():
            r = curve.window_arrays(a[ok], b[ok])
            out[ok] = r.energy_j / ((b[ok] - a[ok]) / 1e9)
        return out

    # -- reading ---------------------------------------------------------------------------

    def _read_range(self, start: int, stop: int) -> Optional[_Samples]:
        sampler = self.rt.sampler
        start = max(0, start)
        if stop <= start:
            return None
        idx, t, e, p, _nxt, _lost, ct = sampler.read_indexed(start, stop - start)
        if t.size == 0:
            return None
        return _Samples(idx, t, e, p, ct)

    def _samples_for(
        self,
        idx0: np.ndarray,
        idx1: np.ndarray,
        start_rows: Sequence[Any],
        head: int,
        t0: Optional[np.ndarray] = None,
        t1: Optional[np.ndarray] = None,
    ) -> _Samples:
        period = max(self.rt.sampler.period_ns, 1)
        # Samples on each side of an edge: enough to see a few GPU counter updates (they come
        # every 20-100 ms), and history before each start so that a slow counter has an
        # update before the window to interpolate from.
        k = int(min(1024, max(8, 3 * 100_000_000 // period)))
        history = int(min(1024, _HISTORY_NS // period + 2))
        lo = max(0, int(idx0.min()) - 1 - history, head - self.rt.sampler.capacity)
        if head - lo <= _CONTIGUOUS_READ_MAX:
            ranges = [(lo, head)]
        else:
            edges = np.concatenate([idx0 - 1 - history, idx1 - k])
            ranges = sorted((int(a), int(min(head, a + history + 2 * k))) for a in np.unique(edges))
            merged: List[Tuple[int, int]] = []
            for a, b in ranges:
                if merged and a <= merged[-1][1]:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], b))
                else:
                    merged.append((a, b))
            ranges = merged
        parts = [s for s in (self._read_range(a, b) for a, b in ranges) if s is not None]
        # Windows whose start left the ring resolve from the run-long history around them.
        oldest = head - self.rt.sampler.capacity
        lost = idx0 - 1 < oldest
        if t0 is not None and t1 is not None and lost.any():
            hist = self._history(int(t0[lost].min()), int(t1[lost].max()))
            if hist is not None:
                parts.append(hist)
        # Start rows copied when the windows opened stand in for samples the ring has lost.
        if start_rows:
            have = set(np.concatenate([p.index for p in parts]).tolist()) if parts else set()
            extra = [r for r in start_rows if r[0] not in have]
            if extra:
                parts.append(
                    _Samples(
                        np.array([r[0] for r in extra], dtype=np.int64),
                        np.array([r[1] for r in extra], dtype=np.int64),
                        np.stack([r[2] for r in extra]),
                        np.stack([r[3] for r in extra]),
                        np.stack([r[4] for r in extra]),
                    )
                )
        c = len(self.channels)
        if not parts:
            return _Samples(
                np.zeros(0, np.int64),
                np.zeros(0, np.int64),
                np.zeros((0, c)),
                np.zeros((0, c)),
                np.zeros((0, c), np.int64),
            )
        if len(parts) == 1:
            return parts[0]
        idx = np.concatenate([p.index for p in parts])
        order = np.argsort(idx, kind="stable")
        idx = idx[order]
        keep = np.ones(idx.size, dtype=bool)
        keep[1:] = idx[1:] != idx[:-1]
        sel = order[keep]
        return _Samples(
            idx[keep],
            np.concatenate([p.t_ns for p in parts])[sel],
            np.concatenate([p.energy_j for p in parts])[sel],
            np.concatenate([p.power_w for p in parts])[sel],
            np.concatenate([p.channel_t_ns for p in parts])[sel],
        )

    def _history(self, from_ns: int, to_ns: int) -> Optional[_Samples]:
        idx, t, e, p, ct = self.rt.sampler.history(from_ns, to_ns)
        if t.size == 0:
            return None
        return _Samples(idx, t, e, p, ct)

    # -- resolving -------------------------------------------------------------------------

    def settle_lag_ns(self) -> int:
        """How long after a window's end its last counter update can still arrive (ns)."""
        return self.rt.settle_lag_ns

    def resolve(self, windows: Sequence[Window], settle: bool = False) -> Resolved:
        """Energies of closed windows; see :meth:`resolve_arrays`."""
        return self.resolve_arrays(
            np.array([w.t0_ns for w in windows], dtype=np.int64),
            np.array([w.t1_ns for w in windows], dtype=np.int64),
            np.array([w.idx0 for w in windows], dtype=np.int64),
            np.array([w.idx1 if w.idx1 is not None else w.idx0 for w in windows], dtype=np.int64),
            [w.start_row for w in windows if w.start_row is not None],
            settle=settle,
        )

    def resolve_arrays(
        self,
        t0: np.ndarray,
        t1: np.ndarray,
        idx0: np.ndarray,
        idx1: np.ndarray,
        start_rows: Sequence[Any] = (),
        settle: bool = False,
    ) -> Resolved:
        """Energies of closed windows ``[t0[i], t1[i]]`` (ns). Takes a synchronous reading when
        no sample follows the latest window end yet; with ``settle``, waits (at most
        _MAX_SETTLE_WAIT_NS) until each counter has updated after every window end."""
        n, c = t0.size, len(self.channels)
        if n == 0 or c == 0:
            z = np.zeros((n, c))
            return Resolved(z, z.copy(), np.ones((n, c), bool), np.zeros((n, c), bool))
        t_end = int(t1.max())
        sampler = self.rt.sampler
        latest = sampler.latest()
        if latest is None or latest[1] <= t_end:
            sampler.read_now()
        deadline = time.monotonic_ns() + _MAX_SETTLE_WAIT_NS
        while True:
            samples = self._samples_for(idx0, idx1, start_rows, sampler.head, t0, t1)
            if settle and not self._counters_settled(t_end, samples):
                # No need to integrate yet: some counter has not updated after the end.
                if time.monotonic_ns() < deadline:
                    time.sleep(max(sampler.period_ns, 1_000_000) / 1e9)
                    if not self.rt.is_running():
                        sampler.read_now()
                    continue
            res = self._integrate(t0, t1, samples)
            if not settle or res.settled.all() or time.monotonic_ns() >= deadline:
                return res
            time.sleep(max(sampler.period_ns, 1_000_000) / 1e9)
            if not self.rt.is_running():
                sampler.read_now()

    def _channel(self, s: _Samples, i: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Channel ``i``'s own readings in ``s``: (times, cumulative energies, which rows).
        Edge samples read only the cheap sources: the others repeat their last reading."""
        t_ch = s.channel_t_ns[:, i]
        fresh = np.ones(t_ch.size, dtype=bool)
        fresh[1:] = t_ch[1:] > t_ch[:-1]
        return t_ch[fresh], s.energy_j[fresh, i], fresh

    def _counters_settled(self, t_end: int, s: _Samples) -> bool:
        """Whether every counter channel may have settled a window ending at ``t_end`` (the
        rule of the counter curve's ``settled``, without building curves)."""
        if s.t_ns.size < 2 or (s.t_ns[-1] - max(t_end, s.t_ns[0])) > SETTLE_HORIZON_NS:
            return True
        for i, ch in enumerate(self.channels):
            if ch.kind != "counter":
                continue
            t_ch, e_ch, _ = self._channel(s, i)
            through = _integrate.settled_through_ns(
                t_ch, np.maximum.accumulate(e_ch), self._max_update[i]
            )
            if t_end > through:
                return False
        return True

    def _integrate(self, t0: np.ndarray, t1: np.ndarray, s: _Samples) -> Resolved:
        n, c = t0.size, len(self.channels)
        energy = np.zeros((n, c))
        unc = np.zeros((n, c))
        settled = np.ones((n, c), dtype=bool)
        short = np.zeros((n, c), dtype=bool)
        if s.t_ns.size < 2:
            energy[:] = np.nan
            unc[:] = np.nan
            settled[:] = False
            return Resolved(energy, unc, settled, short)
        # Windows cannot start before the first sample the trace holds (only possible when the
        # ring lost a window's start and no start row was kept: its energy is then a lower bound).
        # A counter that has not moved for SETTLE_HORIZON_NS after a window's end is not
        # about to: every real counter updates within ~100 ms, so the window is final.
        aged = (s.t_ns[-1] - np.maximum(t1, s.t_ns[0])) > SETTLE_HORIZON_NS
        for i, ch in enumerate(self.channels):
            t_ch, e_ch, fresh = self._channel(s, i)
            t0c = np.maximum(t0, t_ch[0])
            t1c = np.maximum(t1, t0c)
            if t_ch.size < 2:
                energy[:, i] = np.nan
                unc[:, i] = np.nan
                settled[:, i] = False
                continue
            if ch.kind == "counter":
                trace = _integrate.Trace.counter(
                    t_ch,
                    np.maximum.accumulate(e_ch),
                    resolution_j=float(self._resolution[i]),
                    max_update_interval_ns=self._max_update[i],
                )
            else:
                trace = _integrate.Trace.power(t_ch, s.power_w[fresh, i], cum_j=e_ch)
            curve = _integrate.prepare(trace)
            r = curve.window_arrays(t0c, t1c)
            energy[:, i] = r.energy_j
            unc[:, i] = r.uncertainty_j + self._model_rel[i] * np.abs(r.energy_j)
            settled[:, i] = r.settled | aged
            short[:, i] = r.short_window
        return Resolved(energy, unc, settled, short)


class PendingWindows:
    """Closed windows waiting to be resolved, kept in compact arrays and resolved in batches
    once the counter updates covering their ends have had time to arrive.

    Thread-safe, with one resolver at a time: ``_lock`` guards the pending arrays (held for an
    append or a take, never while resolving); ``_resolve_lock`` serialises take, resolve and
    ``on_resolved(t0, t1, resolved)``, so batches arrive one at a time, oldest first, and the
    callback needs no lock of its own. A thread that adds while another resolves does not wait
    for it (its windows stay queued for the next flush); only a final flush waits. An error while
    resolving is reported as a warning, once, and the batch stays queued: it never reaches the
    code that called ``add``. Memory is bounded: beyond ``max_pending``
    windows the oldest are resolved as they are. The runtime's background settler calls
    :meth:`settle_aging`, so windows are resolved before their samples leave the ring even
    when no new window comes.
    """

    def __init__(
        self,
        rt: Runtime,
        on_resolved: Callable[[np.ndarray, np.ndarray, Resolved], None],
        batch: int = 1024,
        max_pending: int = 65_536,
    ) -> None:
        self._rt = rt
        self._resolver = WindowResolver(rt)
        self._on_resolved = on_resolved
        self._batch = batch
        self._max = max_pending
        self._lock = threading.Lock()
        self._resolve_lock = threading.Lock()
        self._warned = False
        self._t0 = array("q")
        self._t1 = array("q")
        self._idx0 = array("q")
        self._idx1 = array("q")
        self._horizon_ns = rt.horizon_ns()
        rt.register_settler(self)

    def __len__(self) -> int:
        return len(self._t0)

    def add(self, t0_ns: int, t1_ns: int, idx0: int, idx1: int) -> None:
        with self._lock:
            self._t0.append(t0_ns)
            self._t1.append(t1_ns)
            self._idx0.append(idx0)
            self._idx1.append(idx1)
            n = len(self._t0)
            due = n >= self._batch and (n % self._batch == 0 or n >= self._max)
            due = due or t1_ns - self._t0[0] > self._horizon_ns
        if due:
            self._flush_quietly()

    def settle_aging(self) -> None:
        self._flush_quietly()

    def _flush_quietly(self) -> None:
        try:
            self.flush(wait=False)
        except Exception as exc:  # bookkeeping must never break the user's loop
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"greenml could not resolve pending energy windows ({exc!r}); they stay "
                    "queued and are retried (warned once)",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def flush(self, final: bool = False, wait: bool = True) -> None:
        """Resolves the windows that are ready (all of them, waiting to settle, when final).
        With ``wait=False`` it returns at once when another thread is resolving."""
        if not self._resolve_lock.acquire(blocking=wait or final):
            return
        try:
            self._flush(final)
        finally:
            self._resolve_lock.release()

    def _flush(self, final: bool) -> None:
        with self._lock:
            n = len(self._t0)
            if n == 0:
                return
            t1 = np.array(self._t1, dtype=np.int64)
            if final:
                take = n
            else:
                latest = self._rt.sampler.latest()
                newest = latest[1] if latest is not None else 0
                ready = t1 < newest - self._resolver.settle_lag_ns()
                take = n if ready.all() else int(np.argmin(ready))  # the ready prefix
                take = max(take, n - self._max)  # bounded memory
            if take <= 0:
                return
            t1 = t1[:take]
            t0 = np.array(self._t0[:take], dtype=np.int64)
            idx0 = np.array(self._idx0[:take], dtype=np.int64)
            idx1 = np.array(self._idx1[:take], dtype=np.int64)
            del self._t0[:take], self._t1[:take], self._idx0[:take], self._idx1[:take]
        try:
            res = self._resolver.resolve_arrays(t0, t1, idx0, idx1, settle=final)
        except BaseException:
            with self._lock:  # nothing measured is dropped: put the batch back in front
                self._t0[0:0] = array("q", t0.tolist())
                self._t1[0:0] = array("q", t1.tolist())
                self._idx0[0:0] = array("q", idx0.tolist())
                self._idx1[0:0] = array("q", idx1.tolist())
            raise
        self._on_resolved(t0, t1, res)


def warn_short_windows(channels: Sequence, res: Resolved, durations_s: np.ndarray) -> None:
    """Warns once per channel when a window was shorter than that channel's resolution."""
    for i, ch in enumerate(channels):
        if ch.domain in _warned_short or not res.short[:, i].any():
            continue
        _warned_short.add(ch.domain)
        j = int(np.flatnonzero(res.short[:, i])[0])
        warnings.warn(
            f"a {durations_s[j] * 1e3:.1f} ms window is shorter than the update period of the "
            f"{ch.domain} energy counter: its {res.energy_j[j, i]:.4g} J is interpolated between "
            f"counter updates (uncertainty +/- {res.uncertainty_j[j, i]:.2g} J); measure longer "
            "windows or many repetitions for a tighter figure (warned once per domain)",
            ShortWindowWarning,
            stacklevel=3,
        )


class ShortWindowWarning(UserWarning):
    """A window was shorter than a counter's update period: its energy is interpolated."""


def totals(channels: Sequence, by_channel: np.ndarray) -> Tuple[float, Dict[str, float]]:
    """(total over non-overlapping domains, per-domain dict) for one window's channel values."""
    by_domain = {ch.domain: float(by_channel[i]) for i, ch in enumerate(channels)}
    total = float(sum(by_channel[i] for i, ch in enumerate(channels) if ch.in_total))
    return total, by_domain


__all__ = [
    "Resolved",
    "ShortWindowWarning",
    "Window",
    "PendingWindows",
    "WindowResolver",
    "close_window",
    "open_window",
    "totals",
    "warn_short_windows",
]
