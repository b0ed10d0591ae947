"""Forecasts of a run's total from its first steps: synthetic step-energy sequences with known
totals (stationary, warm-up, periodic evaluation, autocorrelation, drift), the ordered step
record, meters on fake RAPL hardware, logs and the command line."""

from __future__ import annotations

import json
import logging
import math
import sys
import time

import numpy as np
import pandas as pd
import pytest

import greenml
from greenml import ForecastError
from greenml._forecast import forecast_blocks, mser_truncation
from greenml._steps import OrderedRecord
from greenml.cli import main

from fakes.truth import RaplWriter, rapl_tree, warm_up

N = 10_000  # steps of a synthetic run
PROFILED = N // 10  # forecast after 10 % of it
SEEDS = 200


def _forecast(x: np.ndarray, n_profile: int = PROFILED, **kw) -> greenml.Forecast:
    return greenml.forecast(x[:n_profile], total_steps=x.size, **kw)


def _stationary(rng, n=N, mean=2.0, cv=0.1):
    return mean * (1 + cv * rng.standard_normal(n))


def _sweep(make, seeds=SEEDS, **kw):
    """(relative errors, covered flags, forecasts) over seeded runs of ``make(rng)``."""
    errs, cover, fs = [], [], []
    for s in range(seeds):
        x = make(np.random.default_rng(s))
        f = _forecast(x, **kw)
        truth = float(x.sum())
        errs.append(abs(f.energy_j - truth) / truth)
        cover.append(f.low_j <= truth <= f.high_j)
        fs.append(f)
    return np.array(errs), np.array(cover), fs


# ------------------------------------------------------------------- synthetic sequences


def test_given_stationary_noisy_runs_when_forecast_after_10_percent_then_accurate_and_covered():
    # Given: 200 seeded runs of 10,000 steps, 10 % step-to-step noise
    # When: forecast from the first 1,000 steps
    errs, cover, fs = _sweep(_stationary)
    # Then: the contract's targets
    assert np.median(errs) < 0.02
    assert cover.mean() >= 0.85
    assert np.mean([f.stationary for f in fs]) >= 0.95
    f = fs[0]
    assert f.fraction_profiled == pytest.approx(0.1)
    assert f.steps_used == PROFILED and f.total_steps == N
    assert f.low_j < f.energy_j < f.high_j
    assert f.duration_s != f.duration_s  # a bare list of energies has no durations: NaN


def test_given_a_slow_warm_up_when_forecast_then_it_is_excluded_and_the_total_stays_accurate():
    # Given: the first 60 steps cost 4x to 1x a normal step (compilation, autotuning)
    def make(rng):
        x = _stationary(rng)
        x[:60] *= np.linspace(4, 1, 60)
        return x

    # When
    errs, cover, fs = _sweep(make)
    # Then: the warm-up is found (MSER-5 works in batches of 5 steps, and now and then cuts a
    # few batches more) and excluded
    warm = np.array([f.warmup_steps for f in fs])
    assert np.median(warm) == 60 and np.all(warm >= 40)
    assert np.mean((warm >= 50) & (warm <= 100)) >= 0.9
    assert np.median(errs) < 0.02 and cover.mean() >= 0.85
    # ...where the plain mean of the profile (Carbontracker's rule) is biased well beyond that
    naive = [
        abs(x[:PROFILED].mean() * N - x.sum()) / x.sum()
        for x in (make(np.random.default_rng(s)) for s in range(20))
    ]
    assert np.median(naive) > 0.05


def test_given_an_evaluation_every_100_steps_when_forecast_then_the_periodic_cost_is_counted():
    # Given: every 100th step also evaluates, costing 20 J more than a 2 J step
    def make(rng):
        x = _stationary(rng)
        x[99::100] += 20.0
        return x

    # When
    errs, cover, fs = _sweep(make)
    # Then
    assert all(f.period_steps == 100 for f in fs)
    assert np.median(errs) < 0.02 and cover.mean() >= 0.85
    assert np.mean([f.stationary for f in fs]) >= 0.95


def test_given_a_profile_ending_just_before_a_periodic_step_when_forecast_then_no_bias():
    # Given: a 1,000-step profile that holds 9 of the evaluations at steps 109, 209, ...
    # (the plain mean over the profile counts 9 per 1,000 steps where the run has 10)
    def make(rng):
        x = _stationary(rng)
        x[109::100] += 50.0
        return x

    errs, _, fs = _sweep(make, seeds=50)
    assert np.median(errs) < 0.005
    biased = [
        abs(
            make(np.random.default_rng(s))[:PROFILED].mean()
            * N
            / make(np.random.default_rng(s)).sum()
            - 1
        )
        for s in range(10)
    ]
    assert np.median(biased) > 0.01


