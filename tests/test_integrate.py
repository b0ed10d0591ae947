"""Energy of time windows from counter and power traces (greenml._integrate).

Hand-made traces check the arithmetic exactly; synthetic traces (tests/synthetic.py) with a
closed-form truth check accuracy and the error bound across sampler/counter configurations.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest
import synthetic as syn
from greenml._errors import ConfigError
from greenml._integrate import (
    Trace,
    estimate_peak_power_w,
    estimate_update_period_ns,
    prepare,
    window_energies,
    window_energy,
)

MS = 1_000_000  # nanoseconds per millisecond
T0 = 5_000_000_000_000  # an arbitrary CLOCK_MONOTONIC origin, ns


def ms(x: float) -> int:
    """Milliseconds after T0, as integer nanoseconds."""
    return T0 + round(x * MS)


# ---------------------------------------------------------------------------------------------
# Hand-made counter traces


def test_constant_power_counter_gives_exact_energy() -> None:
    # Given a counter gaining 1 J per 10 ms sample (100 W) with a large offset
    t = [ms(10 * i) for i in range(11)]
    cum = [1000.0 + i for i in range(11)]
    trace = Trace.counter(t, cum, resolution_j=1e-6)
    # When a window not aligned with the samples is integrated
    res = window_energy(trace, ms(25), ms(75))
    # Then the energy is exact and the flags say it is final and long enough
    assert res.energy_j == pytest.approx(5.0, abs=1e-9)
    assert res.mean_power_w == pytest.approx(100.0)
    assert res.settled and not res.short_window
    assert 0.0 <= res.uncertainty_j < 2.0


def test_constant_power_counter_updating_slower_than_sampled_is_exact() -> None:
    # Given a GPU-like counter: updates every 20 ms (2 J each, 100 W), sampled every 1 ms
    t = [ms(i + 0.5) for i in range(200)]
    cum = [2.0 * ((i + 0.5) // 20) for i in range(200)]
    trace = Trace.counter(t, cum)
    # When a 100 ms window spanning parts of several updates is integrated
    res = window_energy(trace, ms(30), ms(130))
    # Then each increment was spread over its own update interval: exactly 10 J
    assert res.energy_j == pytest.approx(10.0, abs=1e-9)
    assert res.settled and not res.short_window


def test_edge_is_interpolated_between_estimated_update_instants() -> None:
    # Given a counter sampled every 10 ms that changes at every sample: 0, 1, 3, 4 J
    t = [ms(0), ms(10), ms(20), ms(30)]
    cum = [0.0, 1.0, 3.0, 4.0]
    # When nothing is known about its update period
    res = window_energy(Trace.counter(t, cum), ms(10), ms(20))
    # Then each update is placed half a sample spacing before the sample that showed it
    # (5, 15, 25 ms), so E(10 ms) = 2 J and E(20 ms) = 3.5 J
    assert res.energy_j == pytest.approx(1.5, abs=1e-9)
    # ... and the bound is what monotonicity allows: E(10) in [1, 3], E(20) in [3, 4]
    assert res.uncertainty_j == pytest.approx(1.5, abs=0.01)

    # When the counter is known to update at least every 1 ms (RAPL)
    trace = Trace.counter(t, cum, max_update_interval_ns=1 * MS)
    res = window_energy(trace, ms(10), ms(20))
    # Then the readings are at most 1 ms stale: updates at 9.5, 19.5, 29.5 ms,
    # E(10 ms) = 1.1 J, E(20 ms) = 3.05 J
    assert res.energy_j == pytest.approx(1.95, abs=1e-9)
    assert res.uncertainty_j < 1.0


def test_ten_ms_window_on_twenty_ms_counter_gets_a_real_estimate() -> None:
    # Given a 20 ms-update counter at a constant 150 W (3 J per update), sampled every 1 ms
    t = [ms(i + 0.3) for i in range(300)]
    cum = [3.0 * ((i + 0.3) // 20) for i in range(300)]
    trace = Trace.counter(t, cum)
    # When 10 ms windows are taken at several offsets within an update interval
    starts = [ms(100 + k) for k in range(0, 20, 3)]
    results = window_energies(trace, starts, [s + 10 * MS for s in starts])
    # Then each gets half an update's worth, not 0 J nor a whole update, and is flagged short
    for res in results:
        assert res.energy_j == pytest.approx(1.5, abs=1e-9)
        assert res.short_window
        assert res.energy_j - res.uncertainty_j <= 1.5 <= res.energy_j + res.uncertainty_j


def test_zero_length_window_has_zero_energy() -> None:
    trace = Trace.counter([ms(0), ms(10), ms(20)], [0.0, 1.0, 2.0])
    res = window_energy(trace, ms(5), ms(5))
    assert res.energy_j == 0.0
    assert res.uncertainty_j == 0.0
    assert res.short_window


# ---------------------------------------------------------------------------------------------
# Settled and unsettled windows


def gpu_like_trace(until_ms: float, watts: float = 100.0) -> Trace:
    """Samples every 1 ms at i + 0.5 ms; the counter updates every 20 ms at ``watts``."""
    n = int(until_ms) + 1
    t = [ms(i + 0.5) for i in range(n)]
    cum = [watts * 0.020 * ((i + 0.5) // 20) for i in range(n)]
    return Trace.counter(t, cum)


def test_window_ending_after_last_update_is_unsettled_until_next_update_arrives() -> None:
    # Given samples up to 95.5 ms; the last update seen happened at 80 ms
    early = gpu_like_trace(95)
    # When a window ends at 90 ms, after that update
    before = window_energy(early, ms(30), ms(90))
    # Then it is not settled, but extrapolated at the recent power (100 W) with a wider bound
    assert not before.settled
    assert before.energy_j == pytest.approx(6.0, abs=1e-6)
    # When samples up to 100.5 ms arrive, which show the update at 100 ms
    later = window_energy(gpu_like_trace(100), ms(30), ms(90))
    # Then the window is settled and its bound is tighter
    assert later.settled
    assert later.energy_j == pytest.approx(6.0, abs=1e-9)
    assert later.uncertainty_j < before.uncertainty_j
    assert abs(later.energy_j - 6.0) <= later.uncertainty_j


def test_window_entirely_after_trace_is_extrapolated_and_unsettled() -> None:
    trace = gpu_like_trace(200)
    res = window_energy(trace, ms(300), ms(400))
    assert not res.settled
    assert res.energy_j == pytest.approx(10.0, rel=1e-6)  # 100 W held for 100 ms


def test_power_window_ending_after_last_sample_is_unsettled() -> None:
    t = [ms(10 * i) for i in range(5)]
    trace = Trace.power(t, [100.0] * 5)
    res = window_energy(trace, ms(10), ms(50))
    assert not res.settled
    assert res.energy_j == pytest.approx(4.0)  # 100 W held past the last sample
    assert window_energy(trace, ms(10), ms(40)).settled


# ---------------------------------------------------------------------------------------------
# Power channels


def test_power_channel_is_trapezoid_with_interpolated_edges() -> None:
    # Given power samples 100, 200, 200, 100 W every 10 ms
    t = [ms(0), ms(10), ms(20), ms(30)]
    p = [100.0, 200.0, 200.0, 100.0]
    trace = Trace.power(t, p)
    # When the window [5 ms, 25 ms] is integrated
    res = window_energy(trace, ms(5), ms(25))
    # Then the edges take the interpolated power (150 W): 0.875 + 2 + 0.875 J
    assert res.energy_j == pytest.approx(3.75, abs=1e-12)
    # ... and a window on the samples is exactly their trapezoid
    full = window_energy(trace, ms(0), ms(30))
    h = np.diff(np.asarray(t, dtype=np.float64)) / 1e9
    trapezoid = float(np.sum(h * (np.asarray(p[1:]) + np.asarray(p[:-1])) / 2.0))
    assert full.energy_j == pytest.approx(trapezoid, abs=1e-12)
    assert full.settled and not full.short_window


def test_power_channel_short_window_flag() -> None:
    t = [ms(10 * i) for i in range(10)]
    trace = Trace.power(t, [100.0] * 10)
    assert window_energy(trace, ms(20), ms(25)).short_window
    assert not window_energy(trace, ms(20), ms(60)).short_window


def test_power_channel_uses_core_integral_across_lost_samples() -> None:
    # Given a core integral over 1 kHz samples of which the ring kept only both ends
    t_all = np.arange(0, 2001) * MS + T0
    p_all = 100.0 + 50.0 * np.sin(np.arange(2001) / 100.0)
    h = np.diff(t_all) / 1e9
    cum_all = np.concatenate(([0.0], np.cumsum(h * (p_all[1:] + p_all[:-1]) / 2.0)))
    keep = np.r_[0:20, 1980:2001]
    trace = Trace.power(t_all[keep], p_all[keep], cum_j=cum_all[keep])
    # When a window from inside the first cluster to inside the last is integrated
    res = window_energy(trace, ms(5.5), ms(1990.5))
    # Then it equals the trapezoid over all samples, lost ones included
    full = window_energy(Trace.power(t_all, p_all, cum_j=cum_all), ms(5.5), ms(1990.5))
    assert res.energy_j == pytest.approx(full.energy_j, abs=1e-9)
    assert res.settled
    assert full.uncertainty_j <= res.uncertainty_j < 0.05 * res.energy_j


# ---------------------------------------------------------------------------------------------
# Synthetic traces: accuracy and bound coverage


@dataclass(frozen=True)
class CounterConfig:
    update_ms: float
    sample_ms: float
    resolution_j: float
    update_jitter: float
    max_update_interval_ns: float | None


COUNTERS = {
    # RAPL: updates every 1 ms in microjoules; the meter knows the 1 ms period.
    "rapl_1ms_sampled_10ms": CounterConfig(1.0, 10.0, 1e-6, 0.0, 1.0 * MS),
    "rapl_1ms_sampled_1ms": CounterConfig(1.0, 1.0, 1e-6, 0.0, 1.0 * MS),
    # NVIDIA: millijoules, 20 ms updates jittered by +/-20 %, period unknown to the meter.
    "gpu_20ms_sampled_1ms": CounterConfig(20.0, 1.0, 1e-3, 0.2, None),
    "gpu_20ms_sampled_10ms": CounterConfig(20.0, 10.0, 1e-3, 0.2, None),
}
SEEDS = (1, 2, 3)
DURATION_S = 12.0


@functools.cache
def counter_case(name: str, seed: int, smooth: bool = False) -> tuple[syn.PowerProfile, Trace]:
    cfg = COUNTERS[name]
    rng = np.random.default_rng(seed)
    profile = syn.PowerProfile.random(rng, DURATION_S, smooth=smooth)
    t, cum = syn.counter_trace(
        profile,
        rng,
        duration_s=DURATION_S,
        update_ms=cfg.update_ms,
        sample_ms=cfg.sample_ms,
        resolution_j=cfg.resolution_j,
        update_jitter=cfg.update_jitter,
    )
    trace = Trace.counter(
        t, cum, resolution_j=cfg.resolution_j, max_update_interval_ns=cfg.max_update_interval_ns
    )
    return profile, trace


def errors(
    profile: syn.PowerProfile, trace: Trace, length_s: float, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Relative errors, relative bounds and absolute (error, bound) of random windows."""
    rng = np.random.default_rng(1000 + seed)
    t0, t1 = syn.random_windows(rng, trace.t_ns, length_s, count)
    results = prepare(trace).windows(t0, t1)
    truth = profile.window_j(t0, t1)
    est = np.array([r.energy_j for r in results])
    unc = np.array([r.uncertainty_j for r in results])
    assert all(r.settled for r in results)
    return np.abs(est - truth) / truth, unc / truth, np.abs(est - truth), unc


