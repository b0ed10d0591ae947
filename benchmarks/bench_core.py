"""Microbenchmarks of greenml._core hot paths (pytest-benchmark).

Run (not collected by the main test run, whose testpaths is ``tests``)::

    python -m pytest benchmarks/bench_core.py --benchmark-only -q -p no:cacheprovider \
        --benchmark-json benchmarks/results/bench_core.json

All on a fake powercap tree of 4 RAPL zones; the sampler thread is never
started, so the timings are of the calling thread alone.
"""

from __future__ import annotations

import resource
import time
from operator import attrgetter

import pytest
from conftest import BULK_SAMPLES

# Rounds of at least 200 µs (many iterations each for the sub-µs calls, so the
# timer's own cost is amortised) and at most 0.5 s per test: pytest-benchmark
# stores every round in the JSON, which stays small this way.
pytestmark = pytest.mark.benchmark(min_time=0.0002, max_time=0.5)


def test_read_now_push_rapl(benchmark, rapl_source, make_sampler):
    """One synchronous sample: read 4 RAPL files, unwrap, push into the ring, return numpy rows."""
    s = make_sampler([rapl_source])
    index, t_ns, energy, power = benchmark(s.read_now)
    assert energy.shape == (4,) and power.shape == (4,)
    assert s.stats()["manual_samples"] >= 1


def test_read_now_no_source(benchmark, make_sampler):
    """The same call with no source: lock, clock, ring push and the binding (the floor)."""
    s = make_sampler([])
    index, t_ns, energy, power = benchmark(s.read_now)
    assert energy.shape == (0,)


def test_read_100k_into_numpy(benchmark, filled_sampler):
    """read(from, 100k): copy 100k samples out of the ring and convert them to SI numpy arrays."""
    s, first = filled_sampler
    t, energy, power, next_index, lost = benchmark(s.read, first, BULK_SAMPLES)
    assert t.shape == (BULK_SAMPLES,)
    assert energy.shape == (BULK_SAMPLES, 4) and power.shape == (BULK_SAMPLES, 4)
    assert lost == 0 and next_index == first + BULK_SAMPLES
    benchmark.extra_info["samples"] = BULK_SAMPLES
    # Fresh output buffers of this size may come from new mmaps (glibc's
    # dynamic mmap threshold): record the page faults of one more call, with
    # the previous result freed as in the timed loop.
    del t, energy, power
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter_ns()
    s.read(first, BULK_SAMPLES)
    benchmark.extra_info["one_more_call_ms"] = (time.perf_counter_ns() - t0) / 1e6
    benchmark.extra_info["one_more_call_minor_faults"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)


def test_head_property(benchmark, rapl_source, make_sampler):
    """Sampler.head: one acquire load behind a pybind11 property (attrgetter avoids a lambda)."""
    s = make_sampler([rapl_source])
    s.read_now()
    assert benchmark(attrgetter("head"), s) == s.head
