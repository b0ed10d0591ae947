"""Fixtures for the pytest-benchmark microbenchmarks in bench_core.py.

Not part of the main test run (pytest's testpaths is ``tests``); run with::

    python -m pytest benchmarks/bench_core.py --benchmark-only -q -p no:cacheprovider \
        --benchmark-json benchmarks/results/bench_core.json

The fake powercap tree comes from sampler_overhead.py (same directory, on
sys.path because this conftest's directory is inserted by pytest).
"""

from __future__ import annotations

from typing import Iterator, List

import pytest

from sampler_overhead import make_powercap_tree

#: Samples pushed before timing read(): the ring must hold them all.
BULK_SAMPLES = 100_000
BULK_CAPACITY = 1 << 17  # 131072


@pytest.fixture(scope="session")
def rapl_source(tmp_path_factory):
    """A RaplSource over a fake tree with 4 zones (package-0/1, each with dram)."""
    from greenml import _core

    root = make_powercap_tree(tmp_path_factory.mktemp("powercap"))
    src = _core.RaplSource(str(root))
    domains = [c.domain for c in src.channels()]
    assert domains == ["package:0", "dram:0", "package:1", "dram:1"], src.status()
    return src


@pytest.fixture
def make_sampler() -> Iterator:
    """Factory for _core.Sampler; every sampler made is stopped at teardown."""
    from greenml import _core

    made: List[_core.Sampler] = []

    def make(sources, period_ns: int = 10_000_000, capacity: int = 1 << 12):
        s = _core.Sampler(list(sources), period_ns, capacity)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def filled_sampler(rapl_source, make_sampler):
    """A RAPL sampler (thread not started) whose ring holds BULK_SAMPLES samples.

    Returns (sampler, index of the first sample).
    """
    s = make_sampler([rapl_source], capacity=BULK_CAPACITY)
    read_now = s.read_now
    first = read_now()[0]
    for _ in range(BULK_SAMPLES - 1):
        read_now()
    assert s.head - first == BULK_SAMPLES
    return s, first
