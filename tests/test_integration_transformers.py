"""The transformers callback with the real Trainer, on a one-layer GPT-2 built from a config
(no downloads), against a fake RAPL package (constant 30 W): phases, steps, metrics through the
Trainer's logging, the forecast, the power-capping hook, and errors of greenml's bookkeeping
that never reach the training loop."""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import greenml  # noqa: E402
from fakes.nvml import NO_PERMISSION  # noqa: E402
from greenml.integrations import huggingface as ghf  # noqa: E402
from greenml.integrations.huggingface import IntegrationWarning  # noqa: E402

torch.set_num_threads(1)

P = "greenml/"

try:
    import accelerate  # noqa: F401 - transformers' Trainer needs it
except ImportError:
    HAVE_ACCELERATE = False
else:
    HAVE_ACCELERATE = True
#: The real Trainer needs accelerate (pip install "transformers[torch]"); without it the tests
#: marked so are skipped and the HandRun tests below drive the same hooks.
needs_trainer = pytest.mark.skipif(
    not HAVE_ACCELERATE, reason="transformers' Trainer needs accelerate, not installed here"
)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, fail_after: int = -1) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, 8), generator=g)
        self.fail_after = fail_after  # samples served before the data fails
        self.served = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        if self.served == self.fail_after:
            raise RuntimeError("the data failed")
        self.served += 1
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Reporter(transformers.TrainerCallback):
    """Stands for a reporting integration (TensorBoard, MLflow, ...): keeps every log it sees.
    Passed to the Trainer, it runs before a callback attached later."""

    def __init__(self) -> None:
        self.logs: list = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs or {})))

    def keys(self) -> set:
        return {k for _, lg in self.logs for k in lg}


class FakeCapper:
    def __init__(self) -> None:
        self.steps = 0
        self.closed = 0

    def step(self) -> None:
        assert not self.closed, "stepped after close"
        self.steps += 1

    def close(self) -> None:
        self.closed += 1


def make_trainer(tmp_path, callbacks=(), n=64, **kw):
    cfg = transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2, use_cache=False
    )
    torch.manual_seed(0)
    opts = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=20,
        dataloader_num_workers=0,
    )
    opts.update(kw)
    return transformers.Trainer(
        model=transformers.GPT2LMHeadModel(cfg),
        args=transformers.TrainingArguments(**opts),
        train_dataset=Tokens(n),
        eval_dataset=Tokens(8),
        callbacks=list(callbacks),
    )


def spans_do_not_overlap(meter) -> bool:
    spans = sorted(s for v in meter.phase_spans_s().values() for s in v)
    return all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


# -- the Trainer's hook sequence, driven by hand where accelerate is missing ----------------


class HandRun:
    """The hook sequence of ``transformers.Trainer`` 5.x (``_inner_training_loop``,
    ``_maybe_log_save_evaluate``, ``evaluate``, ``log``, ``_finalize_training``) over the real
    ``CallbackHandler``, ``DefaultFlowCallback``, ``TrainerState`` and ``TrainerControl`` and a
    real model, without the device setup that needs accelerate. ``log`` is the Trainer's: the
    callback bound to this object logs through it as it does through a Trainer."""

    def __init__(
        self, callbacks, max_steps, eval_steps=0, logging_steps=5, accumulate=1, fail_at_step=-1
    ):
        from transformers.trainer_callback import (
            CallbackHandler,
            DefaultFlowCallback,
            TrainerControl,
            TrainerState,
        )
        from transformers.trainer_utils import IntervalStrategy, SaveStrategy

        torch.manual_seed(0)
        cfg = transformers.GPT2Config(
            vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2, use_cache=False
        )
        self.model = transformers.GPT2LMHeadModel(cfg)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3)
        self.args = type(
            "Args",
            (),
            dict(
                logging_strategy=IntervalStrategy.STEPS,
                logging_first_step=False,
                eval_strategy=IntervalStrategy.STEPS if eval_steps else IntervalStrategy.NO,
                eval_delay=0,
                save_strategy=SaveStrategy.NO,
                eval_on_start=False,
            ),
        )()
        self.state = TrainerState(
            max_steps=max_steps,
            logging_steps=logging_steps,
            eval_steps=eval_steps or 500,
            save_steps=500,
        )
        self.control = TrainerControl()
        self.handler = CallbackHandler(
            [DefaultFlowCallback(), *callbacks], self.model, None, self.opt, None
        )
        self.accumulate = accumulate
        self.fail_at_step = fail_at_step
        self.data = Tokens(4 * accumulate * max_steps)

    def add_callback(self, cb):
        self.handler.add_callback(cb)

    def log(self, logs):  # Trainer.log
        output = {**logs, "step": self.state.global_step}
        self.state.log_history.append(output)
        self.control = self.handler.on_log(self.args, self.state, self.control, logs)

    def _batches(self, n):
        for i in range(n):
            ids = self.data.ids[4 * i : 4 * i + 4]
            yield {"input_ids": ids, "labels": ids}

    def evaluate(self):
        self.model.eval()
        with torch.no_grad():
            for batch in self._batches(2):
                self.model(**batch)
                self.control = self.handler.on_prediction_step(self.args, self.state, self.control)
        self.model.train()
        metrics = {"eval_loss": 1.0, "eval_runtime": 0.01}
        self.log(metrics)
        self.control = self.handler.on_evaluate(self.args, self.state, self.control, metrics)

    def train(self):
        a, s = self.args, self.state
        self.control = self.handler.on_train_begin(a, s, self.control)
        self.control = self.handler.on_epoch_begin(a, s, self.control)
        for i, batch in enumerate(self._batches(self.accumulate * s.max_steps)):
            if i % self.accumulate == 0:
                self.control = self.handler.on_step_begin(a, s, self.control)
            if s.global_step == self.fail_at_step:
                raise RuntimeError("the model failed")
            self.model(**batch).loss.backward()
            if (i + 1) % self.accumulate:
                self.control = self.handler.on_substep_end(a, s, self.control)
                continue
            self.opt.step()
            self.opt.zero_grad()
            s.global_step += 1
            s.epoch = s.global_step / s.max_steps
            self.control = self.handler.on_step_end(a, s, self.control)
            if self.control.should_log:
                self.control.should_log = False
                self.log({"loss": 1.0})
            if self.control.should_evaluate:
                self.control.should_evaluate = False
                self.evaluate()
            if self.control.should_training_stop:
                break
        self.control = self.handler.on_epoch_end(a, s, self.control)
        self.log({"train_runtime": 0.1, "train_loss": 1.0})
        self.control = self.handler.on_train_end(a, s, self.control)


