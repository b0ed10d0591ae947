"""``@greenml.measure`` end to end on fake RAPL hardware at constant power, where the truth
of a call is power x its duration: bare and configured forms, plain, async and method
functions, return values, exceptions, metadata, statistics and the call log."""

from __future__ import annotations

import asyncio
import inspect
import statistics
import time

import pytest

import greenml
from greenml import _runtime

from fakes.truth import RaplWriter, rapl_tree, warm_up

PKG_W, DRAM_W = 30.0, 3.0
TOTAL_W = PKG_W + DRAM_W


@pytest.fixture
def writer(tmp_path):
    root = rapl_tree(tmp_path)
    with RaplWriter(root, {"intel-rapl:0": (PKG_W, 0.0, 0.0),
                           "intel-rapl:0:0": (DRAM_W, 0.0, 0.0)}) as w:
        yield w


@pytest.fixture
def rt(writer, runtimes):
    r = runtimes(powercap_root=writer.root, sources={"rapl"}, interval_ms=1.0)
    warm_up(r, seconds=0.02)
    return r


@pytest.fixture
def default_runtime_on_fakes(writer, monkeypatch):
    """The process-wide runtime, built from GREENML_* variables that point at the fakes
    (the documented way to configure a bare ``@measure``), and reset afterwards."""
    for name in ("GREENML_REGION", "GREENML_CARBON_INTENSITY", "GREENML_NVML_LIBRARY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GREENML_POWERCAP_ROOT", str(writer.root))
    monkeypatch.setenv("GREENML_SOURCES", "rapl")
    monkeypatch.setenv("GREENML_INTERVAL_MS", "1")
    _runtime.reset_default_runtime()
    yield
    _runtime.reset_default_runtime()


def _assert_stats_match_truth(stats, inner_durations) -> None:
    """Constant power: the energy of the calls is TOTAL_W x their (exact) summed duration."""
    # No explicit flush: reading a statistic resolves every pending call first.
    assert stats.calls == len(inner_durations)
    truth = TOTAL_W * stats.total_s
    assert abs(stats.total_j - truth) <= stats.uncertainty_j, (stats.total_j, truth,
                                                               stats.uncertainty_j)
    assert stats.mean_j == pytest.approx(stats.total_j / stats.calls)
    # Each call's window holds the function body plus microseconds of wrapper
    assert stats.total_s >= sum(inner_durations)
    assert stats.total_s - sum(inner_durations) <= 0.002 * stats.calls
    median_truth = TOTAL_W * statistics.median(inner_durations)
    per_call_unc = stats.uncertainty_j / stats.calls
    assert abs(stats.percentile_j(50) - median_truth) <= 3 * per_call_unc + TOTAL_W * 0.002


def test_given_bare_decorator_when_called_then_default_runtime_measures_each_call(
    writer, default_runtime_on_fakes
):
    inner = []

    @greenml.measure
    def work(x, *, pause=0.01):
        """Doubles x slowly."""
        t = time.perf_counter()
        time.sleep(pause)
        inner.append(time.perf_counter() - t)
        return 2 * x

    # When
    results = [work(i, pause=0.005 + 0.002 * i) for i in range(6)]

    # Then: values pass through, metadata kept, energy equals power x duration
    assert results == [0, 2, 4, 6, 8, 10]
    assert work.__name__ == "work" and work.__doc__ == "Doubles x slowly."
    assert work.energy.name.endswith("work")
    _assert_stats_match_truth(work.energy, inner)
    assert _runtime.default_runtime().settings.powercap_root == str(writer.root)


