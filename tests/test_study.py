"""``greenml.study``: the sweep on fake RAPL hardware with known power, resuming, the
correlation code against known data, and guidelines that read their numbers from the data."""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pd = pytest.importorskip("pandas")
pytest.importorskip("scipy")

from greenml import ConfigError  # noqa: E402
from greenml import study  # noqa: E402
from greenml.study import COLUMNS  # noqa: E402
from greenml.study._stats import correlate, fisher_ci  # noqa: E402

from fakes.truth import RaplWriter, rapl_tree, warm_up  # noqa: E402

PKG_W, DRAM_W = 40.0, 6.0  # constant power (no sine): truth = power x duration
# results.parquet needs a Parquet engine (the study extra brings pyarrow; the test extra does not)
HAS_PARQUET = any(importlib.util.find_spec(m) for m in ("pyarrow", "fastparquet"))


@pytest.fixture
def rt(tmp_path, runtimes):
    root = rapl_tree(tmp_path / "hw")
    with RaplWriter(
        root, {"intel-rapl:0": (PKG_W, 0.0, 1.0), "intel-rapl:0:0": (DRAM_W, 0.0, 1.0)}
    ):
        r = runtimes(powercap_root=root, sources={"rapl"}, interval_ms=1.0)
        warm_up(r, seconds=0.02)
        yield r
        r.stop()


def _tiny(**kw):
    args = dict(
        models=["lenet", "mlp"],
        batch_sizes=[8, 16],
        steps=3,
        width=0.125,
        device="cpu",
        progress=False,
        parquet=HAS_PARQUET,
    )
    args.update(kw)
    return args


# ------------------------------------------------------------------------------ the sweep


def test_given_fake_rapl_when_a_tiny_study_runs_then_every_cell_has_every_field_and_true_energy(
    rt, tmp_path
):
    out = tmp_path / "study"
    df = study.run(**_tiny(out_dir=str(out), runtime=rt))

    # one row per model x batch size x phase
    assert len(df) == 2 * 2 * 2
    assert set(COLUMNS) <= set(df.columns)
    assert {"energy_j_package_0", "energy_j_dram_0"} <= set(df.columns)
    assert not df.isna().any().any(), df.columns[df.isna().any()].tolist()
    assert (df["samples"] == 3 * df["batch_size"]).all()
    assert (df["estimated_domains"] == "none").all()
    assert set(df["phase"]) == {"train", "inference"}
    # the fake machine draws PKG_W + DRAM_W watts: energy = power x duration within uncertainty
    truth = (PKG_W + DRAM_W) * df["duration_s"]
    assert (abs(df["energy_j"] - truth) <= df["uncertainty_j"] + 1e-3).all()
    assert np.allclose(df["energy_j"], df["energy_j_package_0"] + df["energy_j_dram_0"])
    assert np.allclose(df["energy_per_sample_j"], df["energy_j"] / df["samples"])
    assert np.allclose(df["mean_power_w"], df["energy_j"] / df["duration_s"])
    # train and inference rows of one cell carry the same accuracy, a fraction
    acc = df.pivot_table(index=["model", "batch_size"], columns="phase", values="accuracy")
    assert (acc["train"] == acc["inference"]).all()
    assert df["accuracy"].between(0, 1).all()
    # features come from greenml.features on the same model
    lenet = df[df["model"] == "lenet"].iloc[0]
    assert lenet["macs_per_param"] == pytest.approx(lenet["macs"] / lenet["params"])

    on_disk = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])
    assert list(on_disk.columns) == list(df.columns)
    assert len(on_disk) == len(df)
    if HAS_PARQUET:
        assert len(pd.read_parquet(out / "results.parquet")) == len(df)


def test_given_a_finished_study_when_run_again_then_no_cell_is_measured_twice(rt, tmp_path):
    built = []

    def counting_lenet():
        built.append(1)
        return greenml_zoo().create("lenet", width=0.125)

    args = _tiny(models={"lenet": counting_lenet}, out_dir=str(tmp_path), runtime=rt)
    first = study.run(**args)
    assert len(built) == 2  # one model per batch size (and repetition)

    again = study.run(**args)
    assert len(built) == 2, "a finished cell was measured again"
    pd.testing.assert_frame_equal(
        again.reset_index(drop=True), first.reset_index(drop=True), check_dtype=False
    )

    # a unit that finished only partly (its inference row lost) is measured again, alone
    partial = first[~((first["batch_size"] == 16) & (first["phase"] == "inference"))]
    partial.to_csv(tmp_path / "results.csv", index=False)
    third = study.run(**args)
    assert len(built) == 3
    assert len(third) == 4
    kept = third[third["batch_size"] == 8].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        kept, first[first["batch_size"] == 8].reset_index(drop=True), check_dtype=False
    )
    assert (
        third.loc[third["batch_size"] == 16, "t_start_unix"] > first["t_start_unix"].max()
    ).all()

    # a longer run is a different cell: nothing is skipped
    study.run(**dict(args, steps=4))
    assert len(built) == 5