KINDS = [pytest.param("trainer", marks=needs_trainer), "hand"]


def make_run(
    kind,
    tmp_path,
    callbacks=(),
    *,
    max_steps,
    eval_steps=0,
    logging_steps=5,
    accumulate=1,
    fail_at_step=-1,
):
    """The real Trainer (``"trainer"``) or the same hook sequence driven by hand (``"hand"``)."""
    if kind == "hand":
        return HandRun(
            list(callbacks), max_steps, eval_steps, logging_steps, accumulate, fail_at_step
        )
    t = make_trainer(
        tmp_path,
        callbacks,
        n=4 * accumulate * max_steps,
        max_steps=max_steps,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps or None,
        logging_steps=logging_steps,
        gradient_accumulation_steps=accumulate,
    )
    if fail_at_step >= 0:  # the data fails inside step fail_at_step + 1 (fetched ahead: sooner)
        t.train_dataset = Tokens(4 * accumulate * max_steps, 4 * accumulate * fail_at_step + 2)
    return t


@pytest.mark.parametrize("kind", KINDS)
def test_given_training_with_evaluations_when_it_ends_then_phases_steps_metrics_and_capper(
    kind, tmp_path, rapl_runtime
):
    reporter = Reporter()
    capper = FakeCapper()
    # 160 steps: the forecast is due at step 40 and retried every 10 steps until enough steps
    # have resolved, which on a loaded machine can take most of a short run.
    run = make_run(kind, tmp_path, [reporter], max_steps=160, eval_steps=80)
    cb = ghf.attach(run, forecast_after_steps=40, powercap=capper, runtime=rapl_runtime)

    run.train()

    assert cb.errors == []
    m = cb.meter
    assert not m.running and cb.result is cb.results["train"] and cb.result.energy_j > 0
    phases = m.phases
    assert list(phases) == ["train", "evaluate"]
    assert phases["evaluate"].count == 2 and phases["evaluate"].energy_j > 0
    assert phases["train"].energy_j > phases["evaluate"].energy_j
    assert spans_do_not_overlap(m)
    assert m.steps.count == run.state.global_step == 160
    assert (capper.steps, capper.closed) == (160, 1)
    # through trainer.log: an integration that runs before this callback sees every metric
    for k in (
        "energy_j",
        "power_w",
        "co2e_g",
        "domain/package_0/energy_j",
        "epoch/energy_j",
        "phase/evaluate/energy_j",
        "phase/train/energy_j",
        "steps",
        "energy_per_step_j",
        "forecast/energy_j",
        "forecast/high_j",
    ):
        assert P + k in reporter.keys(), k
    final = [
        lg for _, lg in reporter.logs if P + "phase/train/energy_j" in lg and P + "steps" in lg
    ]
    assert final[-1][P + "energy_j"] == pytest.approx(cb.result.energy_j)
    history = {k for row in run.state.log_history for k in row}
    assert P + "energy_j" in history and P + "forecast/energy_j" in history
    fc_steps = [s for s, lg in reporter.logs if P + "forecast/energy_j" in lg]
    assert len(fc_steps) == 1 and 40 <= fc_steps[0] < 160
    assert cb.forecast.total_steps == run.state.max_steps == 160
    # the final metrics are logged right after the Trainer's final log, before on_train_end
    # (where some integrations close their run)
    at_end = [i for i, (_, lg) in enumerate(reporter.logs) if "train_runtime" in lg]
    assert reporter.logs[at_end[0] + 1][1][P + "energy_j"] == final[-1][P + "energy_j"]


