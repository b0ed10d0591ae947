"""Forecast the energy of a whole run from its first steps, with a prediction interval.

The profile is the ordered sequence of step energies (and durations) measured so far. The
forecast of a run of ``total_steps`` steps is the energy already measured plus the expected
energy of the steps still to come, estimated as follows:

1. **Periodic costs.** Steps far above the typical step (robust z > 6) that recur at a fixed
   spacing (an evaluation or checkpoint every k steps, an epoch boundary) are recognised as a
   periodic cost: the base steps and the periodic excess are forecast separately, the excess
   once per remaining period at the observed phase.
2. **Warm-up.** The first steps are often slower (compilation, caches, cuDNN autotuning).
   They are found with MSER-5 (White, 1997: the truncation point minimising the marginal
   standard error of the remaining mean), searched over the first half of the profile, and
   excluded from the rate; their energy still counts as measured.
3. **Rate and its error.** The mean base step energy after warm-up, with the variance of the
   remaining sum from non-overlapping batch means (8-30 batches), so that autocorrelated
   steps (thermal drift, data-dependent cost runs) do not make the interval too narrow. The
   interval is Student-t with (batches - 1) degrees of freedom and covers both the error of
   the estimated rate and the noise of the remaining steps.
4. **Stationarity.** A linear trend in the batch means that is significant (|t| above the
   99.5 % quantile) *and* moves the forecast by more than the interval's half-width, or a
   warm-up that MSER places beyond 40 % of the profile, marks the profile as not stationary:
   the forecast then says so, and its interval spans both the level and the trend
   extrapolations instead of pretending to a narrow one.

A profile with too few steps after warm-up raises :class:`ForecastError` rather than guessing.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._errors import GreenmlError
from ._records import json_numbers

#: Fewest full blocks after warm-up (and periodic steps) a forecast is made from.
MIN_BLOCKS = 40
#: Robust z-score above which a step counts as a spike (candidate periodic cost).
SPIKE_Z = 6.0
#: MSER batch size (MSER-5) and the largest truncation, as a fraction of the profile.
MSER_BATCH = 5
MSER_MAX_FRACTION = 0.5
#: A truncation beyond this fraction means the warm-up may not be over yet.
WARMUP_NOT_OVER = 0.4
#: Significance of a trend that makes the profile non-stationary (two-sided).
TREND_ALPHA = 0.01


class ForecastError(GreenmlError):
    """The profile cannot support a forecast (too short, nothing measured, bad options)."""


@dataclass
class Forecast:
    """The forecast total of a run: energy (J), duration (s) and carbon (g CO2e), each with
    a prediction interval at ``confidence``.

    ``fraction_profiled`` is the share of ``total_steps`` already measured (``steps_used``
    resolved steps); ``warmup_steps`` were excluded from the rate; ``period_steps`` is the
    spacing of a detected periodic cost (None if none); ``stationary`` is False when the
    profile drifts or is still warming up (the interval then spans the extrapolations).
    """

    energy_j: float
    low_j: float
    high_j: float
    duration_s: float
    duration_low_s: float
    duration_high_s: float
    co2e_g: float
    co2e_low_g: float
    co2e_high_g: float
    method: str
    fraction_profiled: float
    warmup_steps: int
    stationary: bool
    steps_used: int
    total_steps: int
    confidence: float
    measured_j: float
    period_steps: Optional[int] = None
    steps_pending: int = 0
    notes: Tuple[str, ...] = field(default_factory=tuple)

    @property
    def relative_error(self) -> float:
        """Half-width of the energy interval relative to the forecast (0.02 = +/- 2 %)."""
        if not self.energy_j:
            return math.nan
        return (self.high_j - self.low_j) / 2 / abs(self.energy_j)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        d["relative_error"] = self.relative_error
        return json_numbers(d)

    def describe(self) -> str:
        """A few lines for people: the total, its interval and how it was made."""
        pct = int(round(self.confidence * 100))
        lines = [
            f"forecast for {self.total_steps} steps: {self.energy_j:.4g} J "
            f"({pct}% interval {self.low_j:.4g} - {self.high_j:.4g} J, "
            f"+/- {self.relative_error:.1%}), "
            f"{self.duration_s:.4g} s ({self.duration_low_s:.4g} - {self.duration_high_s:.4g} s), "
            f"{self.co2e_g:.3g} gCO2e ({self.co2e_low_g:.3g} - {self.co2e_high_g:.3g})",
            f"  from {self.steps_used} measured steps ({self.fraction_profiled:.1%} of the run), "
            f"{self.warmup_steps} warm-up steps excluded"
            + (f", a periodic cost every {self.period_steps} steps" if self.period_steps else "")
            + ("" if self.stationary else "; NOT STATIONARY")
            + f"; {self.method}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


# ------------------------------------------------------------------------------ statistics


def t_quantile(p: float, dof: float) -> float:
    """Student-t quantile (scipy when installed, else a Cornish-Fisher expansion accurate to
    about 1e-3 for dof >= 4)."""
    try:
        from scipy.stats import t as _t

        return float(_t.ppf(p, dof))
    except ImportError:  # pragma: no cover - scipy is optional
        pass
    z = NormalDist().inv_cdf(p)
    v = float(dof)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / v + g2 / v**2 + g3 / v**3 + g4 / v**4


def mser_truncation(x: np.ndarray, batch: int = MSER_BATCH, max_fraction: float = 0.5) -> int:
    """MSER-m warm-up length (in elements of ``x``): the truncation minimising the marginal
    standard error of the mean of what remains, over the first ``max_fraction`` of x."""
    nb = x.size // batch
    if nb < 4:
        return 0
    z = x[: nb * batch].reshape(nb, batch).mean(axis=1)
    # For every d: sum((z[d:] - mean(z[d:]))^2) / (nb - d)^2, from suffix sums.
    s1 = np.cumsum(z[::-1])[::-1]
    s2 = np.cumsum((z * z)[::-1])[::-1]
    n = nb - np.arange(nb)
    sse = s2 - s1 * s1 / n
    stat = sse / (n * n)
    dmax = max(1, int(nb * max_fraction))
    d = int(np.argmin(stat[:dmax]))
    return d * batch


def _batches(n: int) -> int:
    """Number of batches for n elements: about sqrt(n)/2, from 8 to 20. Fewer, longer batches
    than sqrt(n) keep the variance honest for strongly autocorrelated steps (AR(1) with
    phi = 0.9: 87 % coverage of a nominal 90 % interval, against 83 % with sqrt(n) batches)."""
    return min(n, int(min(20, max(8, round(math.sqrt(n) / 2)))))


def batch_means(x: np.ndarray) -> Tuple[float, float, int]:
    """(mean, long-run variance per element, degrees of freedom) of a possibly autocorrelated
    series, from non-overlapping batch means."""
    n = x.size
    b = _batches(n)
    size = n // b
    z = x[: b * size].reshape(b, size).mean(axis=1)
    var = size * float(z.var(ddof=1)) if b > 1 else math.inf
    return float(x.mean()), var, b - 1


def _trend(x: np.ndarray) -> Tuple[float, float, float]:
    """(slope per element, its standard error, t statistic) of a linear trend fitted to the
    batch means of x."""
    n = x.size
    b = _batches(n)
    size = n // b
    z = x[: b * size].reshape(b, size).mean(axis=1)
    t = (np.arange(b) + 0.5) * size
    tc = t - t.mean()
    sxx = float((tc * tc).sum())
    slope = float((tc * (z - z.mean())).sum() / sxx)
    resid = z - z.mean() - slope * tc
    s2 = float((resid * resid).sum() / max(1, b - 2))
    se = math.sqrt(s2 / sxx) if s2 > 0 else 0.0
    tstat = slope / se if se > 0 else (math.inf if slope else 0.0)
    return slope, se, tstat


def _robust_scale(x: np.ndarray) -> Tuple[float, float]:
    med = float(np.median(x))
    mad = 1.4826 * float(np.median(np.abs(x - med)))
    return med, mad


def detect_period(x: np.ndarray, min_spikes: int = 3) -> Optional[Tuple[int, int]]:
    """(period, start) of spikes recurring at a fixed spacing in ``x``, or None; ``start`` is
    the first spike of the series (the periodic cost may begin after the run does).

    Spikes are judged against the second half of the series (free of warm-up); the spikes
    after the first quarter must be evenly spaced, and most positions of that phase must be
    spikes.
    """
    n = x.size
    if n < 8:
        return None
    med, mad = _robust_scale(x[n // 2 :])
    thresh = med + SPIKE_Z * max(mad, 1e-3 * abs(med), 1e-12)
    idx = np.flatnonzero(x > thresh)
    idx = idx[idx >= n // 4]
    if idx.size < min_spikes:
        return None
    gaps = np.diff(idx)
    k = int(np.median(gaps))
    if k < 2 or not np.all(gaps == k):
        return None
    phase = int(idx[0] % k)
    at = np.arange(phase + ((n // 4 - phase + k - 1) // k) * k, n, k)
    if at.size == 0 or float(np.mean(x[at] > thresh)) < 0.8:
        return None
    at = np.arange(phase, n, k)
    return k, int(at[int(np.argmax(x[at] > thresh))])


def _check_hint(x: np.ndarray, period_steps: int, k: int) -> Optional[Tuple[int, int]]:
    """(period, phase) in blocks if the blocks at one phase of ``period_steps`` are spikes."""
    if period_steps % k or period_steps // k < 4:
        return None
    kk = period_steps // k
    nper = x.size // kk
    if nper < 1:
        return None
    ph = int(np.argmax(x[: nper * kk].reshape(nper, kk).mean(axis=0)))
    if nper == 1 and ph != kk - 1:
        # One epoch seen: only its last step (an end-of-epoch evaluation or checkpoint) can be
        # told apart from a stray slow step.
        return None
    rest = np.delete(x, np.arange(ph, x.size, kk))
    med, mad = _robust_scale(rest[rest.size // 2 :])
    thresh = med + SPIKE_Z * max(mad, 1e-3 * abs(med), 1e-12)
    return (kk, ph) if bool(np.all(x[ph::kk] > thresh)) else None  # ph: the first one


# ------------------------------------------------------------------------------ forecasting


@dataclass
class _Part:
    """The forecast of the remaining sum of one quantity (energy or duration)."""

    future: float
    var: float
    dof: int
    trend_future: float
    trend_var: float  # of the trend extrapolation: the level's variance plus the slope's
    trend_t: float


def _forecast_part(y: np.ndarray, remaining: float) -> _Part:
    mean, lrv, dof = batch_means(y)
    m = y.size
    var = remaining * lrv * (1.0 + remaining / m)
    slope, se, tstat = _trend(y)
    # The linear trend continued over the remaining steps, from the profile's centre.
    lever = remaining * (m - (m - 1) / 2 + (remaining - 1) / 2)
    # A step never costs less than nothing: the line is cut at zero where it would cross it.
    trend_future = _positive_line_sum(mean + slope * (m - (m - 1) / 2), slope, remaining)
    return _Part(remaining * mean, var, dof, trend_future, var + (se * lever) ** 2, tstat)


def _positive_line_sum(a: float, b: float, n: float) -> float:
    """Integral of max(0, a + b t) for t in [0, n]: a linear trend's sum, never negative."""
    if n <= 0:
        return 0.0
    if b == 0:
        return max(a, 0.0) * n
    t0 = -a / b  # where the line crosses zero
    lo, hi = (0.0, min(n, max(t0, 0.0))) if b < 0 else (min(n, max(t0, 0.0)), n)
    if hi <= lo:
        return 0.0
    return a * (hi - lo) + b * (hi * hi - lo * lo) / 2