def collect(name: str, length_s: float, count: int, smooth: bool = False) -> tuple[np.ndarray, ...]:
    """``errors`` of ``count`` windows per seed, concatenated over the seeds."""
    parts = [errors(*counter_case(name, s, smooth), length_s, count, s) for s in SEEDS]
    return tuple(np.concatenate(x) for x in zip(*parts))


# Accuracy targets (relative error) per window length: the median window must meet them in
# every configuration, and so must 90 % of windows except on a GPU counter sampled at 10 ms,
# which only pins each update to its 10 ms sampling interval (an edge then costs up to 5 ms of
# the power there). The worst window also meets them on RAPL-style counters; on GPU-style
# counters a power step inside a 20 ms update interval cannot be placed within it, so their
# worst case is looser (observed over 30 seeds: 5.4 % and 12.4 % at 100 ms).
TARGET = {0.1: 0.03, 1.0: 0.005, 10.0: 0.0005}
P90_FACTOR = {"gpu_20ms_sampled_10ms": 2.0}
WORST = {
    "rapl_1ms_sampled_10ms": TARGET,
    "rapl_1ms_sampled_1ms": TARGET,
    "gpu_20ms_sampled_1ms": {0.1: 0.08, 1.0: 0.005, 10.0: 0.0005},
    "gpu_20ms_sampled_10ms": {0.1: 0.15, 1.0: 0.015, 10.0: 0.0015},
}