@pytest.mark.parametrize("kind", KINDS)
def test_given_gradient_accumulation_then_a_step_is_an_optimizer_step(kind, tmp_path, rapl_runtime):
    capper = FakeCapper()
    run = make_run(kind, tmp_path, max_steps=5, accumulate=2)
    cb = ghf.attach(run, powercap=capper, runtime=rapl_runtime)

    run.train()

    assert run.state.global_step == 5
    assert cb.meter.steps.count == 5 and (capper.steps, capper.closed) == (5, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_given_no_trainer_reference_then_metrics_ride_the_trainers_own_logs(
    kind, tmp_path, rapl_runtime
):
    cb = ghf.GreenmlCallback(runtime=rapl_runtime)
    run = make_run(kind, tmp_path, [cb], max_steps=6, logging_steps=3)

    run.train()

    assert cb.errors == []
    rows = [row for row in run.state.log_history if P + "energy_j" in row]
    assert rows and rows[-1][P + "energy_j"] == pytest.approx(cb.result.energy_j)
    assert "train_runtime" in rows[-1]  # merged into the Trainer's final log


@pytest.mark.parametrize("kind", KINDS)
def test_given_greenml_failing_inside_the_loop_then_training_goes_on_and_warns_once(
    kind, tmp_path, rapl_runtime, monkeypatch
):
    monkeypatch.setattr(greenml.Meter, "step", lambda self: 1 / 0)
    capper = FakeCapper()
    run = make_run(kind, tmp_path, max_steps=6)
    cb = ghf.attach(run, powercap=capper, runtime=rapl_runtime)

    with pytest.warns(IntegrationWarning, match="ZeroDivisionError") as caught:
        run.train()

    assert len([w for w in caught if w.category is IntegrationWarning]) == 1
    assert run.state.global_step == 6 and len(cb.errors) == 6
    assert cb.result.energy_j > 0 and (capper.steps, capper.closed) == (6, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_given_warnings_as_errors_when_greenml_fails_then_training_still_goes_on(
    kind, tmp_path, rapl_runtime, monkeypatch
):
    monkeypatch.setattr(greenml.Meter, "step", lambda self: 1 / 0)
    run = make_run(kind, tmp_path, max_steps=4)
    cb = ghf.attach(run, runtime=rapl_runtime)

    with warnings.catch_warnings():
        warnings.simplefilter("error", IntegrationWarning)
        run.train()

    assert run.state.global_step == 4 and "ZeroDivisionError" in cb.errors[0]


@pytest.mark.parametrize("kind", KINDS)
def test_given_training_fails_then_close_stops_the_run_and_closes_the_capper(
    kind, tmp_path, rapl_runtime
):
    capper = FakeCapper()
    run = make_run(kind, tmp_path, max_steps=10, fail_at_step=5)
    cb = ghf.attach(run, powercap=capper, runtime=rapl_runtime)

    try:
        with pytest.raises(RuntimeError, match="failed"):
            run.train()
    finally:
        cb.close()

    # accelerate's loader fetches a batch ahead, so the real Trainer may fail a step early
    assert run.state.global_step in (4, 5)
    assert (capper.steps, capper.closed) == (run.state.global_step, 1)
    assert cb.meter.steps.count == run.state.global_step
    assert not cb.meter.running and cb.result.energy_j > 0
    cb.close()  # idempotent
    assert capper.closed == 1


@pytest.mark.filterwarnings("ignore::greenml.ShortWindowWarning")  # a 2-batch run is short
def test_given_an_evaluation_outside_training_then_it_is_a_run(rapl_runtime):
    reporter = Reporter()
    run = HandRun([reporter], max_steps=2)
    cb = ghf.attach(run, runtime=rapl_runtime, prefix="energy")

    run.evaluate()

    assert cb.errors == [] and list(cb.results) == ["evaluate"]
    assert cb.results["evaluate"].name == "transformers/evaluate"
    assert "energy/evaluate/energy_j" in reporter.keys()


@needs_trainer
@pytest.mark.filterwarnings("ignore::greenml.ShortWindowWarning")  # a 2-batch run is short
def test_given_evaluate_and_predict_outside_training_then_each_is_a_run(tmp_path, rapl_runtime):
    reporter = Reporter()
    t = make_trainer(tmp_path, [reporter])
    cb = ghf.attach(t, runtime=rapl_runtime, prefix="energy")

    t.evaluate()
    t.predict(Tokens(8))

    assert cb.errors == []
    assert list(cb.results) == ["evaluate", "predict"]
    assert cb.results["predict"].name == "transformers/predict"
    assert {"energy/evaluate/energy_j", "energy/predict/energy_j"} <= reporter.keys()


#: A tuner that decides after 5 steps: the first sets 300 W, two measured at 300 W, two at 200 W.
TUNER = {"limits": [300, 200], "steps_per_limit": 2, "warmup_steps": 0, "max_slowdown": None}
#: The tuner measures 2-step windows of a tiny model: shorter than the fake's sampling period.
short_windows = pytest.mark.filterwarnings("ignore::greenml.ShortWindowWarning")


@short_windows
@pytest.mark.parametrize("kind", KINDS)
def test_given_tuner_options_and_privileges_when_training_then_tuned_choice_logged_and_restored(
    kind, tmp_path, gpu_with_limits
):
    gpu, rt = gpu_with_limits
    reporter = Reporter()
    run = make_run(kind, tmp_path, [reporter], max_steps=8)
    cb = ghf.attach(run, runtime=rt, powercap=TUNER)

    run.train()

    tuner = cb.powercap
    assert cb.errors == [] and run.state.global_step == 8
    assert (tuner.steps, tuner.state, tuner.chosen_w in (300, 200)) == (8, "closed", True)
    chosen = [(s, lg) for s, lg in reporter.logs if P + "powercap/chosen_w" in lg]
    assert [s for s, _ in chosen] == [5]  # logged once, at the step the tuner chose
    assert chosen[0][1][P + "powercap/chosen_w"] == tuner.chosen_w
    assert 200 in [w for _, w in gpu.limit_history(0)]  # it did change the limit
    assert gpu.limit_w(0) == 300  # and restored it at the end of training
    assert not (tmp_path / "powercap-state.json").exists()


@short_windows
@pytest.mark.parametrize("kind", KINDS)
def test_given_tuner_options_without_privileges_when_training_then_warned_once_limit_untouched(
    kind, tmp_path, gpu_with_limits
):
    gpu, rt = gpu_with_limits
    gpu.set_error(0, "set_limit", NO_PERMISSION)  # refused at the tuner's first change
    run = make_run(kind, tmp_path, max_steps=8)
    cb = ghf.attach(run, runtime=rt, powercap=TUNER)

    with pytest.warns(IntegrationWarning, match="without power capping") as caught:
        run.train()

    assert len([w for w in caught if w.category is IntegrationWarning]) == 1
    assert run.state.global_step == 8 and cb.errors == [] and cb.result.energy_j > 0
    assert gpu.limit_w(0) == 300 and gpu.limit_history(0) == []  # nothing was ever set
    assert not (tmp_path / "powercap-state.json").exists()


@short_windows
@pytest.mark.parametrize("kind", KINDS)
def test_given_a_failed_tuned_run_when_training_again_then_its_cap_is_lifted_and_tuning_restarts(
    kind, tmp_path, gpu_with_limits
):
    gpu, rt = gpu_with_limits
    run = make_run(kind, tmp_path, max_steps=8, fail_at_step=4)
    cb = ghf.attach(run, runtime=rt, powercap=TUNER)
    with pytest.raises(RuntimeError, match="failed"):
        run.train()  # no close(): the Trainer has no exception hook
    failed = cb.powercap
    assert failed.state == "tuning" and gpu.limit_w(0) == 200  # failed under the second limit

    # the same trainer and callback train again, on data that does not fail
    if kind == "hand":
        run.fail_at_step, run.state.global_step = -1, 0
    else:
        run.train_dataset = Tokens(4 * 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IntegrationWarning)
        run.train()

    assert failed.state == "closed" and cb.powercap is not failed
    assert cb.errors == [] and cb.powercap.state == "closed" and cb.powercap.steps == 8
    assert gpu.limit_w(0) == 300 and not (tmp_path / "powercap-state.json").exists()


def test_given_no_transformers_installed_then_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "greenml.integrations.huggingface")
    with pytest.raises(ImportError, match=r'pip install "greenml\[transformers\]"'):
        importlib.import_module("greenml.integrations.huggingface")
