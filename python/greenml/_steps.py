"""Per-step energy in bounded memory.

``step()`` only stores a timestamp in a preallocated chunk. Full chunks (or chunks about to
outlive the ring's history) are resolved in one vectorised pass; each step then feeds running
statistics (exact count, sum, mean, variance, min, max) and a fixed-size uniform reservoir
(for percentiles), and an ordered record of fixed-size blocks (for forecasts: the order of the
steps matters there). Ten million steps cost the same memory as ten thousand.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar

import numpy as np

from ._errors import GreenmlError
from ._records import json_numbers
from ._runtime import Runtime
from ._windows import PendingWindows

T = TypeVar("T")

# Objects whose locks and pending steps are reset in a forked child.
_forkable: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for obj in list(_forkable):
        if isinstance(obj, OrderedRecord):
            obj._lock = threading.Lock()
        else:
            obj._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Running:
    """Welford's running mean and variance, with min, max and sum."""

    __slots__ = ("n", "mean", "m2", "lo", "hi", "total")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.total = 0.0

    def add(self, x: np.ndarray) -> None:
        # Chan et al.'s parallel update: merge the batch's moments into the running ones.
        if x.size == 0:
            return
        nb = x.size
        mb = float(x.mean())
        m2b = float(((x - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        self.total += float(x.sum())

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


class OrderedRecord:
    """The step sequence in order, in bounded memory: ``capacity`` blocks of ``block_steps``
    consecutive steps each (energy and duration summed per block). When every block is full,
    neighbouring blocks merge pairwise and the block size doubles, so ten million steps keep
    ``capacity`` blocks whose order is that of the run. The first ``capacity`` steps are also
    kept one by one (the warm-up lives there).
    """

    __slots__ = (
        "__weakref__",
        "_d",
        "_e",
        "_lock",
        "_n",
        "_part",
        "block_steps",
        "capacity",
        "head_d",
        "head_e",
    )

    def __init__(self, capacity: int = 8192) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError("capacity must be an even number >= 2")
        self.capacity = capacity
        self.block_steps = 1
        self._e = np.empty(capacity)
        self._d = np.empty(capacity)
        self._n = 0  # full blocks
        self._part = [0, 0.0, 0.0]  # steps, energy, duration of the block being filled
        self.head_e: Optional[np.ndarray] = None  # the first `capacity` steps, once coarsened
        self.head_d: Optional[np.ndarray] = None
        self._lock = threading.Lock()  # a reader (forecast) may run beside the settler thread
        _forkable.add(self)

    def add(self, e: np.ndarray, d: np.ndarray) -> None:
        with self._lock:
            self._add(e, d)

    def _add(self, e: np.ndarray, d: np.ndarray) -> None:
        if e.size <= 16:  # the settler often resolves a few steps at a time: no numpy there
            for v, w in zip(e.tolist(), d.tolist()):
                part = self._part
                part[0] += 1
                part[1] += v
                part[2] += w
                if part[0] == self.block_steps:
                    self._close_partial()
            return
        at = 0
        while at < e.size:
            k = self.block_steps
            part = self._part
            if part[0] or e.size - at < k:  # fill the partial block first
                take = min(k - part[0], e.size - at)
                part[0] += take
                part[1] += float(e[at : at + take].sum())
                part[2] += float(d[at : at + take].sum())
                at += take
                if part[0] == k:
                    self._close_partial()
                continue
            m = min((e.size - at) // k, self.capacity - self._n)
            if m == 0:  # full: halve the resolution
                self._coarsen()
                continue
            stop = at + m * k
            if k == 1:
                self._push(e[at:stop], d[at:stop])
            else:
                self._push(
                    e[at:stop].reshape(m, k).sum(axis=1), d[at:stop].reshape(m, k).sum(axis=1)
                )
            at = stop

    def _close_partial(self) -> None:
        """The partial block is full: store it, or, when every slot is taken, halve the
        resolution (the full block then becomes half of a bigger partial one)."""
        if self._n == self.capacity:
            self._coarsen()
            return
        part = self._part
        self._e[self._n] = part[1]
        self._d[self._n] = part[2]
        self._n += 1
        self._part = [0, 0.0, 0.0]

    def _push(self, e: np.ndarray, d: np.ndarray) -> None:
        n = self._n
        self._e[n : n + e.size] = e
        self._d[n : n + d.size] = d
        self._n = n + e.size

    def _coarsen(self) -> None:
        if self.head_e is None:
            self.head_e = self._e[: self._n].copy()
            self.head_d = self._d[: self._n].copy()
        half = self._n // 2
        self._e[:half] = self._e[0 : 2 * half : 2] + self._e[1 : 2 * half : 2]
        self._d[:half] = self._d[0 : 2 * half : 2] + self._d[1 : 2 * half : 2]
        self._n = half
        self.block_steps *= 2

    @property
    def steps(self) -> int:
        """Steps recorded (in full blocks and the partial one)."""
        return self._n * self.block_steps + self._part[0]

    def blocks(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps, energy_j, duration_s) per block, in order; the last block may be partial."""
        with self._lock:
            return self._blocks()

    def _blocks(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        e, d = self._e[: self._n], self._d[: self._n]
        c = np.full(self._n, self.block_steps, dtype=np.int64)
        if self._part[0]:
            c = np.append(c, self._part[0])
            e = np.append(e, self._part[1])
            d = np.append(d, self._part[2])
        return c, e.copy(), d.copy()


class Reservoir:
    """A uniform sample of at most ``size`` (energy, duration) pairs over everything added:
    every item has the same chance to be kept, however long the run (algorithm R,
    vectorised). Used for step and call percentiles, so neither is biased to the warm-up."""

    __slots__ = ("_d", "_e", "_rng", "_seed", "seen", "size")

    def __init__(self, size: int, seed: int = 0) -> None:
        if size < 1:
            raise ValueError("max_records must be >= 1")
        self.size = size
        self.seen = 0
        self._e = np.empty(0)
        self._d = np.empty(0)
        self._seed = seed
        self._rng: Optional[np.random.Generator] = None  # created when the reservoir is full

    def add(self, e: np.ndarray, d: np.ndarray) -> None:
        seen = self.seen
        self.seen += e.size
        room = max(0, self.size - self._e.size)
        if room:
            self._e = np.concatenate([self._e, e[:room]])
            self._d = np.concatenate([self._d, d[:room]])
        rest = np.arange(room, e.size)
        if rest.size:
            if self._rng is None:
                self._rng = np.random.default_rng(self._seed)
            positions = seen + rest  # 0-based index of each item in the whole run
            j = (self._rng.random(rest.size) * (positions + 1)).astype(np.int64)
            hit = j < self.size
            self._e[j[hit]] = e[rest[hit]]
            self._d[j[hit]] = d[rest[hit]]

    @property
    def energies(self) -> np.ndarray:
        return self._e

    @property
    def durations(self) -> np.ndarray:
        return self._d

    def percentile(self, q: float) -> float:
        """Percentile ``q`` (0-100) of the kept energies; NaN when nothing was kept."""
        if not 0 <= q <= 100:
            raise ValueError(f"q={q!r}: give a percentile between 0 and 100")
        return float(np.percentile(self._e, q)) if self._e.size else math.nan


class StepStats:
    """Statistics of the steps marked by ``Meter.step()``: energies in joules, durations in
    seconds, totals over the non-overlapping domains."""

    def __init__(self, rt: Runtime, max_records: int = 100_000, seed: int = 0) -> None:
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        self._rt = rt
        self._in_total = np.array([c.in_total for c in rt.channels], dtype=bool)
        self._pending = PendingWindows(rt, self._resolved)
        self._prev: Optional[int] = None  # end of the last step (or the meter's start)
        self._prev_idx = 0  # ring index of a sample at or before self._prev
        self.energy = _Running()
        self.duration = _Running()
        self.uncertainty_j = 0.0
        #: Seconds from the meter's start to the first step of an ``m.steps(...)`` loop.
        self.setup_s: Optional[float] = None
        self._origin_ns = 0
        self._reservoir = Reservoir(max_records, seed)
        self.ordered = OrderedRecord()
        # Called with this object after each resolved batch (off the step() path); exceptions
        # are the callee's to keep.
        self.on_batch: Optional[Any] = None
        _forkable.add(self)

    def _after_fork_in_child(self) -> None:
        # Steps marked before the fork are the parent's to count; the child starts with none
        # pending and locks nobody holds.
        self._pending = PendingWindows(self._rt, self._resolved)
        self._prev = None

    def begin(self, t0_ns: int, idx0: int) -> None:
        """The meter started at ``t0_ns``; ``idx0`` is the ring index of a sample before it.
        Without a loop wrapper, the first step starts here (it includes any setup)."""
        self._prev = t0_ns
        self._prev_idx = idx0
        self._origin_ns = t0_ns

    def __call__(self, iterable: Iterable[T]) -> Iterator[T]:
        """``for batch in m.steps(loader): ...``: one step per item, marked for you.

        The first step starts when the loop asks for its first item, so the setup before the
        loop is not folded into step 1: it is reported as ``setup_s`` (seconds from the meter's
        start). Each step covers fetching its item and the loop body; the time between an
        earlier ``step()`` and the loop is no step at all."""
        if self._prev is None:
            raise GreenmlError("m.steps(...) needs a running meter: enter it with `with` first")
        idx = self._rt.sampler.head - 1
        t = time.monotonic_ns()
        self._rt.edge(t)
        if self.setup_s is None and self.count == 0 and len(self._pending) == 0:
            self.setup_s = (t - self._origin_ns) / 1e9
        self._prev, self._prev_idx = t, idx
        for item in iterable:
            yield item
            self.mark()

    def mark(self) -> None:
        idx = self._rt.sampler.head - 1  # a sample before t: the next step's start index
        t = time.monotonic_ns()
        self._rt.edge(t)
        prev = self._prev
        if prev is None:
            return  # the meter is not running
        self._pending.add(prev, t, self._prev_idx, idx + 1)
        self._prev = t
        self._prev_idx = idx

    def end(self, t1_ns: int) -> None:
        """The meter stopped: the time after the last step() is not a step."""
        self._prev = None

    def flush(self, final: bool = False) -> None:
        """Resolves buffered steps (waiting for the last counter updates when final)."""
        self._pending.flush(final=final)

    def _resolved(self, t0: np.ndarray, t1: np.ndarray, res: Any) -> None:
        if self._in_total.any():
            e = res.energy_j[:, self._in_total].sum(axis=1)
            u = res.uncertainty_j[:, self._in_total].sum(axis=1)
        else:  # nothing measurable: unknown, never 0 J
            e = np.full(t0.size, np.nan)
            u = np.full(t0.size, np.nan)
        self._record(e, (t1 - t0) / 1e9)
        self.uncertainty_j += float(u.sum())
        if self.on_batch is not None:
            self.on_batch(self)

    def _record(self, e: np.ndarray, d: np.ndarray) -> None:
        self.energy.add(e)
        self.duration.add(d)
        self.ordered.add(e, d)
        self._reservoir.add(e, d)

    # -- results ---------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self.energy.n

    @property
    def total_j(self) -> float:
        return self.energy.total

    @property
    def mean_j(self) -> float:
        return self.energy.mean if self.count else math.nan

    @property
    def std_j(self) -> float:
        return self.energy.std

    @property
    def mean_duration_s(self) -> float:
        return self.duration.mean if self.count else math.nan

    def percentile_j(self, q: float) -> float:
        """Percentile ``q`` (0-100) of step energy, from the uniform reservoir."""
        return self._reservoir.percentile(q)

    @property
    def energies_j(self) -> np.ndarray:
        """The kept step energies (all of them up to ``max_records``, else a uniform sample)."""
        return self._reservoir.energies.copy()

    @property
    def durations_s(self) -> np.ndarray:
        return self._reservoir.durations.copy()

    def to_dict(self) -> Dict[str, Any]:
        if not self.count:
            return {"count": 0}
        d = {
            "count": self.count,
            "total_j": self.total_j,
            "mean_j": self.mean_j,
            "std_j": self.std_j,
            "min_j": self.energy.lo,
            "max_j": self.energy.hi,
            "p50_j": self.percentile_j(50),
            "p90_j": self.percentile_j(90),
            "p99_j": self.percentile_j(99),
            "mean_duration_s": self.mean_duration_s,
            "uncertainty_j": self.uncertainty_j,
            "setup_s": self.setup_s,
            "records_kept": int(self._reservoir.energies.size),
        }
        # Unknown energies (nothing measurable) are written as null.
        return json_numbers(d)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"StepStats(count={self.count}, mean_j={self.mean_j:.4g})"


__all__: List[str] = ["OrderedRecord", "StepStats"]