@pytest.mark.parametrize("name", sorted(COUNTERS))
@pytest.mark.parametrize("length_s", [0.1, 1.0, 10.0])
def test_counter_accuracy_meets_targets(name: str, length_s: float) -> None:
    # Given counters read from steps + oscillations between 50 and 300 W
    # When 200 random windows of one length are integrated
    rel, _, _, _ = collect(name, length_s, 67)
    # Then their relative errors stay within the targets
    target = TARGET[length_s]
    assert np.median(rel) < target
    assert np.quantile(rel, 0.9) < target * P90_FACTOR.get(name, 1.0)
    assert rel.max() < WORST[name][length_s]


def test_ten_ms_windows_on_twenty_ms_counter_are_within_fifteen_percent() -> None:
    # Given smoothly varying power on a 20 ms-update counter sampled every 1 ms
    # When 10 ms windows (half an update period) are integrated
    rel, _, _, _ = collect("gpu_20ms_sampled_1ms", 0.01, 100, smooth=True)
    # Then the median error is far below 15 % (instead of 0 J or a whole update)
    assert np.median(rel) < 0.05
    assert np.quantile(rel, 0.9) < 0.15


# Largest relative bound accepted: the bound must stay useful, not just true.
LOOSEST_BOUND = {0.01: np.inf, 0.1: 0.5, 1.0: 0.06}