def greenml_zoo():
    from greenml import zoo

    return zoo


def test_given_a_user_dataset_then_it_is_used_and_labelled(rt):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    df = study.run(**_tiny(models=["lenet"], batch_sizes=[8], data=data, runtime=rt))
    assert set(df["dataset"]) == {"user"}
    assert len(df) == 2


def test_given_bad_options_then_errors_name_them(rt):
    with pytest.raises(ConfigError, match="batch_sizes"):
        study.run(**_tiny(batch_sizes=[0], runtime=rt))
    with pytest.raises(ConfigError, match="phases"):
        study.run(**_tiny(phases=["eval"], runtime=rt))
    with pytest.raises(ConfigError, match="steps=N or samples=N"):
        study.run(**_tiny(samples=100, runtime=rt))
    with pytest.raises(ConfigError, match="unknown model 'resnet5'"):
        study.run(**_tiny(models=["resnet5"], runtime=rt))
    with pytest.raises(ConfigError, match="device"):
        study.run(**_tiny(device="tpu", runtime=rt))


# ------------------------------------------------------------------------- the statistics


def test_fisher_intervals_match_the_hand_computed_values():
    # r = 0.5, n = 28: z = atanh(0.5) = 0.5493, se = 1/5 = 0.2, z +/- 1.96 se = 0.1573, 0.9413
    # -> tanh: 0.156, 0.736
    lo, hi = fisher_ci(0.5, 28)
    assert (round(lo, 3), round(hi, 3)) == (0.156, 0.736)
    # Spearman's standard error is wider: sqrt(1 + 0.5^2/2) / 5 = 0.2121, z +/- 0.4158
    # = 0.1335, 0.9651 -> tanh: 0.133, 0.747
    lo_s, hi_s = fisher_ci(0.5, 28, spearman=True)
    assert (round(lo_s, 3), round(hi_s, 3)) == (0.133, 0.747)
    assert all(math.isnan(v) for v in fisher_ci(0.5, 3))


def test_correlations_on_known_data():
    # Anscombe's first data set: Pearson r = 0.816
    x = [10, 8, 13, 9, 11, 14, 6, 4, 12, 7, 5]
    y = [8.04, 6.95, 7.58, 8.81, 8.33, 9.96, 7.24, 4.26, 10.84, 4.82, 5.68]
    c = correlate(x, y)
    assert round(c.r, 3) == 0.816 and c.n == 11
    assert c.r_low < c.r < c.r_high
    # a monotone but curved relation: Spearman 1, Pearson below 1
    xs = np.arange(1, 21, dtype=float)
    c = correlate(xs, xs**4)
    assert c.rho == pytest.approx(1.0) and c.r < 0.95
    # ties and an exact reversal
    assert correlate([1, 2, 2, 3], [4, 3, 3, 1]).rho == pytest.approx(-1.0)
    # NaN pairs are dropped; a constant column has no correlation
    assert correlate([1, 2, np.nan, 4, 5], [2, 4, 6, np.nan, 10]).n == 3
    assert math.isnan(correlate([1, 1, 1, 1], [1, 2, 3, 4]).r)


# -------------------------------------------------------------------------- the guidelines


