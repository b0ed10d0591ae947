"""Sweep and tuner against a fake GPU whose power and speed respond to its limit.

The workload is ``fakes.nvml.CappedWorkload``: the fake GPU draws min(L, 300 W) and a step takes
t(L) = 20 ms / f(L) with f the clock a cube-law GPU (100 W static) holds under L, so energy per
step E(L) = min(L, 300) t(L) is convex with its minimum at 150 W. The grid is the GPU's range
125..300 W in 25 W steps; the time budget is judged with the model's t(L), not the measurement.
"""

from __future__ import annotations

import math
import statistics
import time

import pytest

import greenml.powercap as pc
from fakes.nvml import CappedWorkload

GRID = [300.0, 275.0, 250.0, 225.0, 200.0, 175.0, 150.0, 125.0]


@pytest.fixture
def gpu(fake_nvml, tmp_path, monkeypatch, runtimes):
    fake_nvml.add_device(name="Fake H100")
    work = CappedWorkload(fake_nvml)
    work.start(min_w=125.0, update_ms=1.0)
    monkeypatch.setenv("GREENML_NVML_LIBRARY", str(fake_nvml.library_path))
    monkeypatch.setenv("GREENML_SOURCES", "nvml")
    monkeypatch.setenv("GREENML_POWERCAP_STATE", str(tmp_path / "powercap-state.json"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    work.runtime = runtimes(nvml_library=fake_nvml.library_path, sources=("nvml",))
    work.state = tmp_path / "powercap-state.json"
    return work


def test_given_a_capped_gpu_when_sweeping_auto_then_the_optimum_is_found_within_one_step(
    gpu, tmp_path
):
    result = pc.sweep(gpu.step, limits="auto", steps_per_limit=10, warmup_steps=2,
                      settle_s=0.02, runtime=gpu.runtime)

    t = result.table
    assert list(t.limit_w) == GRID
    assert (t.steps == 10).all()
    assert abs(result.best_energy_w - gpu.optimum_w) <= 25.0
    # Time per step follows the model (the sleep overshoots by a little, more on a busy machine).
    for _, row in t.iterrows():
        assert row.time_s == pytest.approx(gpu.time_s(row.limit_w), rel=0.08, abs=0.005)
        # Only the GPU is measured: its share is all of it (the window adds its two edges).
        assert row.device_energy_j == pytest.approx(row.energy_j, rel=0.05)
    # Power per step never exceeds the limit by more than the measurement's spread.
    assert (t.power_w <= t.limit_w * 1.05).all()
    assert result.reference_w == 300.0
    assert 300.0 in [p.limit_w for p in result.pareto]
    assert gpu.fake.limit_w(0) == 300.0  # restored
    assert not gpu.state.exists()
    saved = result.save(tmp_path / "out")
    assert (saved / "sweep.png").stat().st_size > 10_000
    assert (saved / "sweep.csv").read_text().startswith("limit_w,steps,energy_j")


@pytest.mark.parametrize("budget", [0.05, 0.15])
def test_given_a_slowdown_budget_when_tuning_then_the_applied_limit_stays_within_it(gpu, budget):
    seen = []
    with pc.Tuner(device="gpu:0", limits=GRID, max_slowdown=budget, steps_per_limit=10,
                  warmup_steps=2, runtime=gpu.runtime) as tuner:
        while tuner.state != "applied":
            gpu.step()
            tuner.step()
            seen.append(gpu.fake.limit_w(0))
            assert len(seen) < 200, "the tuner never decided"
        applied = []
        for _ in range(15):  # the rest of the run keeps the chosen limit
            t0 = time.perf_counter()
            gpu.step()
            tuner.step()
            applied.append(time.perf_counter() - t0)
            assert gpu.fake.limit_w(0) == tuner.chosen_w
    reference = []
    for _ in range(15):  # the original limit again
        t0 = time.perf_counter()
        gpu.step()
        reference.append(time.perf_counter() - t0)

    assert set(seen) >= set(GRID)  # every limit was tried
    # The run's actual slowdown (steps as they really ran, sleep overshoot included) stays
    # within the budget, up to the timing noise of a shared machine; so does the model's (a
    # busy machine's overshoot makes measured slowdowns smaller than the model's).
    actual = statistics.median(applied) / statistics.median(reference) - 1.0
    assert actual <= budget + 0.02
    true_slowdown = gpu.time_s(tuner.chosen_w) / gpu.time_s(300.0) - 1.0
    assert true_slowdown <= budget + 0.03
    true_saving = 1.0 - gpu.energy_j(tuner.chosen_w) / gpu.energy_j(300.0)
    saving = tuner.expected_saving
    assert abs(saving - true_saving) <= 4 * saving.uncertainty + 0.03
    if budget == 0.15:  # 250 W (10% slower, 7% less energy) fits: a saving is found
        assert tuner.chosen_w < 300.0 and true_saving > 0.0
    report = tuner.report()
    assert report["chosen_w"] == tuner.chosen_w and len(report["points"]) == len(GRID)
    assert gpu.fake.limit_w(0) == 300.0  # restored by close
    assert not gpu.state.exists()


def test_given_a_cost_weight_when_tuning_then_energy_only_picks_the_energy_optimum(gpu):
    points = [
        pc.LimitPoint(w, 10, gpu.energy_j(w), 0.0, 0.0, gpu.time_s(w), 0.0, gpu.energy_j(w))
        for w in GRID
    ]

    assert pc.choose(points, max_slowdown=None).limit_w == gpu.optimum_w
    assert pc.choose(points, max_slowdown=None, cost=1.0).limit_w == gpu.optimum_w
    assert pc.choose(points, max_slowdown=None, cost=0.0).limit_w == 300.0  # time only
    mid = pc.choose(points, max_slowdown=None, cost=0.9, max_power_w=300.0).limit_w
    assert gpu.optimum_w < mid < 300.0
    assert [p.limit_w for p in pc.pareto(points)] == [300, 275, 250, 225, 200, 175, 150]


def test_given_a_step_that_raises_when_sweeping_then_the_limit_is_restored(gpu):
    calls = []

    def failing_step():
        calls.append(gpu.fake.limit_w(0))
        if len(calls) == 5:
            raise RuntimeError("out of memory")
        gpu.step()

    with pytest.raises(RuntimeError, match="out of memory"):
        pc.sweep(failing_step, limits=[250, 200], steps_per_limit=3, warmup_steps=0,
                 settle_s=0.0, runtime=gpu.runtime)

    assert calls[0] == 250.0 and calls[-1] == 200.0
    assert gpu.fake.limit_w(0) == 300.0
    assert not gpu.state.exists()


def test_given_limits_outside_the_range_when_sweeping_then_refused_before_any_change(gpu):
    with pytest.raises(pc.LimitOutOfRange, match="from 125 W to 300 W, not 400 W"):
        pc.sweep(gpu.step, limits=[250, 400], runtime=gpu.runtime)

    assert gpu.fake.limit_history(0) == []


def test_given_the_fake_capped_by_a_limit_then_its_counter_integrates_the_capped_power(gpu):
    from greenml import _core

    src = _core.NvmlSource(str(gpu.fake.library_path), None)
    with pc.LimitGuard() as guard:
        guard.set("gpu:0", 150)
        (e0,), _ = src.read()
        t0 = _core.monotonic_ns()
        gpu.step()
        gpu.step()
        (e1,), _ = src.read()
        t1 = _core.monotonic_ns()

    power_w = (e1 - e0) * 1e-3 / ((t1 - t0) * 1e-9)
    assert power_w == pytest.approx(150.0, rel=0.05)
    assert math.isclose(gpu.fake.limit_w(0), 300.0)


def test_given_a_reference_with_zero_energy_when_choosing_then_no_division_error(gpu):
    points = [pc.LimitPoint(w, 10, 0.0, 0.0, 0.0, gpu.time_s(w), 0.001, 0.0) for w in (300, 200)]

    choice = pc.choose(points, max_slowdown=None)

    assert choice.limit_w == 300.0 and choice.reference_w == 300.0
    assert math.isnan(choice.saving) and math.isnan(choice.saving_se)
    assert choice.slowdown == 0.0


TUNE = dict(device="gpu:0", limits=[300, 200], max_slowdown=None, steps_per_limit=2,
            warmup_steps=0)


def test_given_measurements_of_zero_energy_when_tuning_then_step_never_raises(gpu, monkeypatch):
    from greenml.powercap._sweep import Cycle

    real = Cycle.points
    monkeypatch.setattr(Cycle, "points", lambda self: [
        pc.LimitPoint(p.limit_w, p.steps, 0.0, 0.0, 0.0, p.time_s, p.time_se_s, 0.0)
        for p in real(self)])

    with pc.Tuner(runtime=gpu.runtime, **TUNE) as tuner:
        for _ in range(6):
            gpu.step()
            tuner.step()
        assert tuner.state == "applied" and tuner.chosen_w == 300.0
        assert math.isnan(tuner.expected_saving)

    assert gpu.fake.limit_w(0) == 300.0 and not gpu.state.exists()


@pytest.mark.parametrize("where", ["measuring", "choosing"])
def test_given_the_tuners_bookkeeping_failing_then_it_stops_restored_and_training_goes_on(
    gpu, monkeypatch, where
):
    from greenml.powercap import _tuner
    from greenml.powercap._sweep import Cycle

    if where == "measuring":
        monkeypatch.setattr(Cycle, "_begin_measuring", lambda self: 1 / 0)
    else:  # nothing measured: no limit to choose from
        monkeypatch.setattr(Cycle, "points", lambda self: [])
    tuner = _tuner.Tuner(runtime=gpu.runtime, **TUNE)

    with pytest.warns(RuntimeWarning, match="tuner stopped") as caught:
        for _ in range(8):
            gpu.step()
            tuner.step()

    assert len([w for w in caught if "tuner stopped" in str(w.message)]) == 1
    assert tuner.state == "closed" and tuner.chosen_w is None
    assert ("ZeroDivisionError" if where == "measuring" else "PowercapError") in tuner.error
    assert tuner.report()["error"] == tuner.error
    assert gpu.fake.limit_w(0) == 300.0 and not gpu.state.exists()
    tuner.close()  # idempotent
