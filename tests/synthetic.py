"""Synthetic power profiles and sampled traces with exact ground truth, for the integration tests.

A :class:`PowerProfile` is a known power function ``P(t)`` (watts; a base level, steps and
sinusoids) whose cumulative energy has a closed form, so the true energy of any window is exact.
:func:`counter_trace` turns it into what a sampler reads from an energy counter (quantised,
updated at its own, possibly jittered instants, read at jittered sample instants);
:func:`power_trace` into what it reads from a power sensor (instantaneous or trailing-average).
Times in the traces are int64 CLOCK_MONOTONIC-like nanoseconds offset by :data:`BOOT_NS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Offset of the synthetic monotonic clock: profile time 0 s is this many nanoseconds.
BOOT_NS = 7_654_321_000_000


def to_ns(t_s: np.ndarray | float) -> np.ndarray:
    """Profile seconds to synthetic monotonic nanoseconds (int64, rounded)."""
    return (BOOT_NS + np.round(np.asarray(t_s, dtype=np.float64) * 1e9)).astype(np.int64)


def to_s(t_ns: np.ndarray | int) -> np.ndarray:
    """Synthetic monotonic nanoseconds to profile seconds."""
    return (np.asarray(t_ns, dtype=np.int64) - BOOT_NS).astype(np.float64) / 1e9


@dataclass(frozen=True)
class PowerProfile:
    """``P(t) = base_w + sum of steps + sum of sinusoids`` (watts, t in profile seconds).

    Steps: at ``step_s[i]`` the level changes by ``step_w[i]``. Sinusoids:
    ``amp_w[j] * sin(2 pi freq_hz[j] t + phase[j])``.
    """

    base_w: float
    step_s: np.ndarray
    step_w: np.ndarray
    amp_w: np.ndarray
    freq_hz: np.ndarray
    phase: np.ndarray

    def power_w(self, t_s: np.ndarray) -> np.ndarray:
        """Instantaneous power (W) at profile times ``t_s``."""
        t = np.asarray(t_s, dtype=np.float64)[..., None]
        steps = np.sum(np.where(t >= self.step_s, self.step_w, 0.0), axis=-1)
        w = 2.0 * np.pi * self.freq_hz
        waves = np.sum(self.amp_w * np.sin(w * t + self.phase), axis=-1)
        return self.base_w + steps + waves

    def energy_j(self, t_s: np.ndarray) -> np.ndarray:
        """Cumulative energy (J) from profile time 0 to ``t_s``, closed form."""
        t = np.asarray(t_s, dtype=np.float64)[..., None]
        steps = np.sum(self.step_w * np.maximum(t - self.step_s, 0.0), axis=-1)
        w = 2.0 * np.pi * self.freq_hz
        waves = np.sum(self.amp_w / w * (np.cos(self.phase) - np.cos(w * t + self.phase)), axis=-1)
        return self.base_w * t[..., 0] + steps + waves

    def window_j(self, t0_ns: np.ndarray | int, t1_ns: np.ndarray | int) -> np.ndarray:
        """True energy (J) of the windows ``[t0_ns, t1_ns]`` in synthetic nanoseconds."""
        return self.energy_j(to_s(t1_ns)) - self.energy_j(to_s(t0_ns))

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        duration_s: float,
        *,
        smooth: bool = False,
        wave_w: float = 15.0,
        max_freq_hz: float = 4.0,
    ) -> PowerProfile:
        """A profile between about 50 and 300 W: levels between 90 and 240 W held for 0.2-2 s
        (none when ``smooth``) plus three sinusoids of 0.3 to ``max_freq_hz`` Hz, each of
        amplitude between a third of ``wave_w`` and ``wave_w`` watts."""
        if smooth:
            step_s = np.zeros(0)
            step_w = np.zeros(0)
            base = float(rng.uniform(120.0, 200.0))
        else:
            times = [0.0]
            while times[-1] < duration_s:
                times.append(times[-1] + float(rng.uniform(0.2, 2.0)))
            levels = rng.uniform(90.0, 240.0, size=len(times))
            base = float(levels[0])
            step_s = np.asarray(times[1:])
            step_w = np.diff(levels)
        amp = rng.uniform(wave_w / 3.0, wave_w, size=3)
        return cls(
            base_w=base,
            step_s=step_s,
            step_w=step_w,
            amp_w=amp,
            freq_hz=rng.uniform(0.3, max_freq_hz, size=3),
            phase=rng.uniform(0.0, 2.0 * np.pi, size=3),
        )


def sample_times_ns(
    rng: np.random.Generator, duration_s: float, sample_ms: float, jitter: float = 0.05
) -> np.ndarray:
    """Sample instants every ``sample_ms`` over ``[0, duration_s]`` with uniform jitter of
    ``+/- jitter`` sample periods, as synthetic nanoseconds."""
    n = int(duration_s / (sample_ms * 1e-3)) + 1
    start = float(rng.uniform(0.0, sample_ms * 1e-3))
    t = start + np.arange(n) * sample_ms * 1e-3
    t = t + rng.uniform(-jitter, jitter, size=n) * sample_ms * 1e-3
    return to_ns(np.maximum(t, 0.0))


def counter_trace(
    profile: PowerProfile,
    rng: np.random.Generator,
    *,
    duration_s: float,
    update_ms: float,
    sample_ms: float,
    resolution_j: float,
    update_jitter: float = 0.0,
    sample_jitter: float = 0.05,
    offset_j: float = 12_345.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps (ns) and cumulative counter values (J) read by a sampler.

    The counter is updated every ``update_ms`` (each interval scaled by a uniform factor in
    ``1 +/- update_jitter``) with the true cumulative energy plus ``offset_j``, rounded down to
    ``resolution_j``; each sample reads the value of the latest update at or before it.
    """
    t_ns = sample_times_ns(rng, duration_s, sample_ms, sample_jitter)
    u = update_ms * 1e-3
    n_up = int((duration_s + 2.0) / (u * (1.0 - update_jitter))) + 2
    intervals = u * (1.0 + rng.uniform(-update_jitter, update_jitter, size=n_up))
    tau = -float(rng.uniform(0.0, u)) + np.concatenate(([0.0], np.cumsum(intervals)))
    units = np.floor((offset_j + profile.energy_j(tau)) / resolution_j)
    idx = np.searchsorted(tau, to_s(t_ns), side="right") - 1
    return t_ns, units[idx] * resolution_j


def power_trace(
    profile: PowerProfile,
    rng: np.random.Generator,
    *,
    duration_s: float,
    sample_ms: float,
    average_s: float = 0.0,
    sample_jitter: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps (ns) and power samples (W): instantaneous power, or with ``average_s > 0``
    the mean power over the trailing ``average_s`` seconds."""
    t_ns = sample_times_ns(rng, duration_s, sample_ms, sample_jitter)
    t = to_s(t_ns)
    if average_s > 0:
        p = (profile.energy_j(t) - profile.energy_j(t - average_s)) / average_s
    else:
        p = profile.power_w(t)
    return t_ns, p


def random_windows(
    rng: np.random.Generator, t_ns: np.ndarray, length_s: float, count: int, margin_s: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` windows of ``length_s`` seconds at random (ns) positions inside the trace,
    at least ``margin_s`` from both of its ends."""
    length_ns = round(length_s * 1e9)
    margin_ns = round(margin_s * 1e9)
    lo = int(t_ns[0]) + margin_ns
    hi = int(t_ns[-1]) - margin_ns - length_ns
    t0 = rng.integers(lo, hi, size=count, dtype=np.int64)
    return t0, t0 + length_ns