def test_given_autocorrelated_steps_when_forecast_then_the_interval_still_covers():
    # Given: AR(1) step energies (phi = 0.9: runs of cheap and costly steps)
    def make(rng):
        z = rng.standard_normal(N) * 0.1
        e = np.empty(N)
        a = 0.0
        for i in range(N):
            a = 0.9 * a + z[i]
            e[i] = a
        return 2.0 + e

    errs, cover, _ = _sweep(make)
    # Then: batch means keep the interval honest ...
    assert cover.mean() >= 0.8
    # ... where an interval that treats the steps as independent would not be
    iid_cover = []
    for s in range(50):
        x = make(np.random.default_rng(s))
        p = x[:PROFILED]
        rest = N - PROFILED
        half = 1.645 * p.std(ddof=1) * math.sqrt(rest * (1 + rest / PROFILED))
        est = p.sum() + rest * p.mean()
        iid_cover.append(abs(est - x.sum()) <= half)
    assert np.mean(iid_cover) < 0.6


def test_given_a_drifting_run_when_forecast_then_flagged_with_a_wide_interval_that_covers():
    # Given: the step energy doubles linearly over the run (e.g. growing sequence lengths)
    def make(rng):
        return _stationary(rng) * (1 + np.arange(N) / N)

    errs, cover, fs = _sweep(make, seeds=100)
    # Then: flagged as not stationary, not forecast with a narrow interval
    assert np.mean([not f.stationary for f in fs]) >= 0.95
    flagged = [f for f in fs if not f.stationary]
    assert all(f.relative_error > 0.1 for f in flagged)
    assert all("drifts" in " ".join(f.notes) for f in flagged)
    assert cover.mean() >= 0.85


def test_given_a_warm_up_still_going_when_forecast_then_not_stationary():
    # Given: a profile whose step energy is still falling at its end
    rng = np.random.default_rng(0)
    x = 2.0 * (1 + 3 * np.exp(-np.arange(N) / 400)) * (1 + 0.02 * rng.standard_normal(N))
    # When
    f = _forecast(x)
    # Then
    assert not f.stationary
    assert f.low_j <= x.sum() <= f.high_j


def test_given_too_short_a_profile_when_forecast_then_it_says_so_rather_than_guess():
    x = _stationary(np.random.default_rng(0), n=30)
    with pytest.raises(ForecastError, match="too short.*30 resolved steps.*at least 40"):
        greenml.forecast(x, total_steps=1000)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"total_steps": 10}, "fewer than the 100 steps"),
        ({"total_steps": 1000, "epochs": 2}, "either total_steps"),
        ({}, "total_steps=N, or epochs=E with steps_per_epoch=S"),
        ({"epochs": 2, "steps_per_epoch": 0}, "positive numbers"),
        ({"total_steps": 1000, "confidence": 1.5}, "confidence=1.5"),
        ({"total_steps": 1000.5}, "whole number"),
    ],
)
def test_given_bad_options_when_forecast_then_the_error_names_the_option(kwargs, match):
    x = _stationary(np.random.default_rng(0), n=100)
    with pytest.raises(ForecastError, match=match):
        greenml.forecast(x, **kwargs)


def test_given_epochs_when_forecast_then_same_as_total_steps():
    x = _stationary(np.random.default_rng(1), n=500)
    a = greenml.forecast(x, epochs=4, steps_per_epoch=500)
    b = greenml.forecast(x, total_steps=2000)
    assert a.energy_j == b.energy_j and a.total_steps == 2000


def test_given_a_dataframe_or_csv_with_durations_when_forecast_then_duration_is_forecast(
    tmp_path,
):
    rng = np.random.default_rng(3)
    d = 0.05 * (1 + 0.05 * rng.standard_normal(400))
    df = pd.DataFrame({"energy_j": 30.0 * d, "duration_s": d})
    f = greenml.forecast(df, total_steps=4000, carbon_intensity=500.0)
    assert f.duration_s == pytest.approx(4000 * 0.05, rel=0.02)
    assert f.duration_low_s < f.duration_s < f.duration_high_s
    assert f.co2e_g == pytest.approx(f.energy_j / 3.6e6 * 500.0)
    df.to_csv(tmp_path / "steps.csv", index=False)
    g = greenml.forecast(str(tmp_path / "steps.csv"), total_steps=4000, carbon_intensity=500.0)
    assert g.energy_j == pytest.approx(f.energy_j)


