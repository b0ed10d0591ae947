"""The Lightning callback with the real Lightning, on a tiny model, against a fake RAPL package
(constant 30 W): phases, steps, logged metrics, the forecast, the power-capping hook, and errors
of greenml's bookkeeping that never reach the training loop."""

from __future__ import annotations

import csv
import json
import sys
import warnings

import pytest

pl = pytest.importorskip("lightning.pytorch")
torch = pytest.importorskip("torch")

import greenml  # noqa: E402
from fakes.nvml import NO_PERMISSION  # noqa: E402
from greenml.integrations import _session  # noqa: E402
from greenml.integrations import lightning as gl  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, Logger  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

torch.set_num_threads(1)

# Lightning's advice for real runs (workers, log intervals, an idle GPU), not about greenml.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*log_every_n_steps.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*but have no `val_dataloader`.*"),
]

P = "greenml/"


class Tiny(pl.LightningModule):
    def __init__(self, fail_at_step: int = -1) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
        )
        self.fail_at_step = fail_at_step

    def _loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_at_step:
            raise RuntimeError("the model failed")
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        return self._loss(batch)

    def test_step(self, batch, batch_idx):
        return self._loss(batch)

    def predict_step(self, batch, batch_idx):
        return self.net(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Capture(Logger):
    """A logger that keeps every (step, metrics) it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))

    def keys(self) -> set:
        return {k for _, m in self.rows for k in m}

    def last(self, key: str) -> float:
        return [m[key] for _, m in self.rows if key in m][-1]


class FakeCapper:
    """The power-capping interface: step() after each optimizer step, close() once at the end."""

    def __init__(self) -> None:
        self.steps = 0
        self.closed = 0
        self.steps_at_close = None

    def step(self) -> None:
        assert not self.closed, "stepped after close"
        self.steps += 1

    def close(self) -> None:
        self.closed += 1
        self.steps_at_close = self.steps


def loader(n: int, batch: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 8, generator=g), torch.randn(n, 1)), batch)


def trainer(tmp_path, cb, loggers=None, **kw) -> "pl.Trainer":
    opts = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=loggers if loggers is not None else Capture(),
        callbacks=[cb],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=1,
    )
    opts.update(kw)
    return pl.Trainer(**opts)


def spans_do_not_overlap(meter) -> bool:
    spans = sorted(s for v in meter.phase_spans_s().values() for s in v)
    return all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_given_a_fit_when_it_ends_then_phases_steps_metrics_forecast_and_capper_are_right(
    tmp_path, rapl_runtime
):
    capper = FakeCapper()
    cb = gl.GreenmlCallback(
        forecast_after_steps=40,
        powercap=capper,
        log=str(tmp_path / "e.jsonl"),
        runtime=rapl_runtime,
    )
    capture = Capture()
    csv_logger = CSVLogger(tmp_path, name="csv")
    t = trainer(tmp_path, cb, [capture, csv_logger], limit_train_batches=60, limit_val_batches=3)

    t.fit(Tiny(), loader(240), loader(12))

    assert cb.errors == []
    assert t.global_step == 120
    m = cb.meter
    assert not m.running and cb.result is cb.results["fit"]
    assert cb.result.energy_j > 0 and cb.result.duration_s > 0
    phases = m.phases
    assert list(phases) == ["sanity_check", "train", "validate"]
    for name, ph in phases.items():
        assert ph.energy_j > 0 and ph.duration_s > 0, name
    assert phases["validate"].count == 2  # once per epoch
    assert sum(p.duration_s for p in phases.values()) <= cb.result.duration_s
    assert spans_do_not_overlap(m)
    # one step per optimizer step; the capper too, then closed once
    assert m.steps.count == t.global_step == cb.session.steps
    assert (capper.steps, capper.closed, capper.steps_at_close) == (120, 1, 120)

    keys = capture.keys()
    for k in (
        "energy_j",
        "duration_s",
        "power_w",
        "co2e_g",
        "domain/package_0/energy_j",
        "epoch/energy_j",
        "epoch/power_w",
        "phase/train/energy_j",
        "phase/validate/energy_j",
        "phase/sanity_check/energy_j",
        "steps",
        "energy_per_step_j",
    ):
        assert P + k in keys, k
    # keys every MLflow store can hold: no colon, and none a "/"-prefix (a directory) of another
    assert not any(":" in k for k in keys)
    assert not [(a, b) for a in keys for b in keys if b.startswith(a + "/")]
    assert capture.last(P + "energy_j") == pytest.approx(cb.result.energy_j)
    assert capture.last(P + "steps") == 120
    # epoch ends log at their global step, the final metrics at the last one
    epoch_steps = [s for s, mm in capture.rows if P + "epoch/energy_j" in mm]
    assert epoch_steps == [60, 120]

    # the forecast of the whole fit, logged once, after at least 40 steps
    assert cb.forecast is not None and cb.forecast.total_steps == t.estimated_stepping_batches
    fc = [(s, mm) for s, mm in capture.rows if P + "forecast/energy_j" in mm]
    assert len(fc) == 1 and 40 <= fc[0][0] < 120
    assert fc[0][1][P + "forecast/low_j"] <= fc[0][1][P + "forecast/high_j"]

    # the same metrics reached the CSV logger; records reached greenml's log
    with open(f"{csv_logger.log_dir}/metrics.csv") as f:
        header = next(csv.reader(f))
    assert P + "energy_j" in header and P + "forecast/energy_j" in header
    with open(tmp_path / "e.jsonl") as f:
        recs = [json.loads(line) for line in f]
    names = {(r.get("type"), r.get("name")) for r in recs}
    assert ("meter", "lightning/fit") in names and ("phase", "train") in names


def test_given_gradient_accumulation_when_fitting_then_a_step_is_an_optimizer_step(
    tmp_path, rapl_runtime
):
    capper = FakeCapper()
    cb = gl.GreenmlCallback(powercap=capper, runtime=rapl_runtime)
    t = trainer(
        tmp_path,
        cb,
        max_epochs=1,
        limit_train_batches=9,
        limit_val_batches=0,
        accumulate_grad_batches=3,
    )

    t.fit(Tiny(), loader(36))

    assert t.global_step == 3
    assert cb.meter.steps.count == 3 and capper.steps == 3 and capper.closed == 1


def test_given_greenml_failing_inside_the_loop_when_fitting_then_training_goes_on_and_warns_once(
    tmp_path, rapl_runtime, monkeypatch
):
    def broken(self):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(greenml.Meter, "step", broken)
    capper = FakeCapper()
    cb = gl.GreenmlCallback(powercap=capper, runtime=rapl_runtime)
    t = trainer(tmp_path, cb, max_epochs=1, limit_train_batches=8, limit_val_batches=2)

    with pytest.warns(gl.IntegrationWarning, match="injected failure") as caught:
        t.fit(Tiny(), loader(32), loader(8))

    assert len([w for w in caught if w.category is gl.IntegrationWarning]) == 1
    assert t.global_step == 8  # every step ran
    assert len(cb.errors) == 8 and "injected failure" in cb.errors[0]
    assert cb.result is not None and cb.result.energy_j > 0  # the rest still measured
    assert (capper.steps, capper.closed) == (8, 1)


def test_given_warnings_as_errors_when_greenml_fails_then_training_still_goes_on(
    tmp_path, rapl_runtime, monkeypatch
):
    monkeypatch.setattr(greenml.Meter, "step", lambda self: 1 / 0)
    cb = gl.GreenmlCallback(runtime=rapl_runtime)
    t = trainer(tmp_path, cb, max_epochs=1, limit_train_batches=4, limit_val_batches=0)

    with warnings.catch_warnings():
        warnings.simplefilter("error", gl.IntegrationWarning)
        t.fit(Tiny(), loader(16))

    assert t.global_step == 4 and "ZeroDivisionError" in cb.errors[0]


def test_given_training_fails_when_fitting_then_capper_closed_and_energy_so_far_kept(
    tmp_path, rapl_runtime
):
    capper = FakeCapper()
    capture = Capture()
    cb = gl.GreenmlCallback(powercap=capper, runtime=rapl_runtime)
    t = trainer(tmp_path, cb, capture, max_epochs=1, limit_train_batches=10, limit_val_batches=0)

    with pytest.raises(RuntimeError, match="the model failed"):
        t.fit(Tiny(fail_at_step=5), loader(40))

    assert (capper.steps, capper.closed) == (5, 1)
    assert not cb.meter.running and cb.result.energy_j > 0
    assert cb.meter.steps.count == 5
    assert capture.last(P + "energy_j") == pytest.approx(cb.result.energy_j)


@pytest.mark.filterwarnings("ignore::greenml.ShortWindowWarning")  # a 3-batch run is short
def test_given_validate_test_and_predict_calls_then_each_is_its_own_run(tmp_path, rapl_runtime):
    capture = Capture()
    cb = gl.GreenmlCallback(runtime=rapl_runtime, prefix="energy")
    t = trainer(
        tmp_path, cb, capture, limit_val_batches=3, limit_test_batches=3, limit_predict_batches=3
    )
    model = Tiny()

    t.validate(model, loader(12))
    t.test(model, loader(12))
    t.predict(model, loader(12))

    assert cb.errors == []
    assert list(cb.results) == ["validate", "test", "predict"]
    for stage, res in cb.results.items():
        assert res.name == f"lightning/{stage}" and res.energy_j > 0
    assert list(cb.meter.phases) == ["predict"]
    assert {
        "energy/energy_j",
        "energy/phase/validate/energy_j",
        "energy/phase/test/energy_j",
    } <= capture.keys()


def test_given_a_fit_shorter_than_the_forecast_point_then_no_forecast_and_no_warning(
    tmp_path, rapl_runtime
):
    capture = Capture()
    cb = gl.GreenmlCallback(runtime=rapl_runtime, forecast_after_steps=5)
    t = trainer(tmp_path, cb, capture, max_epochs=1, limit_train_batches=12, limit_val_batches=0)

    t.fit(Tiny(), loader(48))

    assert cb.forecast is None and cb.errors == []
    assert not any(k.startswith(P + "forecast/") for k in capture.keys())


def test_given_bad_options_then_the_callback_refuses_them_before_training(monkeypatch):
    with pytest.raises(greenml.GreenmlError, match="forecast_after_steps"):
        gl.GreenmlCallback(forecast_after_steps=0)
    with pytest.raises(greenml.GreenmlError, match="step\\(\\) and close\\(\\)"):
        gl.GreenmlCallback(powercap=object())
    with pytest.raises(greenml.GreenmlError, match="not options of greenml.powercap.Tuner"):
        gl.GreenmlCallback(powercap={"max_slowdwn": 0.05})
    monkeypatch.setattr(_session, "supports_distributed", lambda: False)
    with pytest.raises(greenml.GreenmlError, match="distributed=True"):
        gl.GreenmlCallback(distributed=True)
    monkeypatch.setattr(_session, "supports_distributed", lambda: True)
    cb = gl.GreenmlCallback(distributed=True)
    assert cb.session.meter_options["distributed"] is True


def test_given_no_lightning_installed_then_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    monkeypatch.setattr(gl, "_classes", {})
    with pytest.raises(ImportError, match=r'pip install "greenml\[lightning\]"'):
        gl.GreenmlCallback  # noqa: B018


def test_given_mlflows_logger_on_a_file_store_when_fitting_then_greenml_metrics_arrive(
    tmp_path, rapl_runtime, monkeypatch
):
    # Given: Lightning's own MLflow logger on a local file store (MLflow keeps a/b as a file
    # in a directory a: one key that is a "/"-prefix of another fails the whole batch)
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it behind a flag
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = (tmp_path / "mlruns").as_uri()
    logger = MLFlowLogger(experiment_name="greenml", tracking_uri=uri)
    cb = gl.GreenmlCallback(runtime=rapl_runtime)
    t = trainer(tmp_path, cb, logger, max_epochs=2, limit_train_batches=6, limit_val_batches=2)

    # When
    t.fit(Tiny(), loader(24), loader(8))

    # Then: the run holds greenml's metrics, the final ones equal to the callback's result
    assert cb.errors == []
    got = MlflowClient(uri).get_run(logger.run_id).data.metrics
    assert got[P + "energy_j"] == pytest.approx(cb.result.energy_j, rel=1e-9)
    assert got[P + "domain/package_0/energy_j"] == pytest.approx(
        cb.result.by_domain["package:0"], rel=1e-9
    )
    assert got[P + "phase/train/energy_j"] > 0 and got[P + "phase/validate/energy_j"] > 0
    assert got[P + "epoch/energy_j"] > 0 and got[P + "steps"] == 12


# ---------------------------------------------------------------------- power capping

#: A tuner that decides after 5 steps: the first sets 300 W, two measured at 300 W, two at 200 W.
TUNER = {"limits": [300, 200], "steps_per_limit": 2, "warmup_steps": 0, "max_slowdown": None}

#: The tuner measures 2-step windows of a tiny model: shorter than the fake's sampling period.
short_windows = pytest.mark.filterwarnings("ignore::greenml.ShortWindowWarning")


@short_windows
def test_given_tuner_options_and_privileges_when_fitting_then_tuned_choice_logged_and_restored(
    tmp_path, gpu_with_limits
):
    gpu, rt = gpu_with_limits
    capture = Capture()
    cb = gl.GreenmlCallback(runtime=rt, powercap=TUNER)
    t = trainer(tmp_path, cb, capture, max_epochs=1, limit_train_batches=8, limit_val_batches=0)

    t.fit(Tiny(), loader(32))

    tuner = cb.powercap
    assert cb.errors == [] and t.global_step == 8
    assert (tuner.steps, tuner.state, tuner.chosen_w in (300, 200)) == (8, "closed", True)
    chosen = [(s, m) for s, m in capture.rows if P + "powercap/chosen_w" in m]
    assert [s for s, _ in chosen] == [5]  # logged once, at the step the tuner chose
    assert chosen[0][1][P + "powercap/chosen_w"] == tuner.chosen_w
    assert P + "powercap/expected_saving" in chosen[0][1]
    assert 200 in [w for _, w in gpu.limit_history(0)]  # it did change the limit
    assert gpu.limit_w(0) == 300  # and restored it at the fit's end
    assert not (tmp_path / "powercap-state.json").exists()


@short_windows
@pytest.mark.parametrize("why", ["no permission", "no such GPU"])
def test_given_tuner_options_without_privileges_when_fitting_then_warned_once_limit_untouched(
    tmp_path, gpu_with_limits, why
):
    gpu, rt = gpu_with_limits
    if why == "no permission":  # refused at the tuner's first change
        gpu.set_error(0, "set_limit", NO_PERMISSION)
    options = {**TUNER, "device": "gpu:0" if why == "no permission" else "gpu:3"}
    cb = gl.GreenmlCallback(runtime=rt, powercap=options)
    t = trainer(tmp_path, cb, max_epochs=1, limit_train_batches=8, limit_val_batches=0)

    with pytest.warns(gl.IntegrationWarning, match="without power capping") as caught:
        t.fit(Tiny(), loader(32))

    assert len([w for w in caught if w.category is gl.IntegrationWarning]) == 1
    assert t.global_step == 8 and cb.errors == [] and cb.result.energy_j > 0
    assert gpu.limit_w(0) == 300 and gpu.limit_history(0) == []  # nothing was ever set
    assert not (tmp_path / "powercap-state.json").exists()


@short_windows
def test_given_a_multi_rank_job_when_powercap_names_no_device_then_warned_and_nothing_set(
    tmp_path, gpu_with_limits, monkeypatch
):
    # Every rank would otherwise tune gpu:0 at once, judged by energy the others' limits move.
    gpu, rt = gpu_with_limits
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cb = gl.GreenmlCallback(runtime=rt, powercap=dict(TUNER))
    t = trainer(tmp_path, cb, max_epochs=1, limit_train_batches=8, limit_val_batches=0)

    with pytest.warns(gl.IntegrationWarning, match="2 ranks needs the device named"):
        t.fit(Tiny(), loader(32))

    assert t.global_step == 8 and cb.errors == [] and cb.result.energy_j > 0
    assert gpu.limit_history(0) == []
