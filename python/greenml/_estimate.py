"""Estimate the energy and duration of a model's training or inference from its features,
without running it, fitted on a study results table (``greenml.study.run``).

One estimator covers one hardware fingerprint and the phases it was fitted on: the paper
behind greenml found that such estimates do not transfer across hardware or across phases, so
predicting for another fingerprint is refused unless forced.

Targets are per sample: energy per sample (J) and duration per sample (s); a prediction for
``samples`` multiplies. Per phase, a model of log(target) on log features is fitted:

* ``loglinear`` (numpy only): ridge regression on log(params), log(macs), log(train_macs)
  (training), log(batch_size), log(samples) and the architecture features of
  :func:`arch_features` (layers, activations, grouped-convolution share), standardised; the
  ridge penalty is one of ``RIDGES``;
* ``gbm`` (with scikit-learn, ``pip install 'greenml[estimate]'``): gradient-boosted trees on
  the same features plus log(macs_per_param).

Features that do not vary independently in the table are left out (e.g. ``samples`` when every
cell ran the same number of steps). The candidate (family and penalty) is chosen by
leave-one-model-out cross-validation (every row of one model held out at a time) of the
per-sample energy, and that cross-validated error (MAPE and R^2) is reported every time an
estimator is fitted; as it also chose among the four candidates, it is slightly optimistic. Prediction intervals come from the held-out log residuals
(their empirical quantiles, as in split-conformal prediction), so they describe the error on a
model the fit has not seen.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._errors import GreenmlError

FAMILIES = ("auto", "loglinear", "gbm")
PHASES = ("train", "inference")
TARGETS = {"energy": "energy_per_sample_j", "duration": "duration_per_sample_s"}
#: Ridge penalties (per row, on standardised features) tried for the log-linear family.
RIDGES = (0.01, 0.1, 0.3)
#: Architecture features (see :func:`arch_features`); the fraction enters as is, not logged.
ARCH = ("layers", "activations", "grouped_mac_fraction")
_RAW = ("grouped_mac_fraction",)


class EstimateError(GreenmlError):
    """The estimator cannot be fitted or cannot predict what was asked."""


class HardwareMismatchError(EstimateError):
    """A prediction was asked for hardware the estimator was not fitted on."""


def this_hardware(device: str = "cpu") -> str:
    """This machine's fingerprint as the study writes it (CPU model x logical CPUs)."""
    from .study._run import hardware_fingerprint

    return str(hardware_fingerprint(device))


# ------------------------------------------------------------------------------ features


def arch_features(model: Any, input_shape: Sequence[int] = (3, 32, 32)) -> Dict[str, float]:
    """Architecture features of a torch model for one sample of ``input_shape``: ``layers``
    (leaf modules run in a forward pass), ``activations`` (elements they output: a proxy of
    the memory traffic, which on CPUs costs as much as arithmetic) and
    ``grouped_mac_fraction`` (share of convolution MACs in grouped or depthwise
    convolutions, which run far below peak). Together with params and MACs they tell apart
    architectures that MACs alone rank wrongly (depthwise networks, wide activations)."""
    import torch

    layers, acts, conv = [0], [0], [0.0, 0.0]  # conv: all MACs, grouped MACs

    def hook(mod: Any, _inp: Any, out: Any) -> None:
        layers[0] += 1
        if isinstance(out, torch.Tensor):
            acts[0] += out.numel()
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            macs = out.numel() * (mod.in_channels // mod.groups) * k
            conv[0] += macs
            if mod.groups > 1:
                conv[1] += macs

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.randn((1,) + tuple(int(n) for n in input_shape), device=device))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return {
        "layers": float(layers[0]),
        "activations": float(acts[0]),
        "grouped_mac_fraction": conv[1] / conv[0] if conv[0] else 0.0,
    }


def _candidate_features(rows: Mapping[str, np.ndarray], phase: str, family: str) -> List[str]:
    names = ["params", "macs"]
    if phase == "train" and "train_macs" in rows:
        names.append("train_macs")
    names += ["batch_size", "samples"]
    names += [a for a in ARCH if a in rows]
    if family == "gbm":
        names.append("macs_per_param")
    return names


def _col(rows: Mapping[str, np.ndarray], n: str) -> np.ndarray:
    x = np.asarray(rows[n], dtype=float)
    return x if n in _RAW else np.log(x)


