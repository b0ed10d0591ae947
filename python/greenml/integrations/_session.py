"""Framework-neutral bookkeeping shared by the trainer callbacks
(:mod:`greenml.integrations.lightning`, :mod:`greenml.integrations.huggingface`): one meter per
run, non-overlapping phases, steps, the forecast, the power-capping hook, and errors that never
reach the training loop. Imports no trainer library. Energies in joules, durations in seconds,
power in watts, carbon in grams CO2e.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import greenml
from greenml import _distributed
from greenml._errors import GreenmlError

from ._metrics import SUMMARY, domain_metrics, fields, finite, metric_key, phase_prefix

F = TypeVar("F", bound=Callable[..., Any])

#: Default number of optimizer steps after which the whole run is forecast once.
FORECAST_AFTER_STEPS = 200
#: Fewest steps that can support a forecast (greenml's forecast needs 40 after warm-up).
FORECAST_MIN_STEPS = 40
#: Errors kept on ``callback.errors`` (the first warns; later ones are only counted).
MAX_ERRORS = 20


class IntegrationWarning(RuntimeWarning):
    """greenml's bookkeeping failed inside a trainer callback; training went on."""


#: What the callbacks log of a run or phase: the first fields of MLflow's summary.
RUN_FIELDS = SUMMARY[:4]
_FORECAST_FIELDS = tuple(
    (f, f) for f in ("energy_j", "low_j", "high_j", "duration_s", "co2e_g", "fraction_profiled")
) + (("total_steps", "total_steps"),)


def measurement_metrics(m: Any, prefix: str, per_domain: bool = True) -> Dict[str, float]:
    """``<prefix>/energy_j``, ``/duration_s``, ``/power_w``, ``/co2e_g`` (and
    ``<prefix>/domain/<domain>/energy_j``) of a :class:`greenml.Measurement`; unknown (NaN)
    values are left out."""
    out = fields(m, RUN_FIELDS, prefix)
    if per_domain:
        out.update(domain_metrics(m.by_domain, prefix))
    return out


def forecast_metrics(f: Any, prefix: str) -> Dict[str, float]:
    """The metrics of a :class:`greenml.Forecast` under ``<prefix>/forecast/``."""
    out = fields(f, _FORECAST_FIELDS, prefix, "forecast")
    out[metric_key(prefix, "forecast", "stationary")] = 1.0 if f.stationary else 0.0
    return out


def guarded(fn: F) -> F:
    """Runs a callback hook so that nothing greenml raises reaches the training loop: the
    error is kept on ``self.session`` and warned once (see :meth:`_Session.fail`)."""

    @functools.wraps(fn)
    def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - bookkeeping must never stop training
            self.session.fail(fn.__name__, exc)
            return None

    return hook  # type: ignore[return-value]


def _powercap_option(powercap: Any) -> Tuple[Any, Optional[Dict[str, Any]]]:
    """``powercap=`` as (an object with step() and close(), or None; the options of a
    :class:`greenml.powercap.Tuner` to create at each training run's start, or None)."""
    if powercap is None or powercap is False:
        return None, None
    if powercap is True or isinstance(powercap, dict):
        options = {} if powercap is True else dict(powercap)
        from greenml.powercap import Tuner

        try:
            inspect.signature(Tuner).bind(**options)
        except TypeError as exc:
            raise GreenmlError(
                f"powercap={powercap!r}: not options of greenml.powercap.Tuner ({exc}); give "
                "e.g. {'device': 'gpu:0', 'max_slowdown': 0.05}"
            ) from None
        return None, options
    if callable(getattr(powercap, "step", None)) and callable(getattr(powercap, "close", None)):
        return powercap, None
    raise GreenmlError(
        f"powercap={powercap!r}: give True (a greenml.powercap.Tuner with its defaults), a dict "
        "of Tuner options, an object with step() and close(), or None"
    )


