"""Energy of a time window from one channel's sampled trace: pure functions, no I/O.

This is the reporter half of greenml: it never touches the sampler. The meter hands it plain
arrays read from the ring (plus its own synchronous edge readings) and gets back the energy of a
window with its uncertainty: an interval that holds under stated assumptions (the peak power
the trace shows, with a margin, bounds the power around the edges) and whose coverage is
measured when they fail (benchmarks/results/adversarial.md). Tests feed it hand-made and
synthetic traces.

Two kinds of channel
--------------------
*Counter* channels (RAPL ``energy_uj``, NVML total energy) carry a cumulative energy counter,
already unwrapped by the core. Such a counter only moves when the hardware updates it (RAPL about
every 1 ms, NVIDIA GPUs every 20-100 ms, irregularly), and the sampler may run faster or slower
than that. The value read at a sample is therefore *stale*: it is the true cumulative energy at
the instant of the latest update, which lies between the previous sample and this one, and at
most one update period before this one. :class:`CounterCurve` detects the samples where the
value changed ("knots"), estimates when each update really happened and draws a monotone,
piecewise-linear cumulative curve through ``(update instant, value)``; the energy of a window is
the difference of that curve at the two edges. Between updates the increment of update ``k``
(which covers the energy spent since update ``k - 1``) is spread linearly over its own interval,
so a window shorter than the update period still gets a real estimate.

*Power* channels carry instantaneous (or trailing-average) power samples; the core integrates them
with the trapezoid rule into ``cum_j``. :class:`PowerCurve` integrates the linear interpolation of
the power samples, which is exactly the trapezoid rule with the window edges interpolated.

The same code serves long windows: the meter passes the samples from a little before ``t0`` to
the latest one available. When the ring lost the middle of a long window the trace holds two
clusters of samples, one around each edge; the counter (or the core's running integral) still
carries the exact energy across the hole, so only the edges need estimating.

Conventions
-----------
Times are ``int64`` CLOCK_MONOTONIC nanoseconds (``*_ns``), energies joules (``*_j``), powers
watts (``*_w``). Invalid input raises :class:`greenml._errors.ConfigError` (a ``ValueError``)
with a message saying what is wrong. A window whose end lies beyond what the trace has settled
yet (after the last counter update seen, or after the last power sample) is *not* an error: it is
extrapolated at the recent power and flagged ``settled=False``; ask again once more samples have
arrived. A window that *starts* before the first sample is an error, since no later sample can
ever cover it: pass a trace that begins at or before the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Union

import numpy as np

from greenml._errors import ConfigError

__all__ = [
    "PEAK_POWER_MARGIN",
    "CounterCurve",
    "PowerCurve",
    "Trace",
    "WindowArrays",
    "WindowEnergy",
    "estimate_peak_power_w",
    "estimate_update_period_ns",
    "prepare",
    "window_energies",
    "window_energy",
]

#: Factor applied to the peak power *seen* in a trace when it stands in for the true peak in an
#: error bound: interval averages and samples can miss the top of a short peak.
PEAK_POWER_MARGIN = 1.2

# Knots considered on each side of an edge when tightening its bounds (any subset is still a
# valid bound; a few neighbours capture nearly all of the benefit).
_NEIGHBOURS = 3

_NS_PER_S = 1e9

#: The core keeps a power channel's running integral in whole nanojoules (see sampler.cpp).
POWER_INTEGRAL_QUANTUM_J = 1e-9


class WindowArrays(NamedTuple):
    """Results of many windows as parallel arrays (J, J, bool, bool)."""

    energy_j: np.ndarray
    uncertainty_j: np.ndarray
    settled: np.ndarray
    short_window: np.ndarray


@dataclass(frozen=True)
class WindowEnergy:
    """Energy of one channel over the window ``[t0_ns, t1_ns]``.

    Attributes:
        t0_ns, t1_ns: the window, CLOCK_MONOTONIC nanoseconds.
        energy_j: best estimate of the energy spent in the window, joules.
        uncertainty_j: an interval half-width, not a standard deviation, in joules: under the
            channel's stated assumptions (see :class:`CounterCurve` and :class:`PowerCurve`)
            the true energy lies within ``energy_j +/- uncertainty_j``. The peak power is
            estimated from the trace, so power that changes faster than the counter updates
            can break it: its coverage under such bursts is measured, not guaranteed.
        settled: False while the trace does not yet cover the window's end (the counter update
            covering it has not been observed, or no power sample follows it); the estimate is
            then extrapolated at the recent power and may change when more samples arrive.
        short_window: True when the window is shorter than the channel's time resolution (the
            larger of the counter's update period and the sample spacing; for power channels the
            larger of the sample spacing and the averaging window): the estimate is then mostly
            interpolation, and its relative uncertainty is large.
    """

    t0_ns: int
    t1_ns: int
    energy_j: float
    uncertainty_j: float
    settled: bool
    short_window: bool

    @property
    def duration_s(self) -> float:
        """Window length in seconds."""
        return (self.t1_ns - self.t0_ns) / _NS_PER_S

    @property
    def mean_power_w(self) -> float:
        """Mean power over the window in watts (0.0 for an empty window)."""
        d = self.duration_s
        return self.energy_j / d if d > 0 else 0.0


def _as_1d(name: str, values: object, dtype: type) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(dtype)
    if dtype is np.int64:
        if arr.dtype.kind not in "iu":
            raise ConfigError(
                f"{name} must hold integer nanoseconds, got dtype {arr.dtype}; "
                "convert with np.asarray(t, dtype=np.int64)"
            )
        return arr.astype(np.int64, copy=False)
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ConfigError(f"{name}[{bad}] is {arr[bad]}; every value must be finite")
    return arr


@dataclass(frozen=True, eq=False)
class Trace:
    """The samples of one channel (one domain), as read from the ring.

    Build one with :meth:`Trace.counter` or :meth:`Trace.power`; the constructor validates and
    raises :class:`~greenml._errors.ConfigError` on bad input (fewer than 2 samples, timestamps
    not strictly increasing, lengths that differ, non-finite values, a decreasing counter).

    Attributes:
        t_ns: sample timestamps, int64 CLOCK_MONOTONIC nanoseconds, strictly increasing.
        cum_j: cumulative energy at each sample in joules: the unwrapped hardware counter for a
            counter channel, the core's running trapezoid integral for a power channel.
        power_w: power samples in watts for a power channel, ``None`` for a counter channel.
        resolution_j: counter channels: the counter's quantum in joules (1e-6 for powercap's
            microjoules, 1e-3 for NVML's millijoules); it enters the error bound.
        max_update_interval_ns: counter channels: an upper bound on the time between two
            counter updates, if known (RAPL: about 1 ms). It bounds how stale a reading can be
            when the sampler is slower than the counter; without it only what the samples prove
            is assumed (an update happened somewhere between two samples).
        averaging_window_ns: power channels: 0 when ``power_w`` is instantaneous power, else the
            length of the trailing window the hardware averages it over (e.g. 1 s).
    """

    t_ns: np.ndarray
    cum_j: np.ndarray
    power_w: np.ndarray | None = None
    resolution_j: float = 1e-3
    max_update_interval_ns: float | None = None
    averaging_window_ns: float = 0.0

    def __post_init__(self) -> None:
        t = _as_1d("t_ns", self.t_ns, np.int64)
        cum = _as_1d("cum_j", self.cum_j, np.float64)
        if t.size < 2:
            raise ConfigError(
                f"a trace needs at least 2 samples, got {t.size}; wait for the sampler or "
                "include the synchronous readings taken at the window edges"
            )
        if cum.size != t.size:
            raise ConfigError(f"cum_j has {cum.size} values but t_ns has {t.size}")
        dt = np.diff(t)
        if np.any(dt <= 0):
            i = int(np.flatnonzero(dt <= 0)[0])
            raise ConfigError(
                f"t_ns must be strictly increasing: t_ns[{i + 1}]={t[i + 1]} follows "
                f"t_ns[{i}]={t[i]}; sort the samples and drop duplicates"
            )
        power = None
        if self.power_w is not None:
            power = _as_1d("power_w", self.power_w, np.float64)
            if power.size != t.size:
                raise ConfigError(f"power_w has {power.size} values but t_ns has {t.size}")
        else:
            dc = np.diff(cum)
            if np.any(dc < 0):
                i = int(np.flatnonzero(dc < 0)[0])
                raise ConfigError(
                    f"counter decreased from cum_j[{i}]={cum[i]} to cum_j[{i + 1}]={cum[i + 1]}; "
                    "counter channels must be unwrapped (monotone) before integration"
                )
        if not self.resolution_j >= 0 or not np.isfinite(self.resolution_j):
            raise ConfigError(f"resolution_j must be a finite value >= 0, got {self.resolution_j}")
        if self.max_update_interval_ns is not None and not (
            np.isfinite(self.max_update_interval_ns) and self.max_update_interval_ns > 0
        ):
            raise ConfigError(
                f"max_update_interval_ns must be > 0 or None, got {self.max_update_interval_ns}"
            )
        if not (np.isfinite(self.averaging_window_ns) and self.averaging_window_ns >= 0):
            raise ConfigError(f"averaging_window_ns must be >= 0, got {self.averaging_window_ns}")
        object.__setattr__(self, "t_ns", t)
        object.__setattr__(self, "cum_j", cum)
        object.__setattr__(self, "power_w", power)

    @classmethod
    def counter(
        cls,
        t_ns: Sequence[int] | np.ndarray,
        cum_j: Sequence[float] | np.ndarray,
        *,
        resolution_j: float = 1e-3,
        max_update_interval_ns: float | None = None,
    ) -> Trace:
        """A counter channel: timestamps (ns) and the unwrapped cumulative counter (J).

        ``resolution_j`` is the counter quantum in joules (default 1e-3, NVML's millijoule, the
        coarser of the two real counters and so the safe choice for the bound).
        """
        return cls(
            t_ns=np.asarray(t_ns),
            cum_j=np.asarray(cum_j),
            resolution_j=resolution_j,
            max_update_interval_ns=max_update_interval_ns,
        )

    @classmethod
    def power(
        cls,
        t_ns: Sequence[int] | np.ndarray,
        power_w: Sequence[float] | np.ndarray,
        *,
        cum_j: Sequence[float] | np.ndarray | None = None,
        averaging_window_ns: float = 0.0,
    ) -> Trace:
        """A power channel: timestamps (ns), power samples (W) and, if the core provides it, its
        running trapezoid integral ``cum_j`` (J); without it the integral is computed here, which
        is only right when no samples are missing."""
        t = np.asarray(t_ns)
        p = np.asarray(power_w, dtype=np.float64)
        if cum_j is None:
            cum = np.zeros(p.shape, dtype=np.float64)
            if p.ndim == 1 and p.size == t.size and p.size >= 2:
                h_s = np.diff(t.astype(np.float64)) / _NS_PER_S
                cum[1:] = np.cumsum(h_s * (p[1:] + p[:-1]) / 2.0)
        else:
            cum = np.asarray(cum_j)
        return cls(t_ns=t, cum_j=cum, power_w=p, averaging_window_ns=averaging_window_ns)

    @property
    def is_power(self) -> bool:
        """True for a power channel, False for a counter channel."""
        return self.power_w is not None


# --------------------------------------------------------------------------------------------
# Counter channels


def _knot_indices(cum_j: np.ndarray) -> np.ndarray:
    """Indices of the samples whose value differs from the previous sample's (never 0)."""
    return np.flatnonzero(np.diff(cum_j) > 0) + 1


