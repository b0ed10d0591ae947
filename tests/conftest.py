"""Shared fixtures: fake hardware (powercap tree, NVML library), samplers that
are always stopped, and polling with a deadline instead of sleeping."""

from __future__ import annotations

import time
from typing import Callable, List, Optional, TypeVar

import pytest

from fakes.nvml import FakeNvml
from fakes.powercap import PowercapTree

T = TypeVar("T")


@pytest.fixture
def powercap(tmp_path) -> PowercapTree:
    """An empty fake powercap tree; add zones, pass ``str(powercap.root)``."""
    return PowercapTree(tmp_path)


@pytest.fixture
def fake_nvml(tmp_path, monkeypatch) -> FakeNvml:
    """A fake NVML machine with no devices yet, its FAKE_NVML_DIR set for this test only.

    Pass ``str(fake_nvml.library_path)`` (a path, never the soname) as the library.
    """
    try:
        fake = FakeNvml(tmp_path)
    except FileNotFoundError as exc:  # no C compiler: the fake cannot be built here
        pytest.skip(f"cannot build the fake libnvidia-ml: {exc}")
    monkeypatch.setenv("FAKE_NVML_DIR", fake.env["FAKE_NVML_DIR"])
    return fake


@pytest.fixture
def make_sampler(monkeypatch):
    """Factory for ``_core.Sampler`` whose threads are stopped when the test ends.

    Depends on ``monkeypatch`` so that the samplers stop *before* the
    environment is restored: the fake NVML calls getenv() on the sampler
    thread, and setenv/unsetenv racing getenv is undefined behaviour. A failing
    test's traceback keeps its locals (and samplers) alive, hence the explicit
    stop rather than relying on garbage collection.
    """
    from greenml import _core

    made: List[_core.Sampler] = []

    def make(sources, period_ns: int = 10_000_000, capacity: int = 1 << 16) -> _core.Sampler:
        s = _core.Sampler(list(sources), period_ns, capacity)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def _wait_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.002,
                message: Optional[str] = None) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(message or f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


@pytest.fixture
def wait_until() -> Callable[..., object]:
    """``wait_until(predicate, timeout=5.0, interval=0.002, message=None)``."""
    return _wait_until


@pytest.fixture(autouse=True)
def _short_window_warnings_fresh():
    """ShortWindowWarning is issued once per domain per process; every test expects its own."""
    from greenml import _windows

    _windows._warned_short.clear()
    yield
    _windows._warned_short.clear()


@pytest.fixture
def runtimes(monkeypatch):
    """``runtimes(**kwargs)`` makes a Runtime over fakes (see fakes.truth.make_runtime); all are
    stopped at teardown. Depends on monkeypatch: samplers stop before env is restored."""
    from fakes.truth import Runtimes

    r = Runtimes()
    yield r.make
    r.stop_all()


@pytest.fixture
def fake_rapl(tmp_path):
    """``fake_rapl({"intel-rapl:0": (base_w, amp_w, freq_hz), ...})``: a fake RAPL tree under
    tmp_path (a package with its dram subzone) whose zones draw these power profiles, rewritten
    by a running ``fakes.truth.RaplWriter`` until teardown. Returns the writer: ``.root`` for a
    runtime, ``.true_energy_j(zone, t0_ns, t1_ns)`` for the truth."""
    from fakes.truth import RaplWriter, rapl_tree

    writers: List[RaplWriter] = []

    def make(profiles) -> RaplWriter:
        w = RaplWriter(rapl_tree(tmp_path / f"rapl{len(writers)}"), profiles).start()
        writers.append(w)
        return w

    yield make
    for w in writers:
        w.stop()


@pytest.fixture
def rapl_runtime(fake_rapl, runtimes):
    """A Runtime (1 ms samples, warmed up) over a fake RAPL package drawing a constant 30 W."""
    from fakes.truth import warm_up

    rt = runtimes(
        powercap_root=fake_rapl({"intel-rapl:0": (30.0, 0.0, 1.0)}).root,
        sources={"rapl"},
        interval_ms=1.0,
    )
    warm_up(rt, seconds=0.02)
    return rt


@pytest.fixture
def gpu_with_limits(fake_nvml, tmp_path, monkeypatch, runtimes):
    """One fake GPU drawing a constant 200 W, power limit 300 W in [125, 300]; GREENML_* point
    at it (NVML only) and at a power-capping state file under tmp_path. Returns (fake NVML, a
    Runtime measuring the GPU)."""
    fake_nvml.add_device(name="Fake H100")
    fake_nvml.set_limits(0, 300, min_w=125, max_w=300, default_w=300)
    fake_nvml.set_profile(0, base_w=200.0, update_ms=1.0)
    monkeypatch.setenv("GREENML_NVML_LIBRARY", str(fake_nvml.library_path))
    monkeypatch.setenv("GREENML_SOURCES", "nvml")
    monkeypatch.setenv("GREENML_POWERCAP_STATE", str(tmp_path / "powercap-state.json"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake_nvml, runtimes(nvml_library=fake_nvml.library_path, sources=("nvml",))
