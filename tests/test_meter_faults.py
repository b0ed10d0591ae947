"""Faults inside a window, on fake hardware: a counter reset, a reader stalled past a counter
wrap, a zone that stops reading. The result keeps what was measured, says which domain is
partial and when, and its uncertainty covers the truth."""

from __future__ import annotations

import threading
import time

import pytest

import greenml
from fakes.powercap import PowercapTree, _write_in_place
from fakes.truth import RaplWriter, meter_window_ns, rapl_tree

POWER_W = 50.0


class RampWriter:
    """Writes package:0 as a counter drawing POWER_W, every ~0.5 ms, from a thread; ``reset()``
    restarts the counter from 0 (as after resume from suspend) while the power goes on."""

    def __init__(self, tree: PowercapTree, start_uj: int) -> None:
        self._tree = tree
        self._origin_ns = time.monotonic_ns()
        self._offset_uj = start_uj
        self.reset_at_ns = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _value(self, now_ns: int) -> int:
        return int(self._offset_uj + POWER_W * (now_ns - self._origin_ns) / 1e3)

    def _run(self) -> None:
        while not self._stop.wait(0.0005):
            self._tree.set_energy("package:0", self._value(time.monotonic_ns()))

    def reset(self) -> None:
        now = time.monotonic_ns()
        self._origin_ns, self._offset_uj, self.reset_at_ns = now, 0, now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _steps(m, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.005)  # the work of one step
        m.step()


@pytest.fixture
def tree(tmp_path):
    t = PowercapTree(tmp_path / "powercap")
    t.add_package(0, energy_uj=50_000_000, range_uj=262_143_328_850, dram=True)
    return t


def test_given_counter_reset_mid_window_when_read_then_truth_within_uncertainty_and_event(
        tree, runtimes):
    ramp = RampWriter(tree, 50_000_000)
    try:
        rt = runtimes(powercap_root=tree.root, sources={"rapl"}, interval_ms=1.0)
        m = greenml.meter("reset", runtime=rt, sync_cuda=False).start()
        time.sleep(0.3)
        ramp.reset()
        time.sleep(0.3)
        m.stop()
    finally:
        ramp.stop()

    r = m.result()
    truth = POWER_W * r.duration_s  # the power never stopped; only the counter restarted
    e, u = r.by_domain["package:0"], r.uncertainty_by_domain["package:0"]
    assert abs(e - truth) <= u, (e, truth, u)
    assert e < 100  # not a 262 kJ "wrap"
    assert r.partial is True
    (ev,) = r.partial_domains["package:0"]
    assert ev["event"] == "counter_reset"
    reset_s = (ramp.reset_at_ns - m._window.t0_ns) / 1e9
    assert ev["from_s"] - 0.01 <= reset_s <= ev["to_s"] + 0.01
    assert "dram:0" not in r.partial_domains
    assert m.to_dict()["partial_domains"]["package:0"][0]["event"] == "counter_reset"


def test_given_reader_stalled_past_a_wrap_when_read_then_domain_flagged_missing_wraps(
        tmp_path, runtimes):
    # 10 J range at the fake zone's assumed 1500 W wraps every 6.7 ms: a 50 ms stall of the
    # reader may hide wraps, and the result must say so rather than report a clean number.
    t = PowercapTree(tmp_path / "powercap")
    t.add_package(0, energy_uj=1_000, range_uj=10_000_000, dram=False)
    rt = runtimes(powercap_root=t.root, sources={"rapl"}, interval_ms=1.0)
    m = greenml.meter("stall", runtime=rt, sync_cuda=False).start()
    rt.sampler.stop()  # the reader stalls
    time.sleep(0.05)
    t.set_energy("package:0", 2_000)
    rt.sampler.start()
    time.sleep(0.02)
    m.stop()
    r = m.result()
    assert r.partial
    assert [e["event"] for e in r.partial_domains["package:0"]] == ["possibly_missed_wraps"]


def test_given_zone_that_fails_mid_window_when_read_then_partial_and_others_keep_measuring(
        tmp_path, runtimes):
    root = rapl_tree(tmp_path)
    dram_file = root / "intel-rapl:0" / "intel-rapl:0:0" / "energy_uj"
    with RaplWriter(root, {"intel-rapl:0": (40.0, 15.0, 3.0)}) as writer:  # package only
        rt = runtimes(powercap_root=root, sources={"rapl"}, interval_ms=1.0)
        m = greenml.meter("fault", runtime=rt, sync_cuda=False).start()
        _steps(m, 0.1)  # a training loop: its step edges keep the sampler at full rate
        _write_in_place(dram_file, "garbage\n")  # the dram zone returns nonsense
        _steps(m, 0.1)
        _write_in_place(dram_file, "0\n")  # and reads again
        _steps(m, 0.1)
        m.stop()
        r = m.result()
        t0, t1 = meter_window_ns(m)
        true_pkg = writer.true_energy_j("intel-rapl:0", t0, t1)
    # The package kept measuring, exactly; dram says when it could not be read.
    assert abs(r.by_domain["package:0"] - true_pkg) <= r.uncertainty_by_domain["package:0"]
    assert list(r.partial_domains) == ["dram:0"]
    (ev,) = r.partial_domains["dram:0"]
    assert ev["event"] == "read_failed"
    assert 0.05 < ev["from_s"] < ev["to_s"] < r.duration_s
    assert 0.05 < ev["unknown_s"] < 0.2
    dram = [c.domain for c in rt.channels].index("dram:0")
    assert rt.sampler.stats()["failed_reads_per_channel"][dram] > 0