def settled_through_ns(
    t_ns: np.ndarray, cum_j: np.ndarray, max_update_interval_ns: float | None = None
) -> float:
    """The latest window end a counter trace has settled (ns): the earliest instant its last
    observed update can have happened (after the sample before it, and at most one update
    interval before the sample that saw it). A window ending at or before this has seen the
    update that covers its end; -inf when the trace shows no update. The same rule as
    :class:`CounterCurve`'s ``settled``, without building the curve."""
    knots = _knot_indices(np.asarray(cum_j, dtype=np.float64))
    if knots.size == 0:
        return -np.inf
    k = int(knots[-1])
    lo = float(t_ns[k - 1])
    if max_update_interval_ns is not None:
        lo = max(lo, float(t_ns[k]) - float(max_update_interval_ns))
    return lo


def estimate_update_period_ns(
    t_ns: Sequence[int] | np.ndarray, cum_j: Sequence[float] | np.ndarray
) -> float | None:
    """Estimate a counter's update period in nanoseconds from its samples.

    The period is the median interval between the samples at which the counter changed. When
    the counter is sampled faster than it updates, that is the update period (to within a
    sample spacing). When it updates at least once per sample, every sample changes and the
    result is the sample spacing, which is then only an upper bound on the update period.

    Returns ``None`` when fewer than two changes are seen (the counter is idle, or the trace is
    too short to tell).
    """
    t = np.asarray(t_ns, dtype=np.int64)
    cum = np.asarray(cum_j, dtype=np.float64)
    if t.ndim != 1 or cum.shape != t.shape:
        raise ConfigError("t_ns and cum_j must be 1-D arrays of the same length")
    knots = _knot_indices(cum)
    if knots.size < 2:
        return None
    return float(np.median(np.diff(t[knots])))


