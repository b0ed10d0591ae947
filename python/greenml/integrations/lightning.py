"""PyTorch Lightning callback: the energy of ``trainer.fit`` (and validate, test, predict),
logged to the trainer's own loggers.

    from greenml.integrations.lightning import GreenmlCallback

    cb = GreenmlCallback(log="energy.jsonl")
    trainer = lightning.pytorch.Trainer(callbacks=[cb])
    trainer.fit(model)
    cb.result.energy_j, cb.meter.phases["train"].energy_j, cb.meter.steps.mean_j

One greenml meter per trainer entry point (``fit``, ``validate``, ``test``, ``predict``), named
``<name>/<stage>``; inside ``fit`` the phases ``train`` (training batches and data loading),
``validate`` and ``sanity_check`` never overlap. One step per training batch that ended with an
optimizer step (``trainer.global_step`` moved), so with ``accumulate_grad_batches=k`` a step is
k batches, as in ``trainer.estimated_stepping_batches``. Steps tile the fit from its start: the
first step also holds the setup and the sanity check, and a validation run is part of the step
after it (the forecast separates such periodic costs). Energies in joules, durations in
seconds, power in watts, carbon in grams CO2e.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any, Dict, Optional

from ._session import FORECAST_AFTER_STEPS, IntegrationWarning, Readouts, _Session, guarded

__all__ = ["GreenmlCallback", "IntegrationWarning"]


def _lightning() -> Any:
    """The Lightning package the user's trainer comes from (``lightning.pytorch``, else
    ``pytorch_lightning``)."""
    if "pytorch_lightning" in sys.modules and "lightning.pytorch" not in sys.modules:
        order = ("pytorch_lightning", "lightning.pytorch")
    else:
        order = ("lightning.pytorch", "pytorch_lightning")
    import importlib

    for mod in order:
        try:
            return importlib.import_module(mod)
        except ImportError:
            continue
    raise ImportError(
        'greenml\'s Lightning callback needs PyTorch Lightning: pip install "greenml[lightning]"'
    )


def _make_callback_class(pl: Any) -> type:
    class GreenmlCallback(Readouts, pl.Callback):  # type: ignore[misc,name-defined]
        """Measures the energy of a Lightning run and logs it to the trainer's loggers.

        Args:
            name: meters are named ``<name>/<stage>`` (``fit``, ``validate``, ``test``,
                ``predict``).
            prefix: the first part of every metric key, joined by ``/`` (default ``"greenml"``:
                ``greenml/energy_j``, ``greenml/phase/train/energy_j``, ...; the keys of
                :mod:`greenml.integrations.mlflow`).
            forecast_after_steps: forecast the whole fit
                (``trainer.estimated_stepping_batches`` steps) once this many optimizer steps
                have run (at least 40; retried a little later while too few steps have
                resolved; skipped when the fit is shorter); None: no forecast.
            log: a JSON Lines file for greenml's records (one per run and phase).
            powercap: ``True`` or a dict of :class:`greenml.powercap.Tuner` options: a tuner
                made at each fit's start (measured by this callback's ``runtime`` unless the
                options name one); when this process may not change the limit, one warning
                and the fit runs under the limit it had. Or an object with ``step()`` and
                ``close()``. Stepped after every optimizer step, closed (the original limit
                restored) when the fit ends, fails or is interrupted; the tuner's choice is
                logged once made (``<prefix>/powercap/chosen_w``, ``/expected_saving``).
            distributed: job totals over all ``torch.distributed`` ranks
                (``greenml.meter(distributed=True)``); every rank measures, rank zero logs.
            log_every_epoch: log the live metrics at every training epoch's end.
            **meter_options: passed to :func:`greenml.meter` (``region``, ``pue``, ...).

        After a run: ``result`` (its :class:`greenml.Measurement`), ``results`` (per stage),
        ``meter`` (phases, steps), ``forecast``, ``metrics`` (the last metrics logged),
        ``errors`` (what the bookkeeping failed on; training never sees them).
        """

        def __init__(
            self,
            name: str = "lightning",
            *,
            prefix: str = "greenml",
            forecast_after_steps: Optional[int] = FORECAST_AFTER_STEPS,
            log: Optional[str] = None,
            powercap: Any = None,
            distributed: bool = False,
            log_every_epoch: bool = True,
            **meter_options: Any,
        ) -> None:
            super().__init__()
            self.session = _Session(
                "Lightning",
                name=name,
                prefix=prefix,
                forecast_after_steps=forecast_after_steps,
                log=log,
                powercap=powercap,
                distributed=distributed,
                meter_options=meter_options,
            )
            self.log_every_epoch = log_every_epoch
            self.metrics: Dict[str, float] = {}
            self._last_global_step = 0
            self._in_train_epoch = False

        # -- logging -----------------------------------------------------------------------

        def _log(self, trainer: Any, metrics: Dict[str, float]) -> None:
            if not metrics:
                return
            self.metrics.update(metrics)
            if not trainer.is_global_zero:
                return
            for lg in trainer.loggers:
                self.session.call(
                    f"{type(lg).__name__}.log_metrics",
                    functools.partial(lg.log_metrics, dict(metrics), step=trainer.global_step),
                )

        def _finish(self, trainer: Any) -> None:
            self._in_train_epoch = False
            metrics = self.session.call("stop", self.session.stop)
            self._log(trainer, metrics or {})

        # -- fit ---------------------------------------------------------------------------

        @guarded
        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            self.metrics = {}
            self._last_global_step = trainer.global_step
            self._in_train_epoch = False
            self.session.start("fit")
            self.session.open_powercap()

        @guarded
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            # Known once the data is set up; counts optimizer steps (accumulation included).
            self.session.set_total_steps(trainer.estimated_stepping_batches)

        @guarded
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._in_train_epoch = True
            self.session.open_phase("train")

        @guarded
        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            gs = trainer.global_step
            if gs == self._last_global_step:
                return  # an accumulation micro-batch: the step goes on
            self._last_global_step = gs
            self._log(trainer, self.session.step())

        @guarded
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self._in_train_epoch = False
            self.session.close_phase()
            if self.log_every_epoch:
                self._log(trainer, self.session.live_metrics())

        @guarded
        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            try:
                self._finish(trainer)
            finally:
                self.session.call("powercap.close", self.session.close_powercap)

        # -- validation (inside fit, or trainer.validate) -----------------------------------

        @guarded
        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                self.session.open_phase("sanity_check")
            elif self.session.running and self.session.stage == "fit":
                self.session.open_phase("validate")
            else:
                self.session.start("validate")
                self.session.open_phase("validate")

        @guarded
        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            s = self.session
            if s.running and s.stage == "fit":
                name = s.close_phase()
                if self._in_train_epoch:
                    s.open_phase("train")
                if name == "validate":
                    self._log(trainer, s.phase_metrics(["validate"]))
            else:
                self._finish(trainer)

        # -- test and predict --------------------------------------------------------------

        @guarded
        def on_test_start(self, trainer: Any, pl_module: Any) -> None:
            self.session.start("test")
            self.session.open_phase("test")

        @guarded
        def on_test_end(self, trainer: Any, pl_module: Any) -> None:
            self._finish(trainer)

        @guarded
        def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
            self.session.start("predict")
            self.session.open_phase("predict")

        @guarded
        def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
            self._finish(trainer)

        # -- failures ----------------------------------------------------------------------

        @guarded
        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            # The energy spent before the failure is still a result (and is logged); the
            # power capper gives the device back its limit whatever happens.
            try:
                self._finish(trainer)
            finally:
                self.session.call("powercap.close", self.session.close_powercap)

        @guarded
        def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if self.session.running:  # a run whose end hook never came
                self._finish(trainer)
            if stage == "fit":
                self.session.call("powercap.close", self.session.close_powercap)

    GreenmlCallback.__module__ = __name__
    GreenmlCallback.__qualname__ = "GreenmlCallback"
    return GreenmlCallback


_classes: Dict[str, type] = {}

if TYPE_CHECKING:  # pragma: no cover
    GreenmlCallback: Any


def __getattr__(name: str) -> Any:
    # The callback's base class is Lightning's, imported only when the callback is asked for:
    # importing this module needs no Lightning.
    if name == "GreenmlCallback":
        pl = _lightning()
        cls = _classes.get(pl.__name__)
        if cls is None:
            cls = _classes[pl.__name__] = _make_callback_class(pl)
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
