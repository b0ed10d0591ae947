"""The Estimator: fitted on study results tables with a known law (synthetic, the study's
schema), leave-one-model-out error, prediction intervals, hardware and phase refusal,
persistence, and the command line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import greenml
from greenml import _estimate
from greenml._estimate import EstimateError, Estimator, HardwareMismatchError
from greenml.cli import main

HW = "Test CPU 3000 x8"


def _law(params, macs, batch, phase):
    """Energy per sample (J) and duration per sample (s) of the synthetic machine."""
    k = 3.0 if phase == "train" else 1.0
    e = k * 2e-9 * macs**0.9 * batch**-0.25 * params**0.05
    return e, e / 25.0


def _table(n_models=12, noise=0.05, hardware=HW, seed=0, batch_sizes=(16, 64, 256)):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_models):
        params = float(10 ** rng.uniform(4, 7.5))
        macs = params * float(10 ** rng.uniform(0, 2.5))
        train_macs = macs * float(rng.uniform(2.5, 3.5))  # backward cost varies by layer type
        for phase in ("train", "inference"):
            for b in batch_sizes:
                samples = 20 * b
                e, d = _law(params, macs, b, phase)
                e *= float(np.exp(noise * rng.standard_normal()))
                d *= float(np.exp(noise * rng.standard_normal()))
                rows.append(
                    {
                        "model": f"m{i}",
                        "width": 1.0,
                        "params": params,
                        "macs": macs,
                        "macs_per_param": macs / params,
                        "train_macs": train_macs,
                        "batch_size": b,
                        "phase": phase,
                        "steps": 20,
                        "samples": samples,
                        "duration_s": d * samples,
                        "energy_j": e * samples,
                        "energy_per_sample_j": e,
                        "hardware": hardware,
                    }
                )
    return pd.DataFrame(rows)


def _feats(params, macs):
    return {"params": params, "macs": macs, "train_macs": 3 * macs}


@pytest.fixture(scope="module")
def fitted():
    return Estimator(family="loglinear").fit(_table(), verbose=False)


def test_given_a_study_of_12_models_when_fitted_then_lomo_error_is_reported_and_small(capsys):
    est = Estimator.fit(_table())
    out = capsys.readouterr().out
    # Then: the leave-one-model-out error is printed for each phase, and small on this law
    assert "leave-one-model-out over 12 models" in out and "MAPE" in out
    for phase in ("train", "inference"):
        cv = est.cv[phase]
        assert cv["models"] == 12 and cv["rows"] == 36
        assert cv["energy_per_sample"]["mape"] < 0.10
        assert cv["energy_per_sample"]["r2_log"] > 0.95
        assert cv["candidate"] == min(cv["candidates"], key=lambda f: cv["candidates"][f]["mape"])
    # every cell ran 20 steps, so samples = 20 x batch size: its own effect is not identifiable
    assert "samples" not in est.cv["train"]["features"]
    assert "train_macs" in est.cv["train"]["features"]


def test_given_an_unseen_model_when_predicted_then_close_to_the_law_and_inside_the_interval(
    fitted,
):
    params, macs = 3e5, 3e7
    est = fitted.predict(
        _feats(params, macs), phase="train", batch_size=64, samples=50_000, hardware=HW
    )
    e, d = _law(params, macs, 64, "train")
    assert est.energy_j == pytest.approx(e * 50_000, rel=0.15)
    assert est.low_j < e * 50_000 < est.high_j
    assert est.duration_s == pytest.approx(d * 50_000, rel=0.15)
    assert est.duration_low_s < est.duration_s < est.duration_high_s
    # energy scales with the samples asked for
    twice = fitted.predict(
        _feats(params, macs), phase="train", batch_size=64, samples=100_000, hardware=HW
    )
    assert twice.energy_j / est.energy_j == pytest.approx(2.0, rel=0.2)


def test_given_other_hardware_when_predicted_then_refused_unless_forced(fitted):
    with pytest.raises(HardwareMismatchError, match="do not transfer across hardware"):
        fitted.predict(
            _feats(1e5, 1e7), phase="train", batch_size=16, samples=100, hardware="Another CPU x4"
        )
    forced = fitted.predict(
        _feats(1e5, 1e7),
        phase="train",
        batch_size=16,
        samples=100,
        hardware="Another CPU x4",
        force=True,
    )
    assert forced.energy_j > 0
    # by default the machine this runs on, which is not the table's
    with pytest.raises(HardwareMismatchError):
        fitted.predict(_feats(1e5, 1e7), phase="train", batch_size=16, samples=100)


def test_given_a_table_of_two_hardwares_when_fitted_then_one_at_a_time():
    both = pd.concat([_table(), _table(hardware="Other x2", seed=1)])
    with pytest.raises(EstimateError, match="2 hardware fingerprints"):
        Estimator.fit(both, verbose=False)
    est = Estimator.fit(both, hardware="Other x2", verbose=False)
    assert est.hardware == "Other x2" and est.cv["train"]["rows"] == 36


def test_given_a_phase_not_fitted_when_predicted_then_refused():
    est = Estimator.fit(_table().query("phase == 'train'"), verbose=False)
    with pytest.raises(EstimateError, match="do not transfer across phases"):
        est.predict(_feats(1e5, 1e7), phase="inference", batch_size=16, samples=10, hardware=HW)


@pytest.mark.parametrize("family", ["loglinear", "gbm"])
def test_given_a_saved_estimator_when_loaded_then_it_predicts_the_same(tmp_path, family):
    if family == "gbm":
        pytest.importorskip("sklearn")
    est = Estimator(family=family).fit(_table(), verbose=False)
    est.save(tmp_path / "est.json")
    back = Estimator.load(tmp_path / "est.json")
    for phase in ("train", "inference"):
        a = est.predict(_feats(2e5, 4e7), phase=phase, batch_size=32, samples=1000, hardware=HW)
        b = back.predict(_feats(2e5, 4e7), phase=phase, batch_size=32, samples=1000, hardware=HW)
        assert a == b
    assert back.cv == json.loads(json.dumps(est.cv))


def test_given_no_scikit_learn_when_fitted_auto_then_loglinear_only(monkeypatch):
    monkeypatch.setattr(_estimate, "_have_sklearn", lambda: False)
    est = Estimator.fit(_table(), verbose=False)
    assert all(
        cv["family"] == "loglinear" and all(c.startswith("loglinear@") for c in cv["candidates"])
        for cv in est.cv.values()
    )
    with pytest.raises(EstimateError, match="needs scikit-learn"):
        Estimator(family="gbm").fit(_table(), verbose=False)


def test_given_noise_when_fitted_then_the_interval_covers_held_out_models():
    # Fit on 12 models, check the 90 % interval on 30 other models of the same law
    est = Estimator(family="loglinear").fit(_table(noise=0.1), verbose=False)
    test = _table(n_models=30, noise=0.1, seed=7).query("phase == 'train'")
    inside = []
    for r in test.itertuples():
        p = est.predict(
            _feats(r.params, r.macs),
            phase="train",
            batch_size=int(r.batch_size),
            samples=int(r.samples),
            hardware=HW,
        )
        inside.append(p.low_j <= r.energy_j <= p.high_j)
    assert np.mean(inside) >= 0.75


@pytest.mark.parametrize(
    "table, match",
    [
        (lambda: _table().drop(columns=["macs"]), "lacks macs"),
        (lambda: _table(n_models=2), "needs at least 3"),
        (lambda: _table().assign(energy_per_sample_j=np.nan), "no row of the table"),
    ],
)
def test_given_a_bad_table_when_fitted_then_a_clear_error(table, match):
    with pytest.raises(EstimateError, match=match):
        Estimator.fit(table(), verbose=False)


def test_given_bad_prediction_arguments_then_clear_errors(fitted):
    with pytest.raises(EstimateError, match="batch_size=0"):
        fitted.predict(_feats(1e5, 1e7), phase="train", batch_size=0, samples=10, hardware=HW)
    with pytest.raises(EstimateError, match="lack macs"):
        fitted.predict({"params": 1e5}, phase="train", batch_size=8, samples=10, hardware=HW)
    with pytest.raises(EstimateError, match="needs train_macs"):
        fitted.predict(
            {"params": 1e5, "macs": 1e7}, phase="train", batch_size=8, samples=10, hardware=HW
        )
    with pytest.raises(EstimateError, match="family='forest'"):
        Estimator(family="forest")


def test_given_a_torch_model_when_predicted_then_features_are_counted():
    torch = pytest.importorskip("torch")
    est = Estimator(family="loglinear").fit(_table(), verbose=False)
    model = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 32 * 32, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 10),
    )
    f = greenml.features(model, (3, 32, 32))
    a = est.predict(model, phase="train", batch_size=32, samples=640, hardware=HW)
    b = est.predict(f, phase="train", batch_size=32, samples=640, hardware=HW)
    assert a.energy_j == pytest.approx(b.energy_j)


def test_cli_estimate_fits_saves_and_predicts(tmp_path, capsys):
    _table().to_csv(tmp_path / "results.csv", index=False)
    est_path = tmp_path / "est.json"
    assert (
        main(
            [
                "estimate",
                str(tmp_path / "results.csv"),
                "--family",
                "loglinear",
                "--save",
                str(est_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "leave-one-model-out" in out and est_path.exists()
    args = [
        "estimate",
        str(est_path),
        "--params",
        "300000",
        "--macs",
        "30000000",
        "--train-macs",
        "90000000",
        "--phase",
        "train",
        "--batch-size",
        "64",
        "--samples",
        "50000",
        "--hardware",
        HW,
    ]
    assert main(args + ["--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    e, _ = _law(3e5, 3e7, 64, "train")
    assert got["energy_j"] == pytest.approx(e * 50_000, rel=0.15)
    assert got["low_j"] < got["energy_j"] < got["high_j"]
    # another machine's estimator is refused with a message, exit code 2
    assert main(args[:-2] + ["--json"]) == 2
    assert "do not transfer across hardware" in capsys.readouterr().err


def test_given_architecture_features_in_the_table_when_fitted_then_predict_needs_them():
    t = _table()
    rng = np.random.default_rng(3)
    per_model = {
        m: (float(rng.integers(5, 200)), float(10 ** rng.uniform(3, 6)), float(rng.uniform(0, 0.3)))
        for m in t["model"].unique()
    }
    for i, a in enumerate(("layers", "activations", "grouped_mac_fraction")):
        t[a] = [per_model[m][i] for m in t["model"]]
    est = Estimator(family="loglinear").fit(t, verbose=False)
    assert {"layers", "activations", "grouped_mac_fraction"} <= set(est.cv["train"]["features"])
    with pytest.raises(EstimateError, match="arch_features"):
        est.predict(_feats(1e5, 1e7), phase="train", batch_size=16, samples=10, hardware=HW)
    ok = est.predict(
        {**_feats(1e5, 1e7), "layers": 20, "activations": 1e4, "grouped_mac_fraction": 0.1},
        phase="train",
        batch_size=16,
        samples=10,
        hardware=HW,
    )
    assert ok.energy_j > 0


def test_arch_features_of_a_depthwise_network():
    torch = pytest.importorskip("torch")
    from torch import nn

    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 2),
    )
    f = greenml.Estimator.arch_features(m, (3, 4, 4))
    assert f["layers"] == 4
    assert f["activations"] == 8 * 16 + 8 * 16 + 128 + 2
    full, depthwise = 8 * 16 * 3 * 9, 8 * 16 * 1 * 9
    assert f["grouped_mac_fraction"] == pytest.approx(depthwise / (full + depthwise))
    del torch