def forecast_blocks(
    counts: np.ndarray,
    energy_j: np.ndarray,
    duration_s: np.ndarray,
    total_steps: int,
    *,
    confidence: float = 0.9,
    gco2e_per_kwh: float = float("nan"),
    pue: float = 1.0,
    period_steps: Optional[int] = None,
    period_hint: Optional[int] = None,
    steps_pending: int = 0,
) -> Forecast:
    """Forecast from an ordered profile of blocks (``counts[i]`` consecutive steps summing to
    ``energy_j[i]`` joules over ``duration_s[i]`` seconds; blocks of one step each for a
    plain sequence). See the module docstring for the method.

    ``period_steps`` forces a periodic cost at that spacing; ``period_hint`` (the steps per
    epoch) is a spacing to check when none is detected: it is accepted when the steps at one
    phase of it are spikes, so a profile of one epoch still sees its end-of-epoch cost."""
    counts = np.asarray(counts, dtype=np.int64)
    e = np.asarray(energy_j, dtype=float)
    d = np.asarray(duration_s, dtype=float)
    if not (counts.shape == e.shape == d.shape) or counts.ndim != 1:
        raise ForecastError("the profile's counts, energies and durations differ in length")
    if not (0 < confidence < 1):
        raise ForecastError(f"confidence={confidence!r}: give a probability, e.g. 0.9")
    observed = int(counts.sum())
    if not isinstance(total_steps, (int, np.integer)) or isinstance(total_steps, bool):
        raise ForecastError(f"total_steps={total_steps!r}: give a whole number of steps")
    total_steps = int(total_steps)
    if observed == 0:
        raise ForecastError(
            "no resolved steps to forecast from: call m.step() at every training step and "
            "forecast after a few hundred of them"
        )
    if total_steps < observed:
        raise ForecastError(
            f"total_steps={total_steps} is fewer than the {observed} steps already measured: "
            "give the total number of steps of the whole run"
        )
    if not np.all(np.isfinite(e)):
        raise ForecastError(
            "the profile has no energy (nothing measurable here): run `greenml sensors` to see "
            "why, or set GREENML_CPU_TDP_W for an estimate"
        )
    measured_j = float(e.sum())
    measured_s = float(d.sum())
    # Statistics use the full blocks of the common size; a trailing partial block only counts
    # as measured.
    k = int(counts[0])
    full = counts == k
    nfull = int(np.argmin(full)) if not full.all() else counts.size
    ce, cd = e[:nfull], d[:nfull]
    remaining_steps = total_steps - observed
    remaining = remaining_steps / k  # in blocks
    notes = []

    # 1. periodic costs (recognisable only while a period spans several blocks)
    if period_steps is not None:
        if period_steps < 1:
            raise ForecastError(f"period_steps={period_steps!r}: give a whole number >= 1")
        per = (period_steps // k, 0) if period_steps % k == 0 and period_steps // k >= 2 else None
        if per is not None:  # the phase: where the mean spike is largest
            kk = per[0]
            nper = ce.size // kk
            if nper >= 1:
                per = (kk, int(np.argmax(ce[: nper * kk].reshape(nper, kk).mean(axis=0))))
            else:
                per = None
    else:
        per = detect_period(ce)
        if per is None and period_hint is not None:
            per = _check_hint(ce, period_hint, k)
    spike = np.zeros(ce.size, dtype=bool)
    if per is not None:  # (period, first periodic block)
        spike[per[1] :: per[0]] = True

    # 2. warm-up, on the base steps
    base_idx = np.flatnonzero(~spike)
    base = ce[base_idx]
    if base.size < MIN_BLOCKS:
        raise ForecastError(
            f"the profile is too short: {base.size * k} resolved steps, a forecast needs at "
            f"least {MIN_BLOCKS * k}; forecast again later in the run"
        )
    cut = mser_truncation(base, max_fraction=MSER_MAX_FRACTION)
    warm_not_over = cut > WARMUP_NOT_OVER * base.size
    start = int(base_idx[cut]) if cut else 0  # first block of the rate profile
    warmup_steps = start * k
    keep = np.arange(ce.size) >= start
    yb = ce[keep & ~spike]
    yd = cd[keep & ~spike]
    if yb.size < MIN_BLOCKS:
        raise ForecastError(
            f"the profile is too short: {yb.size * k} resolved steps after {warmup_steps} "
            f"warm-up steps, a forecast needs at least {MIN_BLOCKS * k}; forecast again later"
        )

    # future periodic positions (block indices) and the observed excess at them
    n_future_spikes = 0
    exc_mean = exc_var = dexc_mean = 0.0
    sp = keep & spike
    if per is not None and sp.any():
        first, last = observed // k, total_steps // k  # block positions still to come
        kk, ph = per
        n_future_spikes = max(0, (last - ph + kk - 1) // kk - (first - ph + kk - 1) // kk)
        base_mean = float(yb.mean())
        exc = ce[sp] - base_mean
        exc_mean = float(exc.mean())
        if exc.size > 1:
            exc_var = float(exc.var(ddof=1))
        else:  # one periodic step seen: assume the base steps' relative spread
            exc_var = float(yb.var(ddof=1)) / max(base_mean**2, 1e-300) * float(ce[sp][0]) ** 2
        dexc_mean = float((cd[sp] - yd.mean()).mean())
        remaining -= n_future_spikes  # those blocks are forecast as base + excess
        remaining = max(remaining, 0.0)
        notes.append(
            f"periodic cost every {kk * k} steps: {exc.size} seen, {n_future_spikes} to come, "
            f"{exc_mean:.4g} J above a base step each"
        )
    n_base_future = remaining + n_future_spikes
    pe = _forecast_part(yb, n_base_future)
    pd_ = _forecast_part(yd, n_base_future)

    fut_e = pe.future + n_future_spikes * exc_mean
    var_e = pe.var
    if n_future_spikes:
        nsp = int(sp.sum())
        var_e += n_future_spikes * exc_var * (1 + n_future_spikes / nsp)
    fut_d = pd_.future + n_future_spikes * dexc_mean

    q = t_quantile(0.5 + confidence / 2, max(1, pe.dof))
    half_e = q * math.sqrt(var_e)
    half_d = q * math.sqrt(pd_.var)
    energy = measured_j + fut_e
    low, high = energy - half_e, energy + half_e
    duration = measured_s + fut_d
    dlow, dhigh = duration - half_d, duration + half_d

    # 4. stationarity: a trend that is significant and matters at this precision
    t_crit = t_quantile(1 - TREND_ALPHA / 2, max(1, pe.dof - 1))
    trend_shift = pe.trend_future - pe.future
    drifting = abs(pe.trend_t) > t_crit and abs(trend_shift) > half_e
    stationary = not (drifting or warm_not_over)
    method = "warm-up excluded (MSER-5), batch-means t interval"
    if per is not None:
        method += ", periodic cost separated"
    if drifting:
        notes.append(
            f"the step energy drifts ({pe.trend_t:+.1f} sigma trend over the profile): "
            "the interval spans the level and the linear-trend extrapolations and the whole "
            "profile's rate; profile longer or forecast again later"
        )
        tr = measured_j + pe.trend_future + n_future_spikes * exc_mean
        tr_half = q * math.sqrt(var_e - pe.var + pe.trend_var)
        low, high = min(low, tr - tr_half), max(high, tr + tr_half)
        trd = measured_s + pd_.trend_future + n_future_spikes * dexc_mean
        trd_half = q * math.sqrt(pd_.trend_var)
        dlow, dhigh = min(dlow, trd - trd_half), max(dhigh, trd + trd_half)
        method += "; non-stationary: interval spans level and trend"
    if drifting or warm_not_over:
        # A rate still moving may be a warm-up not yet over: the rate over the whole profile,
        # warm-up included, bounds the other side.
        whole = measured_j + (total_steps - observed) * float(ce.mean()) / k
        whole_d = measured_s + (total_steps - observed) * float(cd.mean()) / k
        low, high = min(low, whole), max(high, whole)
        if math.isfinite(whole_d):
            dlow, dhigh = min(dlow, whole_d), max(dhigh, whole_d)
    if warm_not_over:
        notes.append(
            f"the warm-up may not be over ({warmup_steps} of {observed} steps look like "
            "warm-up): forecast again later; the interval is widened to cover the whole profile's "
            "rate"
        )
        method += "; warm-up not over: interval covers the whole-profile rate"
    low = max(low, measured_j)
    dlow = max(dlow, measured_s)

    def co2(x: float) -> float:
        return x / 3.6e6 * gco2e_per_kwh * pue

    return Forecast(
        energy_j=energy,
        low_j=low,
        high_j=high,
        duration_s=duration,
        duration_low_s=dlow,
        duration_high_s=dhigh,
        co2e_g=co2(energy),
        co2e_low_g=co2(low),
        co2e_high_g=co2(high),
        method=method,
        fraction_profiled=observed / total_steps if total_steps else 1.0,
        warmup_steps=warmup_steps,
        stationary=stationary,
        steps_used=observed,
        total_steps=total_steps,
        confidence=confidence,
        measured_j=measured_j,
        period_steps=per[0] * k if per is not None else None,
        steps_pending=steps_pending,
        notes=tuple(notes),
    )


def total_from(
    total_steps: Optional[int], epochs: Optional[float], steps_per_epoch: Optional[int]
) -> int:
    """The run's total steps from ``total_steps`` or ``epochs`` x ``steps_per_epoch``."""
    if total_steps is not None:
        if epochs is not None:
            raise ForecastError("give either total_steps=... or epochs=... with steps_per_epoch")
        return total_steps
    if epochs is None or steps_per_epoch is None:
        raise ForecastError(
            "say how long the whole run is: total_steps=N, or epochs=E with steps_per_epoch=S"
        )
    if steps_per_epoch < 1 or epochs <= 0:
        raise ForecastError(
            f"epochs={epochs!r}, steps_per_epoch={steps_per_epoch!r}: give positive numbers"
        )
    return int(round(epochs * steps_per_epoch))


def _profile_from_table(df: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    cols = {str(c).lower(): c for c in df.columns}
    if "energy_j" not in cols:
        raise ForecastError(
            "the table has no energy_j column: give one row per step (or block of steps) with "
            "energy_j, and optionally duration_s and steps"
        )
    e = df[cols["energy_j"]].to_numpy(dtype=float)
    d = (
        df[cols["duration_s"]].to_numpy(dtype=float)
        if "duration_s" in cols
        else np.full(e.size, np.nan)
    )
    c = (
        df[cols["steps"]].to_numpy(dtype=np.int64)
        if "steps" in cols
        else np.ones(e.size, dtype=np.int64)
    )
    return c, e, d


def _profile_from_log(path: str, run_id: Optional[str]) -> Tuple[Any, ...]:
    from ._records import read_records

    recs = [
        r
        for r in read_records(path)
        if isinstance(r.get("steps"), dict) and isinstance(r["steps"].get("profile"), dict)
    ]
    if run_id is not None:
        recs = [r for r in recs if r.get("run_id") == run_id]
    if not recs:
        raise ForecastError(
            f"{path} holds no step profile"
            + (f" for run {run_id!r}" if run_id else "")
            + ": a meter writes one to its log=... when it stops, if m.step() was called; "
            "or give a CSV with an energy_j column, one row per step"
        )
    r = recs[-1]
    p = r["steps"]["profile"]
    n = len(p["energy_j"])
    c = np.full(n, int(p["block_steps"]), dtype=np.int64)
    if n:
        c[-1] = int(p["last_block_steps"])
    e = np.array([np.nan if v is None else v for v in p["energy_j"]], dtype=float)
    d = np.array(p["duration_s"], dtype=float)
    carbon = r.get("carbon") or {}
    return c, e, d, carbon.get("gco2e_per_kwh"), carbon.get("pue", 1.0)


def forecast(
    profile: Any,
    total_steps: Optional[int] = None,
    *,
    epochs: Optional[float] = None,
    steps_per_epoch: Optional[int] = None,
    confidence: float = 0.9,
    region: Optional[str] = None,
    carbon_intensity: Optional[float] = None,
    pue: Optional[float] = None,
    period_steps: Optional[int] = None,
    run_id: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
) -> Forecast:
    """Forecast a run's total energy, duration and carbon from its first steps.

    Args:
        profile: a greenml JSON Lines log (path; the last meter record with a step profile, or
            that of ``run_id``), a CSV/Parquet path or a pandas DataFrame with one row per step
            (``energy_j`` in J; optional ``duration_s`` in s and ``steps`` per row), or a
            sequence of per-step energies in J.
        total_steps: steps of the whole run; or ``epochs`` x ``steps_per_epoch``.
        confidence: coverage of the prediction intervals (default 0.9).
        region, carbon_intensity, pue: carbon as for :func:`greenml.meter` (default: from the
            log's record, else the environment).
        period_steps: a known spacing of periodic costs (default: detected).
    """
    from . import _carbon

    n_total = total_from(total_steps, epochs, steps_per_epoch)
    gpk: Optional[float] = None
    log_pue = 1.0
    if isinstance(profile, (str, os.PathLike)):
        path = os.fspath(profile)
        if not os.path.exists(path):
            raise ForecastError(f"{path}: no such file; give a greenml log or a per-step CSV")
        low = path.lower()
        if low.endswith((".csv", ".parquet")):
            import pandas as pd

            df = pd.read_parquet(path) if low.endswith(".parquet") else pd.read_csv(path)
            c, e, d = _profile_from_table(df)
        else:
            c, e, d, gpk, log_pue = _profile_from_log(path, run_id)
    elif hasattr(profile, "columns"):
        c, e, d = _profile_from_table(profile)
    elif isinstance(profile, (Sequence, np.ndarray)):
        e = np.asarray(profile, dtype=float)
        c = np.ones(e.size, dtype=np.int64)
        d = np.full(e.size, np.nan)
    else:
        raise ForecastError(
            f"cannot forecast from a {type(profile).__name__}: give a log path, a CSV path, "
            "a DataFrame with energy_j per step, or a list of step energies"
        )
    if region is not None or carbon_intensity is not None or gpk is None:
        intensity = _carbon.resolve_intensity(region, carbon_intensity, env=env)
        gpk = intensity.gco2e_per_kwh
    p = log_pue if pue is None else pue
    _carbon.co2e_g(0.0, _carbon.resolve_intensity(intensity=gpk), p)  # validates pue
    return forecast_blocks(
        c,
        e,
        d,
        n_total,
        confidence=confidence,
        gco2e_per_kwh=gpk,
        pue=p,
        period_steps=period_steps,
        period_hint=steps_per_epoch,
    )


def carbontracker_rule(energy_j: np.ndarray, steps_per_epoch: int, total_steps: int) -> float:
    """Carbontracker's extrapolation (for comparison): the first epoch's energy times the
    number of epochs, i.e. the plain mean step energy of epoch one times the total steps."""
    first = np.asarray(energy_j[:steps_per_epoch], dtype=float)
    return float(first.mean()) * total_steps


# ------------------------------------------------------------------------------ meters

#: Blocks of the step profile written to a log (coarsened pairwise beyond this).
LOG_MAX_BLOCKS = 2048


def _meter_profile(meter: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The resolved step profile of a meter (flushing what is ready) and the steps pending."""
    steps = meter.steps  # resolves every ready step (all of them once the meter stopped)
    c, e, d = steps.ordered.blocks()
    return c, e, d, len(steps._pending)


def meter_forecast(
    meter: Any,
    total_steps: Optional[int] = None,
    *,
    epochs: Optional[float] = None,
    steps_per_epoch: Optional[int] = None,
    confidence: float = 0.9,
    period_steps: Optional[int] = None,
) -> Forecast:
    """:meth:`greenml.Meter.forecast`: from the meter's resolved steps only."""
    n = total_from(total_steps, epochs, steps_per_epoch)
    if meter._window is None:
        raise ForecastError("this meter has not started: forecast after some m.step() calls")
    c, e, d, pending = _meter_profile(meter)
    f = forecast_blocks(
        c,
        e,
        d,
        n,
        confidence=confidence,
        gco2e_per_kwh=meter._intensity.gco2e_per_kwh,
        pue=meter._pue,
        period_steps=period_steps,
        period_hint=steps_per_epoch,
        steps_pending=pending,
    )
    if pending:
        f.notes = f.notes + (
            f"{pending} more steps were taken but not resolved yet; they are forecast, not "
            "counted as measured",
        )
    return f


def steps_profile(meter: Any) -> Optional[Dict[str, Any]]:
    """The ordered step profile of a stopped meter, for its log record (``steps.profile``):
    at most LOG_MAX_BLOCKS blocks of ``block_steps`` steps, the last one possibly partial."""
    steps = meter._steps_value
    if steps is None or not steps.count:
        return None
    c, e, d = steps.ordered.blocks()
    k = int(c[0])
    while e.size > LOG_MAX_BLOCKS:  # coarsen pairwise, as the record itself does
        full = (c == k).sum()
        m = full // 2
        tail = slice(2 * m, None)
        c = np.concatenate(
            [c[: 2 * m : 2] + c[1 : 2 * m : 2], [c[tail].sum()] if c[tail].size else []]
        )
        e = np.concatenate(
            [e[: 2 * m : 2] + e[1 : 2 * m : 2], [e[tail].sum()] if e[tail].size else []]
        )
        d = np.concatenate(
            [d[: 2 * m : 2] + d[1 : 2 * m : 2], [d[tail].sum()] if d[tail].size else []]
        )
        k *= 2
    return {
        "block_steps": k,
        "last_block_steps": int(c[-1]),
        "energy_j": [None if not math.isfinite(v) else float(v) for v in e],
        "duration_s": [float(v) for v in d],
    }


class ForecastWatch:
    """Forecasts once, after ``after_steps`` resolved steps or ``after_s`` seconds of them,
    from the resolution path (never from ``step()``); writes a ``forecast`` record to the
    meter's log and an INFO message to the ``greenml`` logger. Nothing it raises reaches the
    user's code: a failed forecast is logged with its reason instead."""

    def __init__(
        self,
        meter: Any,
        total_steps: int,
        after_steps: Optional[int],
        after_s: Optional[float],
        confidence: float,
    ) -> None:
        self._meter = meter
        self.total_steps = total_steps
        self.after_steps = after_steps
        self.after_s = after_s
        self.confidence = confidence
        self.done = False
        self.result: Optional[Forecast] = None
        self.error: Optional[str] = None

    def __call__(self, steps: Any) -> None:
        if self.done:
            return
        due = (self.after_steps is not None and steps.count >= self.after_steps) or (
            self.after_s is not None and steps.duration.total >= self.after_s
        )
        if not due:
            return
        self.done = True
        steps.on_batch = None
        import logging

        log = logging.getLogger("greenml")
        m = self._meter
        try:
            c, e, d = steps.ordered.blocks()
            f = forecast_blocks(
                c,
                e,
                d,
                self.total_steps,
                confidence=self.confidence,
                gco2e_per_kwh=m._intensity.gco2e_per_kwh,
                pue=m._pue,
                steps_pending=len(steps._pending),
            )
            self.result = f
            rec: Dict[str, Any] = {"type": "forecast", **f.to_dict()}
            log.info("greenml meter %r: %s", m.name, f.describe())
        except Exception as exc:  # noqa: BLE001 - bookkeeping must not fail the user's run
            self.error = str(exc)
            rec = {"type": "forecast", "error": self.error, "total_steps": self.total_steps}
            log.info("greenml meter %r: no forecast: %s", m.name, exc)
        try:
            if m._log is not None:
                m._log.write({**rec, "run_id": m._run_id, "meter": m.name, "pid": os.getpid()})
        except Exception as exc:  # noqa: BLE001
            log.info("greenml meter %r: could not log the forecast: %s", m.name, exc)


def watch_forecast(
    meter: Any,
    total_steps: Optional[int] = None,
    *,
    after_steps: Optional[int] = None,
    after_s: Optional[float] = None,
    epochs: Optional[float] = None,
    steps_per_epoch: Optional[int] = None,
    confidence: float = 0.9,
) -> ForecastWatch:
    """:meth:`greenml.Meter.log_forecast`."""
    n = total_from(total_steps, epochs, steps_per_epoch)
    if (after_steps is None) == (after_s is None):
        raise ForecastError("give one of after_steps=N (resolved steps) or after_s=SECONDS")
    if after_steps is not None and (not isinstance(after_steps, int) or after_steps < 1):
        raise ForecastError(f"after_steps={after_steps!r}: give a whole number >= 1")
    if after_s is not None and not (isinstance(after_s, (int, float)) and after_s > 0):
        raise ForecastError(f"after_s={after_s!r}: give a positive number of seconds")
    if not (0 < confidence < 1):
        raise ForecastError(f"confidence={confidence!r}: give a probability, e.g. 0.9")
    return ForecastWatch(meter, n, after_steps, after_s, confidence)


__all__ = [
    "Forecast",
    "ForecastError",
    "forecast",
    "forecast_blocks",
    "total_from",
    "meter_forecast",
    "steps_profile",
    "watch_forecast",
]
