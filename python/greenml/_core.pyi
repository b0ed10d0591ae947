"""
Native energy sampling core of greenml (sources, sampler, ring buffer).
"""

from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing

class ChannelInfo:
    """
    One readable channel of a source.
    """
    def __repr__(self) -> str: ...
    @property
    def detail(self) -> str:
        """
        Zone path or device name and UUID.
        """
    @property
    def domain(self) -> str:
        """
        Domain key, e.g. 'package:0' or 'gpu:1'.
        """
    @property
    def in_total(self) -> bool:
        """
        False for zones contained in another (core, uncore, psys).
        """
    @property
    def kind(self) -> str:
        """
        'counter' (cumulative energy) or 'power' (instantaneous power).
        """
    @property
    def measured(self) -> bool:
        """
        False for modelled domains.
        """
    @property
    def max_raw(self) -> int:
        """
        Largest raw counter value before it wraps to 0 (modulus max_raw + 1); 0 = never wraps.
        """
    @property
    def max_power_w(self) -> float:
        """
        Most power (W) the channel can plausibly draw (enforced limit or zone maximum where known); 0 = unknown.
        """
    @property
    def source(self) -> str:
        """
        'rapl' or 'nvml'.
        """
    @property
    def to_si(self) -> float:
        """
        Factor from the raw unit to J or W.
        """
    @property
    def unit(self) -> str:
        """
        Raw unit: 'uj', 'mj' or 'mw'.
        """

class DomainStatus:
    """
    Whether a domain can be measured here, and why not.
    """
    def __repr__(self) -> str: ...
    @property
    def available(self) -> bool: ...
    @property
    def domain(self) -> str: ...
    @property
    def measured(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def source(self) -> str: ...

class Source:
    """
    A hardware reader.
    """
    def channels(self) -> list[ChannelInfo]:
        """
        The readable channels, in column order.
        """
    def read(self) -> tuple[list[int], list[bool]]:
        """
        One raw read of every channel: (values in raw units, ok flags). For diagnostics; measurements go through a Sampler.
        """
    def status(self) -> list[DomainStatus]:
        """
        One record per domain this source knows, readable or not.
        """
    @property
    def max_safe_period_ns(self) -> int:
        """
        Longest sampling period that cannot miss a counter wrap.
        """
    @property
    def name(self) -> str: ...

class RaplSource(Source):
    """
    RAPL counters from a powercap tree.
    """
    def __init__(self, root: str) -> None: ...

class NvmlSource(Source):
    """
    NVIDIA GPUs through NVML, loaded with dlopen.
    """
    def __init__(self, library: str, cuda_visible_devices: str | None = None) -> None: ...

class ModelSource(Source):
    """
    The estimated CPU domain: busy jiffies from /proc/stat times joules per busy jiffy.
    """
    def __init__(
        self,
        stat_path: str,
        joules_per_busy_jiffy: typing.SupportsFloat | typing.SupportsIndex,
        detail: str = "",
    ) -> None: ...

class Sampler:
    """
    One native thread that samples every source on an absolute deadline grid into a ring.
    """
    def __init__(
        self,
        sources: collections.abc.Sequence[Source],
        period_ns: typing.SupportsInt | typing.SupportsIndex = 10000000,
        capacity: typing.SupportsInt | typing.SupportsIndex = 65536,
    ) -> None: ...
    def channels(self) -> list[ChannelInfo]: ...
    def latest(self) -> typing.Any:
        """
        The newest sample in the ring as (index, t_ns, energy_j[C], power_w[C]), or None when the ring is empty. No I/O: it copies one slot.
        """
    def pause(self) -> None: ...
    def read(
        self,
        from_index: typing.SupportsInt | typing.SupportsIndex,
        max_samples: typing.SupportsInt | typing.SupportsIndex = 18446744073709551615,
    ) -> tuple[
        numpy.typing.NDArray[numpy.int64],
        numpy.typing.NDArray[numpy.float64],
        numpy.typing.NDArray[numpy.float64],
        int,
        int,
    ]:
        """
        Copies samples with index >= from_index, oldest first, without blocking the sampler. Returns (t_ns[n], energy_j[n, C], power_w[n, C], next_index, lost): pass next_index as from_index next time; lost counts samples overwritten before they could be read.
        """
    def read_indexed(
        self,
        from_index: typing.SupportsInt | typing.SupportsIndex,
        max_samples: typing.SupportsInt | typing.SupportsIndex = 18446744073709551615,
    ) -> tuple[
        numpy.typing.NDArray[numpy.int64],
        numpy.typing.NDArray[numpy.int64],
        numpy.typing.NDArray[numpy.float64],
        numpy.typing.NDArray[numpy.float64],
        int,
        int,
    ]:
        """
        Like read(), with each sample's ring index first: (index[n], t_ns[n], energy_j[n, C], power_w[n, C], next_index, lost).
        """
    def read_now(self) -> tuple[int, int, numpy.ndarray, numpy.ndarray]:
        """
        Reads every source now and records the sample in the ring. Returns (index, t_ns, energy_j[C], power_w[C]); energy is cumulative since the sampler was created, power is NaN for counter channels.
        """
    def resume(self) -> None: ...
    def start(self) -> None: ...
    def stats(self) -> dict: ...
    def status(self) -> list[DomainStatus]: ...
    def stop(self) -> None: ...
    def warnings(self) -> list[str]: ...
    @property
    def capacity(self) -> int: ...
    @property
    def head(self) -> int:
        """
        Number of samples ever pushed (the next sample's index).
        """
    @property
    def max_safe_period_ns(self) -> int: ...
    @property
    def period_ns(self) -> int: ...
    @period_ns.setter
    def period_ns(self, arg1: typing.SupportsInt | typing.SupportsIndex) -> None: ...

def monotonic_ns() -> int:
    """
    CLOCK_MONOTONIC in ns (the clock of every sample).
    """

__version__: str = "0.1.0"
