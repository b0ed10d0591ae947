"""MLflow integration, against real MLflow tracking stores in a temp dir (the file store, and
the SQLite store MLflow recommends), read back through ``MlflowClient``; the energies come
from fake RAPL hardware whose truth is known (fakes/truth.py)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

import greenml

from fakes.truth import meter_window_ns

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None, reason='needs pip install "greenml[mlflow]"'
)

PKG = (40.0, 0.0, 0.0)  # package-0 at constant power (W)
DRAM = (6.0, 0.0, 0.0)


@pytest.fixture
def rapl_rt(fake_rapl, runtimes):
    w = fake_rapl({"intel-rapl:0": PKG, "intel-rapl:0:0": DRAM})
    return w, runtimes(powercap_root=w.root, sources={"rapl"})


def _use_store(monkeypatch, uri: str):
    # Imported while a test runs: MLflow then sees PYTEST_CURRENT_TEST and sends no telemetry.
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it behind a flag
    import mlflow

    import greenml.integrations.mlflow as gm

    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    gm._warned.clear()  # each test sees its own warn-once
    return mlflow, gm, mlflow.tracking.MlflowClient(uri), previous


@pytest.fixture
def store(tmp_path, monkeypatch):
    """(mlflow, greenml.integrations.mlflow, client) over a file store under tmp_path."""
    mlflow, gm, client, previous = _use_store(monkeypatch, (tmp_path / "mlruns").as_uri())
    yield mlflow, gm, client
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


def _only_run(mlflow, client):
    exp = client.get_experiment_by_name("Default")
    (run,) = client.search_runs([exp.experiment_id])
    return run


# ---------------------------------------------------------------------- meter()


def test_given_an_active_run_when_a_meter_ends_then_metrics_tags_and_artifact_are_logged(
    store, rapl_rt, tmp_path
):
    mlflow, gm, client = store
    writer, rt = rapl_rt

    # Given: an active run; When: a meter with two phases and 20 steps ends
    with mlflow.start_run() as run:
        with gm.meter("finetune", runtime=rt) as m:
            with m.phase("train"):
                for _ in range(20):
                    time.sleep(0.005)
                    m.step()
            with m.phase("eval", items=100):
                time.sleep(0.02)
        assert mlflow.active_run().info.run_id == run.info.run_id  # the user's run stays open

    # Then: the numbers logged are the meter's, and the meter's are the truth's
    got = client.get_run(run.info.run_id).data
    t0, t1 = meter_window_ns(m)
    truth = writer.true_energy_j("intel-rapl:0", t0, t1) + writer.true_energy_j(
        "intel-rapl:0:0", t0, t1
    )
    assert abs(m.energy_j - truth) <= m.uncertainty_j
    assert got.metrics["greenml/energy_j"] == pytest.approx(m.energy_j, rel=1e-12)
    assert got.metrics["greenml/duration_s"] == pytest.approx(m.duration_s, rel=1e-12)
    assert got.metrics["greenml/power_w"] == pytest.approx(m.mean_power_w, rel=1e-12)
    assert got.metrics["greenml/co2e_g"] == pytest.approx(m.co2e_g, rel=1e-12)
    # per domain, with keys valid everywhere (no colon)
    assert got.metrics["greenml/domain/package_0/energy_j"] == pytest.approx(
        m.by_domain["package:0"], rel=1e-12
    )
    assert "greenml/domain/dram_0/energy_j" in got.metrics
    assert not any(":" in k for k in got.metrics)
    # per phase
    phases = m.phases
    assert got.metrics["greenml/phase/train/energy_j"] == pytest.approx(
        phases["train"].energy_j, rel=1e-12
    )
    assert got.metrics["greenml/phase/eval/energy_per_item_j"] == pytest.approx(
        phases["eval"].energy_j / 100, rel=1e-12
    )
    # per step: the summary and one point per step
    assert got.metrics["greenml/steps"] == 20
    history = client.get_metric_history(run.info.run_id, "greenml/step_energy_j")
    assert sorted(p.step for p in history) == list(range(1, 21))
    assert sum(p.value for p in history) == pytest.approx(m.steps.total_j, rel=1e-9)
    # what the total is made of
    assert got.tags["greenml.total_kind"] == "measured"
    assert got.tags["greenml.estimated_domains"] == "none"
    # and the whole result as JSON
    path = client.download_artifacts(run.info.run_id, "greenml/finetune.json", str(tmp_path))
    saved = json.loads(Path(path).read_text())
    assert saved["energy_j"] == pytest.approx(m.energy_j, rel=1e-12)
    assert set(saved["phases"]) == {"train", "eval"}


def test_given_no_active_run_when_a_meter_ends_then_it_had_a_run_of_its_own_now_finished(
    store, rapl_rt
):
    mlflow, gm, client = store
    _, rt = rapl_rt
    with gm.meter("infer", runtime=rt) as m:
        time.sleep(0.01)
    run = _only_run(mlflow, client)
    assert run.info.run_name == "infer" and run.info.status == "FINISHED"
    assert mlflow.active_run() is None
    assert m.duration_s == pytest.approx(run.data.metrics["greenml/duration_s"], rel=1e-12)


def test_given_a_block_that_raises_when_the_meter_ends_then_logged_failed_and_reraised(
    store, rapl_rt
):
    mlflow, gm, client = store
    _, rt = rapl_rt

    with pytest.raises(RuntimeError, match="diverged"):
        with gm.meter("train", runtime=rt):
            time.sleep(0.02)
            raise RuntimeError("loss diverged")

    run = _only_run(mlflow, client)
    assert run.info.status == "FAILED"
    assert run.data.metrics["greenml/energy_j"] > 0  # what was measured before it raised
    assert mlflow.active_run() is None


# ---------------------------------------------------------------------- log_result()


def test_given_a_run_id_when_logging_a_phase_and_a_function_then_they_go_there_under_prefixes(
    store, rapl_rt
):
    mlflow, gm, client = store
    _, rt = rapl_rt
    run_id = client.create_run(client.get_experiment_by_name("Default").experiment_id).info.run_id

    @greenml.measure("mlflow-test-predict", runtime=rt)
    def predict() -> None:
        time.sleep(0.002)

    with greenml.meter("job", runtime=rt) as m:
        with m.phase("train"):
            predict()
            predict()

    # When: logged by run id, with no active run, under prefixes of their own
    assert gm.log_result(m.phases["train"], run=run_id, prefix="greenml/train") == run_id
    assert gm.log_result(predict.energy, run=run_id, prefix="greenml/predict") == run_id

    # Then
    assert mlflow.active_run() is None
    got = client.get_run(run_id).data.metrics
    assert got["greenml/train/energy_j"] == pytest.approx(m.phases["train"].energy_j, rel=1e-12)
    assert got["greenml/predict/calls"] == 2
    assert got["greenml/predict/energy_j"] == pytest.approx(predict.energy.total_j, rel=1e-12)
    files = [a.path for a in client.list_artifacts(run_id, "greenml/predict")]
    assert files == ["greenml/predict/mlflow-test-predict.json"]


def test_given_logging_fails_when_logging_then_nothing_raises_and_it_warns_once(store, rapl_rt):
    mlflow, gm, client = store
    _, rt = rapl_rt
    with greenml.meter(runtime=rt) as m:
        time.sleep(0.01)

    with pytest.warns(gm.MlflowLoggingWarning, match="could not log a result") as record:
        assert gm.log_result(m, run="no-such-run") is None
        assert gm.log_result(m, run="no-such-run") is None
        assert gm.log_result(object()) is None
    assert len(record) == 1


# MLflow's recommended local backend; its ORM layer warns about its own use of SQLAlchemy.
@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SADeprecationWarning")
def test_given_sqlite_store_when_a_meter_ends_then_logged(tmp_path, monkeypatch, rapl_rt):
    _, rt = rapl_rt
    mlflow, gm, client, previous = _use_store(monkeypatch, f"sqlite:///{tmp_path / 'ml.db'}")
    try:
        # Artifacts of a database store go where its experiment says (else to ./mlruns)
        exp = client.create_experiment("greenml", artifact_location=(tmp_path / "art").as_uri())
        run_id = client.create_run(exp).info.run_id
        with gm.meter("sqlite", runtime=rt, run=run_id) as m:
            time.sleep(0.01)
        run = client.get_run(run_id)
        files = [a.path for a in client.list_artifacts(run_id, "greenml")]
    finally:
        mlflow.set_tracking_uri(previous)
    assert files == ["greenml/sqlite.json"]
    assert run.data.metrics["greenml/energy_j"] == pytest.approx(m.energy_j, rel=1e-12)


def test_metric_keys_are_valid_for_every_mlflow_backend():
    pytest.importorskip("mlflow")
    from greenml.integrations.mlflow import metric_key

    assert metric_key("greenml", "domain", "gpu:0", "energy_j") == "greenml/domain/gpu_0/energy_j"
    assert metric_key("greenml/train", "phase", "a/b") == "greenml/train/phase/a_b"
    assert metric_key("greenml", "phase", "..") == "greenml/phase/_."
    assert metric_key("", "x y-z.1") == "x y-z.1"