def supports_distributed() -> bool:
    """Whether this greenml's meter takes ``distributed=True`` (job totals over ranks)."""
    try:
        return "distributed" in inspect.signature(greenml.Meter.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - signature not introspectable
        return False


class _Session:
    """One trainer's bookkeeping: a meter per run, non-overlapping phases, steps, the
    forecast, the power-capping hook, and errors that never escape (framework-neutral).

    Every public method may raise; the callbacks call them from :func:`guarded` hooks.
    """

    def __init__(
        self,
        owner: str,
        *,
        name: str,
        prefix: str,
        forecast_after_steps: Optional[int],
        log: Optional[str],
        powercap: Any,
        distributed: bool,
        meter_options: Dict[str, Any],
    ) -> None:
        if forecast_after_steps is not None and (
            isinstance(forecast_after_steps, bool)
            or not isinstance(forecast_after_steps, int)
            or forecast_after_steps < 1
        ):
            raise GreenmlError(
                f"forecast_after_steps={forecast_after_steps!r}: give a whole number of steps "
                "(>= 1), or None for no forecast"
            )
        powercap, tuner_options = _powercap_option(powercap)
        if distributed and not supports_distributed():
            raise GreenmlError(
                "distributed=True needs a greenml whose meter takes distributed=True (job totals "
                "over torch.distributed ranks); upgrade greenml, or leave distributed off to "
                "measure each rank on its own"
            )
        self.owner = owner
        self.name = name
        self.prefix = prefix
        self.forecast_after_steps = forecast_after_steps
        self.powercap = powercap
        self.tuner_options = tuner_options
        self.meter_options = dict(meter_options)
        if log is not None:
            self.meter_options["log"] = log
        if distributed:
            self.meter_options["distributed"] = True
        self.meter: Optional[greenml.Meter] = None
        self.stage: Optional[str] = None
        self.results: Dict[str, greenml.Measurement] = {}
        self.forecast: Optional[greenml.Forecast] = None
        self.steps = 0
        self.errors: List[str] = []
        self.error_count = 0
        self._phase: Optional[Any] = None
        self._phase_name: Optional[str] = None
        self._total_steps: Optional[int] = None
        self._forecast_at: Optional[int] = None
        self._last_j = 0.0
        self._last_s = 0.0
        self._powercap_open = False
        self._powercap_logged = False

    # -- errors ----------------------------------------------------------------------------

    def fail(self, where: str, exc: BaseException) -> None:
        """Keeps an error of the bookkeeping; the first one is warned (never raised, even when
        warnings are errors), the rest only counted."""
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(f"{where}: {type(exc).__name__}: {exc}")
        if self.error_count > 1:
            return
        self.warn(
            f"greenml's {self.owner} callback failed in {where} ({type(exc).__name__}: {exc}); "
            "training goes on, but energy results may be incomplete (warned once; every error "
            "is on callback.errors)"
        )

    def warn(self, message: str) -> None:
        """An :class:`IntegrationWarning` that never raises, even when warnings are errors (it
        then goes to the ``greenml`` logger)."""
        try:
            warnings.warn(message, IntegrationWarning, stacklevel=4)
        except Exception:  # noqa: BLE001 - warnings turned into errors must not escape either
            import logging

            logging.getLogger("greenml").warning("%s", message)

    def call(self, where: str, fn: Callable[[], Any]) -> Any:
        """Runs ``fn``; an error is kept (see :meth:`fail`) and None returned."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - bookkeeping must never stop training
            self.fail(where, exc)
            return None

    # -- runs ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.meter is not None and self.meter.running

    def start(self, stage: str) -> None:
        """Starts the meter of one run (``fit``, ``train``, ``validate``, ...)."""
        if self.running:
            self.stop()
        self.stage = stage
        self.steps = 0
        self.forecast = None
        self._total_steps = None
        self._forecast_at = None
        self._last_j = 0.0
        self._last_s = 0.0
        self.meter = greenml.meter(f"{self.name}/{stage}", **self.meter_options)
        self.meter.start()

    def stop(self, prefix: Optional[str] = None) -> Dict[str, float]:
        """Stops the run's meter; the final metrics (the run, its phases, its steps), under
        ``prefix`` (default: the callback's)."""
        self.close_phase()
        m = self.meter
        if m is None or not m.running:
            return {}
        m.stop()
        assert self.stage is not None
        result = m.result(wait=True)  # settled: these numbers are final
        self.results[self.stage] = result
        p = self.prefix if prefix is None else prefix
        out = measurement_metrics(result, p)
        out.update(self.phase_metrics(prefix=p))
        out.update(self.step_metrics(prefix=p))
        return out

    # -- power capping ---------------------------------------------------------------------

    def open_powercap(self) -> None:
        """At a training run's start: opens the power capper; with ``powercap=True`` or options,
        a new :class:`greenml.powercap.Tuner` (measured by the callback's runtime unless the
        options name one). A tuner this process may not use is warned about and left out.

        A tuner the last run left open (a run that failed: the Trainer has no exception hook)
        is closed first, so its limit is restored and its state file does not block the new
        tuner."""
        self._powercap_logged = False
        if self.tuner_options is not None:
            from greenml import powercap as pc

            self.call("powercap.close", self.close_powercap)

            options = dict(self.tuner_options)
            world = _distributed.identity().world_size
            if world is not None and world > 1 and "device" not in options:
                # Every rank would tune "gpu:0" at once, each judging by the energy its own meter
                # sees (its host's other GPUs included, under the other ranks' changing limits).
                self._powercap_off(
                    pc.PowercapError(
                        f"power capping in a job of {world} ranks needs the device named "
                        "(powercap={'device': 'gpu:<i>'} on the ranks that should tune); better: "
                        "tune on one GPU in a single-process run, then apply the limit it chose "
                        "to the job's GPUs (nvidia-smi -pl)"
                    )
                )
                return
            if "runtime" in self.meter_options:
                options.setdefault("runtime", self.meter_options["runtime"])
            self.powercap = None
            try:
                self.powercap = pc.Tuner(**options)
            except pc.PowercapError as exc:  # NoPrivilege is one: nothing was changed
                self._powercap_off(exc)
                return
        self._powercap_open = self.powercap is not None

    def _step_powercap(self) -> None:
        try:
            self.powercap.step()
        except Exception as exc:
            from greenml.powercap import PowercapError

            if not isinstance(exc, PowercapError):
                raise
            self._powercap_off(exc)  # e.g. NoPrivilege at the first limit change

    def _powercap_off(self, exc: BaseException) -> None:
        self.warn(
            f"greenml's {self.owner} callback runs without power capping ({exc}); training goes "
            "on under the power limit it had before"
        )
        if self.powercap is not None:
            self.call("powercap.close", self.close_powercap)  # undoes whatever did change
        self._powercap_open = False

    def close_powercap(self) -> None:
        if self.powercap is not None and self._powercap_open:
            self._powercap_open = False
            self.powercap.close()

    def powercap_metrics(self) -> Dict[str, float]:
        """``<prefix>/powercap/chosen_w``, ``/expected_saving`` (a fraction of energy per step),
        ``/expected_saving_se``, ``/expected_slowdown``: once, when the tuner has chosen."""
        cap = self.powercap
        chosen = getattr(cap, "chosen_w", None)
        if self._powercap_logged or chosen is None:
            return {}
        self._powercap_logged = True
        saving = getattr(cap, "expected_saving", None)
        metrics = {
            "chosen_w": chosen,
            "expected_saving": saving,
            "expected_saving_se": getattr(saving, "uncertainty", None),
            "expected_slowdown": getattr(cap, "expected_slowdown", None),
        }
        return finite({metric_key(self.prefix, "powercap", k): v for k, v in metrics.items()})

    # -- phases ----------------------------------------------------------------------------

    def open_phase(self, name: str) -> None:
        """Enters phase ``name``, leaving the one open before: phases never overlap."""
        if self._phase_name == name:
            return
        self.close_phase()
        if not self.running:
            return
        assert self.meter is not None
        ph = self.meter.phase(name)
        ph.__enter__()
        self._phase, self._phase_name = ph, name

    def close_phase(self) -> Optional[str]:
        ph, name = self._phase, self._phase_name
        self._phase = self._phase_name = None
        if ph is not None:
            ph.__exit__(None, None, None)
        return name

    @property
    def phase_name(self) -> Optional[str]:
        return self._phase_name

    # -- steps and forecast ----------------------------------------------------------------

    def set_total_steps(self, total: Any) -> None:
        """The run's planned optimizer steps (unknown or infinite: no forecast)."""
        try:
            n = int(total) if total is not None and math.isfinite(float(total)) else None
        except (TypeError, ValueError, OverflowError):
            n = None
        self._total_steps = n if n is not None and n > 0 else None
        after = self.forecast_after_steps
        if self._total_steps is None or after is None:
            self._forecast_at = None
        else:
            start = max(after, FORECAST_MIN_STEPS)
            # A forecast at (or after) the last step forecasts nothing: skip it.
            self._forecast_at = start if start < self._total_steps else None

    def step(self) -> Dict[str, float]:
        """One optimizer step: marks it, steps the power capper, and forecasts when due (the
        metrics of the forecast and of the tuner's choice, each once; else an empty dict)."""
        self.steps += 1
        try:
            if self.running:
                assert self.meter is not None
                self.meter.step()
        finally:  # the power capper steps even when the meter failed
            if self.powercap is not None and self._powercap_open:
                self.call("powercap.step", self._step_powercap)
        out = self.powercap_metrics() if self.powercap is not None else {}
        at = self._forecast_at
        if at is not None and self.steps >= at and self.running:
            out.update(self._try_forecast())
        return out

    def _try_forecast(self) -> Dict[str, float]:
        assert self.meter is not None and self._total_steps is not None
        try:
            f = self.meter.forecast(total_steps=self._total_steps)
        except greenml.ForecastError:
            # Too few steps resolved yet (or the warm-up took most of them): a little later.
            nxt = self.steps + max(10, (self.forecast_after_steps or 0) // 4)
            self._forecast_at = nxt if nxt < self._total_steps else None
            return {}
        self._forecast_at = None
        self.forecast = f
        return forecast_metrics(f, self.prefix)

    # -- live metrics ----------------------------------------------------------------------

    def live_metrics(self) -> Dict[str, float]:
        """The run so far (cumulative), the stretch since the last call (``<prefix>/epoch/``),
        its phases and steps."""
        if not self.running:
            return {}
        assert self.meter is not None
        now = self.meter.result()
        out = measurement_metrics(now, self.prefix)
        de = now.energy_j - self._last_j
        ds = now.duration_s - self._last_s
        epoch = {"energy_j": de, "duration_s": ds, "power_w": de / ds if ds > 0 else math.nan}
        out.update(finite({metric_key(self.prefix, "epoch", k): v for k, v in epoch.items()}))
        self._last_j, self._last_s = now.energy_j, now.duration_s
        out.update(self.phase_metrics())
        out.update(self.step_metrics())
        return out

    def phase_metrics(
        self, names: Optional[List[str]] = None, prefix: Optional[str] = None
    ) -> Dict[str, float]:
        """``<prefix>/phase/<phase>/energy_j`` etc. of the closed repeats of each phase."""
        if self.meter is None:
            return {}
        p = self.prefix if prefix is None else prefix
        out: Dict[str, float] = {}
        for name, ph in self.meter.phases.items():
            if names is None or name in names:
                out.update(measurement_metrics(ph, phase_prefix(p, name), per_domain=False))
        return out

    def step_metrics(self, prefix: Optional[str] = None) -> Dict[str, float]:
        if self.meter is None or not self.steps:
            return {}
        p = self.prefix if prefix is None else prefix
        st = self.meter.steps
        return finite(
            {
                metric_key(p, "steps"): self.steps,
                metric_key(p, "energy_per_step_j"): st.mean_j if st.count else math.nan,
            }
        )


class Readouts:
    """What users read from a callback (``self.session`` is its :class:`_Session`)."""

    session: "_Session"

    @property
    def meter(self) -> Optional[greenml.Meter]:
        """The meter of the last run (running during it)."""
        return self.session.meter

    @property
    def result(self) -> Optional[greenml.Measurement]:
        """The final measurement of the last finished run (None before one)."""
        s = self.session
        return s.results.get(s.stage) if s.stage else None

    @property
    def results(self) -> Dict[str, greenml.Measurement]:
        return dict(self.session.results)

    @property
    def forecast(self) -> Optional[greenml.Forecast]:
        return self.session.forecast

    @property
    def errors(self) -> List[str]:
        return list(self.session.errors)

    @property
    def powercap(self) -> Any:
        """The power capper of the last training run (with ``powercap=True`` or options: its
        :class:`greenml.powercap.Tuner`, with ``chosen_w`` and ``report()``; None where it
        could not be used)."""
        return self.session.powercap
