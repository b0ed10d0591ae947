"""The process-wide sampler: built from the environment on first use, shared
by every meter, stopped at interpreter exit and restarted in a forked child.

Tests and embedders build their own :class:`Runtime` from explicit
:class:`Settings` and pass it to meters; nothing here needs patching.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from . import _core, _cpu_model
from ._config import Settings, settings_from_env


@dataclass(frozen=True)
class Sensor:
    """What one domain is: where it comes from and whether it can be read here."""

    domain: str
    source: str
    measured: bool
    available: bool
    reason: str


def build_sources(settings: Settings) -> Tuple[List["_core.Source"], List[Sensor]]:
    """The sources the settings allow (GPUs first), and sensors that have no source.

    The modelled domains are added only where no counter measures the same thing:
    ``cpu:estimated`` when no RAPL package counter is readable, ``dram:estimated``
    when no RAPL dram counter is; neither when ``settings.estimate`` is off.
    """
    sources: List[_core.Source] = []
    extra: List[Sensor] = []
    if "nvml" in settings.sources:
        sources.append(nvml_source(settings))
    package_measured = dram_measured = False
    if "rapl" in settings.sources:
        rapl = _core.RaplSource(settings.powercap_root, RAPL_MISSING_HINT)
        sources.append(rapl)
        package_measured = any(c.domain.startswith("package:") for c in rapl.channels())
        dram_measured = any(c.domain.startswith("dram:") for c in rapl.channels())
    if "model" in settings.sources:
        model, model_extra = _model_source(settings, package_measured, dram_measured)
        if model is not None:
            sources.append(model)
        extra.extend(model_extra)
    return sources, extra


def _model_source(
    settings: Settings, package_measured: bool, dram_measured: bool
) -> Tuple[Optional["_core.ModelSource"], List[Sensor]]:
    """The modelled domains no counter measures here (``cpu:estimated`` without a RAPL
    package counter, ``dram:estimated`` without a RAPL dram counter), as one source, and
    the reasons for those that cannot be modelled."""
    domains = [] if package_measured else ["cpu:estimated"]
    domains += [] if dram_measured else ["dram:estimated"]
    if not domains:
        return None, []
    if not settings.estimate:
        why = (
            "estimates are off (GREENML_ESTIMATE=off or --no-estimate): only counters are "
            "reported; unset it for a labelled estimate where no counter exists"
        )
        return None, [Sensor(d, "model", False, False, why) for d in domains]
    extra: List[Sensor] = []
    cpu = dram = None
    if not package_measured:
        cpu, reason = _cpu_model.plan_cpu_estimate(
            env=settings.env,
            cpuinfo_path=settings.cpuinfo_path,
            stat_path=settings.proc_stat_path,
            cgroup_root=settings.cgroup_root,
            proc_self_cgroup=settings.proc_self_cgroup_path,
            clk_tck=os.sysconf("SC_CLK_TCK"),
        )
        if cpu is None:
            extra.append(Sensor("cpu:estimated", "model", False, False, reason))
    if not dram_measured:
        dram, reason = _cpu_model.plan_dram_estimate(
            settings.meminfo_path, settings.cgroup_root, settings.proc_self_cgroup_path
        )
        if dram is None:
            extra.append(Sensor("dram:estimated", "model", False, False, reason))
    if cpu is None and dram is None:
        return None, extra
    source = _core.ModelSource(
        cpu.busy_path if cpu else "",
        cpu.busy_format if cpu else "proc_stat",
        cpu.busy_seconds_per_unit if cpu else 0.01,
        cpu.idle_w if cpu else 0.0,
        cpu.busy_w_per_cpu if cpu else 0.0,
        cpu.max_busy_cpus if cpu else 1.0,
        cpu_rel_uncertainty=cpu.rel_uncertainty if cpu else 0.0,
        cpu_detail=cpu.assumptions if cpu else "",
        dram_w=dram.power_w if dram else 0.0,
        dram_rel_uncertainty=dram.rel_uncertainty if dram else 0.0,
        dram_detail=dram.assumptions if dram else "",
        with_cpu=cpu is not None,
    )
    return source, extra


#: Ends the reason when the powercap root holds no RAPL zone.
RAPL_MISSING_HINT = "set GREENML_POWERCAP_ROOT if the tree lives elsewhere"
#: Ends the reason when libnvidia-ml cannot be loaded.
NVML_LOAD_HINT = "set GREENML_NVML_LIBRARY to the path of libnvidia-ml.so.1"
#: Ends the reason when CUDA's numbering of mixed GPU models cannot be known.
NVML_ORDER_HINT = (
    "initialise CUDA before greenml starts (e.g. torch.cuda.init()) so that greenml can ask it"
)


def nvml_source(
    settings: Settings, modules: Optional[Mapping[str, Any]] = None
) -> "_core.NvmlSource":
    """The NVML source for the GPUs this process calls cuda:0, cuda:1, ...

    ``modules`` is where to look for an already imported torch (``sys.modules``).
    """
    return _core.NvmlSource(
        settings.nvml_library,
        settings.cuda_visible_devices,
        cuda_device_order=settings.cuda_device_order,
        cuda_uuids=cuda_runtime_uuids(sys.modules if modules is None else modules),
        load_hint=NVML_LOAD_HINT,
        order_hint=NVML_ORDER_HINT,
    )


def cuda_runtime_uuids(modules: Mapping[str, Any]) -> Optional[List[str]]:
    """UUIDs of cuda:0, cuda:1, ... from torch's CUDA runtime, or None.

    Only when torch is already imported and has initialised CUDA: importing
    torch or initialising CUDA here would cost seconds and memory on every GPU,
    and would break a later fork. The runtime's UUIDs say exactly which GPU
    each CUDA index is, whatever CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER say.
    """
    torch = modules.get("torch")
    if torch is None:
        return None
    try:
        cuda = torch.cuda
        if not cuda.is_initialized():
            return None
        return [str(cuda.get_device_properties(i).uuid) for i in range(cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken or partial torch means: no runtime to ask
        return None


def sensors_of(sources: List["_core.Source"], extra: List[Sensor]) -> List[Sensor]:
    found = [
        Sensor(s.domain, s.source, s.measured, s.available, s.reason)
        for src in sources
        for s in src.status()
    ]
    return found + extra


#: While nothing needs full rate, the sampler reads every source this often (or more often
#: when a counter could wrap sooner): one wake-up per second keeps an idle process idle.
IDLE_PERIOD_NS = 1_000_000_000
#: One row of every sample's energies is kept this often for the whole run (the run-long
#: history that windows longer than the ring resolve from), in at most HISTORY_ROWS rows: when
#: full, every other row goes and the spacing doubles.
HISTORY_PERIOD_NS = 1_000_000_000
HISTORY_ROWS = 1 << 15
#: Events kept for results (counter resets, failed reads); older ones are dropped.
MAX_EVENTS = 4096


@dataclass(frozen=True)
class ChannelEvent:
    """Something the sampler saw on one domain between ``since_ns`` and ``t_ns``."""

    t_ns: int
    since_ns: int
    domain: str
    kind: str  # counter_reset, possibly_missed_wraps, read_failed, read_recovered


class Runtime:
    """One sampler over the sources chosen by ``settings``.

    The sampler runs at the configured period only while something needs it: a window edge in
    the last ``edge_hold_ns`` (meters, phases, steps and calls call :meth:`edge`), or a demand
    (power-only channels to integrate while a window is open, traces). Otherwise it reads every
    ``idle_period_ns`` (0 = always full rate), and always often enough to see every wrap.
    """

    def __init__(
        self,
        settings: Optional[Settings] = None,
        capacity: int = 1 << 16,
        idle_period_ns: int = IDLE_PERIOD_NS,
        history_period_ns: int = HISTORY_PERIOD_NS,
        history_rows: int = HISTORY_ROWS,
    ) -> None:
        self.settings = settings if settings is not None else settings_from_env()
        self.sources, self.extra_sensors = build_sources(self.settings)
        self.sampler = _core.Sampler(
            self.sources,
            self.settings.interval_ns,
            capacity,
            idle_period_ns,
            history_period_ns,
            history_rows,
        )
        self.channels = list(self.sampler.channels())
        #: Meter and phase edges read the cheap counters (RAPL, the model) synchronously.
        self.cheap_edges = bool(self.sampler.has_cheap_edge_sources)
        #: A power-only channel is integrated by the sampler: windows need it at full rate.
        self.needs_full_rate_in_windows = any(c.kind == "power" for c in self.channels)
        slow_counter = any(c.kind == "counter" and c.source == "nvml" for c in self.channels)
        period = self.settings.interval_ns
        #: How long after a window edge its last counter update can still arrive (ns).
        self.settle_lag_ns = 3 * period + (250_000_000 if slow_counter else 25_000_000)
        #: Full rate is held this long after each edge, so the updates around it are seen.
        self.edge_hold_ns = self.settle_lag_ns + 2 * period
        self._touch_due_ns = 0
        self._lease_end_ns = 0
        self._created_pid = os.getpid()
        self._events: List[ChannelEvent] = []
        self._events_next = 0
        self._events_lock = threading.Lock()
        self._lock = threading.Lock()
        self._started = False
        self._pid = os.getpid()
        self.baseline: Optional[Any] = None  # the last idle baseline measured (a Baseline)
        # Objects with pending windows (meters, steps, decorated functions); the settler
        # thread resolves them before their samples can leave the ring.
        self._settlers: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._settler_thread: Optional[threading.Thread] = None
        self._settler_stop = threading.Event()
        _runtimes.add(self)

    def _after_fork_in_child(self) -> None:
        # Locks another thread held at fork stay held forever in the child; the settler thread
        # does not exist there. The sampler restarts on first use (ensure_started).
        self._lock = threading.Lock()
        self._events_lock = threading.Lock()
        self._settler_stop = threading.Event()
        self._settler_thread = None

    def ensure_started(self) -> "_core.Sampler":
        """Starts the sampler thread once (again after a fork, in the child)."""
        if self._started and self._pid == os.getpid():
            return self.sampler
        with self._lock:
            if not self._started or self._pid != os.getpid():
                self.sampler.start()
                # One synchronous sample, so a window opened right now has a sample before it.
                self.sampler.read_now()
                self._started = True
                self._pid = os.getpid()
                self._start_settler()
        return self.sampler

    def edge(self, now_ns: int) -> bool:
        """A window edge at ``now_ns``: keeps the sampler at full rate for ``edge_hold_ns``.

        Costs a comparison while a recent edge already holds full rate. Returns True when no
        lease covered ``now_ns`` (the sampler may have been idle, so the newest sample may be
        old: callers that need an exact edge then take a synchronous reading)."""
        if now_ns < self._touch_due_ns:
            return False
        was_idle = now_ns >= self._lease_end_ns and self.sampler.idle_period_ns != 0
        self.sampler.touch(self.edge_hold_ns)
        self._lease_end_ns = now_ns + self.edge_hold_ns
        self._touch_due_ns = now_ns + self.edge_hold_ns // 2
        return was_idle

    def power_limits(self) -> Dict[str, Dict[str, Any]]:
        """Per domain, its power limits as read now (W: current, default, min, max, enforced;
        RAPL: each constraint), through this runtime's open NVML. Reads only; {} when none can
        be read. Not on any hot path: meters read it when they write a record or a dict."""
        try:
            from .powercap import limits

            # In a forked child the runtime's NVML handles are the parent's: open NVML afresh.
            nvml = next((s for s in self.sources if s.name == "nvml"), None)
            if os.getpid() != self._created_pid:
                nvml = None
            found = limits(settings=self.settings, nvml_source=nvml)
        except Exception:  # a limit that cannot be read is simply not reported
            return {}
        keep = ("current_w", "default_w", "min_w", "max_w", "enforced_w", "constraints")
        return {
            lim.domain: {
                k: v for k, v in lim.to_dict().items() if k in keep and v not in (None, [], ())
            }
            for lim in found
        }

    def events(self) -> List[ChannelEvent]:
        """Every event the sampler has reported so far (at most MAX_EVENTS, newest kept)."""
        with self._events_lock:
            new, self._events_next = self.sampler.events(self._events_next)
            if new:
                self._events.extend(ChannelEvent(*e) for e in new)
                del self._events[:-MAX_EVENTS]
            return list(self._events)

    def is_running(self) -> bool:
        return self._started and self._pid == os.getpid()

    def horizon_ns(self) -> int:
        """How long pending windows may wait: a quarter of the ring's history."""
        s = self.sampler
        return max(1, s.capacity * s.period_ns // 4)  # at full rate: the ring's shortest span

    def register_settler(self, obj: Any) -> None:
        """``obj.settle_aging()`` will be called regularly while the sampler runs."""
        self._settlers.add(obj)

    def _start_settler(self) -> None:
        self._settler_stop = threading.Event()
        t = threading.Thread(target=self._settle_loop, name="greenml-settler", daemon=True)
        self._settler_thread = t
        t.start()

    def _settle_loop(self) -> None:
        stop = self._settler_stop
        while not stop.wait(min(20.0, max(0.01, self.horizon_ns() / 8e9))):
            for obj in list(self._settlers):
                try:
                    obj.settle_aging()
                except Exception as exc:  # never kill the settler; say what went wrong
                    warnings.warn(
                        f"greenml could not resolve pending energy windows: {exc}",
                        RuntimeWarning,
                        stacklevel=1,
                    )

    def stop(self) -> None:
        with self._lock:
            self._settler_stop.set()
            for obj in list(self._settlers):
                try:
                    obj.settle_aging()
                except Exception:  # noqa: BLE001 - stopping must not fail; data stays pending
                    pass
            self.sampler.stop()
            self._started = False

    def sensors(self) -> List[Sensor]:
        return sensors_of(self.sources, self.extra_sensors)


_default: Optional[Runtime] = None
_default_lock = threading.Lock()
_runtimes: "weakref.WeakSet[Runtime]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()
    for rt in list(_runtimes):
        rt._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def default_runtime() -> Runtime:
    """The process-wide runtime, created from the environment on first use."""
    global _default
    rt = _default
    if rt is None:
        with _default_lock:
            if _default is None:
                _default = Runtime()
            rt = _default
    return rt


def reset_default_runtime() -> None:
    """Stops the process-wide sampler; the next use rebuilds it from the environment."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.stop()
        _default = None


def _stop_at_exit() -> None:
    rt = _default
    if rt is not None:
        rt.stop()


atexit.register(_stop_at_exit)