@pytest.mark.parametrize("name", sorted(COUNTERS))
@pytest.mark.parametrize("length_s", [0.01, 0.1, 1.0])
def test_counter_uncertainty_covers_the_error_in_every_window(name: str, length_s: float) -> None:
    # Given 200 random windows over counters with steps and oscillations
    _, rel_unc, err, unc = collect(name, length_s, 67)
    # Then the true energy lies within the reported bound in every one of them
    assert np.all(err <= unc)
    # ... and the bound is not absurdly loose
    assert rel_unc.max() < LOOSEST_BOUND[length_s]


@pytest.mark.parametrize("name", ["rapl_1ms_sampled_10ms", "gpu_20ms_sampled_10ms"])
def test_counter_uncertainty_covers_fast_oscillations(name: str) -> None:
    # Given power oscillating by up to +/-90 W at up to 10 Hz around a smooth level
    cfg = COUNTERS[name]
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        profile = syn.PowerProfile.random(rng, 4.0, smooth=True, wave_w=30.0, max_freq_hz=10.0)
        t, cum = syn.counter_trace(
            profile,
            rng,
            duration_s=4.0,
            update_ms=cfg.update_ms,
            sample_ms=cfg.sample_ms,
            resolution_j=cfg.resolution_j,
            update_jitter=cfg.update_jitter,
        )
        trace = Trace.counter(
            t, cum, resolution_j=cfg.resolution_j, max_update_interval_ns=cfg.max_update_interval_ns
        )
        # When random 10 ms, 100 ms and 1 s windows are integrated
        for length_s in (0.01, 0.1, 1.0):
            t0, t1 = syn.random_windows(rng, t, length_s, 50)
            results = prepare(trace).windows(t0, t1)
            err = np.abs(np.array([r.energy_j for r in results]) - profile.window_j(t0, t1))
            # Then the bound still holds everywhere
            assert np.all(err <= np.array([r.uncertainty_j for r in results]))


POWERS = {
    "instant_sampled_10ms": (10.0, 0.0),
    "instant_sampled_1ms": (1.0, 0.0),
    "average_1s_sampled_10ms": (10.0, 1.0),
}


@functools.cache
def power_case(name: str, seed: int) -> tuple[syn.PowerProfile, Trace]:
    sample_ms, average_s = POWERS[name]
    rng = np.random.default_rng(seed)
    duration_s = DURATION_S + 2.0 * average_s
    profile = syn.PowerProfile.random(rng, duration_s)
    t, p = syn.power_trace(
        profile, rng, duration_s=duration_s, sample_ms=sample_ms, average_s=average_s
    )
    return profile, Trace.power(t, p, averaging_window_ns=average_s * 1e9)


