"""The study's figures (matplotlib's object API: no global backend state is touched)."""

from __future__ import annotations

import os
from typing import Any, List

import numpy as np

from ._stats import correlate, fit_line

HEAT_COLUMNS = (
    "energy_j",
    "energy_per_sample_j",
    "duration_s",
    "params",
    "macs",
    "macs_per_param",
    "batch_size",
    "accuracy",
)


def _positive(values: Any) -> bool:
    """Whether a log axis can show ``values`` (some are finite and > 0)."""
    v = np.asarray(values, dtype=float)
    return bool(np.any(np.isfinite(v) & (v > 0)))


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def heatmap(cells: Any, path: str) -> str:
    cols = [c for c in HEAT_COLUMNS if c in cells]
    k = len(cols)
    m = np.full((k, k), np.nan)
    for i, a in enumerate(cols):
        for j, b in enumerate(cols):
            m[i, j] = 1.0 if i == j else correlate(cells[a], cells[b], a, b).rho
    fig = _figure(1.0 + 0.9 * k, 0.8 + 0.8 * k)
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(k), cols, rotation=45, ha="right")
    ax.set_yticks(range(k), cols)
    for i in range(k):
        for j in range(k):
            txt = "" if not np.isfinite(m[i, j]) else f"{m[i, j]:.2f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="Spearman rho (over cells)")
    ax.set_title(f"Spearman correlations, n = {len(cells)} cells")
    fig.savefig(path, dpi=110)
    return path


def scatter(df: Any, cells: Any, path: str) -> str:
    panels = [
        ("duration_s", "energy_j", False, df, "per measurement"),
        ("macs", "energy_per_sample_j", True, cells, "per cell"),
        ("macs_per_param", "energy_per_sample_j", True, cells, "per cell"),
        ("params", "energy_per_sample_j", True, cells, "per cell"),
    ]
    fig = _figure(11, 8.5)
    axes = fig.subplots(2, 2).ravel()
    for ax, (x, y, log, data, unit) in zip(axes, panels):
        for phase, marker in (("train", "o"), ("inference", "s")):
            part = data[data["phase"] == phase]
            ax.scatter(part[x], part[y], marker=marker, s=22, alpha=0.8, label=phase)
        fit = fit_line(data[x], data[y], log=log)
        c = correlate(data[x], data[y], x, y)
        if fit is not None:
            xs = np.asarray(data[x], dtype=float)
            xs = xs[np.isfinite(xs) & ((xs > 0) if log else True)]
            grid = (
                np.logspace(np.log10(xs.min()), np.log10(xs.max()), 50)
                if log
                else np.linspace(xs.min(), xs.max(), 50)
            )
            a, b = fit
            ys = 10 ** (a * np.log10(grid) + b) if log else a * grid + b
            label = f"fit: y ~ x^{a:.2f}" if log else f"fit: {a:.3g} W x t {b:+.3g} J"
            ax.plot(grid, ys, "k--", lw=1, label=label)
        if log and _positive(data[x]) and _positive(data[y]):
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(f"r = {c.r:.2f}, rho = {c.rho:.2f}, n = {c.n} ({unit})", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Energy vs time and model features")
    fig.savefig(path, dpi=110)
    return path


def batch_plot(bse: Any, path: str) -> str:
    phases = [p for p in ("train", "inference") if p in set(bse["phase"])]
    fig = _figure(5.5 * max(1, len(phases)), 4.5)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(phases))))
    for ax, phase in zip(axes, phases):
        part = bse[bse["phase"] == phase]
        for i, (model, g) in enumerate(part.groupby("model")):
            g = g.sort_values("batch_size")
            style = ("-", "--", ":")[(i // 10) % 3]  # the colour cycle has 10 colours
            ax.plot(g["batch_size"], g["energy_per_sample_j"], style, marker="o", label=model)
        ax.set_xlim(part["batch_size"].min() / 1.2, part["batch_size"].max() * 1.2)
        ax.set_xscale("log", base=2)
        if _positive(part["energy_per_sample_j"]):
            ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("energy per sample (J)")
        ax.set_title(phase)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Batch-size effect on energy per sample")
    fig.savefig(path, dpi=110)
    return path


def pareto_plot(pareto: Any, path: str) -> str:
    fig = _figure(6.5, 4.8)
    ax = fig.add_subplot()
    off = pareto[~pareto["on_front"]]
    on = pareto[pareto["on_front"]]
    ax.scatter(off["energy_j"], off["accuracy"], c="0.6", s=22, label="dominated")
    ax.plot(on["energy_j"], on["accuracy"], "o-", c="C2", label="Pareto front")
    for _, r in on.iterrows():
        ax.annotate(
            f"{r['model']} ({int(r['batch_size'])})",
            (r["energy_j"], r["accuracy"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    if len(pareto) and (pareto["energy_j"] > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel("training energy of the cell (J)")
    ax.set_ylabel("accuracy after training")
    ax.set_title(f"Accuracy vs training energy, n = {len(pareto)} cells")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def plot_all(df: Any, cells: Any, corr: Any, bse: Any, pareto: Any, out_dir: str) -> List[str]:
    out = [
        heatmap(cells, os.path.join(out_dir, "heatmap.png")),
        scatter(df, cells, os.path.join(out_dir, "scatter.png")),
    ]
    if len(bse):
        out.append(batch_plot(bse, os.path.join(out_dir, "batch_size.png")))
    if len(pareto):
        out.append(pareto_plot(pareto, os.path.join(out_dir, "pareto.png")))
    return out