def test_given_named_decorator_with_log_when_called_then_calls_are_logged(rt, tmp_path):
    log = tmp_path / "calls.jsonl"
    inner = []

    @greenml.measure("infer", log=str(log), runtime=rt)
    def infer(batch):
        t = time.perf_counter()
        time.sleep(0.01)
        inner.append(time.perf_counter() - t)
        return len(batch)

    # When
    assert [infer([0] * n) for n in (1, 2, 3)] == [1, 2, 3]

    # Then
    stats = infer.energy
    assert stats.name == "infer"
    _assert_stats_match_truth(stats, inner)
    df = greenml.read_log(log)
    assert len(df) == 3
    assert set(df["type"]) == {"call"} and set(df["name"]) == {"infer"}
    assert df["energy_j"].sum() == pytest.approx(stats.total_j)
    assert df["duration_s"].sum() == pytest.approx(stats.total_s)
    assert (df["by_domain.package:0"] > 0).all()


def test_given_async_function_when_run_then_measured_and_still_a_coroutine_function(rt):
    inner = []

    @greenml.measure("fetch", runtime=rt)
    async def fetch(x):
        """Async doc."""
        t = time.perf_counter()
        await asyncio.sleep(0.01)
        inner.append(time.perf_counter() - t)
        return x + 1

    assert inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch" and fetch.__doc__ == "Async doc."

    async def main():
        return [await fetch(i) for i in range(4)]

    assert asyncio.run(main()) == [1, 2, 3, 4]
    _assert_stats_match_truth(fetch.energy, inner)


def test_given_method_when_called_on_instances_then_self_is_passed_and_calls_counted(rt):
    inner = []

    class Model:
        def __init__(self, k):
            self.k = k

        @greenml.measure(runtime=rt)
        def predict(self, x):
            """Predicts."""
            t = time.perf_counter()
            time.sleep(0.008)
            inner.append(time.perf_counter() - t)
            return self.k * x

    a, b = Model(2), Model(3)
    assert (a.predict(5), b.predict(5), a.predict(1)) == (10, 15, 2)
    assert Model.predict.__name__ == "predict" and Model.predict.__doc__ == "Predicts."
    assert Model.predict.energy is a.predict.energy
    assert "Model.predict" in Model.predict.energy.name
    _assert_stats_match_truth(Model.predict.energy, inner)


def test_given_raising_function_when_called_then_reraised_counted_and_still_measured(rt):
    inner = []

    @greenml.measure(runtime=rt)
    def flaky(fail):
        t = time.perf_counter()
        time.sleep(0.006)
        inner.append(time.perf_counter() - t)
        if fail:
            raise ValueError("bad input")
        return "ok"

    assert flaky(False) == "ok"
    for _ in range(2):
        with pytest.raises(ValueError, match="bad input"):
            flaky(True)
    assert flaky(False) == "ok"

    stats = flaky.energy
    assert stats.errors == 2
    _assert_stats_match_truth(stats, inner)  # failed calls are measured too
    d = stats.to_dict()
    assert d["calls"] == 4 and d["errors"] == 2
    assert d["p50_j"] == pytest.approx(stats.percentile_j(50))


def test_given_carbon_options_when_measuring_then_co2e_follows_energy(rt):
    @greenml.measure(runtime=rt, carbon_intensity=100, pue=1.5)
    def f():
        time.sleep(0.01)

    f()
    f()
    assert f.energy.co2e_g == pytest.approx(f.energy.total_j / 3.6e6 * 100 * 1.5, rel=1e-12)


def test_given_unknown_region_when_decorating_then_config_error():
    with pytest.raises(greenml.ConfigError):
        greenml.measure("x", region="XQ")(lambda: None)


def test_given_calls_when_reading_counts_first_then_they_are_current(rt):
    @greenml.measure(runtime=rt)
    def f():
        time.sleep(0.005)

    for _ in range(3):
        f()

    # Read before anything else has flushed the pending calls
    assert f.energy.calls == 3
    assert f.energy.total_j > 0
    assert f.energy.total_s >= 0.015