@pytest.mark.parametrize(
    ("name", "length_s", "median", "worst"),
    [
        ("instant_sampled_10ms", 0.1, 0.005, 0.06),
        ("instant_sampled_10ms", 1.0, 0.002, 0.006),
        ("instant_sampled_1ms", 0.1, 0.001, 0.01),
        ("instant_sampled_1ms", 1.0, 0.0005, 0.001),
        ("average_1s_sampled_10ms", 10.0, 0.005, 0.02),
    ],
)
def test_power_accuracy_and_bound(name: str, length_s: float, median: float, worst: float) -> None:
    # Given power samples (instantaneous, or averaged over the trailing second)
    rel, errs, uncs = [], [], []
    for seed in SEEDS:
        profile, trace = power_case(name, seed)
        rng = np.random.default_rng(2000 + seed)
        margin = 0.1 + trace.averaging_window_ns / 1e9
        t0, t1 = syn.random_windows(rng, trace.t_ns, length_s, 67, margin_s=margin)
        # When random windows are integrated
        results = prepare(trace).windows(t0, t1)
        truth = profile.window_j(t0, t1)
        est = np.array([r.energy_j for r in results])
        rel.append(np.abs(est - truth) / truth)
        errs.append(np.abs(est - truth))
        uncs.append(np.array([r.uncertainty_j for r in results]))
    rel_a, err_a, unc_a = np.concatenate(rel), np.concatenate(errs), np.concatenate(uncs)
    # Then the errors are small and always inside the reported bound
    assert np.median(rel_a) < median
    assert rel_a.max() < worst
    assert np.all(err_a <= unc_a)


# ---------------------------------------------------------------------------------------------
# Long windows: exact edge readings, lost middle


@pytest.mark.parametrize("name", ["rapl_1ms_sampled_10ms", "gpu_20ms_sampled_1ms"])
def test_long_window_from_two_clusters_of_samples(name: str) -> None:
    # Given a 10 s window whose edges are samples (the meter's synchronous readings)
    profile, full = counter_case(name, 1)
    i0 = int(np.searchsorted(full.t_ns, syn.to_ns(1.0)))
    i1 = int(np.searchsorted(full.t_ns, syn.to_ns(11.0)))
    t0, t1 = int(full.t_ns[i0]), int(full.t_ns[i1])
    # ... and a ring that lost everything but 50 ms around each edge
    near = (np.abs(full.t_ns - t0) <= 50 * MS) | (np.abs(full.t_ns - t1) <= 50 * MS)
    clusters = Trace.counter(
        full.t_ns[near],
        full.cum_j[near],
        resolution_j=full.resolution_j,
        max_update_interval_ns=full.max_update_interval_ns,
    )
    # When the window is integrated from the clusters alone
    res = window_energy(clusters, t0, t1)
    # Then it matches the full trace's answer and the truth, within the bound
    truth = float(profile.window_j(t0, t1))
    reference = window_energy(full, t0, t1)
    assert res.settled
    assert res.energy_j == pytest.approx(reference.energy_j, rel=2e-4)
    assert res.energy_j == pytest.approx(truth, rel=5e-4)
    assert abs(res.energy_j - truth) <= res.uncertainty_j < 0.01 * truth


def test_long_window_ending_at_the_latest_reading_is_corrected_for_staleness() -> None:
    # Given a trace that ends with the meter's synchronous end reading
    profile, full = counter_case("gpu_20ms_sampled_1ms", 2)
    i0 = int(np.searchsorted(full.t_ns, syn.to_ns(1.0)))
    i1 = int(np.searchsorted(full.t_ns, syn.to_ns(9.0)))
    t0, t1 = int(full.t_ns[i0]), int(full.t_ns[i1])
    near = (np.abs(full.t_ns - t0) <= 50 * MS) | ((full.t_ns >= t1 - 50 * MS) & (full.t_ns <= t1))
    trace = Trace.counter(full.t_ns[near], full.cum_j[near], resolution_j=1e-3)
    # When the window up to that reading is integrated before any later sample exists
    res = window_energy(trace, t0, t1)
    truth = float(profile.window_j(t0, t1))
    naive = float(full.cum_j[i1] - full.cum_j[i0])
    # Then it is unsettled, but closer than the raw difference of the two stale readings
    assert not res.settled
    assert abs(res.energy_j - truth) <= res.uncertainty_j
    assert abs(res.energy_j - truth) < 0.25 * abs(naive - truth)


# ---------------------------------------------------------------------------------------------
# Helpers


def test_update_period_of_slow_counter_is_measured() -> None:
    _, trace = counter_case("gpu_20ms_sampled_1ms", 1)
    period = estimate_update_period_ns(trace.t_ns, trace.cum_j)
    assert period == pytest.approx(20 * MS, rel=0.1)


