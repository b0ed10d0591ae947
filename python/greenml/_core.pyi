"""
Native energy sampling core of greenml (sources, sampler, ring buffer).
"""

from __future__ import annotations
import collections.abc
import typing

class ChannelInfo:
    """
    One readable channel of a source.
    """
    def __repr__(self) -> str: ...
    @property
    def detail(self) -> str:
        """
        Zone path or device name and UUID; for a modelled domain, its assumptions.
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
    def power_window_ns(self) -> int:
        """
        Power channels: each reading is the mean over this trailing window (ns); 0 = instantaneous; -1 = unknown, or not a power channel.
        """
    @property
    def rel_uncertainty(self) -> float:
        """
        Relative error bound of a modelled channel (0.5 = +/-50%); 0 if measured.
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
    def uuid(self) -> str:
        """
        GPU UUID as NVML spells it ('GPU-...'); empty for host-level domains.
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
    def __init__(self, root: str, missing_hint: str = "") -> None:
        """
        missing_hint ends the reason given when root holds no RAPL zone.
        """

class NvmlSource(Source):
    """
    NVIDIA GPUs through NVML, loaded with dlopen.
    """
    def __init__(
        self,
        library: str,
        cuda_visible_devices: str | None = None,
        *,
        cuda_device_order: str | None = None,
        cuda_uuids: collections.abc.Sequence[str] | None = None,
        load_hint: str = "",
        order_hint: str = "",
    ) -> None:
        """
        cuda_visible_devices and cuda_device_order: the CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER values the process runs with (None = unset). cuda_uuids: the UUIDs of cuda:0, cuda:1, ... from the loaded CUDA runtime, which then decide gpu:<i> outright (None = no runtime to ask). load_hint and order_hint end the reasons given when the library cannot be loaded and when CUDA's numbering of mixed GPU models cannot be known.
        """
    def power_limits(self) -> list:
        """
        Power limits of every gpu:<i>, read only: dicts with domain, detail, uuid, current_w, default_w, min_w, max_w, enforced_w (W, None when NVML cannot tell), fixed_reason (why greenml will not change it, else '') and reason (why values are unknown, else '').
        """
    def set_power_limit(
        self, domain: str, limit_w: typing.SupportsFloat | typing.SupportsIndex
    ) -> tuple[int, str]:
        """
        Sets gpu:<i>'s power management limit (W, rounded to mW; needs root). Returns (nvmlReturn_t, message): 0 and '' on success; otherwise nothing was changed and the message says why and what to do. Values outside the GPU's constraints are refused without asking NVML.
        """

class ModelSource(Source):
    """
    Modelled domains as microjoule counters: cpu:estimated = cpu_idle_w x elapsed time + cpu_busy_w_per_cpu x busy CPU-seconds (read from busy_path); dram:estimated = dram_w x elapsed time when dram_w > 0 (with_cpu=False: DRAM only). busy_format: 'proc_stat' (/proc/stat, jiffies), 'cgroup2_stat' (cpu.stat usage_usec) or 'cgroup1_usage' (cpuacct.usage, ns).
    """
    def __init__(
        self,
        busy_path: str,
        busy_format: str,
        busy_seconds_per_unit: typing.SupportsFloat | typing.SupportsIndex,
        cpu_idle_w: typing.SupportsFloat | typing.SupportsIndex,
        cpu_busy_w_per_cpu: typing.SupportsFloat | typing.SupportsIndex,
        cpu_max_busy_cpus: typing.SupportsFloat | typing.SupportsIndex,
        cpu_rel_uncertainty: typing.SupportsFloat | typing.SupportsIndex = 0.0,
        cpu_detail: str = "",
        dram_w: typing.SupportsFloat | typing.SupportsIndex = 0.0,
        dram_rel_uncertainty: typing.SupportsFloat | typing.SupportsIndex = 0.0,
        dram_in_total: bool = True,
        dram_detail: str = "",
        with_cpu: bool = True,
    ) -> None: ...

class Sampler:
    """
    One native thread that reads every source into a ring: at period_ns while something needs full rate (demand, a recent touch), else every idle_period_ns (0 = always full rate), and always often enough to see every counter wrap.
    """
    def __init__(
        self,
        sources: collections.abc.Sequence[Source],
        period_ns: typing.SupportsInt | typing.SupportsIndex = 10000000,
        capacity: typing.SupportsInt | typing.SupportsIndex = 65536,
        idle_period_ns: typing.SupportsInt | typing.SupportsIndex = 0,
        history_period_ns: typing.SupportsInt | typing.SupportsIndex = 0,
        history_rows: typing.SupportsInt | typing.SupportsIndex = 32768,
    ) -> None:
        """
        ValueError when a period is outside [50000, 3600e9] ns (idle and history periods: or 0 = off), capacity outside [2, 2**26] or history_rows outside [2, 2**22].
        """
    def add_demand(self, delta: typing.SupportsInt | typing.SupportsIndex) -> None:
        """
        Adds delta to the full-rate demand count (full rate while it is positive).
        """
    def channels(self) -> list[ChannelInfo]: ...
    def events(
        self, from_index: typing.SupportsInt | typing.SupportsIndex = 0
    ) -> tuple[list[tuple[int, int, str, str]], int]:
        """
        Events seen on channels (counter_reset, possibly_missed_wraps, read_failed, read_recovered) as ([(t_ns, since_ns, domain, kind)], next_index); the event lies between since_ns and t_ns.
        """
    def edge_read(self) -> tuple[int, int]:
        """
        A window edge: reads the cheap sources (RAPL, the model) now and pushes a sample in which the others keep their last values and read times. Returns (index, t_ns): the sample's index and the cheap sources' read time, the edge's exact time.
        """
    def history(
        self,
        from_ns: typing.SupportsInt | typing.SupportsIndex,
        to_ns: typing.SupportsInt | typing.SupportsIndex,
    ) -> tuple:
        """
        Run-long history rows with t in [from_ns, to_ns] plus one row on each side, as (index[n], t_ns[n], energy_j[n, C], power_w[n, C], channel_t_ns[n, C]).
        """
    def latest(self) -> typing.Any:
        """
        The newest sample in the ring as (index, t_ns, energy_j[C], power_w[C], channel_t_ns[C]) with the index of the sample copied, or None when the ring is empty. No I/O.
        """
    def pause(self) -> None: ...
    def read(
        self,
        from_index: typing.SupportsInt | typing.SupportsIndex,
        max_samples: typing.SupportsInt | typing.SupportsIndex = 18446744073709551615,
    ) -> tuple:
        """
        Like read_indexed() without the indices and channel times: (t_ns[n], energy_j[n, C], power_w[n, C], next_index, lost).
        """
    def read_indexed(
        self,
        from_index: typing.SupportsInt | typing.SupportsIndex,
        max_samples: typing.SupportsInt | typing.SupportsIndex = 18446744073709551615,
    ) -> tuple:
        """
        Copies samples with index >= from_index, oldest first, without blocking the sampler. Returns (index[n], t_ns[n], energy_j[n, C], power_w[n, C], next_index, lost, channel_t_ns[n, C]): pass next_index as from_index next time; lost counts samples overwritten before they could be read.
        """
    def read_now(self) -> tuple:
        """
        Reads every source now and records the sample in the ring. Returns (index, t_ns, energy_j[C], power_w[C], channel_t_ns[C]); energy is cumulative since the sampler was created, power is NaN for counter channels, channel_t_ns is when each channel's source was read.
        """
    def resume(self) -> None: ...
    def start(self) -> None: ...
    def stats(self) -> dict:
        """
        Counters of the thread's work (lock-free).
        """
    def status(self) -> list[DomainStatus]: ...
    def stop(self) -> None: ...
    def touch(self, hold_ns: typing.SupportsInt | typing.SupportsIndex) -> None:
        """
        A window edge happened: full rate until now + hold_ns (wakes an idle thread, which samples at once).
        """
    @property
    def capacity(self) -> int: ...
    @property
    def head(self) -> int:
        """
        Number of samples ever pushed (the next sample's index).
        """
    @property
    def has_cheap_edge_sources(self) -> bool: ...
    @property
    def history_capacity(self) -> int:
        """
        Most history rows kept (memory: rows x (values per sample + 2) x 8 bytes).
        """
    @property
    def idle_period_ns(self) -> int: ...
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
