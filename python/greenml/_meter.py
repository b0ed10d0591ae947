"""``greenml.meter``: energy of a block of code, with phases and steps.

Entering and leaving a meter, a phase or a step reads the clock and copies at most one ring
slot: no I/O. Energies are resolved from the ring samples around each edge when a result is
first read (or when the meter stops with a log), see :mod:`greenml._windows`.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from . import _carbon
from ._baseline import Baseline
from ._cuda import sync_cuda
from . import _distributed
from ._errors import GreenmlError
from ._records import RecordLog, new_run_id
from ._result import Measurement, NothingMeasuredWarning, max_power_w, partial_events
from ._runtime import Runtime, default_runtime
from ._steps import StepStats
from ._trace import check_trace_path, write_trace
from ._windows import (
    PendingWindows,
    Window,
    WindowResolver,
    close_window,
    open_window,
    totals,
    warn_short_windows,
)


# Counter power in traces is averaged over this trailing window (ns).
TRACE_AVERAGE_NS = 50_000_000


class _Phase:
    def __init__(self, meter: "Meter", name: str, items: Optional[int]) -> None:
        self._meter = meter
        self._name = name
        self._items = items
        self._window: Optional[Window] = None

    def __enter__(self) -> "_Phase":
        m = self._meter
        if m._sync_cuda:
            sync_cuda()
        self._window = open_window(m._rt)
        return self

    def __exit__(self, *exc: object) -> None:
        m = self._meter
        if m._sync_cuda:
            sync_cuda()
        assert self._window is not None
        close_window(m._rt, self._window)
        m._add_phase_window(self._name, self._window, self._items)


#: Spans kept per phase name for logs and plots; later repeats are counted, not listed.
MAX_PHASE_SPANS = 10_000


class _PhaseTotals:
    """All repeats of one phase name in bounded memory: closed repeats wait in compact arrays
    until their counter updates arrive, then add into per-channel running sums. The first
    MAX_PHASE_SPANS spans are kept (for logs, plots and fault events)."""

    def __init__(self, rt: Runtime) -> None:
        c = len(rt.channels)
        self.energy_j = np.zeros(c)
        self.uncertainty_j = np.zeros(c)
        self.duration_s = 0.0
        self.count = 0
        self.settled = True
        self.items: Optional[int] = None
        self.spans: List[Tuple[int, int]] = []
        self.repeats = 0  # closed repeats, resolved or not
        self._lock = threading.Lock()
        self._pending = PendingWindows(rt, self._resolved)

    def add(self, w: Window, items: Optional[int]) -> None:
        assert w.t1_ns is not None and w.idx1 is not None
        with self._lock:
            self.repeats += 1
            if items is not None:
                self.items = (self.items or 0) + items
            if len(self.spans) < MAX_PHASE_SPANS:
                self.spans.append((w.t0_ns, w.t1_ns))
        self._pending.add(w.t0_ns, w.t1_ns, w.idx0, w.idx1)

    def _resolved(self, t0: np.ndarray, t1: np.ndarray, res: Any) -> None:
        with self._lock:  # called by one resolver at a time; readers take the lock too
            self.energy_j += res.energy_j.sum(axis=0)
            self.uncertainty_j += res.uncertainty_j.sum(axis=0)
            self.duration_s += float((t1 - t0).sum()) / 1e9
            self.count += int(t0.size)
            self.settled = self.settled and bool(res.settled.all())

    def flush(self, final: bool) -> None:
        self._pending.flush(final=final)


class Meter:
    """Measures the energy of a block: ``with greenml.meter("train") as m: ...``.

    Results (``energy_j``, ``by_domain``, ``duration_s``, ``mean_power_w``, ``co2e_g``,
    ``uncertainty_j``, ``measured``, ``phases``, ``steps``) are readable live while the meter
    runs and final after it stops. Energies are in joules, durations in seconds.
    """

    def __init__(
        self,
        name: Optional[str] = None,
        *,
        log: Optional[str] = None,
        sync_cuda: bool = True,
        region: Optional[str] = None,
        carbon_intensity: Optional[float] = None,
        pue: float = 1.0,
        baseline: Optional[Baseline] = None,
        subtract_idle: bool = False,
        settle: bool = True,
        runtime: Optional[Runtime] = None,
        max_step_records: int = 100_000,
        trace: Optional[str] = None,
        distributed: bool = False,
        gpus: str = "local",
        group: Any = None,
        distributed_timeout_s: float = _distributed.DEFAULT_TIMEOUT_S,
    ) -> None:
        self.name = name
        if not isinstance(distributed, bool):
            raise GreenmlError(
                f"distributed={distributed!r}: give True (combine every rank of a "
                "torch.distributed job into one total) or False"
            )
        _distributed.check_gpus(gpus)
        if not (distributed_timeout_s > 0):
            raise GreenmlError(
                f"distributed_timeout_s={distributed_timeout_s!r}: give the seconds a rank may "
                "wait for the others at the meter's end (> 0)"
            )
        self._distributed = bool(distributed)
        self._gpus = gpus
        self._group = group
        self._dist_timeout_s = float(distributed_timeout_s)
        self._job_ranks: Optional[List[Dict[str, Any]]] = None  # every rank's report
        self._job_note: Optional[str] = None  # why the job total is not available
        self._job_cache: Dict[Optional[str], Optional[Measurement]] = {}
        self._block_raised = False
        self._trace_path = check_trace_path(trace) if trace else None
        self._rt = runtime if runtime is not None else default_runtime()
        env: Mapping[str, str] = (
            self._rt.settings.env if self._rt.settings.env is not None else os.environ
        )
        self._intensity = _carbon.resolve_intensity(region, carbon_intensity, env=env)
        _carbon.co2e_g(0.0, self._intensity, pue)  # validates pue now, not at the end
        self._pue = pue
        if subtract_idle and baseline is None:
            baseline = self._rt.baseline
            if baseline is None:
                raise GreenmlError(
                    "subtract_idle=True needs an idle baseline: measure one first with "
                    "greenml.idle_baseline(seconds=10), or pass baseline=..."
                )
        self._baseline = baseline
        self._sync_cuda = sync_cuda
        self._settle = settle
        self._log = RecordLog(log) if log else None
        self._run_id_value: Optional[str] = None
        self._lock = threading.Lock()
        self._window: Optional[Window] = None
        self._full_rate = False
        self._pid = os.getpid()
        self._forked_copy = False
        self._t_start_unix: Optional[float] = None
        self._phase_totals: Dict[str, _PhaseTotals] = {}  # in the order phases first ran
        self._max_step_records = max_step_records
        self._steps_value: Optional[StepStats] = None  # created on the first step()
        self._forecast_watch: Optional[Any] = None  # see log_forecast()
        self._result: Optional[Measurement] = None
        self._snapshot: Optional[Measurement] = None  # unsettled result of a stopped meter
        self._resolver_value: Optional[WindowResolver] = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "Meter":
        if self._window is not None and self._window.t1_ns is None:
            return self
        self._rt.ensure_started()
        if self._sync_cuda:
            sync_cuda()
        # A meter started again measures afresh: nothing carries over from its last run.
        self._result = None
        self._snapshot = None
        with self._lock:
            self._phase_totals.clear()
        self._steps_value = None
        self._run_id_value = None
        self._job_ranks = None
        self._job_note = None
        self._job_cache = {}
        self._block_raised = False
        self._t_start_unix = time.time()
        self._pid = os.getpid()
        self._forked_copy = False
        # Full rate for the whole window where sparse samples would lose something: a
        # power-only channel is integrated sample by sample, and a trace was asked for.
        self._full_rate = self._rt.needs_full_rate_in_windows or self._trace_path is not None
        if self._full_rate:
            self._rt.sampler.add_demand(1)
        self._window = open_window(self._rt)
        if self._steps_value is not None:
            self._steps_value.begin(self._window.t0_ns, self._window.idx0)
        return self

    def stop(self) -> "Meter":
        w = self._window
        if w is None:
            raise GreenmlError(
                "this meter was never started: use `with greenml.meter():` or .start()"
            )
        if w.t1_ns is not None:
            return self
        if self._pid != os.getpid():
            # Started before a fork: the window is the parent's, which records it. The child
            # only closes its copy, so a log summed over processes counts the window once.
            w.t1_ns = time.monotonic_ns()
            self._forked_copy = True
            return self
        if self._sync_cuda:
            sync_cuda()
        close_window(self._rt, w)
        if self._full_rate:
            self._rt.sampler.add_demand(-1)
            self._full_rate = False
        if self._steps_value is not None:
            self._steps_value.end(w.t1_ns)
        if self._distributed:
            self._combine_ranks()
        # The log first: a trace that cannot be written must not lose the record.
        if self._log is not None:
            self._write_log()
        if self._trace_path is not None:
            write_trace(self.to_dataframe(), self._trace_path)
        self._rt.register_settler(self)
        return self

    def settle_aging(self) -> None:
        """Resolves (and keeps) the results of a stopped meter before its samples leave the
        ring: called by the runtime's settler thread."""
        w = self._window
        if w is None or w.t1_ns is None or self._result is not None:
            return
        age = time.monotonic_ns() - w.t1_ns
        if self._snapshot is not None and age > self._rt.settle_lag_ns:
            self.local_result(wait=True)  # the tail has arrived: replace the snapshot
        if age < self._rt.horizon_ns() // 2:
            return
        self.local_result(wait=True)
        self.local_phases  # noqa: B018 - resolves and caches every phase

    def __enter__(self) -> "Meter":
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # An exception inside the block still gets a complete result; it is re-raised.
        self._block_raised = exc_type is not None
        self.stop()

    @property
    def running(self) -> bool:
        return self._window is not None and self._window.t1_ns is None

    # -- phases and steps ------------------------------------------------------------------

    def phase(self, name: str, items: Optional[int] = None) -> _Phase:
        """A named part of the run; repeats accumulate. ``items`` gives energy per item."""
        if items is not None and (not isinstance(items, int) or items < 0):
            raise GreenmlError(f"items={items!r}: give a non-negative whole number of items")
        return _Phase(self, name, items)

    def _add_phase_window(self, name: str, w: Window, items: Optional[int]) -> None:
        with self._lock:
            totals = self._phase_totals.get(name)
            if totals is None:
                totals = self._phase_totals[name] = _PhaseTotals(self._rt)
        totals.add(w, items)

    def step(self) -> None:
        """Marks a step boundary (the end of one step and the start of the next)."""
        steps = self._steps_value
        if steps is None:
            steps = self._steps
        steps.mark()

    @property
    def _steps(self) -> StepStats:
        if self._steps_value is None:
            steps = StepStats(self._rt, max_records=self._max_step_records)
            w = self._window
            if w is not None and w.t1_ns is None:
                steps.begin(w.t0_ns, w.idx0)
            steps.on_batch = self._forecast_watch
            self._steps_value = steps
        return self._steps_value

    @property
    def _resolver(self) -> WindowResolver:
        if self._resolver_value is None:
            self._resolver_value = WindowResolver(self._rt)
        return self._resolver_value

    @property
    def _run_id(self) -> str:
        if self._run_id_value is None:
            self._run_id_value = new_run_id()
        return self._run_id_value

    # -- results ---------------------------------------------------------------------------

    def _current_window(self) -> Window:
        w = self._window
        if w is None:
            raise GreenmlError(
                "this meter has not started yet: enter it with `with` or call .start()"
            )
        if w.t1_ns is None:  # live read: the window so far
            live = Window(w.t0_ns, w.idx0, w.start_row)
            close_window(self._rt, live)
            return live
        return w

    def result(self, wait: Optional[bool] = None) -> Measurement:
        """The measurement of the whole meter (final once stopped, live before): with
        ``distributed=True``, once stopped, the job total over every rank (see
        :meth:`local_result` for this process's own).

        A counter updates some time after a window ends (GPUs: up to ~100 ms later), so the
        last stretch of a just-stopped meter is extrapolated until that update arrives.
        ``wait=True`` waits for it (at most 250 ms) and returns the settled, final result;
        ``wait=False`` returns at once, ``settled=False``, with an uncertainty that covers the
        unresolved tail. The default waits only when the wait is small next to the window
        (the expected wait under 5% of its length), so a loop of short windows read one by one
        is not slowed, and a long run's result is final at once. Attributes such as
        ``energy_j`` use the default. A stopped meter's unsettled result is kept, so every
        attribute read from it agrees, until a settled one replaces it (``wait=True``, or the
        runtime's settler thread a little later); a settled result never changes.
        """
        job = self._job_window(None)
        return job if job is not None else self.local_result(wait)

    def local_result(self, wait: Optional[bool] = None) -> Measurement:
        """This process's own measurement (the same as :meth:`result` unless distributed)."""
        if self._result is not None:
            return self._result
        if self._forked_copy or (self._window is not None and self._pid != os.getpid()):
            raise GreenmlError(
                "this meter was started in the parent process before a fork: its result is the "
                "parent's; start a meter in this process to measure here"
            )
        stopped = not self.running
        if wait is None:
            w = self._current_window()
            wait = self._settle and self._rt.settle_lag_ns <= 0.05 * ((w.t1_ns or 0) - w.t0_ns)
        if stopped and not wait and self._snapshot is not None:
            return self._snapshot
        w = self._current_window()
        res = self._resolver.resolve([w], settle=bool(wait) and stopped)
        m = self._measurement(
            self.name,
            "meter",
            [(w.t0_ns, w.t1_ns or w.t0_ns)],
            ((w.t1_ns or 0) - w.t0_ns) / 1e9,
            1,
            res.energy_j.sum(axis=0),
            res.uncertainty_j.sum(axis=0),
            bool(res.settled.all()),
        )
        warn_short_windows(self._rt.channels, res, np.array([m.duration_s]))
        if stopped and m.settled:
            self._result = m
        elif stopped:
            self._snapshot = m
        return m

    def _measurement(
        self,
        name: Optional[str],
        kind: str,
        spans: List[Tuple[int, int]],
        duration: float,
        count: int,
        energy: np.ndarray,
        unc: np.ndarray,
        settled: bool,
        items: Optional[int] = None,
    ) -> Measurement:
        """A result from per-channel energies and uncertainties (J) over ``spans`` (ns)."""
        channels = self._rt.channels
        e = np.array(energy, dtype=float)
        u = np.array(unc, dtype=float)
        partial = partial_events(self._rt, spans)
        for i, ch in enumerate(channels):
            # Energy between the last reading before a reset and the reset itself is not in
            # the counter: bound it by the channel's maximum power over that stretch.
            for ev in partial.get(ch.domain, ()):
                if ev["event"] == "counter_reset":
                    u[i] += ev["unknown_s"] * max_power_w(ch)
        _, by_domain = totals(channels, e)
        _, unc_by_domain = totals(channels, u)
        unavailable = {s.domain: s.reason for s in self._rt.sensors() if not s.available}
        if not any(ch.in_total for ch in channels):
            warnings.warn(
                "nothing can be measured or estimated on this machine, so energies are NaN; "
                "run `greenml sensors` to see why and how to fix it",
                NothingMeasuredWarning,
                stacklevel=4,
            )
        return Measurement(
            name=name,
            kind=kind,
            duration_s=duration,
            by_domain=by_domain,
            uncertainty_by_domain=unc_by_domain,
            in_total={ch.domain: ch.in_total for ch in channels},
            measured={ch.domain: ch.measured for ch in channels},
            settled=settled,
            intensity=self._intensity,
            pue=self._pue,
            baseline=self._baseline,
            items=items,
            count=count,
            unavailable=unavailable,
            t_start_unix=self._t_start_unix,
            partial_domains=partial,
            assumptions={ch.domain: ch.detail for ch in channels if not ch.measured},
        )

    @property
    def phases(self) -> Dict[str, Measurement]:
        """Per phase name, the measurement summed over all its repeats (closed ones), in the
        order the phases first ran. Waits for the last repeats' counter updates as a stopped
        meter's result does; memory stays bounded however many repeats there are. With
        ``distributed=True``, once stopped, each phase's job total over the ranks that ran it
        (see :attr:`local_phases` for this process's own)."""
        if self._job_ranks is not None:
            names = list(self._job_ranks[0].get("phases", {}))
            for r in self._job_ranks[1:]:
                names += [n for n in r.get("phases", {}) if n not in names]
            out = {n: self._job_window(n) for n in names}
            return {n: m for n, m in out.items() if m is not None}
        return self.local_phases

    @property
    def local_phases(self) -> Dict[str, Measurement]:
        """This process's own phases (the same as :attr:`phases` unless distributed)."""
        if self._pid != os.getpid():
            raise GreenmlError(
                "this meter was started in the parent process before a fork: its phases are the "
                "parent's; start a meter in this process to measure here"
            )
        with self._lock:
            all_totals = list(self._phase_totals.items())
        out: Dict[str, Measurement] = {}
        for name, acc in all_totals:
            if self._settle:
                acc.flush(final=True)
            with acc._lock:
                out[name] = self._measurement(
                    name,
                    "phase",
                    list(acc.spans),
                    acc.duration_s,
                    acc.count,
                    acc.energy_j,
                    acc.uncertainty_j,
                    acc.settled and acc.count == acc.repeats,
                    items=acc.items,
                )
        return out

    @property
    def steps(self) -> StepStats:
        """Per-step statistics (energy and duration), bounded in memory.

        Steps are marked by :meth:`step` (each call ends one step and starts the next; the
        first starts with the meter) or by looping over ``m.steps(iterable)``, where the first
        step starts with the loop and the setup before it is ``m.steps.setup_s``."""
        self._steps.flush(final=not self.running)
        return self._steps

    def forecast(self, total_steps: Optional[int] = None, **options: Any) -> Any:
        """Forecast of the whole run's energy (J), duration (s) and carbon (g) with prediction
        intervals, from the steps resolved so far (running or stopped meter).

        Give ``total_steps`` (steps of the whole run, from the meter's start) or ``epochs`` and
        ``steps_per_epoch``; options ``confidence`` (0.9) and ``period_steps``. Returns a
        :class:`greenml.Forecast`; raises :class:`greenml.ForecastError` when the profile is
        too short. See :mod:`greenml._forecast` for the method.
        """
        from ._forecast import meter_forecast

        return meter_forecast(self, total_steps, **options)

    def log_forecast(self, total_steps: Optional[int] = None, **options: Any) -> None:
        """Forecast once, after ``after_steps=N`` resolved steps or ``after_s=S`` seconds of
        them: a ``forecast`` record in the meter's log and an INFO line on the ``greenml``
        logger (also ``epochs``/``steps_per_epoch``, ``confidence``). Call it before or while
        the meter runs; the forecast runs on the resolution path, never inside ``step()``."""
        from ._forecast import watch_forecast

        self._forecast_watch = watch_forecast(self, total_steps, **options)
        if self._steps_value is not None:
            self._steps_value.on_batch = self._forecast_watch

    @property
    def logged_forecast(self) -> Any:
        """The forecast made by :meth:`log_forecast` (None until then, or if it failed)."""
        w = self._forecast_watch
        return w.result if w is not None else None

    energy_j = property(
        lambda self: self.result().energy_j, doc="Total energy (J), non-overlapping domains."
    )
    by_domain = property(lambda self: self.result().by_domain, doc="Joules per domain key.")
    duration_s = property(lambda self: self.result().duration_s, doc="Wall time (s).")
    mean_power_w = property(lambda self: self.result().mean_power_w, doc="Mean power (W).")
    co2e_g = property(lambda self: self.result().co2e_g, doc="Grams CO2e.")
    uncertainty_j = property(
        lambda self: self.result().uncertainty_j,
        doc="Uncertainty (J): the true energy lies within energy_j +/- this (measured coverage "
        "in the README).",
    )
    measured = property(
        lambda self: self.result().measured, doc="Per domain: measured (True) or estimated."
    )
    net_energy_j = property(lambda self: self.result().net_energy_j, doc="Energy above idle (J).")
    net_by_domain = property(
        lambda self: self.result().net_by_domain, doc="Joules above idle per domain."
    )
    settled = property(lambda self: self.result().settled)

    # -- distributed jobs --------------------------------------------------------------------

    def _combine_ranks(self) -> None:
        """At the end of a distributed meter. Never raises: when the ranks cannot be combined
        the reason is kept, warned about, and the results stay this rank's own."""
        # Every rank takes part, also one whose block raised (its measurement up to the raise
        # is complete): the ranks' exchanges must pair one for one, or later meters would be
        # combined with other meters (the sequence number checks that they do).
        try:
            self._exchange(_distributed.next_seq(), None, None, None)
        except Exception as exc:  # noqa: BLE001 - the user's job must go on
            self._job_note = f"not combined over the ranks ({exc}); the results are this rank's own"
            warnings.warn(
                f"greenml meter {self.name!r}: {self._job_note}", RuntimeWarning, stacklevel=4
            )

    def combine_ranks(
        self, group: Any = None, gpus: Optional[str] = None, timeout_s: Optional[float] = None
    ) -> Measurement:
        """The job total of a stopped meter over every rank of a ``torch.distributed`` job: a
        collective call (every rank calls it at the same point), done by ``distributed=True``
        at the meter's end. Each GPU counts once (by UUID) and each host's CPU package and DRAM
        once (by host identity); afterwards :meth:`result` and :attr:`phases` are the job's,
        and :meth:`local_result` / :attr:`local_phases` this rank's. ``gpus``: ``"local"``
        (the GPU this rank uses; default) or ``"all"``. Raises :class:`GreenmlError` without a
        process group, or when the ranks did not all reach this point with the same meter."""
        if self.running:
            raise GreenmlError("combine_ranks() needs a stopped meter: call it after the block")
        return self._exchange(_distributed.next_seq(), group, gpus, timeout_s)

    def _exchange(
        self, seq: int, group: Any, gpus: Optional[str], timeout_s: Optional[float]
    ) -> Measurement:
        gpus = self._gpus if gpus is None else gpus
        rt = self._rt
        env = rt.settings.env if rt.settings.env is not None else os.environ
        me = _distributed.identity(env)
        gpu_domains = _distributed.local_gpus(
            [c.domain for c in rt.channels if c.domain.startswith("gpu:")], gpus, env
        )
        uuids = {c.domain: c.uuid for c in rt.channels}
        payload = {
            "raised": self._block_raised,
            "seq": seq,
            "meter_name": self.name,
            "run_id": self._run_id,
            "rank": me.rank,
            "world_size": me.world_size,
            "host": me.host,
            "host_name": me.host_name,
            "meter": _distributed.window_payload(self.local_result(wait=True), uuids, gpu_domains),
            "phases": {
                n: _distributed.window_payload(p, uuids, gpu_domains)
                for n, p in self.local_phases.items()
            },
        }
        ranks = _distributed.exchange(
            payload,
            self._group if group is None else group,
            self._dist_timeout_s if timeout_s is None else timeout_s,
        )
        _distributed.check_aligned(ranks)
        self._job_ranks = ranks
        self._job_cache = {}
        self._job_note = None
        return self.result()

    @property
    def distributed_note(self) -> Optional[str]:
        """Why a ``distributed=True`` meter reports this rank's own results (None when the job
        total was combined, or the meter is not distributed)."""
        return self._job_note

    def _job_window(self, phase: Optional[str]) -> Optional[Measurement]:
        """The job total of the meter (``phase=None``) or of one phase, once combined."""
        if self._job_ranks is None:
            return None
        if phase in self._job_cache:
            return self._job_cache[phase]
        jw = _distributed.combine(self._job_ranks, phase)
        m = None
        if jw is not None:
            m = Measurement(
                name=self.name if phase is None else phase,
                kind="meter" if phase is None else "phase",
                duration_s=jw.duration_s,
                by_domain=jw.by_domain,
                uncertainty_by_domain=jw.uncertainty_by_domain,
                in_total=jw.in_total,
                measured=jw.measured,
                settled=jw.settled,
                intensity=self._intensity,
                pue=self._pue,
                t_start_unix=jw.t_start_unix,
                partial_domains=jw.partial_domains,
                distributed=jw.info,
            )
        self._job_cache[phase] = m
        return m

    def to_dict(self) -> Dict[str, Any]:
        d = self.result().to_dict()
        d["run_id"] = self._run_id
        d["phases"] = {n: p.to_dict() for n, p in self.phases.items()}
        d["steps"] = self.steps.to_dict()
        d["power_limits"] = self._rt.power_limits()
        return d

    def to_dataframe(self) -> Any:
        """The sampled trace: one row per sample, time since start (s) and power per domain (W)."""
        import pandas as pd

        w = self._current_window()
        idx, t, e, p, _, lost, _ct = self._rt.sampler.read_indexed(max(0, w.idx0 - 1))
        if lost:
            warnings.warn(
                f"the trace of meter {self.name!r} starts {((t[0] if t.size else w.t0_ns) - w.t0_ns) / 1e9:.1f} s "
                f"after the meter: {lost} older samples have left the ring (energies are not "
                "affected); for a whole trace of a long run pass trace=... to the meter, or "
                "sample less often (GREENML_INTERVAL_MS)",
                RuntimeWarning,
                stacklevel=2,
            )
        mask = (t >= w.t0_ns) & (t <= (w.t1_ns or t[-1]))
        t, e, p, ct = t[mask], e[mask], p[mask], _ct[mask]
        data: Dict[str, Any] = {"t_s": (t - w.t0_ns) / 1e9}
        for i, ch in enumerate(self._rt.channels):
            if ch.kind == "power":
                data[f"{ch.domain}_w"] = p[:, i]
                continue
            # Counters move in quanta (GPU: every 20-100 ms; /proc/stat: every 10 ms), so their
            # power is averaged over the trailing TRACE_AVERAGE_NS, on the curve the energies
            # come from (each increment spread over its own update interval).
            data[f"{ch.domain}_w"] = self._resolver.counter_power_w(
                i, ct[:, i], e[:, i], t, TRACE_AVERAGE_NS
            )
        return pd.DataFrame(data)

    def phase_spans_s(self) -> Dict[str, List[List[float]]]:
        """Per phase, its [start, end] intervals in seconds since the meter started."""
        w = self._window
        if w is None:
            return {}
        with self._lock:
            all_totals = list(self._phase_totals.items())
        return {
            n: [[(a - w.t0_ns) / 1e9, (b - w.t0_ns) / 1e9] for a, b in list(t.spans)]
            for n, t in all_totals
        }

    def _write_log(self) -> None:
        assert self._log is not None
        base = {"run_id": self._run_id, "meter": self.name, "pid": os.getpid()}
        spans = self.phase_spans_s()
        for name, ph in self.local_phases.items():
            self._log.write({**ph.to_dict(), **base, "spans_s": spans.get(name, [])})
        # Records on disk are final: the log waits for the counter update covering the end.
        rec = {**self.local_result(wait=True).to_dict(), **base, "steps": self.steps.to_dict()}
        from ._forecast import steps_profile

        profile = steps_profile(self)  # the ordered step profile, for `greenml forecast LOG`
        if profile is not None:
            rec["steps"]["profile"] = profile
        if self._trace_path is not None:
            rec["trace"] = os.path.abspath(self._trace_path)
        limits = self._rt.power_limits()  # as they stand when the meter ends
        if limits:
            rec["power_limits"] = limits
        first = self._job_ranks[0] if self._job_ranks else None
        if first is not None:
            rec["job_run_id"] = first["run_id"]
        self._log.write(rec)
        if first is not None and first["run_id"] == self._run_id:
            # One job record, from the lowest rank: every device counted once.
            job = self.result()
            self._log.write(
                {
                    **job.to_dict(),
                    **base,
                    "type": "job",
                    "phases": {n: p.to_dict() for n, p in self.phases.items()},
                }
            )

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped" if self._window else "not started"
        return f"<greenml.Meter {self.name!r} {state}>"


def meter(name: Optional[str] = None, **options: Any) -> Meter:
    """A meter (context manager): ``with greenml.meter("train") as m: ...``; see :class:`Meter`."""
    return Meter(name, **options)
