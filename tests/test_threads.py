"""Many threads stepping and calling decorated functions at once, with a tiny ring, a very short
GIL switch interval and the settler thread running: nothing raises into the threads, and the
steps still add up to the energy of the stretch they cover."""

from __future__ import annotations

import sys
import threading
import time

import pytest

import greenml
from fakes.truth import RaplWriter, make_runtime, rapl_tree

PKG = (40.0, 15.0, 3.0)
DRAM = (6.0, 2.0, 7.0)


@pytest.fixture
def writer(tmp_path):
    root = rapl_tree(tmp_path)
    with RaplWriter(root, {"intel-rapl:0": PKG, "intel-rapl:0:0": DRAM}) as w:
        yield w


@pytest.fixture
def tiny_switch_interval():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def test_given_eight_threads_stepping_and_calling_when_run_then_no_error_and_steps_conserve(
        writer, tiny_switch_interval):
    rt = make_runtime(powercap_root=writer.root, sources={"rapl"}, interval_ms=1.0,
                      capacity=256, history_period_ns=5_000_000)
    try:
        rt.ensure_started()

        @greenml.measure("work", runtime=rt, sync_cuda=False)
        def work(k: int) -> int:
            return k * 2

        errors: list = []
        m = greenml.meter("threads", runtime=rt, sync_cuda=False).start()
        # Small batches: resolution happens often, from whichever thread fills a batch.
        steps_stats = m._steps
        steps_stats._pending._batch = 4

        def loop(seed: int) -> None:
            try:
                for k in range(1000):
                    m.step()
                    if work(k) != 2 * k:
                        errors.append("wrong result")
                    if k % 50 == seed % 50:
                        time.sleep(0.001)
            except BaseException as exc:  # noqa: BLE001 - the test reports every failure
                errors.append(repr(exc))

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        m.step()
        t_last = time.monotonic_ns()
        m.stop()

        assert not errors, errors[:3]
        assert not any(t.is_alive() for t in threads)
        steps = m.steps
        assert steps.count == 8 * 1000 + 1
        truth = writer.true_energy_j("intel-rapl:0", m._window.t0_ns, t_last) + \
            writer.true_energy_j("intel-rapl:0:0", m._window.t0_ns, t_last)
        # Steps partition the stretch from the meter's start to the last mark.
        assert abs(steps.total_j - truth) <= steps.uncertainty_j + 1e-3
        assert work.energy.calls == 8 * 1000
    finally:
        rt.stop()