def _log_features(rows: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    return np.column_stack([_col(rows, n) for n in names])


def _identifiable(rows: Mapping[str, np.ndarray], names: Sequence[str]) -> List[str]:
    """The features that vary in the table beyond what the ones kept before them explain
    (log-linearly, to 2 %): e.g. ``samples`` when every cell ran the same number of steps (then it is
    ``steps x batch_size`` and its effect cannot be told apart from the batch size's), or
    ``train_macs`` when it is a fixed multiple of ``macs``."""
    kept: List[str] = []
    for n in names:
        with np.errstate(divide="ignore", invalid="ignore"):
            x = _col(rows, n)
        if not np.all(np.isfinite(x)):
            continue
        # what of log(x) the kept features (and a constant) do not explain, in log units
        A = np.column_stack([np.ones(x.size)] + [_col(rows, k) for k in kept])
        resid = x - A @ np.linalg.lstsq(A, x, rcond=None)[0]
        if float(np.std(resid)) < 0.02:
            continue
        kept.append(n)
    return kept


def _columns(df: Any) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for a in ARCH:
        if a in df:
            out[a] = df[a].to_numpy(dtype=float)
    for c in ("params", "macs", "batch_size", "samples"):
        out[c] = df[c].to_numpy(dtype=float)
    out["macs_per_param"] = (
        df["macs_per_param"].to_numpy(dtype=float)
        if "macs_per_param" in df
        else out["macs"] / out["params"]
    )
    if "train_macs" in df:
        out["train_macs"] = df["train_macs"].to_numpy(dtype=float)
    return out


# ------------------------------------------------------------------------------ families


class _LogLinear:
    """Ridge regression on standardised features (numpy only)."""

    def __init__(self, ridge: float = 0.1) -> None:
        self.ridge = ridge

    def fit(self, X: np.ndarray, y: np.ndarray) -> "_LogLinear":
        self.mu = X.mean(axis=0)
        self.sd = X.std(axis=0)
        self.sd[self.sd == 0] = 1.0
        Z = (X - self.mu) / self.sd
        self.b0 = float(y.mean())
        A = Z.T @ Z + self.ridge * len(y) * np.eye(Z.shape[1])
        self.beta = np.linalg.solve(A, Z.T @ (y - self.b0))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.b0 + ((X - self.mu) / self.sd) @ self.beta

    def to_dict(self) -> Dict[str, Any]:
        return {
            "mu": self.mu.tolist(),
            "sd": self.sd.tolist(),
            "b0": self.b0,
            "beta": self.beta.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "_LogLinear":
        m = cls()
        m.mu, m.sd = np.array(d["mu"]), np.array(d["sd"])
        m.b0, m.beta = float(d["b0"]), np.array(d["beta"])
        return m


class _GBM:
    """scikit-learn gradient boosting, saved as its trees' arrays (JSON, no pickle)."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> "_GBM":
        from sklearn.ensemble import GradientBoostingRegressor

        g = GradientBoostingRegressor(
            n_estimators=200, max_depth=2, learning_rate=0.05, subsample=1.0, random_state=0
        )
        g.fit(X, y)
        self.init = float(g.init_.predict(X[:1])[0]) if hasattr(g.init_, "predict") else 0.0
        self.rate = float(g.learning_rate)
        self.trees = []
        for est in g.estimators_[:, 0]:
            t = est.tree_
            self.trees.append(
                {
                    "left": t.children_left.tolist(),
                    "right": t.children_right.tolist(),
                    "feature": t.feature.tolist(),
                    "threshold": t.threshold.tolist(),
                    "value": t.value[:, 0, 0].tolist(),
                }
            )
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = np.full(X.shape[0], self.init)
        for t in self.trees:
            left, right = t["left"], t["right"]
            feat, thr, val = t["feature"], t["threshold"], t["value"]
            for i in range(X.shape[0]):
                n = 0
                while left[n] != -1:
                    n = left[n] if X[i, feat[n]] <= thr[n] else right[n]
                out[i] += self.rate * val[n]
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {"init": self.init, "rate": self.rate, "trees": self.trees}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "_GBM":
        m = cls()
        m.init, m.rate, m.trees = float(d["init"]), float(d["rate"]), list(d["trees"])
        return m


def _have_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def _make(candidate: str) -> Any:
    """A model of a candidate: ``gbm`` or ``loglinear@<ridge>``."""
    if candidate == "gbm":
        return _GBM()
    return _LogLinear(float(candidate.split("@")[1]))


def _family(candidate: str) -> str:
    return candidate.split("@")[0]


# ------------------------------------------------------------------------------ results


@dataclass
class Estimate:
    """An estimate for ``samples`` samples of one phase: energy (J) and duration (s), each
    with a prediction interval at ``confidence``, and the estimator's cross-validated error."""

    energy_j: float
    low_j: float
    high_j: float
    duration_s: float
    duration_low_s: float
    duration_high_s: float
    energy_per_sample_j: float
    phase: str
    samples: int
    batch_size: int
    confidence: float
    family: str
    cv_mape: float
    hardware: str

    def to_dict(self) -> Dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def describe(self) -> str:
        pct = int(round(self.confidence * 100))
        return (
            f"estimate, {self.phase} of {self.samples} samples at batch size {self.batch_size}: "
            f"{self.energy_j:.4g} J ({pct}% interval {self.low_j:.4g} - {self.high_j:.4g} J), "
            f"{self.duration_s:.4g} s ({self.duration_low_s:.4g} - {self.duration_high_s:.4g} s)"
            f"\n  {self.family} model, leave-one-model-out MAPE {self.cv_mape:.1%} of energy per "
            f"sample, fitted on {self.hardware!r}"
        )

    def __str__(self) -> str:
        return self.describe()


@dataclass
class _PhaseFit:
    family: str
    energy: Any
    duration: Any
    smear_e: float  # mean of exp(residual): the log model's back-transform correction
    smear_d: float
    q_e: Tuple[float, float]  # held-out log-residual quantiles
    q_d: Tuple[float, float]
    cv: Dict[str, Any]
    features: List[str]  # log features, in the fitted order


def _metrics(y: np.ndarray, pred: np.ndarray) -> Dict[str, float]:
    """MAPE and R^2 of per-sample predictions, and R^2 of their logs."""
    ape = np.abs(pred - y) / np.abs(y)
    ss = float(((y - y.mean()) ** 2).sum())
    ly, lp = np.log(y), np.log(pred)
    ssl = float(((ly - ly.mean()) ** 2).sum())
    return {
        "mape": float(ape.mean()),
        "median_ape": float(np.median(ape)),
        "r2": 1 - float(((pred - y) ** 2).sum()) / ss if ss > 0 else math.nan,
        "r2_log": 1 - float(((lp - ly) ** 2).sum()) / ssl if ssl > 0 else math.nan,
    }


def _lomo(X: np.ndarray, y: np.ndarray, groups: np.ndarray, family: str) -> np.ndarray:
    """Held-out log predictions, every group (model) left out in turn."""
    pred = np.empty_like(y)
    for g in np.unique(groups):
        test = groups == g
        m = _make(family).fit(X[~test], y[~test])
        resid = y[~test] - m.predict(X[~test])
        pred[test] = m.predict(X[test]) + math.log(float(np.mean(np.exp(resid))))
    return pred


class _hybrid:
    """``Estimator.fit(results)`` makes and fits a new estimator; ``est.fit(results)`` fits
    that one (with its options)."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.__doc__ = f.__doc__

    def __get__(self, obj: Any, cls: Any) -> Any:
        import functools

        return functools.partial(self.f, obj if obj is not None else cls())


class Estimator:
    """Energy and duration of a model's training or inference from its features.

    ``Estimator.fit(results)`` (a study results table: DataFrame or path to results.csv or
    .parquet), ``est.predict(model_or_features, phase="train", batch_size=64,
    samples=50_000)``, ``est.save(path)`` / ``Estimator.load(path)``. ``family`` is ``auto``
    (chosen by cross-validation), ``loglinear`` or ``gbm`` (needs scikit-learn);
    ``confidence`` is the coverage of the prediction intervals.
    """

    def __init__(self, family: str = "auto", confidence: float = 0.9) -> None:
        if family not in FAMILIES:
            raise EstimateError(f"family={family!r}: choose one of {', '.join(FAMILIES)}")
        if not (0 < confidence < 1):
            raise EstimateError(f"confidence={confidence!r}: give a probability, e.g. 0.9")
        self.family = family
        self.confidence = confidence
        self.hardware: Optional[str] = None
        self.phases: Dict[str, _PhaseFit] = {}
        self.n_models = 0
        self.models: List[str] = []
        self.repeat_spread: Optional[float] = None

    # -- fitting ---------------------------------------------------------------------------

    @_hybrid
    def fit(
        self,
        results: Any,
        hardware: Optional[str] = None,
        verbose: bool = True,
        arch: bool = True,
        repeats: str = "median",
    ) -> "Estimator":
        """Fits on a study results table (one hardware fingerprint; give ``hardware=`` when
        the table holds several) and prints the leave-one-model-out error of each phase.

        With ``arch`` (default), the architecture features of :func:`arch_features` are used
        when the table has them or every model is a zoo model (rebuilt at its ``width``).
        ``repeats="median"`` (default) fits on the median of a cell's repetitions (energy and
        duration), which damps interference from other work on the machine; ``"all"`` fits
        every row."""
        if repeats not in ("median", "all"):
            raise EstimateError(f"repeats={repeats!r}: choose 'median' or 'all'")
        df = _load_results(results)
        df = _one_hardware(df, hardware)
        self.repeat_spread = _repeat_spread(df)
        if repeats == "median":
            df = _median_of_repeats(df)
        if arch:
            df = _with_arch(df)
        self.hardware = str(df["hardware"].iloc[0]) if "hardware" in df else "unknown"
        self.models = sorted(map(str, df["model"].unique()))
        self.n_models = len(self.models)
        if self.n_models < 3:
            raise EstimateError(
                f"the table holds {self.n_models} model(s); leave-one-model-out validation "
                "needs at least 3 (10 or more for a useful estimate): run a larger study"
            )
        self.phases = {}
        for phase in sorted(df["phase"].unique()):
            sub = df[df["phase"] == phase]
            self.phases[str(phase)] = self._fit_phase(sub, str(phase))
        if verbose:
            print(self.describe())
        return self

    def _fit_phase(self, df: Any, phase: str) -> _PhaseFit:
        rows = _columns(df)
        ye = np.log(df["energy_per_sample_j"].to_numpy(dtype=float))
        yd = np.log(df["duration_s"].to_numpy(dtype=float) / rows["samples"])
        groups = df["model"].astype(str).to_numpy()
        fams = ["loglinear", "gbm"] if self.family == "auto" else [self.family]
        if "gbm" in fams and not _have_sklearn():
            if self.family == "gbm":
                raise EstimateError(
                    "family='gbm' needs scikit-learn: `pip install 'greenml[estimate]'`, or use "
                    "family='loglinear'"
                )
            fams.remove("gbm")
        candidates = [
            c
            for f in fams
            for c in ([f"loglinear@{r:g}" for r in RIDGES] if f == "loglinear" else [f])
        ]
        scores = {}
        held: Dict[str, np.ndarray] = {}
        names: Dict[str, List[str]] = {}
        for fam in candidates:
            names[fam] = _identifiable(rows, _candidate_features(rows, phase, _family(fam)))
            X = _log_features(rows, names[fam])
            held[fam] = _lomo(X, ye, groups, fam)
            scores[fam] = _metrics(np.exp(ye), np.exp(held[fam]))
        fam = min(candidates, key=lambda f: scores[f]["mape"])
        X = _log_features(rows, names[fam])
        me = _make(fam).fit(X, ye)
        md = _make(fam).fit(X, yd)
        hd = _lomo(X, yd, groups, fam)
        alpha = (1 - self.confidence) / 2
        re, rd = ye - held[fam], yd - hd

        def q(r: np.ndarray) -> Tuple[float, float]:
            return float(np.quantile(r, alpha)), float(np.quantile(r, 1 - alpha))

        cv = {
            "family": _family(fam),
            "candidate": fam,
            "features": names[fam],
            "rows": int(len(ye)),
            "models": int(len(np.unique(groups))),
            "energy_per_sample": scores[fam],
            "duration_per_sample": _metrics(np.exp(yd), np.exp(hd)),
            "candidates": {f: scores[f] for f in candidates},
            "interval_coverage": float(np.mean((re >= q(re)[0]) & (re <= q(re)[1]))),
        }
        return _PhaseFit(
            family=_family(fam),
            energy=me,
            duration=md,
            smear_e=float(np.mean(np.exp(ye - me.predict(X)))),
            smear_d=float(np.mean(np.exp(yd - md.predict(X)))),
            q_e=q(re),
            q_d=q(rd),
            cv=cv,
            features=names[fam],
        )

    # -- results ---------------------------------------------------------------------------

    @property
    def cv(self) -> Dict[str, Dict[str, Any]]:
        """Per phase: leave-one-model-out error of the chosen family (and every candidate)."""
        return {p: f.cv for p, f in self.phases.items()}

    def describe(self) -> str:
        if not self.phases:
            return "Estimator (not fitted)"
        lines = [f"greenml Estimator on {self.hardware!r}, {self.n_models} models"]
        if self.repeat_spread is not None:
            lines.append(
                f"  repetitions of one cell differ by {self.repeat_spread:.1%} (median mean "
                "absolute deviation): no estimate can be closer than the measurements agree"
            )
        for p, f in self.phases.items():
            e, d = f.cv["energy_per_sample"], f.cv["duration_per_sample"]
            others = ", ".join(
                f"{k} {v['mape']:.1%}"
                for k, v in f.cv["candidates"].items()
                if k != f.cv["candidate"]
            )
            lines.append(
                f"  {p}: {f.cv['candidate']} (leave-one-model-out over {f.cv['models']} models, "
                f"{f.cv['rows']} rows): energy/sample MAPE {e['mape']:.1%} (median "
                f"{e['median_ape']:.1%}), R^2 {e['r2']:.3f} "
                f"(log {e['r2_log']:.3f}); duration/sample MAPE {d['mape']:.1%}; "
                f"log features: {', '.join(f.features)}"
                + (f"; also tried {others}" if others else "")
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<greenml.Estimator {self.hardware!r} phases={list(self.phases)}>"

    def predict(
        self,
        model_or_features: Any,
        *,
        phase: str = "train",
        batch_size: int,
        samples: int,
        input_shape: Sequence[int] = (3, 32, 32),
        hardware: Optional[str] = None,
        force: bool = False,
    ) -> Estimate:
        """Energy (J) and duration (s) of ``samples`` samples of ``phase`` at ``batch_size``.

        ``model_or_features``: a torch ``nn.Module`` (counted with :func:`greenml.features`
        for ``input_shape``), a zoo model name, or a dict with ``params`` and ``macs`` (and
        ``train_macs`` for training). ``hardware`` is the fingerprint to predict for (default:
        this machine's); another fingerprint than the fitted one raises
        :class:`HardwareMismatchError` unless ``force=True``.
        """
        if not self.phases:
            raise EstimateError("this estimator is not fitted: Estimator.fit(results) first")
        if phase not in self.phases:
            raise EstimateError(
                f"phase={phase!r}: this estimator was fitted on {', '.join(self.phases)}; "
                "estimates do not transfer across phases: fit on a study with that phase"
            )
        for name, v in (("batch_size", batch_size), ("samples", samples)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise EstimateError(f"{name}={v!r}: give a whole number >= 1")
        target_hw = hardware if hardware is not None else this_hardware()
        if target_hw != self.hardware and not force:
            raise HardwareMismatchError(
                f"this estimator was fitted on {self.hardware!r}, not {target_hw!r}: energy "
                "estimates do not transfer across hardware; run a study on this hardware and fit "
                "on it, or pass force=True to predict anyway (the error will be larger than "
                "the cross-validated one)"
            )
        feats = _features_of(model_or_features, input_shape, phase)
        f = self.phases[phase]
        rows = {
            "params": np.array([feats["params"]], dtype=float),
            "macs": np.array([feats["macs"]], dtype=float),
            "macs_per_param": np.array([feats["macs"] / feats["params"]], dtype=float),
            "batch_size": np.array([batch_size], dtype=float),
            "samples": np.array([samples], dtype=float),
        }
        if feats.get("train_macs") is not None:
            rows["train_macs"] = np.array([feats["train_macs"]], dtype=float)
        for a in ARCH:
            if feats.get(a) is not None:
                rows[a] = np.array([feats[a]], dtype=float)
        missing = [n for n in f.features if n not in rows]
        if missing:
            raise EstimateError(
                f"this estimator needs {', '.join(missing)}: give the model itself (or its zoo "
                "name), or a dict of greenml.features(model, input_shape) (train_macs for "
                "training) with greenml.Estimator.arch_features(model, input_shape)"
            )
        X = _log_features(rows, f.features)
        le = float(f.energy.predict(X)[0])
        ld = float(f.duration.predict(X)[0])
        per = math.exp(le) * f.smear_e
        per_d = math.exp(ld) * f.smear_d
        return Estimate(
            energy_j=per * samples,
            low_j=math.exp(le + f.q_e[0]) * samples,
            high_j=math.exp(le + f.q_e[1]) * samples,
            duration_s=per_d * samples,
            duration_low_s=math.exp(ld + f.q_d[0]) * samples,
            duration_high_s=math.exp(ld + f.q_d[1]) * samples,
            energy_per_sample_j=per,
            phase=phase,
            samples=int(samples),
            batch_size=int(batch_size),
            confidence=self.confidence,
            family=f.family,
            cv_mape=float(f.cv["energy_per_sample"]["mape"]),
            hardware=str(self.hardware),
        )

    # -- persistence -----------------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": "greenml-estimator/1",
            "hardware": self.hardware,
            "confidence": self.confidence,
            "family": self.family,
            "models": self.models,
            "repeat_spread": self.repeat_spread,
            "phases": {
                p: {
                    "family": f.family,
                    "energy": f.energy.to_dict(),
                    "duration": f.duration.to_dict(),
                    "smear_e": f.smear_e,
                    "smear_d": f.smear_d,
                    "q_e": list(f.q_e),
                    "q_d": list(f.q_d),
                    "cv": f.cv,
                    "features": f.features,
                }
                for p, f in self.phases.items()
            },
        }

    arch_features = staticmethod(arch_features)

    def save(self, path: "str | os.PathLike[str]") -> None:
        """Writes the fitted estimator as JSON."""
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=1)
            fh.write("\n")

    @classmethod
    def load(cls, path: "str | os.PathLike[str]") -> "Estimator":
        """Reads an estimator written by :meth:`save`."""
        try:
            with open(path, encoding="utf-8") as fh:
                d = json.load(fh)
        except (OSError, ValueError) as exc:
            raise EstimateError(f"cannot read the estimator {os.fspath(path)!r}: {exc}") from None
        if not isinstance(d, dict) or d.get("format") != "greenml-estimator/1":
            raise EstimateError(
                f"{os.fspath(path)!r} is not a greenml estimator (written by Estimator.save)"
            )
        est = cls(family=d["family"], confidence=d["confidence"])
        est.hardware = d["hardware"]
        est.models = list(d["models"])
        est.n_models = len(est.models)
        est.repeat_spread = d.get("repeat_spread")
        for p, f in d["phases"].items():
            kind = _GBM if f["family"] == "gbm" else _LogLinear
            est.phases[p] = _PhaseFit(
                family=f["family"],
                energy=kind.from_dict(f["energy"]),
                duration=kind.from_dict(f["duration"]),
                smear_e=f["smear_e"],
                smear_d=f["smear_d"],
                q_e=tuple(f["q_e"]),
                q_d=tuple(f["q_d"]),
                cv=f["cv"],
                features=list(f["features"]),
            )
        return est


def _features_of(obj: Any, input_shape: Sequence[int], phase: str) -> Dict[str, Any]:
    if isinstance(obj, Mapping):
        missing = [k for k in ("params", "macs") if obj.get(k) is None]
        if missing:
            raise EstimateError(
                f"the features lack {', '.join(missing)}: give greenml.features(model, "
                "input_shape) or a dict with params and macs (and train_macs for training)"
            )
        return dict(obj)
    if isinstance(obj, str):
        from . import zoo

        obj = zoo.create(obj)
    from ._features import features

    out = features(obj, input_shape, train=(phase == "train"))
    out.update(arch_features(obj, input_shape))
    return out


def _repeat_spread(df: Any) -> Optional[float]:
    """The measurement's own noise: the median, over cells with repetitions, of the mean
    absolute relative deviation of a repetition's energy per sample from its cell's median."""
    keys = [k for k in ("model", "width", "batch_size", "phase", "samples") if k in df.columns]
    g = df.groupby(keys)["energy_per_sample_j"]
    med = g.transform("median")
    counts = g.transform("size")
    dev = (df["energy_per_sample_j"] - med).abs() / med
    dev = dev[counts > 1]
    if dev.empty:
        return None
    cells = dev.groupby([df.loc[dev.index, k] for k in keys]).mean()
    return float(cells.median())


def _median_of_repeats(df: Any) -> Any:
    """One row per cell (model, width, batch size, phase, samples): the median energy per
    sample and duration of its repetitions."""
    keys = [k for k in ("model", "width", "batch_size", "phase", "samples") if k in df.columns]
    if len(df.groupby(keys)) == len(df):
        return df
    first = df.groupby(keys, sort=False, as_index=False).first()
    med = df.groupby(keys, sort=False, as_index=False)[
        ["energy_per_sample_j", "duration_s"]
    ].median()
    first["energy_per_sample_j"] = med["energy_per_sample_j"].to_numpy()
    first["duration_s"] = med["duration_s"].to_numpy()
    return first


def _with_arch(df: Any) -> Any:
    """The table with architecture features: its own, or those of its zoo models rebuilt at
    their width (CIFAR-shaped input, as the study runs them); unchanged when neither."""
    if all(a in df.columns for a in ARCH):
        return df
    try:
        from . import zoo

        known = set(zoo.names())
    except ImportError:  # pragma: no cover - torch missing
        return df
    if not set(map(str, df["model"].unique())) <= known:
        return df
    width = df["width"] if "width" in df.columns else 1.0
    keys = sorted(
        {(str(m), float(w)) for m, w in zip(df["model"], np.broadcast_to(width, len(df)))}
    )
    feats = {k: arch_features(zoo.create(k[0], width=k[1])) for k in keys}
    df = df.copy()
    ws = np.broadcast_to(width, len(df))
    for a in ARCH:
        df[a] = [feats[(str(m), float(w))][a] for m, w in zip(df["model"], ws)]
    return df


def _load_results(results: Any) -> Any:
    import pandas as pd

    if isinstance(results, (str, os.PathLike)):
        path = os.fspath(results)
        if os.path.isdir(path):
            path = os.path.join(path, "results.csv")
        if not os.path.exists(path):
            raise EstimateError(
                f"{path}: no such file; give a study's results.csv or .parquet (greenml study)"
            )
        df = pd.read_parquet(path) if path.lower().endswith(".parquet") else pd.read_csv(path)
    elif isinstance(results, pd.DataFrame):
        df = results
    else:
        raise EstimateError(
            f"cannot fit on a {type(results).__name__}: give a study results DataFrame or the "
            "path of results.csv"
        )
    need = [
        "model",
        "params",
        "macs",
        "batch_size",
        "phase",
        "samples",
        "duration_s",
        "energy_per_sample_j",
    ]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise EstimateError(
            f"the results table lacks {', '.join(missing)}: fit on the results.csv of "
            "`greenml study` (see greenml.study for its columns)"
        )
    ok = np.isfinite(df["energy_per_sample_j"].to_numpy(dtype=float))
    ok &= df["energy_per_sample_j"].to_numpy(dtype=float) > 0
    if not ok.any():
        raise EstimateError(
            "no row of the table has a measured energy: run the study where energy can be "
            "measured (see `greenml sensors`)"
        )
    return df[ok].reset_index(drop=True)


def _one_hardware(df: Any, hardware: Optional[str]) -> Any:
    if "hardware" not in df.columns:
        return df
    kinds = sorted(map(str, df["hardware"].unique()))
    if hardware is not None:
        if hardware not in kinds:
            raise EstimateError(
                f"hardware={hardware!r} is not in the table; it holds: {'; '.join(kinds)}"
            )
        return df[df["hardware"] == hardware].reset_index(drop=True)
    if len(kinds) > 1:
        raise EstimateError(
            f"the table holds {len(kinds)} hardware fingerprints ({'; '.join(kinds)}): "
            "estimates do not transfer across hardware; fit one at a time with hardware=..."
        )
    return df


__all__ = [
    "Estimate",
    "EstimateError",
    "Estimator",
    "HardwareMismatchError",
    "arch_features",
    "this_hardware",
]