class _Curve:
    """What both curves share: per-window results built from :meth:`window_arrays`."""

    def window_arrays(
        self, t0_ns: Sequence[int] | np.ndarray, t1_ns: Sequence[int] | np.ndarray
    ) -> WindowArrays:
        raise NotImplementedError

    def windows(
        self, t0_ns: Sequence[int] | np.ndarray, t1_ns: Sequence[int] | np.ndarray
    ) -> list[WindowEnergy]:
        """Energy of each window ``[t0_ns[i], t1_ns[i]]`` (ns); see :class:`WindowEnergy`."""
        a_ns, b_ns = _check_windows(t0_ns, t1_ns)
        return _results(a_ns, b_ns, *self.window_arrays(a_ns, b_ns))

    def window(self, t0_ns: int, t1_ns: int) -> WindowEnergy:
        """Energy of the window ``[t0_ns, t1_ns]`` (ns); see :class:`WindowEnergy`."""
        return self.windows([t0_ns], [t1_ns])[0]


class CounterCurve(_Curve):
    """Cumulative-energy curve of a counter channel, prepared once and queried per window.

    Model. The counter is updated at instants ``tau_k``; update ``k`` stores the true
    cumulative energy ``C(tau_k)`` (plus a constant offset) to within the counter quantum ``r``
    (rounded either way). A sample taken at ``t_i`` reads the value of the latest update at or
    before ``t_i``.

    Update instants. A value first seen at sample ``i`` was written after sample ``i - 1`` and
    no later than ``t_i``; when an upper bound ``U`` on the update interval is known it was also
    written no earlier than ``t_i - U``. So ``tau_k`` lies in ``[lo_k, hi_k]`` with
    ``hi_k = t_i`` and ``lo_k = max(t_{i-1}, t_i - U)``. The estimate is the middle of
    ``[t_i - min(gap_i, U_est), t_i]``, where ``U_est`` is the estimated update period (the
    hint if smaller), so a long hole in the trace does not push an estimate far back; and when
    the next update is pinned by close samples, a knot ending a hole sits one period before it
    (updates are periodic). The first
    sample's value was written before it: a virtual knot is placed one period before the first
    real one (but not after the first sample).

    Estimate. ``E(t)`` is linear in time between consecutive estimated update instants, so each
    increment is spread over its own interval; past the last knot it is extrapolated at the
    mean power of the last few intervals (the window is then unsettled).

    Bound. The true curve ``C`` is non-decreasing with slope at most ``P`` (the peak power:
    the caller's ``peak_power_w`` or :data:`PEAK_POWER_MARGIN` times the peak seen). For each
    knot ``j`` monotonicity gives ``C(t) >= v_j - r`` once ``tau_j <= t`` and
    ``C(t) <= v_j + r`` while ``tau_j >= t``; with the slope limit,
    ``C(t) >= v_j - r - P * (hi_j - t)`` and ``C(t) <= v_j + r + P * (t - lo_j)`` hold for
    every ``t``. The tightest of these over the
    knots around ``t`` gives ``L(t) <= C(t) <= H(t)``: the value is pinned between the
    bracketing knots, and the band shrinks near a knot by its timing uncertainty times the peak
    power. The window's true energy lies in ``[L(t1) - H(t0), H(t1) - L(t0)]``; the reported
    uncertainty is the distance from the estimate to the farther end of that interval. It holds
    whenever the samples' timestamps are right, ``U`` (if given) really bounds the update
    interval and the power never exceeds ``P`` around the edges.
    """

    def __init__(self, trace: Trace, *, peak_power_w: float | None = None) -> None:
        if trace.is_power:
            raise ConfigError("CounterCurve needs a counter trace; use PowerCurve for power")
        self._t_ref_ns = int(trace.t_ns[0])
        t = (trace.t_ns - self._t_ref_ns).astype(np.float64) / _NS_PER_S
        v = trace.cum_j
        self._resolution_j = float(trace.resolution_j)
        gaps = np.diff(t)
        spacing_s = float(np.median(gaps))

        period_ns = estimate_update_period_ns(trace.t_ns, v)
        u_est = period_ns / _NS_PER_S if period_ns is not None else spacing_s
        hint = trace.max_update_interval_ns
        u_max = hint / _NS_PER_S if hint is not None else np.inf
        u_est = min(u_est, u_max)
        self.update_period_s: float = u_est
        self.resolution_s: float = max(u_est, spacing_s)

        knots = _knot_indices(v)
        hi = t[knots]
        g = gaps[knots - 1]
        lo = np.maximum(t[knots - 1], hi - u_max)
        tau = hi - np.minimum(g, u_est) / 2.0
        if knots.size > 1:
            # A knot that ends a hole in the trace (the sampler idled between window edges) may
            # have updated anywhere in the hole. When the next update is pinned by close samples
            # and updates come every U_est, one period before that next update is the better
            # estimate; it stays inside [lo, hi], so the bound below is unchanged.
            cand = tau[1:] - u_est
            use = (g[:-1] > 2.0 * u_est) & (g[1:] <= u_est) & (cand >= lo[:-1]) & (cand <= hi[:-1])
            tau[:-1] = np.where(use, cand, tau[:-1])
        if knots.size:
            tau_v = max(min(t[0], tau[0] - u_est), t[0] - u_max)
        else:
            tau_v = t[0] - min(spacing_s, u_est) / 2.0
        self._tau = np.concatenate(([tau_v], tau))
        self._lo = np.concatenate(([t[0] - u_max], lo))
        self._hi = np.concatenate(([t[0]], hi))
        self._v = np.concatenate(([v[0]], v[knots]))

        dv = np.diff(self._v)
        # Two updates are at least one update period apart, however close the samples that
        # saw them (an edge reading right after a ring sample): an increment accrued over at
        # least that long, so a near-coincident pair of knots does not fake a huge peak.
        dtau = np.maximum(np.diff(self._tau), u_est)
        interval_w = dv / dtau
        real = interval_w[1:] if interval_w.size > 1 else interval_w
        self.peak_seen_w: float = float(real.max()) if real.size else 0.0
        if peak_power_w is not None:
            if not (np.isfinite(peak_power_w) and peak_power_w >= 0):
                raise ConfigError(f"peak_power_w must be a finite value >= 0, got {peak_power_w}")
            self.peak_bound_w: float = float(peak_power_w)
        else:
            self.peak_bound_w = PEAK_POWER_MARGIN * self.peak_seen_w
        n_recent = min(4, real.size)
        if n_recent:
            span = self._tau[-1] - self._tau[-1 - n_recent]
            self.recent_power_w: float = float((self._v[-1] - self._v[-1 - n_recent]) / span)
        else:
            self.recent_power_w = 0.0

    # -- evaluation -----------------------------------------------------------------------

    def _to_s(self, t_ns: np.ndarray) -> np.ndarray:
        return (t_ns - self._t_ref_ns).astype(np.float64) / _NS_PER_S

    def _edges(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Estimate, lower and upper bound of the cumulative energy (J) at times ``t`` (s)."""
        tau, lo, hi, v = self._tau, self._lo, self._hi, self._v
        n = v.size
        p = self.peak_bound_w
        r = self._resolution_j

        k = np.searchsorted(tau, t, side="right")  # tau[k-1] <= t < tau[k]; k >= 1
        inside = k < n
        kk = np.minimum(k, n - 1)
        span = np.where(inside, tau[kk] - tau[kk - 1], 1.0)
        frac = np.where(inside, (t - tau[kk - 1]) / span, 0.0)
        est_in = v[kk - 1] + (v[kk] - v[kk - 1]) * frac
        est_out = v[-1] + self.recent_power_w * (t - tau[-1])
        est = np.where(inside, est_in, est_out)

        # Lower bound: last knot surely before t, then the slope-limited later knots.
        near = np.arange(1, _NEIGHBOURS + 1)
        tc = t[:, None]
        j0 = np.searchsorted(hi, t, side="right") - 1  # >= 0: hi[0] = first sample <= t
        j = j0[:, None] + near
        jj = np.minimum(j, n - 1)
        cand = np.where(j < n, v[jj] - r - p * (hi[jj] - tc), -np.inf)
        lower = np.maximum(v[j0] - r, cand.max(axis=1))

        # Upper bound: first knot surely after t, then the slope-limited earlier knots.
        j1 = np.searchsorted(lo, t, side="left")  # lo[j1] >= t
        upper = np.where(j1 < n, v[np.minimum(j1, n - 1)] + r, np.inf)
        j = j1[:, None] - near
        jj = np.maximum(j, 0)
        lo_j = lo[jj]
        with np.errstate(invalid="ignore"):
            grow = np.where(np.isfinite(lo_j), p * np.maximum(tc - lo_j, 0.0), np.inf)
        cand = np.where(j >= 0, v[jj] + r + grow, np.inf)
        upper = np.minimum(upper, cand.min(axis=1))

        consistent = lower <= upper
        est = np.where(consistent, np.clip(est, lower, upper), est)
        return est, lower, upper

    def window_arrays(
        self, t0_ns: Sequence[int] | np.ndarray, t1_ns: Sequence[int] | np.ndarray
    ) -> WindowArrays:
        """Like :meth:`windows`, as arrays (no per-window objects): the fast path for many."""
        a_ns, b_ns = _check_windows(t0_ns, t1_ns)
        a, b = self._to_s(a_ns), self._to_s(b_ns)
        _check_start(a_ns, self._t_ref_ns)
        n = a.size
        est, lo, up = self._edges(np.concatenate((a, b)))  # both edges in one pass
        est0, lo0, up0, est1, lo1, up1 = est[:n], lo[:n], up[:n], est[n:], lo[n:], up[n:]
        energy = est1 - est0
        low = lo1 - up0
        high = up1 - lo0
        # Bounds built from a slope limit estimated on too few intervals can cross; the bound
        # must never be negative, so take the interval they span either way.
        low, high = np.minimum(low, high), np.maximum(low, high)
        unc = np.maximum(energy - low, high - energy) + _float_slack(est0, est1)
        empty = b_ns == a_ns
        energy = np.where(empty, 0.0, energy)
        unc = np.where(empty, 0.0, unc)
        settled = empty | (b <= self._lo[-1])
        short = (b - a) < self.resolution_s
        return WindowArrays(energy, unc, settled, short)


# --------------------------------------------------------------------------------------------
# Power channels


class PowerCurve(_Curve):
    """Cumulative-energy curve of a power channel, prepared once and queried per window.

    Estimate. Power is linear between samples, so the energy from sample ``i`` to a time ``t``
    inside the next interval is ``(t - t_i) * (p_i + p(t)) / 2`` with ``p(t)`` interpolated: the
    trapezoid rule with the edges interpolated. It is added to the core's running integral
    ``cum_j`` at sample ``i``, so a window is exactly the trapezoid of the power samples, and an
    interval where the ring lost samples (its ``cum_j`` increment differs from the trapezoid of
    its two ends) still carries the core's exact increment; inside such a hole ``E(t)`` is linear.

    Averaged power. When each sample is the mean power over the trailing ``W`` seconds, the
    curve of the averaged power lags the true one by ``W / 2``; windows are shifted by ``W / 2``
    (so the end is settled only once a sample at ``t1 + W / 2`` exists).

    Bound. Between two samples the true power is assumed to stay within their range widened by
    ``delta_i``, half the largest change over the neighbouring intervals (a curvature allowance:
    a smooth peak between samples exceeds them by less than that). Then a whole interval of
    length ``h`` is off by at most ``h * (|p_{i+1} - p_i| / 2 + delta_i)`` and a partial one of
    length ``d`` by ``d * (|p_{i+1} - p_i| + delta_i)``: sampling period times the power
    variation between the bracketing samples. The window's bound is the sum over the intervals
    it covers. Holes are charged the mean bound per second of the intact intervals (their
    samples are unknown) and, when a hole holds an edge, the whole bracket ``[0, increment]``.
    Averaged power adds ``W / 8 * P`` per edge (the shifted box differs from the true one by two
    ramps of weight ``W / 8`` each; the power is between 0 and ``P``). Beyond the last sample
    the power is held, with error at most ``d * max(p_last, P - p_last)``. ``P`` is the caller's
    ``peak_power_w`` or :data:`PEAK_POWER_MARGIN` times the peak sample; for averaged power
    pass the device's power limit, since averaging hides short peaks.
    """

    def __init__(self, trace: Trace, *, peak_power_w: float | None = None) -> None:
        p = trace.power_w
        if p is None:
            raise ConfigError("PowerCurve needs a power trace; use CounterCurve for counters")
        self._t_ref_ns = int(trace.t_ns[0])
        t = (trace.t_ns - self._t_ref_ns).astype(np.float64) / _NS_PER_S
        cum = trace.cum_j
        self._t, self._p, self._cum = t, p, cum
        self._average_s = float(trace.averaging_window_ns) / _NS_PER_S
        self._shift_s = self._average_s / 2.0
        h = np.diff(t)
        dp = np.diff(p)
        trap = h * (p[1:] + p[:-1]) / 2.0
        dcum = np.diff(cum)
        tol = 1e-6 * (np.abs(dcum) + np.abs(trap)) + 4.0 * POWER_INTEGRAL_QUANTUM_J
        self._hole = np.abs(dcum - trap) > tol
        adp = np.abs(dp)
        neighbour = np.zeros_like(adp)
        if adp.size > 1:
            neighbour[1:] = adp[:-1]
            neighbour[:-1] = np.maximum(neighbour[:-1], adp[1:])
        self._adp = adp
        self._delta = neighbour / 2.0
        full = h * (adp / 2.0 + self._delta)
        intact = ~self._hole
        rate = float(full[intact].sum() / h[intact].sum()) if intact.any() else 0.0
        full = np.where(self._hole, rate * h, full)
        self._bound_cum = np.concatenate(([0.0], np.cumsum(full)))

        self.peak_seen_w: float = float(np.max(p))
        if peak_power_w is not None:
            if not (np.isfinite(peak_power_w) and peak_power_w >= 0):
                raise ConfigError(f"peak_power_w must be a finite value >= 0, got {peak_power_w}")
            self.peak_bound_w: float = float(peak_power_w)
        else:
            self.peak_bound_w = PEAK_POWER_MARGIN * max(self.peak_seen_w, 0.0)
        spacing_s = float(np.median(h))
        self.resolution_s: float = max(spacing_s, self._average_s)

    def _to_s(self, t_ns: np.ndarray) -> np.ndarray:
        return (t_ns - self._t_ref_ns).astype(np.float64) / _NS_PER_S

    def _locate(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For times ``t`` (s): the interval index ``i`` with ``t_i <= t`` (``n - 1`` past the
        end) and the cumulative energy estimate at ``t`` (J)."""
        ts, p, cum = self._t, self._p, self._cum
        n = ts.size
        i = np.clip(np.searchsorted(ts, t, side="right") - 1, 0, n - 1)
        d = t - ts[i]
        ii = np.minimum(i, n - 2)
        h = ts[ii + 1] - ts[ii]
        pt = p[ii] + (p[ii + 1] - p[ii]) * (d / h)
        part = np.where(self._hole[ii], (cum[ii + 1] - cum[ii]) * (d / h), d * (p[ii] + pt) / 2.0)
        part = np.where(i < n - 1, part, d * p[-1])
        return i, cum[i] + part

    def _piece_bound(self, i: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Bound (J) on the error of the estimate over ``[start, end]`` inside interval ``i``."""
        ts, n = self._t, self._t.size
        ii = np.minimum(i, n - 2)
        d = end - start
        regular = d * (self._adp[ii] + self._delta[ii])
        dcum = self._cum[ii + 1] - self._cum[ii]
        est = dcum * d / (ts[ii + 1] - ts[ii])
        hole = np.maximum(est, dcum - est)
        pl = self._p[-1]
        beyond = d * max(pl, self.peak_bound_w - pl, 0.0)
        return np.where(i < n - 1, np.where(self._hole[ii], hole, regular), beyond)

    def window_arrays(
        self, t0_ns: Sequence[int] | np.ndarray, t1_ns: Sequence[int] | np.ndarray
    ) -> WindowArrays:
        """Like :meth:`windows`, as arrays (no per-window objects): the fast path for many."""
        a_ns, b_ns = _check_windows(t0_ns, t1_ns)
        a = self._to_s(a_ns) + self._shift_s
        b = self._to_s(b_ns) + self._shift_s
        _check_start(a_ns, self._t_ref_ns - round(self._shift_s * _NS_PER_S))
        ia, ea = self._locate(a)
        ib, eb = self._locate(b)
        energy = eb - ea
        last = self._t.size - 1
        ia_next = np.minimum(ia + 1, last)
        split = (
            self._piece_bound(ia, a, self._t[ia_next])
            + (self._bound_cum[ib] - self._bound_cum[ia_next])
            + self._piece_bound(ib, self._t[ib], b)
        )
        unc = np.where(ia == ib, self._piece_bound(ia, a, b), split) + _float_slack(ea, eb)
        unc = unc + 2.0 * POWER_INTEGRAL_QUANTUM_J  # the core stores cum_j in whole quanta
        if self._average_s > 0:
            unc = unc + 2.0 * self._average_s / 8.0 * self.peak_bound_w
        empty = b_ns == a_ns
        energy = np.where(empty, 0.0, energy)
        unc = np.where(empty, 0.0, unc)
        settled = empty | (b <= self._t[-1])
        short = (b - a) < self.resolution_s
        return WindowArrays(energy, unc, settled, short)


# --------------------------------------------------------------------------------------------
# Shared helpers and the functional API

Curve = Union[CounterCurve, PowerCurve]


def _check_windows(
    t0_ns: Sequence[int] | np.ndarray, t1_ns: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    a = np.atleast_1d(np.asarray(t0_ns))
    b = np.atleast_1d(np.asarray(t1_ns))
    for name, arr in (("t0_ns", a), ("t1_ns", b)):
        if arr.dtype.kind not in "iu":
            raise ConfigError(f"{name} must be integer nanoseconds, got dtype {arr.dtype}")
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(f"t0_ns and t1_ns must have the same 1-D shape, got {a.shape}, {b.shape}")
    a = a.astype(np.int64)
    b = b.astype(np.int64)
    if np.any(b < a):
        i = int(np.flatnonzero(b < a)[0])
        raise ConfigError(f"window end t1_ns={b[i]} is before its start t0_ns={a[i]}")
    return a, b


def _check_start(a_ns: np.ndarray, earliest_ns: int) -> None:
    if np.any(a_ns < earliest_ns):
        i = int(np.flatnonzero(a_ns < earliest_ns)[0])
        raise ConfigError(
            f"window starts at t0_ns={int(a_ns[i])}, before the earliest start the trace covers "
            f"({earliest_ns} ns); pass a trace that begins at or before the window (the "
            "meter's synchronous start reading)"
        )


def _float_slack(e0: np.ndarray, e1: np.ndarray) -> np.ndarray:
    """Rounding allowance (J) for a difference of two large cumulative values."""
    return 16.0 * np.finfo(np.float64).eps * (np.abs(e0) + np.abs(e1))


def _results(
    a_ns: np.ndarray,
    b_ns: np.ndarray,
    energy: np.ndarray,
    unc: np.ndarray,
    settled: np.ndarray,
    short: np.ndarray,
) -> list[WindowEnergy]:
    return [
        WindowEnergy(
            t0_ns=int(a_ns[i]),
            t1_ns=int(b_ns[i]),
            energy_j=float(energy[i]),
            uncertainty_j=float(unc[i]),
            settled=bool(settled[i]),
            short_window=bool(short[i]),
        )
        for i in range(a_ns.size)
    ]


def prepare(trace: Trace, *, peak_power_w: float | None = None) -> Curve:
    """Prepare a trace for many window queries (knots, update instants, peak power).

    ``peak_power_w`` (W), if given, replaces the estimated peak power in the error bound: pass a
    hard limit such as the device's power limit when one is known.
    """
    if trace.is_power:
        return PowerCurve(trace, peak_power_w=peak_power_w)
    return CounterCurve(trace, peak_power_w=peak_power_w)


def window_energy(
    trace: Trace, t0_ns: int, t1_ns: int, *, peak_power_w: float | None = None
) -> WindowEnergy:
    """Energy (J) of one channel over ``[t0_ns, t1_ns]`` (ns) with its error bound.

    The trace may be any slice of the ring that begins at or before ``t0_ns`` (the meter's
    synchronous start reading is enough), including one that lost the samples in the middle of
    a long window. See :class:`CounterCurve` and :class:`PowerCurve` for the method and the
    bound, and :class:`WindowEnergy` for the flags.
    """
    return prepare(trace, peak_power_w=peak_power_w).window(t0_ns, t1_ns)


def window_energies(
    trace: Trace,
    t0_ns: Sequence[int] | np.ndarray,
    t1_ns: Sequence[int] | np.ndarray,
    *,
    peak_power_w: float | None = None,
) -> list[WindowEnergy]:
    """Energies (J) of many windows ``[t0_ns[i], t1_ns[i]]`` (ns) over one trace, vectorised:
    phases and steps share the preparation work."""
    return prepare(trace, peak_power_w=peak_power_w).windows(t0_ns, t1_ns)


def estimate_peak_power_w(trace: Trace) -> float:
    """The peak power seen in a trace, in watts.

    Counter channels: the largest mean power over one interval between estimated update
    instants. Power channels: the largest power sample. The error bounds use
    :data:`PEAK_POWER_MARGIN` times this value unless the caller passes a hard limit.
    """
    return prepare(trace).peak_seen_w