def test_given_a_finished_profile_when_forecast_for_its_own_length_then_exact():
    x = _stationary(np.random.default_rng(2), n=300)
    f = greenml.forecast(x, total_steps=300)
    assert f.energy_j == pytest.approx(x.sum()) and f.low_j == f.high_j == pytest.approx(x.sum())


def test_mser_finds_a_step_change_and_leaves_stationary_data_alone():
    rng = np.random.default_rng(5)
    flat = 1 + 0.1 * rng.standard_normal(2000)
    step = flat.copy()
    step[:200] += 1.0
    assert 200 <= mser_truncation(step) <= 250
    assert mser_truncation(flat) < 50


# ------------------------------------------------------------------- ordered record


def test_given_batches_across_coarsening_when_recorded_then_blocks_keep_order_and_sums():
    rng = np.random.default_rng(0)
    for cap in (2, 4, 16):
        r = OrderedRecord(capacity=cap)
        parts = [rng.random(rng.integers(0, 50)) for _ in range(30)]
        for p in parts:
            r.add(p, 2 * p)
        x = np.concatenate(parts)
        c, e, d = r.blocks()
        assert c.sum() == x.size == r.steps
        assert len(c) <= cap + 1 and np.all(c[:-1] == r.block_steps)
        edges = np.concatenate([[0], np.cumsum(c)])
        sums = np.array([x[a:b].sum() for a, b in zip(edges[:-1], edges[1:])])
        np.testing.assert_allclose(e, sums)
        np.testing.assert_allclose(d, 2 * sums)
        np.testing.assert_allclose(r.head_e, x[:cap])