def test_update_period_of_fast_counter_is_bounded_by_sample_spacing() -> None:
    _, trace = counter_case("rapl_1ms_sampled_10ms", 1)
    period = estimate_update_period_ns(trace.t_ns, trace.cum_j)
    assert period == pytest.approx(10 * MS, rel=0.05)


def test_update_period_of_idle_counter_is_unknown() -> None:
    assert estimate_update_period_ns([ms(0), ms(10), ms(20)], [5.0, 5.0, 5.0]) is None


def test_peak_power_is_close_to_true_peak() -> None:
    for name in ("gpu_20ms_sampled_1ms", "rapl_1ms_sampled_1ms"):
        profile, trace = counter_case(name, 3)
        true_peak = float(profile.power_w(np.linspace(0.0, DURATION_S, 200_001)).max())
        assert 0.9 * true_peak < estimate_peak_power_w(trace) < 1.3 * true_peak
    trace = Trace.power([ms(0), ms(10), ms(20)], [100.0, 250.0, 120.0])
    assert estimate_peak_power_w(trace) == 250.0


def test_many_windows_match_one_at_a_time() -> None:
    _, trace = counter_case("gpu_20ms_sampled_10ms", 2)
    starts = [syn.to_ns(1.0) + k * 37 * MS for k in range(5)]
    ends = [s + 250 * MS for s in starts]
    many = window_energies(trace, starts, ends)
    assert many == [window_energy(trace, a, b) for a, b in zip(starts, ends)]


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("t", "cum", "message"),
    [
        ([], [], "at least 2 samples"),
        ([ms(0)], [1.0], "at least 2 samples"),
        ([ms(0), ms(10), ms(10)], [0.0, 1.0, 2.0], "strictly increasing"),
        ([ms(0), ms(20), ms(10)], [0.0, 1.0, 2.0], "strictly increasing"),
        ([ms(0), ms(10)], [0.0, 1.0, 2.0], "cum_j has 3 values"),
        ([ms(0), ms(10), ms(20)], [0.0, float("nan"), 2.0], "finite"),
        ([ms(0), ms(10), ms(20)], [0.0, 2.0, 1.0], "unwrapped"),
        ([0.0, 0.01, 0.02], [0.0, 1.0, 2.0], "integer nanoseconds"),
    ],
)
def test_bad_counter_trace_is_rejected(t: list, cum: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Trace.counter(t, cum)


def test_bad_power_trace_is_rejected() -> None:
    with pytest.raises(ConfigError, match="power_w has 2 values"):
        Trace(t_ns=np.array([ms(0), ms(1), ms(2)]), cum_j=np.zeros(3), power_w=np.ones(2))


def test_bad_windows_are_rejected_with_value_errors() -> None:
    trace = Trace.counter([ms(0), ms(10), ms(20)], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="before its start"):
        window_energy(trace, ms(15), ms(5))
    with pytest.raises(ConfigError, match="begins at or before the window"):
        window_energy(trace, ms(-5), ms(15))
    with pytest.raises(ConfigError, match="integer nanoseconds"):
        window_energy(trace, 0.5, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="begins at or before the window"):
        window_energy(Trace.power([ms(0), ms(10)], [1.0, 1.0]), ms(-1), ms(5))


@pytest.mark.parametrize("hint_ns", [None, 2_000_000])
def test_given_random_counter_traces_when_asking_settled_through_then_it_agrees_with_the_curve(
    hint_ns,
):
    # The meter waits on settled_through_ns before building curves: it must say exactly what
    # the curve's ``settled`` says, or a result would wait (or return) at the wrong time.
    from greenml._integrate import settled_through_ns

    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(2, 40))
        t = np.cumsum(rng.integers(100_000, 20_000_000, n)).astype(np.int64)
        steps = np.where(rng.random(n) < 0.5, 0.0, rng.random(n))
        v = np.cumsum(steps)
        curve = prepare(Trace.counter(t, v, max_update_interval_ns=hint_ns))
        through = settled_through_ns(t, v, hint_ns)
        ends = np.concatenate((t, t + 1, t - 1, [t[0] + (t[-1] - t[0]) // 2]))
        ends = np.clip(ends, t[0] + 1, None)
        got = curve.window_arrays(np.full(ends.size, t[0]), ends).settled
        assert np.array_equal(got, ends <= through), (t, v, through)