def test_given_runtime_env_intensity_when_measuring_then_same_carbon_as_a_meter(writer, runtimes,
                                                                                monkeypatch):
    monkeypatch.delenv("GREENML_CARBON_INTENSITY", raising=False)
    monkeypatch.delenv("GREENML_REGION", raising=False)
    rt = runtimes(powercap_root=writer.root, sources={"rapl"}, interval_ms=1.0,
                  env={"GREENML_CARBON_INTENSITY": "100"})

    with greenml.meter(runtime=rt) as m:
        time.sleep(0.005)
    assert m.co2e_g == pytest.approx(m.energy_j / 3.6e6 * 100)

    @greenml.measure(runtime=rt)
    def f():
        time.sleep(0.005)

    f()
    assert f.energy.co2e_g == pytest.approx(f.energy.total_j / 3.6e6 * 100)


def test_given_many_threads_when_calling_a_measured_function_then_every_call_counts(rt):
    # Given: one measured function shared by 8 threads
    @greenml.measure("shared", runtime=rt)
    def f(x):
        return x + 1

    errors = []

    def worker():
        try:
            for i in range(5000):
                assert f(i) == i + 1
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    # When
    import threading

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then: no call failed and none was lost
    assert errors == []
    assert f.energy.calls == 8 * 5000


def test_given_calls_then_a_quiet_time_longer_than_the_ring_when_reading_then_energy_is_kept(
        writer, runtimes):
    # Given: a ring holding ~0.25 s of samples, and calls spaced further apart than that
    rt = runtimes(powercap_root=writer.root, sources={"rapl"}, interval_ms=1.0, capacity=256)
    warm_up(rt, seconds=0.02)

    @greenml.measure("sparse", runtime=rt)
    def work():
        time.sleep(0.05)

    durations = []
    for _ in range(3):
        t = time.monotonic()
        work()
        durations.append(time.monotonic() - t)
        time.sleep(0.8)  # the ring wraps three times over between calls

    # When
    total = work.energy.total_j

    # Then: each call kept its energy (the settler resolved it in time), none reads 0 J
    truth = TOTAL_W * sum(durations)
    assert total == pytest.approx(truth, rel=0.15)


def test_given_more_calls_than_records_when_percentiles_read_then_they_cover_all_calls(rt):
    # Given: 10 slow calls first (a warm-up), then 90 fast ones, with room for 10 records
    @greenml.measure("mixed", runtime=rt, sync_cuda=False, max_records=10)
    def work(seconds: float) -> None:
        time.sleep(seconds)

    for _ in range(10):
        work(0.02)
    for _ in range(90):
        work(0.001)

    # Then: the median is that of all 100 calls (a fast one), not of the first ten (slow ones)
    stats = work.energy
    assert stats.calls == 100
    slow_call_j = TOTAL_W * 0.02
    assert stats.percentile_j(50) < slow_call_j / 4
    assert stats.percentile_j(100) <= stats.total_j


def test_given_broken_bookkeeping_when_calling_then_result_and_exceptions_pass_untouched(rt):
    @greenml.measure("f", runtime=rt, sync_cuda=False)
    def double(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return 2 * x

    assert double(1) == 2
    sampler, rt.sampler = rt.sampler, None  # greenml's own state breaks: measuring now fails
    try:
        with pytest.warns(RuntimeWarning, match="could not measure a call"):
            assert double(3) == 6  # the function's result, untouched
        with pytest.raises(ValueError, match="negative"):  # and its own exception, untouched
            double(-1)
    finally:
        rt.sampler = sampler


def test_given_log_that_becomes_unwritable_when_calling_then_results_are_untouched(
        rt, tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()

    @greenml.measure("g", runtime=rt, sync_cuda=False, log=str(logdir / "calls.jsonl"))
    def g(x: int) -> int:
        return x + 1

    assert [g(k) for k in range(5)] == [1, 2, 3, 4, 5]
    (logdir / "calls.jsonl").unlink()
    logdir.rmdir()  # the log's directory disappears mid-run
    with pytest.warns(RuntimeWarning, match="cannot write to the log"):
        results = [g(k) for k in range(3000)]  # enough calls to resolve batches meanwhile
        time.sleep(0.1)  # past the counters' settle time: the pending calls are ready
        g.energy._pending.settle_aging()  # what the settler thread does: logs, and fails
    assert results == list(range(1, 3001))
    assert g.energy.calls == 3005  # every call still counted, once
