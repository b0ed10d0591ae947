"""The native Sampler through the bindings: rate, ring cursor, lifecycle, warnings.

Timing bounds are generous: the suite runs on small, noisy machines.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from greenml import _core


@pytest.fixture
def rapl(powercap):
    """A one-socket tree (package + dram) and a source over it."""
    powercap.add_package(0, energy_uj=1_000, dram=True)
    return _core.RaplSource(str(powercap.root))


# ----------------------------------------------------------------- rate


@pytest.mark.parametrize("period_ms", [10.0, 1.0])
def test_given_period_when_running_half_a_second_then_rate_roughly_holds(rapl, make_sampler,
                                                                         period_ms):
    period_ns = int(period_ms * 1e6)
    sampler = make_sampler([rapl], period_ns=period_ns)

    t0 = _core.monotonic_ns()
    sampler.start()
    time.sleep(0.5)  # the measurement window itself, not a synchronisation
    sampler.stop()
    t1 = _core.monotonic_ns()

    t, energy, power, next_index, lost = sampler.read(0)
    n = len(t)
    expected = (t1 - t0) / period_ns
    assert lost == 0 and next_index == n == sampler.head
    assert sampler.stats()["samples"] == n
    assert n >= 0.4 * expected, f"{n} samples at {period_ms} ms over {(t1 - t0) / 1e9:.3f} s"
    # An absolute-deadline grid never fires bursts of catch-up samples.
    assert n <= expected + 2
    assert energy.shape == power.shape == (n, 2)
    assert np.all((t >= t0) & (t <= t1))


def test_given_running_sampler_when_reading_then_timestamps_strictly_increase(rapl, make_sampler,
                                                                              wait_until):
    sampler = make_sampler([rapl], period_ns=1_000_000)
    sampler.start()
    wait_until(lambda: sampler.head >= 50, message="fewer than 50 samples in 5 s at 1 kHz")
    sampler.read_now()  # manual samples share the ring and the clock
    wait_until(lambda: sampler.head >= 60)
    sampler.stop()

    t, _, _, _, _ = sampler.read(0)
    assert len(t) >= 60
    assert np.all(np.diff(t) > 0)


# ----------------------------------------------------------------- ring cursor


def test_given_cursor_when_reading_then_indices_are_contiguous_and_overrun_counts_losses(
        powercap, make_sampler):
    powercap.add_package(0, energy_uj=0, dram=False)
    sampler = make_sampler([_core.RaplSource(str(powercap.root))], capacity=64)
    assert sampler.capacity == 64

    def push(k):
        # Sample k carries k microjoules, so every row says which index it is.
        powercap.set_energy("package:0", k)
        index, t, energy, _ = sampler.read_now()
        assert index == k - 1  # the baseline read at creation is not pushed
        assert round(energy[0] * 1e6) == k
        return t

    times = {k - 1: push(k) for k in range(1, 11)}  # indices 0..9
    t, energy, _, nxt, lost = sampler.read(0)
    assert (nxt, lost) == (10, 0)
    assert [round(e * 1e6) - 1 for e in energy[:, 0]] == list(range(10))
    assert list(t) == [times[i] for i in range(10)]

    # A bounded read moves the cursor by exactly what it returned.
    t, energy, _, nxt, lost = sampler.read(3, 4)
    assert (len(t), nxt, lost) == (4, 7, 0)
    assert [round(e * 1e6) - 1 for e in energy[:, 0]] == [3, 4, 5, 6]

    # Overrun: 100 more samples through a 64-slot ring while the cursor sits at 10.
    for k in range(11, 111):
        push(k)
    assert sampler.head == 110
    t, energy, _, nxt, lost = sampler.read(10)
    assert lost == 110 - 64 - 10
    assert nxt == 110 and len(t) == 64
    assert [round(e * 1e6) - 1 for e in energy[:, 0]] == list(range(46, 110))
    assert np.all(np.diff(t) > 0)

    # Caught up: nothing new, nothing lost; a cursor from the future restarts at head.
    t, _, _, nxt, lost = sampler.read(110)
    assert (len(t), nxt, lost) == (0, 110, 0)
    t, _, _, nxt, lost = sampler.read(10_000)
    assert (len(t), nxt, lost) == (0, 110, 0)


def test_given_running_sampler_when_reader_is_slow_then_losses_plus_copies_cover_the_span(
        rapl, make_sampler, wait_until):
    sampler = make_sampler([rapl], period_ns=500_000, capacity=64)
    sampler.start()
    wait_until(lambda: sampler.head >= 300, timeout=10,
               message="fewer than 300 samples in 10 s at 2 kHz")
    t, _, _, nxt, lost = sampler.read(0)
    sampler.stop()
    # Every index in [0, next) was either copied or counted as lost, none twice.
    assert lost + len(t) == nxt
    assert lost >= 300 - 64
    assert len(t) <= 64
    assert np.all(np.diff(t) > 0)


# ----------------------------------------------------------------- deadlines


def test_given_impossibly_short_period_when_running_then_missed_deadlines_are_counted(
        powercap, make_sampler, wait_until):
    for socket in range(16):
        powercap.add_package(socket, dram=True, core=True, uncore=True)
    src = _core.RaplSource(str(powercap.root))
    assert len(src.channels()) == 64
    sampler = make_sampler([src], period_ns=10_000)  # 10 us for 64 file reads

    sampler.start()
    stats = wait_until(lambda: (lambda s: s if s["missed_deadlines"] > 0 else None)(
        sampler.stats()), timeout=10, message="no missed deadline counted at a 10 us period")
    sampler.stop()
    assert stats["samples"] > 0
    assert sampler.stats()["max_lateness_ns"] >= 0


def test_given_comfortable_period_when_running_then_few_deadlines_missed(rapl, make_sampler,
                                                                         wait_until):
    sampler = make_sampler([rapl], period_ns=20_000_000)
    sampler.start()
    wait_until(lambda: sampler.head >= 10, timeout=10)
    sampler.stop()
    stats = sampler.stats()
    # A noisy box may miss one now and then, but not routinely at 50 Hz.
    assert stats["missed_deadlines"] <= stats["samples"] // 2


# ----------------------------------------------------------------- lifecycle


def test_given_sampler_when_lifecycle_calls_repeat_then_they_are_idempotent(rapl, make_sampler,
                                                                           wait_until):
    sampler = make_sampler([rapl], period_ns=1_000_000)
    assert sampler.stats()["running"] is False

    sampler.stop()  # stop before start: nothing to do
    sampler.resume()  # resume while not paused: nothing to do
    sampler.start()
    sampler.start()
    assert sampler.stats()["running"] is True
    wait_until(lambda: sampler.head >= 5)

    sampler.pause()
    sampler.pause()
    assert sampler.stats()["paused"] is True
    sampler.resume()
    sampler.resume()
    assert sampler.stats()["paused"] is False

    sampler.stop()
    sampler.stop()
    stats = sampler.stats()
    assert stats["running"] is False
    head = sampler.head
    assert stats["samples"] == head  # one thread only: no double pushes

    sampler.start()  # restart after stop
    wait_until(lambda: sampler.head >= head + 5, message="no samples after a restart")
    sampler.stop()
    assert sampler.stats()["thread_cpu_ns"] > 0


def test_given_long_period_when_stopping_then_stop_returns_promptly(rapl, make_sampler,
                                                                    wait_until):
    sampler = make_sampler([rapl], period_ns=1_000_000_000)
    sampler.start()
    wait_until(lambda: sampler.stats()["running"])

    began = time.monotonic()
    sampler.stop()
    took = time.monotonic() - began

    assert took < 0.5, f"stop() took {took:.3f} s at a 1 s period"
    assert sampler.stats()["running"] is False
    assert sampler.head <= 1  # it was asleep towards its first deadline


def test_given_running_sampler_when_paused_then_head_stops_and_resume_restarts_it(
        rapl, make_sampler, wait_until):
    sampler = make_sampler([rapl], period_ns=1_000_000)
    sampler.start()
    wait_until(lambda: sampler.head >= 5)

    sampler.pause()
    time.sleep(0.05)  # let a tick that was already under way finish
    frozen = sampler.head
    time.sleep(0.25)  # "nothing happens" needs a window: 250 ticks at 1 kHz
    assert sampler.head == frozen
    assert sampler.stats()["paused"] is True

    resumed = time.monotonic()
    sampler.resume()
    wait_until(lambda: sampler.head > frozen, message="resume() did not restart sampling")
    # Paused, the thread polls only every second (no wrap to watch): resume must
    # not wait for that poll.
    assert time.monotonic() - resumed < 0.5
    wait_until(lambda: sampler.head >= frozen + 5)
    t, _, _, _, _ = sampler.read(0)
    assert np.all(np.diff(t) > 0)


def test_given_paused_sampler_when_counter_wraps_then_the_wrap_is_still_seen(
        powercap, make_sampler):
    # Range 1000 uJ: the wrap-safe period is sub-microsecond, so while paused
    # the thread keeps reading the counter; a wrap during the pause must count.
    powercap.add_package(0, energy_uj=500, range_uj=1_000, dram=False)
    sampler = make_sampler([_core.RaplSource(str(powercap.root))], period_ns=1_000_000)
    sampler.start()
    sampler.pause()

    expected = 0
    prev = 500
    for v in (900, 100, 950, 150):  # two wraps; 900 -> 150 alone would read as one wrap
        powercap.set_energy("package:0", v)
        expected += (v - prev) % 1000
        prev = v
        time.sleep(0.05)  # the thread polls while paused; give it many polls per value
    head = sampler.head
    _, _, energy, _ = sampler.read_now()
    sampler.stop()

    assert head <= 1  # paused: at most a tick that was already under way
    assert round(energy[0] * 1e6) == expected == 400 + 200 + 850 + 200


def test_given_period_property_when_set_then_it_is_validated(rapl, make_sampler):
    sampler = make_sampler([rapl], period_ns=10_000_000)
    sampler.period_ns = 2_000_000
    assert sampler.period_ns == 2_000_000
    with pytest.raises(ValueError):
        sampler.period_ns = 0
    with pytest.raises(ValueError):
        _core.Sampler([rapl], 0, 64)


def test_given_running_sampler_when_period_changes_then_spacing_follows(rapl, make_sampler,
                                                                       wait_until):
    sampler = make_sampler([rapl], period_ns=1_000_000)
    sampler.start()
    wait_until(lambda: sampler.head >= 10)

    sampler.period_ns = 40_000_000
    changed_at = sampler.head + 1  # the tick under way may still use the old period
    wait_until(lambda: sampler.head >= changed_at + 5, timeout=10)
    sampler.stop()

    t, _, _, _, _ = sampler.read(changed_at)
    gaps_ms = np.diff(t) / 1e6
    # On the new grid every gap is a whole number (>= 1) of 40 ms periods, give or take jitter.
    assert np.all(gaps_ms > 20), gaps_ms
    assert np.median(gaps_ms) < 100, gaps_ms


# ----------------------------------------------------------------- warnings


def test_given_tiny_counter_range_when_period_exceeds_safe_period_then_warns(
        powercap, make_sampler):
    powercap.add_package(0, energy_uj=0, range_uj=1_000, dram=False)
    src = _core.RaplSource(str(powercap.root))
    sampler = make_sampler([src], period_ns=10_000_000)

    assert 0 < sampler.max_safe_period_ns < sampler.period_ns
    assert sampler.max_safe_period_ns == src.max_safe_period_ns
    warnings = sampler.warnings()
    assert len(warnings) == 1
    assert "GREENML_INTERVAL_MS" in warnings[0]


def test_given_sub_millisecond_safe_period_when_warning_then_message_states_it_truthfully(
        powercap, make_sampler):
    powercap.add_package(0, energy_uj=0, range_uj=1_000, dram=False)
    sampler = make_sampler([_core.RaplSource(str(powercap.root))], period_ns=10_000_000)
    assert sampler.max_safe_period_ns == 333  # 1 mJ at 1500 W, halved

    (message,) = sampler.warnings()

    assert not re.search(r"(?<![\d.])0 ms", message), message


def test_given_normal_counter_range_when_period_is_short_then_no_warning(rapl, make_sampler):
    sampler = make_sampler([rapl], period_ns=10_000_000)

    assert sampler.max_safe_period_ns > 10_000_000
    assert sampler.warnings() == []


def test_given_no_sources_when_sampling_then_empty_rows_and_no_crash(make_sampler, wait_until):
    sampler = make_sampler([], period_ns=1_000_000)
    assert sampler.channels() == [] and sampler.status() == [] and sampler.warnings() == []
    index, _, energy, power = sampler.read_now()
    assert index == 0 and energy.shape == power.shape == (0,)
    sampler.start()
    wait_until(lambda: sampler.head >= 3)
    sampler.stop()
    t, energy, _, _, _ = sampler.read(0)
    assert energy.shape == (len(t), 0)


def test_given_long_period_when_period_is_shortened_then_the_next_sample_comes_promptly(
        rapl, make_sampler, wait_until):
    sampler = make_sampler([rapl], period_ns=5_000_000_000)
    sampler.start()
    head = sampler.head

    started = time.monotonic()
    sampler.period_ns = 1_000_000

    assert wait_until(lambda: sampler.head >= head + 5, timeout=2.0)
    assert time.monotonic() - started < 1.0  # not after the 5 s tick already planned
