"""``greenml.study.analyze``: correlations, ratios, batch-size effects, Pareto front, plots and
``guidelines.md`` from a results table, every claim with its number and sample size.

Units of analysis: a *cell* is one (model, phase, batch size); repetitions are averaged first,
so correlations are over cells (``n`` = cells) and no cell counts twice.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional

import numpy as np

from .._errors import ConfigError
from . import COLUMNS
from ._stats import Correlation, correlate

FEATURES = ("duration_s", "params", "macs", "macs_per_param", "batch_size", "accuracy")
TARGETS = ("energy_j", "energy_per_sample_j")
SUBSETS = ("all", "train", "inference")

#: Next batch size counts as "no longer helping" when it saves less than this fraction.
PLATEAU_GAIN = 0.10

# The paper's findings (Mavromatis, Katsaros, Khan, 2024), as compared in guidelines.md.
PAPER = {
    "energy_time_r": 0.99,
    "macs_rho": 0.8,
    "macs_per_param_rho": 0.9,
    "train_inference_time_ratio": 3.0,
}


def load_results(results: Any) -> Any:
    """A results DataFrame from a DataFrame, ``results.csv``/``.parquet``, or their folder."""
    import pandas as pd

    if isinstance(results, pd.DataFrame):
        df = results.copy()
    elif isinstance(results, (str, os.PathLike)):
        path = os.fspath(results)
        if os.path.isdir(path):
            for name in ("results.parquet", "results.csv"):
                if os.path.exists(os.path.join(path, name)):
                    path = os.path.join(path, name)
                    break
        if not os.path.isfile(path):
            raise ConfigError(
                f"{results!r} holds no results.csv or results.parquet; run `greenml study` first"
            )
        if path.endswith(".parquet"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    else:
        raise ConfigError(
            f"results is a {type(results).__name__}; give a DataFrame or the path of results.csv"
        )
    need = [c for c in ("model", "phase", "batch_size", "duration_s", "energy_j") if c not in df]
    if need:
        raise ConfigError(
            f"the results table lacks {', '.join(need)}; it must have the columns of "
            f"greenml.study ({', '.join(COLUMNS[:12])}, ...)"
        )
    if df.empty:
        raise ConfigError("the results table is empty; run `greenml study` first")
    return df


def cell_means(df: Any) -> Any:
    """Rows averaged over repetitions per (model, phase, batch size); ``repetitions`` = count."""
    import pandas as pd

    numeric = [
        c
        for c in df.columns
        if c not in ("model", "phase", "batch_size", "repetition")
        and pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
    ]
    g = df.groupby(["model", "phase", "batch_size"], sort=True)
    out = g[numeric].mean()
    out["repetitions"] = g.size()
    return out.reset_index()


def correlation_table(cells: Any) -> Any:
    """Every target x feature x subset correlation over cells, as a DataFrame."""
    import pandas as pd

    rows: List[Dict[str, Any]] = []
    for subset in SUBSETS:
        part = cells if subset == "all" else cells[cells["phase"] == subset]
        if part.empty:
            continue
        for target in TARGETS:
            for feat in FEATURES:
                if feat not in part or target not in part:
                    continue
                c = correlate(part[feat], part[target], feat, target)
                rows.append({"subset": subset, **c.to_dict()})
    return pd.DataFrame(rows)


def correlation_of(corr: Any, subset: str, y: str, x: str) -> Optional[Correlation]:
    sel = corr[(corr["subset"] == subset) & (corr["y"] == y) & (corr["x"] == x)]
    if sel.empty:
        return None
    d = sel.iloc[0].to_dict()
    d.pop("subset")
    return Correlation(**d)


def phase_ratios(df: Any) -> Any:
    """Train / inference ratios per model, batch size and repetition (per-sample time, energy)."""
    import pandas as pd

    keys = ["model", "batch_size", "repetition"]
    tr = df[df["phase"] == "train"].set_index(keys)
    inf = df[df["phase"] == "inference"].set_index(keys)
    both = tr.index.intersection(inf.index)
    if len(both) == 0:
        return pd.DataFrame(columns=keys + ["time_ratio", "energy_ratio", "train_j", "inference_j"])
    tr, inf = tr.loc[both], inf.loc[both]
    out = pd.DataFrame(index=both)
    out["time_ratio"] = (tr["duration_s"] / tr["samples"]) / (inf["duration_s"] / inf["samples"])
    out["energy_ratio"] = tr["energy_per_sample_j"] / inf["energy_per_sample_j"]
    out["train_j"] = tr["energy_per_sample_j"]
    out["inference_j"] = inf["energy_per_sample_j"]
    return out.reset_index().sort_values(keys).reset_index(drop=True)


def batch_size_effect(cells: Any) -> Any:
    """Per model and phase: energy per sample at each batch size, relative to the smallest,
    and the plateau (the batch size from which a larger one saves < PLATEAU_GAIN)."""
    import pandas as pd

    rows = []
    for (model, phase), g in cells.groupby(["model", "phase"], sort=True):
        g = g.sort_values("batch_size")
        bs = g["batch_size"].to_numpy()
        e = g["energy_per_sample_j"].to_numpy(dtype=float)
        plateau: Optional[int] = None
        if len(bs) >= 3:
            for i in range(len(bs) - 1):
                if math.isfinite(e[i]) and e[i] > 0 and (e[i] - e[i + 1]) / e[i] < PLATEAU_GAIN:
                    plateau = int(bs[i])
                    break
        for b, v in zip(bs, e):
            rows.append(
                {
                    "model": model,
                    "phase": phase,
                    "batch_size": int(b),
                    "energy_per_sample_j": v,
                    "relative_to_smallest": v / e[0] if e[0] else math.nan,
                    "plateau_batch_size": plateau if plateau is not None else math.nan,
                }
            )
    return pd.DataFrame(rows)


def pareto_front(cells: Any) -> Any:
    """Train cells (model, batch size): training energy vs accuracy, with ``on_front`` marking
    those no other cell beats on both (less energy and at least the accuracy)."""
    part = cells[(cells["phase"] == "train")].copy() if "accuracy" in cells else cells.iloc[0:0]
    part = part[np.isfinite(part["accuracy"]) & np.isfinite(part["energy_j"])]
    part = part.sort_values(["energy_j", "accuracy"], ascending=[True, False])
    best = -math.inf
    front = []
    for acc in part["accuracy"]:
        front.append(bool(acc > best))
        best = max(best, acc)
    part["on_front"] = front
    return part[["model", "batch_size", "energy_j", "accuracy", "on_front"]].reset_index(drop=True)


class Analysis:
    """What :func:`analyze` found: tables (DataFrames), the claims, the guidelines text."""

    def __init__(self, **parts: Any) -> None:
        self.results = parts["results"]
        self.cells = parts["cells"]
        self.correlations = parts["correlations"]
        self.ratios = parts["ratios"]
        self.batch_size_effect = parts["batch_size_effect"]
        self.pareto = parts["pareto"]
        self.claims: List[Dict[str, Any]] = parts["claims"]
        self.guidelines: str = parts["guidelines"]
        self.files: List[str] = parts.get("files", [])

    def __repr__(self) -> str:
        return (
            f"Analysis({len(self.results)} rows, {len(self.cells)} cells, "
            f"{len(self.claims)} claims, files={self.files})"
        )


def analyze(results: Any, out_dir: Optional[str] = None, *, plots: bool = True) -> Analysis:
    """Analyses a study's results (a DataFrame, ``results.csv``/``.parquet`` or their folder).

    With ``out_dir``, writes ``correlations.csv``, ``phase_ratios.csv``,
    ``batch_size_effect.csv``, ``pareto.csv``, ``guidelines.md`` and (``plots``)
    ``heatmap.png``, ``scatter.png``, ``batch_size.png``, ``pareto.png``.
    """
    from ._guidelines import claims_from, render

    df = load_results(results)
    cells = cell_means(df)
    corr = correlation_table(cells)
    ratios = phase_ratios(df)
    bse = batch_size_effect(cells)
    pareto = pareto_front(cells)
    claims = claims_from(df, cells, corr, ratios, bse)
    text = render(df, cells, claims, pareto)
    a = Analysis(
        results=df,
        cells=cells,
        correlations=corr,
        ratios=ratios,
        batch_size_effect=bse,
        pareto=pareto,
        claims=claims,
        guidelines=text,
    )
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        written = []
        for name, table in (
            ("correlations.csv", corr),
            ("phase_ratios.csv", ratios),
            ("batch_size_effect.csv", bse),
            ("pareto.csv", pareto),
        ):
            path = os.path.join(out_dir, name)
            table.to_csv(path, index=False)
            written.append(path)
        path = os.path.join(out_dir, "guidelines.md")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
        if plots:
            from ._plots import plot_all

            written += plot_all(df, cells, corr, bse, pareto, out_dir)
        a.files = written
    return a
