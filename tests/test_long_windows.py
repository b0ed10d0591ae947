"""Windows far longer than the ring: a decorated call, a step and a phase each ten times the
ring's span resolve from the run-long history, within their uncertainty of the truth."""

from __future__ import annotations

import time

import pytest

import greenml
from fakes.truth import RaplWriter, make_runtime, phase_windows_ns, rapl_tree

PKG = (40.0, 15.0, 3.0)
DRAM = (6.0, 2.0, 7.0)
ZONES = {"package:0": "intel-rapl:0", "dram:0": "intel-rapl:0:0"}
RING = 64  # samples: 64 ms at 1 ms
LONG_S = 0.7  # ten times the ring's span


@pytest.fixture
def writer(tmp_path):
    root = rapl_tree(tmp_path)
    with RaplWriter(root, {"intel-rapl:0": PKG, "intel-rapl:0:0": DRAM}) as w:
        yield w


@pytest.fixture
def rt(writer):
    r = make_runtime(powercap_root=writer.root, sources={"rapl"}, interval_ms=1.0,
                     capacity=RING, history_period_ns=10_000_000)
    r.ensure_started()
    r.sampler.add_demand(1)  # full rate throughout: the ring really holds only 64 ms
    yield r
    r.stop()


def _truth_j(writer, t0: int, t1: int) -> float:
    return sum(writer.true_energy_j(z, t0, t1) for z in ZONES.values())


def test_given_decorated_call_ten_times_the_ring_when_resolved_then_truth_within_uncertainty(
        writer, rt):
    @greenml.measure("long", runtime=rt, sync_cuda=False)
    def long_call() -> str:
        time.sleep(LONG_S)
        return "done"

    t_before = time.monotonic_ns()
    assert long_call() == "done"
    t_after = time.monotonic_ns()
    stats = long_call.energy
    assert stats.calls == 1
    truth = _truth_j(writer, t_before, t_after)
    # The call's own edges lie inside [t_before, t_after], microseconds away: < 1 mJ here.
    assert abs(stats.total_j - truth) <= stats.uncertainty_j + 1e-3, (stats.total_j, truth)
    assert stats.total_j > 0.9 * truth  # not the last 64 ms of it
    assert rt.sampler.stats()["history_rows"] >= LONG_S / 0.01 - 5


def test_given_step_ten_times_the_ring_when_resolved_then_truth_within_uncertainty(writer, rt):
    m = greenml.meter(runtime=rt, sync_cuda=False).start()
    t0 = time.monotonic_ns()
    m.step()  # the first step starts here
    time.sleep(LONG_S)
    m.step()
    t1 = time.monotonic_ns()
    time.sleep(0.05)
    m.stop()
    steps = m.steps
    assert steps.count == 2  # meter start -> first mark, then the long one
    truth_both = _truth_j(writer, m._window.t0_ns, t1)
    assert abs(steps.total_j - truth_both) <= steps.uncertainty_j + 1e-3
    assert steps.total_j > 0.9 * _truth_j(writer, t0, t1)


def test_given_phase_ten_times_the_ring_when_resolved_then_truth_within_uncertainty(writer, rt):
    with greenml.meter(runtime=rt, sync_cuda=False) as m:
        with m.phase("long"):
            time.sleep(LONG_S)
    p = m.phases["long"]
    ((t0, t1),) = phase_windows_ns(m, "long")
    truth = _truth_j(writer, t0, t1)
    assert abs(p.energy_j - truth) <= p.uncertainty_j
    assert p.energy_j > 0.9 * truth