def test_given_ten_million_steps_when_recorded_then_memory_is_bounded_and_forecast_works():
    r = OrderedRecord()
    rng = np.random.default_rng(0)
    chunk = 1 + 0.1 * rng.standard_normal(4096)
    for _ in range(10_000_000 // 4096):
        r.add(chunk, chunk * 1e-3)
    c, e, d = r.blocks()
    assert len(c) <= r.capacity + 1 and r.steps == (10_000_000 // 4096) * 4096
    f = forecast_blocks(c, e, d, total_steps=20_000_000)
    assert f.energy_j == pytest.approx(2 * e.sum(), rel=0.01)


# ------------------------------------------------------------------- meters on fake RAPL

PROFILE_W = (40.0, 2.0, 50.0)  # base_w, amp_w, freq_hz: ~40 W with a 20 ms ripple


@pytest.fixture
def rt(tmp_path, runtimes):
    root = rapl_tree(tmp_path, dram=False)
    with RaplWriter(root, {"intel-rapl:0": PROFILE_W}):
        r = runtimes(powercap_root=root, sources={"rapl"}, interval_ms=1.0)
        warm_up(r, seconds=0.02)
        yield r


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_given_a_running_meter_when_forecast_then_only_resolved_steps_are_used_and_counted(rt):
    total = 1500
    with greenml.meter(runtime=rt) as m:
        for _ in range(300):
            _busy(0.001)
            m.step()
        # When: forecast while running, steps of the last ~ms not yet resolvable
        f = m.forecast(total_steps=total)
        # Then: what it used is what was resolved (the first steps, in order), and it says how
        # many are pending
        assert f.steps_used + f.steps_pending == 300 and f.steps_pending > 0
        assert 0 < f.steps_used <= m.steps.count
        _, e, _ = m.steps.ordered.blocks()
        assert f.measured_j == pytest.approx(e[: f.steps_used].sum(), rel=1e-12)
        for _ in range(total - 300):
            _busy(0.001)
            m.step()
    final = m.steps
    truth = final.total_j
    assert final.count == total
    # the live forecast is the forecast of exactly those first resolved steps, in order
    _, e, d = final.ordered.blocks()
    offline = greenml.forecast(
        pd.DataFrame({"energy_j": e[: f.steps_used], "duration_s": d[: f.steps_used]}),
        total_steps=total,
    )
    assert offline.energy_j == pytest.approx(f.energy_j, rel=1e-12)
    assert offline.high_j == pytest.approx(f.high_j, rel=1e-12)
    assert offline.duration_s == pytest.approx(f.duration_s, rel=1e-12)
    # Stopped: a forecast for the run's own length is what was measured, exactly
    g = m.forecast(total_steps=total)
    assert g.steps_pending == 0 and g.steps_used == total
    assert g.energy_j == pytest.approx(truth) and g.low_j == pytest.approx(g.high_j)
    assert g.co2e_g == pytest.approx(m.co2e_g * truth / m.energy_j, rel=1e-6)


def test_given_log_forecast_after_steps_when_running_then_one_record_and_an_info_line(
    rt, tmp_path, caplog
):
    log = tmp_path / "run.jsonl"
    caplog.set_level(logging.INFO, logger="greenml")
    with greenml.meter("train", runtime=rt, log=str(log)) as m:
        m.log_forecast(total_steps=20_000, after_steps=1000)
        for _ in range(2500):  # resolved in batches of 1024: the forecast comes at one of them
            _busy(0.0004)
            m.step()
        # Then: made once while running, on the resolution path, from >= 1000 resolved steps
        f = m.logged_forecast
        assert f is not None and 1000 <= f.steps_used < 2500
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    fc = [r for r in recs if r["type"] == "forecast"]
    assert len(fc) == 1
    assert fc[0]["energy_j"] == pytest.approx(f.energy_j) and fc[0]["meter"] == "train"
    assert fc[0]["steps_used"] == f.steps_used
    assert any("forecast for 20000 steps" in r.getMessage() for r in caplog.records)


def test_given_log_forecast_that_cannot_work_when_due_then_logged_not_raised(rt, tmp_path):
    log = tmp_path / "run.jsonl"
    with greenml.meter(runtime=rt, log=str(log)) as m:
        m.log_forecast(total_steps=10, after_steps=5)  # total below the steps it will see
        for _ in range(2000):
            m.step()
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    (fc,) = [r for r in recs if r["type"] == "forecast"]
    assert "fewer than" in fc["error"] and m.logged_forecast is None


def test_given_log_forecast_after_seconds_when_stopped_then_made_from_the_steps(rt, tmp_path):
    with greenml.meter(runtime=rt) as m:
        m.log_forecast(total_steps=5000, after_s=0.2)
        for _ in range(400):
            _busy(0.001)
            m.step()
    m.steps  # noqa: B018 - the final flush resolves the rest
    f = m.logged_forecast
    assert f is not None and f.steps_used >= 200


@pytest.mark.parametrize(
    "kwargs", [{"after_steps": 0}, {}, {"after_s": -1.0}, {"after_steps": 5, "after_s": 1.0}]
)
def test_given_bad_log_forecast_options_when_called_then_clear_error(rt, kwargs):
    m = greenml.meter(runtime=rt)
    with pytest.raises(ForecastError, match="after_"):
        m.log_forecast(total_steps=100, **kwargs)


# ------------------------------------------------------------------- logs and the command line


def _run_logged(rt, log, steps=600):
    with greenml.meter("fit", runtime=rt, log=str(log), carbon_intensity=300.0) as m:
        for _ in range(steps):
            _busy(0.0005)
            m.step()
    return m


def test_given_a_meter_log_when_forecast_from_it_then_same_as_the_meter(rt, tmp_path):
    log = tmp_path / "run.jsonl"
    m = _run_logged(rt, log)
    a = m.forecast(total_steps=6000)
    b = greenml.forecast(str(log), total_steps=6000)
    assert b.energy_j == pytest.approx(a.energy_j) and b.high_j == pytest.approx(a.high_j)
    assert b.co2e_g == pytest.approx(a.co2e_g)  # the log's carbon intensity


def test_cli_forecast_json_and_text(rt, tmp_path, capsys):
    log = tmp_path / "run.jsonl"
    _run_logged(rt, log)
    assert main(["forecast", str(log), "--total-steps", "6000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "energy_j",
        "low_j",
        "high_j",
        "duration_s",
        "co2e_g",
        "method",
        "fraction_profiled",
        "warmup_steps",
        "stationary",
    ):
        assert key in out
    assert out["fraction_profiled"] == pytest.approx(0.1)
    assert main(["forecast", str(log), "--total-steps", "6000"]) == 0
    text = capsys.readouterr().out
    assert "forecast for 6000 steps" in text and "90% interval" in text


def test_cli_forecast_errors_are_messages(tmp_path, capsys):
    assert main(["forecast", str(tmp_path / "none.jsonl"), "--total-steps", "10"]) == 2
    assert "no such file" in capsys.readouterr().err
    log = tmp_path / "empty.jsonl"
    log.write_text('{"type": "meter", "name": "x"}\n')
    assert main(["forecast", str(log), "--total-steps", "10"]) == 2
    assert "no step profile" in capsys.readouterr().err


def test_t_quantile_without_scipy_matches_scipy(monkeypatch):
    from greenml._forecast import t_quantile

    stats = pytest.importorskip("scipy.stats")
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # import fails: the expansion is used
    for dof in (4, 7, 19):
        for p in (0.95, 0.995):
            assert t_quantile(p, dof) == pytest.approx(float(stats.t.ppf(p, dof)), abs=0.011)