def _synthetic_results(seed: int = 0, coupled: bool = True) -> pd.DataFrame:
    """Hand-made results: 6 models x 3 batch sizes x 2 phases with known relations."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, (params, macs) in enumerate(
        [(1e5, 1e6), (5e5, 2e7), (1e6, 3e7), (2e6, 2e8), (5e6, 3e8), (1e7, 1.5e9)]
    ):
        for bs in (16, 64, 256):
            for phase, slow in (("train", 3.0), ("inference", 1.0)):
                samples = 20 * bs
                per_sample_s = slow * macs / 1e10 * (1 + 8 / bs) * rng.uniform(0.9, 1.1)
                duration = per_sample_s * samples
                energy = (50.0 * duration if coupled else rng.uniform(1, 1000)) + rng.normal(
                    0, 0.01
                )
                rows.append(
                    {
                        "model": f"m{i}",
                        "params": params,
                        "macs": macs,
                        "macs_per_param": macs / params,
                        "batch_size": bs,
                        "phase": phase,
                        "samples": samples,
                        "duration_s": duration,
                        "energy_j": energy,
                        "energy_per_sample_j": energy / samples,
                        "mean_power_w": energy / duration,
                        "accuracy": 0.5 + 0.05 * rng.standard_normal(),
                        "repetition": 0,
                        "device": "cpu",
                        "hardware": "test machine",
                        "estimated_domains": "none",
                    }
                )
    return pd.DataFrame(rows)


def test_the_guidelines_quote_the_numbers_of_the_data_they_were_given(tmp_path):
    df = _synthetic_results()
    a = study.analyze(df, out_dir=str(tmp_path))
    text = (tmp_path / "guidelines.md").read_text()
    assert text == a.guidelines

    r = np.corrcoef(df["duration_s"], df["energy_j"])[0, 1]
    assert f"r = {r:.3f}" in text and f"n = {len(df)})" in text
    assert "## 1. Energy is linear in time: agrees" in text

    # energy per sample vs MACs, per phase, from the cells
    train = df[df["phase"] == "train"]
    rho = train[["macs", "energy_per_sample_j"]].rank().corr().iloc[0, 1]
    assert f"train: Spearman rho = {rho:.2f}" in text and "n = 18)" in text

    # batch size 256 vs 16, energy per sample, median over model-phase pairs
    e = df.set_index(["model", "phase", "batch_size"])["energy_per_sample_j"]
    ratio = np.median(
        [e[m, p, 256] / e[m, p, 16] for m in df["model"].unique() for p in ("train", "inference")]
    )
    assert f"median {ratio:.2f}x" in text

    # training / inference time per sample
    t = df.set_index(["model", "batch_size", "phase"])["duration_s"]
    med = np.median(
        [
            t[m, b, "train"] / t[m, b, "inference"]
            for m in df["model"].unique()
            for b in (16, 64, 256)
        ]
    )
    assert f"median {med:.2f}" in text
    # inference ranks training across models (train ~ 3x inference here): the paper's "one does
    # not predict the other" is contradicted, so the claim only partly agrees
    per_model = df.pivot_table(index="model", columns="phase", values="energy_per_sample_j")
    rho6 = per_model[["inference", "train"]].rank().corr().iloc[0, 1]
    assert f"Spearman rho = {rho6:.2f}" in text and "n = 6)" in text
    assert "the ranking of one phase does predict the other's here" in text
    assert "one does not predict the other: partly agrees" in text
    assert "**Energy here is modelled" not in text  # every domain was measured
    for name in ("heatmap.png", "scatter.png", "batch_size.png", "pareto.png", "correlations.csv"):
        assert os.path.getsize(tmp_path / name) > 0


def test_the_guidelines_say_so_when_the_data_contradict_the_paper():
    df = _synthetic_results(coupled=False)  # energy drawn at random, whatever the duration
    df["estimated_domains"] = "cpu:estimated"
    text = study.analyze(df, plots=False).guidelines
    r = np.corrcoef(df["duration_s"], df["energy_j"])[0, 1]
    assert abs(r) < 0.5
    assert "## 1. Energy is linear in time: does not agree" in text
    assert f"r = {r:.3f}" in text
    assert "**Energy here is modelled, not measured**: cpu:estimated" in text


def test_a_study_too_small_to_judge_says_cannot_tell():
    df = _synthetic_results()
    df = df[df["model"].isin(["m0", "m1"]) & (df["batch_size"] == 16)]
    a = study.analyze(df, plots=False)
    by_id = {c["id"]: c for c in a.claims}
    assert by_id["macs"]["verdict"] == "cannot tell"
    assert "cannot be located with 1 batch size" in a.guidelines


def test_cli_options_merge_defaults_config_and_flags(tmp_path):
    from greenml.cli import build_parser
    from greenml.study._cli import options

    cfg = tmp_path / "study.toml"
    cfg.write_text('[study]\nmodels = ["lenet", "vgg11"]\nbatch_sizes = [8, 32]\nsamples = 256\n')
    args = build_parser().parse_args(["study", "--config", str(cfg), "--width", "0.5"])
    o = options(args)
    assert (o["models"], o["batch_sizes"], o["samples"], o["steps"], o["width"]) == (
        "lenet,vgg11",
        "8,32",
        256,
        None,
        0.5,
    )
    args = build_parser().parse_args(["study", "--config", str(cfg), "--steps", "5"])
    o = options(args)
    assert (o["steps"], o["samples"]) == (5, None)  # a flag replaces the file's length

    cfg.write_text("modles = ['lenet']\n")
    with pytest.raises(ConfigError, match="unknown key 'modles'"):
        options(build_parser().parse_args(["study", "--config", str(cfg)]))


def test_given_a_local_cifar10_folder_then_it_is_read_without_download(rt, tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 48), ("test_batch", 32)):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    df = study.run(
        **_tiny(models=["lenet"], batch_sizes=[8], cifar10_root=str(tmp_path), runtime=rt)
    )
    assert set(df["dataset"]) == {"cifar10"} and len(df) == 2
    with pytest.raises(ConfigError, match="no CIFAR-10 python batches"):
        study.run(**_tiny(cifar10_root=str(tmp_path / "nowhere"), runtime=rt))


def test_a_machine_with_nothing_to_measure_analyses_to_cannot_tell_without_errors(tmp_path):
    df = _synthetic_results()
    df[["energy_j", "energy_per_sample_j", "mean_power_w"]] = np.nan
    a = study.analyze(df, out_dir=str(tmp_path))
    by_id = {c["id"]: c["verdict"] for c in a.claims}
    for claim in ("energy_time", "macs", "macs_per_param", "accuracy", "batch_size"):
        assert by_id[claim] == "cannot tell", claim
    assert by_id["train_inference"] != "cannot tell"  # a time ratio needs no energy
    assert "These data support no recommendation yet" in a.guidelines
    assert (tmp_path / "scatter.png").stat().st_size > 0
