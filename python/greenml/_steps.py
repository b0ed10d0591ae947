"""Per-step energy in bounded memory.

``step()`` only stores a timestamp in a preallocated chunk. Full chunks (or chunks about to
outlive the ring's history) are resolved in one vectorised pass; each step then feeds running
statistics (exact count, sum, mean, variance, min, max) and a fixed-size uniform reservoir
(for percentiles). Ten million steps cost the same memory as ten thousand.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional

import numpy as np

from ._runtime import Runtime
from ._windows import Window, WindowResolver

_CHUNK = 4096


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


class StepStats:
    """Statistics of the steps marked by ``Meter.step()``: energies in joules, durations in
    seconds, totals over the non-overlapping domains."""

    def __init__(self, rt: Runtime, max_records: int = 100_000, seed: int = 0) -> None:
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        self._rt = rt
        self._resolver = WindowResolver(rt)
        self._in_total = np.array([c.in_total for c in rt.channels], dtype=bool)
        self._buf = np.empty(_CHUNK, dtype=np.int64)
        self._n = 0
        self._prev: Optional[int] = None  # end of the last resolved step
        self._chunk_window: Optional[Window] = None
        self._flush_after_ns = self._horizon_ns()
        self._chunk_t0 = 0
        self.energy = _Running()
        self.duration = _Running()
        self.uncertainty_j = 0.0
        self._max = max_records
        self._res_e = np.empty(0)
        self._res_d = np.empty(0)
        self._rng = np.random.default_rng(seed)

    def _horizon_ns(self) -> int:
        s = self._rt.sampler
        # Resolve well before the chunk's first samples can leave the ring.
        return max(1, s.capacity * s.period_ns // 4)

    def begin(self, t0_ns: int) -> None:
        self._prev = t0_ns
        self._n = 0
        self._start_chunk(t0_ns)

    def _start_chunk(self, t_ns: int) -> None:
        row = self._rt.sampler.latest()
        self._chunk_window = Window(t_ns, row[0] if row is not None else 0, row)
        self._chunk_t0 = t_ns

    def mark(self) -> None:
        t = time.monotonic_ns()
        if self._prev is None:
            return  # the meter is not running
        self._buf[self._n] = t
        self._n += 1
        if self._n == _CHUNK or t - self._chunk_t0 > self._flush_after_ns:
            self.flush()

    def end(self, t1_ns: int) -> None:
        """The meter stopped: the time after the last step() is not a step."""
        self.flush(final=True)
        self._prev = None

    def flush(self, final: bool = False) -> None:
        """Resolves buffered steps; unsettled ones wait for the next flush unless final."""
        if self._n == 0 or self._prev is None or self._chunk_window is None:
            return
        ends = self._buf[: self._n].copy()
        starts = np.empty_like(ends)
        starts[0] = self._prev
        starts[1:] = ends[:-1]
        cw = self._chunk_window
        windows = [Window(int(a), cw.idx0, cw.start_row, int(b)) for a, b in zip(starts, ends)]
        res = self._resolver.resolve(windows, settle=final)
        ok = res.settled.all(axis=1)
        done = self._n if final or ok.all() else int(np.argmin(ok))
        if done == 0:
            return
        e = res.energy_j[:done][:, self._in_total].sum(axis=1)
        u = res.uncertainty_j[:done][:, self._in_total].sum(axis=1)
        d = (ends[:done] - starts[:done]) / 1e9
        self._record(e, d)
        self.uncertainty_j += float(u.sum())
        keep = self._n - done
        self._buf[:keep] = self._buf[done : self._n]
        self._prev = int(ends[done - 1])
        self._n = keep
        self._start_chunk(self._prev)

    def _record(self, e: np.ndarray, d: np.ndarray) -> None:
        seen = self.energy.n
        self.energy.add(e)
        self.duration.add(d)
        # Reservoir sampling (algorithm R, vectorised): every step has the same chance to be
        # kept, whatever the run's length.
        room = max(0, self._max - self._res_e.size)
        if room:
            self._res_e = np.concatenate([self._res_e, e[:room]])
            self._res_d = np.concatenate([self._res_d, d[:room]])
        rest = np.arange(room, e.size)
        if rest.size:
            positions = seen + rest  # 0-based index of each step in the whole run
            j = (self._rng.random(rest.size) * (positions + 1)).astype(np.int64)
            hit = j < self._max
            self._res_e[j[hit]] = e[rest[hit]]
            self._res_d[j[hit]] = d[rest[hit]]

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
        if self._res_e.size == 0:
            return math.nan
        return float(np.percentile(self._res_e, q))

    @property
    def energies_j(self) -> np.ndarray:
        """The kept step energies (all of them up to ``max_records``, else a uniform sample)."""
        return self._res_e.copy()

    @property
    def durations_s(self) -> np.ndarray:
        return self._res_d.copy()

    def to_dict(self) -> Dict[str, Any]:
        if not self.count:
            return {"count": 0}
        return {
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
            "records_kept": int(self._res_e.size),
        }

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"StepStats(count={self.count}, mean_j={self.mean_j:.4g})"


__all__: List[str] = ["StepStats"]
