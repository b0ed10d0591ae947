"""Hugging Face ``transformers`` Trainer callback: the energy of ``trainer.train()`` (and of
``evaluate``/``predict``), logged through the Trainer's own logging.

    from greenml.integrations.huggingface import attach

    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds, eval_dataset=ds)
    cb = attach(trainer, log="energy.jsonl")   # or Trainer(callbacks=[cb]); cb.trainer = trainer
    trainer.train()
    cb.result.energy_j, cb.meter.phases["evaluate"].energy_j, cb.forecast

One greenml meter per ``train()`` call, named ``<name>/train``, with the phases ``train`` and
``evaluate`` (evaluations during training), which never overlap; one step per optimizer step
(``on_step_end``: gradient accumulation micro-batches are part of their step), so the step count
equals ``state.global_step`` and the forecast is of ``state.max_steps`` steps. Steps tile the
run from its start: an evaluation is part of the step after it (the forecast separates such
periodic costs).

Metrics go through ``trainer.log`` when the callback knows its trainer (:func:`attach`, or
``cb.trainer = trainer``): they then reach every reporting integration (TensorBoard, MLflow,
W&B, ...) and ``trainer.state.log_history``. Without a trainer they are merged into the next
log event the callback sees, which reaches ``log_history``, the console and the callbacks after
this one only. Energies in joules, durations in seconds, power in watts, carbon in grams CO2e.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ._metrics import metric_key
from ._session import FORECAST_AFTER_STEPS, IntegrationWarning, Readouts, _Session, guarded

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'greenml\'s Hugging Face callback needs transformers: pip install "greenml[transformers]"'
    ) from exc

__all__ = ["GreenmlCallback", "IntegrationWarning", "attach"]


class GreenmlCallback(Readouts, TrainerCallback):  # type: ignore[misc]
    """Measures the energy of a ``transformers.Trainer`` run and logs it with the Trainer.

    Args:
        name: the training meter is named ``<name>/train`` (``<name>/evaluate`` and
            ``<name>/predict`` for calls outside training).
        prefix: the first part of every metric key, joined by ``/`` (default ``"greenml"``:
            ``greenml/energy_j``, ``greenml/phase/train/energy_j``, ...; the keys of
            :mod:`greenml.integrations.mlflow`).
        forecast_after_steps: forecast the whole run (``state.max_steps`` steps) once this many
            optimizer steps have run (at least 40; retried a little later while too few steps
            have resolved; skipped when the run is shorter); None: no forecast.
        log: a JSON Lines file for greenml's records (one per run and phase).
        powercap: ``True`` or a dict of :class:`greenml.powercap.Tuner` options: a tuner made
            at each ``train()``'s start (measured by this callback's ``runtime`` unless the
            options name one); when this process may not change the limit, one warning and
            training runs under the limit it had. Or an object with ``step()`` and ``close()``.
            Stepped after every optimizer step, closed (the original limit restored) when
            training ends (call :meth:`close` in a ``finally`` to close it when training fails:
            the Trainer has no failure hook); the tuner's choice is logged once made
            (``<prefix>/powercap/chosen_w``, ``/expected_saving``).
        distributed: job totals over all ``torch.distributed`` ranks
            (``greenml.meter(distributed=True)``); every rank measures, world rank zero logs.
        trainer: the Trainer, for ``trainer.log`` (see the module docstring); :func:`attach`
            sets it.
        **meter_options: passed to :func:`greenml.meter` (``region``, ``pue``, ...).

    After a run: ``result`` (its :class:`greenml.Measurement`), ``results`` (per run kind),
    ``meter`` (phases, steps), ``forecast``, ``metrics`` (every metric logged, last values),
    ``errors`` (what the bookkeeping failed on; training never sees them).
    """

    def __init__(
        self,
        name: str = "transformers",
        *,
        prefix: str = "greenml",
        forecast_after_steps: Optional[int] = FORECAST_AFTER_STEPS,
        log: Optional[str] = None,
        powercap: Any = None,
        distributed: bool = False,
        trainer: Any = None,
        **meter_options: Any,
    ) -> None:
        self.session = _Session(
            "transformers",
            name=name,
            prefix=prefix,
            forecast_after_steps=forecast_after_steps,
            log=log,
            powercap=powercap,
            distributed=distributed,
            meter_options=meter_options,
        )
        self.trainer = trainer
        self.metrics: Dict[str, float] = {}
        self._pending: Dict[str, float] = {}
        self._in_log = False

    def close(self) -> None:
        """Stops a run left open (training failed) and closes the power capper; idempotent,
        never raises."""
        self.session.call("stop", self.session.stop)
        self.session.call("powercap.close", self.session.close_powercap)

    # -- logging ---------------------------------------------------------------------------

    def _emit(self, state: Any, metrics: Dict[str, float]) -> None:
        if not metrics:
            return
        self.metrics.update(metrics)
        if not state.is_world_process_zero:
            return
        if self.trainer is not None:
            self._in_log = True
            try:
                self.session.call("trainer.log", lambda: self.trainer.log(dict(metrics)))
            finally:
                self._in_log = False
        else:
            self._pending.update(metrics)

    def _flush_to_history(self, state: Any) -> None:
        """Pending metrics with no log event left to ride: their own log_history entry."""
        if self._pending:
            state.log_history.append({**self._pending, "step": state.global_step})
            self._pending = {}

    # -- training --------------------------------------------------------------------------

    @guarded
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.metrics = {}
        self._pending = {}
        s = self.session
        s.start("train")
        s.open_powercap()
        s.set_total_steps(state.max_steps)
        s.open_phase("evaluate" if getattr(args, "eval_on_start", False) else "train")

    @guarded
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        s = self.session
        if s.stage != "train" or not s.running:
            return
        self._emit(state, s.step())
        if control.should_evaluate:  # the Trainer evaluates right after this hook
            s.open_phase("evaluate")

    @guarded
    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        s = self.session
        if s.stage != "train" or not s.running:
            return
        s.close_phase()
        self._emit(state, s.live_metrics())
        s.open_phase("evaluate" if control.should_evaluate else "train")

    @guarded
    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        s = self.session
        if s.stage == "train" and s.running:
            s.close_phase()
            s.open_phase("train")
            self._emit(state, s.phase_metrics(["evaluate"]))
        else:
            self._finish_inference("evaluate", state)

    @guarded
    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if self._in_log or logs is None:
            return  # our own trainer.log
        s = self.session
        if s.stage == "train" and s.running and "train_runtime" in logs:
            # The Trainer's last log of a train() call: the run is over but for cleanup, and
            # every reporting integration is still open (on_train_end may close them).
            self._emit(state, s.stop())
        if self._pending and self.trainer is None:
            logs.update(self._pending)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self._pending)
            self._pending = {}

    @guarded
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        try:
            s = self.session
            if s.stage == "train" and s.running:  # no final Trainer log came: keep it anyway
                metrics = s.stop()
                self.metrics.update(metrics)
                if state.is_world_process_zero:
                    self._pending.update(metrics)
            if state.is_world_process_zero:
                self._flush_to_history(state)
        finally:
            self.session.call("powercap.close", self.session.close_powercap)

    # -- evaluate and predict outside training ---------------------------------------------

    @guarded
    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The Trainer has no hook before an evaluation: a call outside training is measured
        # from the end of its first batch (for an exact window, wrap the call in a meter).
        if not self.session.running:
            self.session.start("inference")

    @guarded
    def on_predict(self, args: Any, state: Any, control: Any, metrics: Any, **kwargs: Any) -> None:
        self._finish_inference("predict", state)

    def _finish_inference(self, kind: str, state: Any) -> None:
        s = self.session
        if not s.running or s.stage != "inference":
            return
        assert s.meter is not None
        s.stage = kind
        s.meter.name = f"{s.name}/{kind}"
        # The run is the phase here: its totals under <prefix>/<kind>/.
        self._emit(state, s.stop(prefix=metric_key(s.prefix, kind)))
        if self.trainer is None and state.is_world_process_zero:
            self._flush_to_history(state)


def attach(trainer: Any, **options: Any) -> GreenmlCallback:
    """A :class:`GreenmlCallback` added to ``trainer`` that logs through ``trainer.log``, so its
    metrics reach every reporting integration; ``options`` as for the callback."""
    cb = GreenmlCallback(trainer=trainer, **options)
    trainer.add_callback(cb)
    return cb
