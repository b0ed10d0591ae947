"""``guidelines.md``: the paper's findings checked against the data, each with its number, its
sample size and a plain verdict (agrees, partly, does not, cannot tell)."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np

from ._analyze import PAPER, PLATEAU_GAIN, correlation_of
from ._stats import Correlation

AGREES = "agrees"
PARTLY = "partly agrees"
DISAGREES = "does not agree"
UNSUPPORTED = "not supported by these data"
UNKNOWN = "cannot tell"


def _f(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _ci(lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no 95% CI (n < 4)"
    return f"95% CI {_f(lo)} to {_f(hi)}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "p n/a"
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}"


def _rho_text(c: Correlation) -> str:
    return f"rho = {_f(c.rho)} ({_ci(c.rho_low, c.rho_high)}, {_p(c.rho_p)}, n = {c.n})"


def _r_text(c: Correlation) -> str:
    return f"r = {_f(c.r, 3)} ({_ci(c.r_low, c.r_high)}, n = {c.n})"


def _rank_verdict(c: Optional[Correlation], paper: float) -> str:
    """Agrees if the CI excludes 0 and rho is within 0.1 of the paper's; partly if the CI
    excludes 0 but rho is lower; not supported if the CI holds both 0 and the paper's value
    (too uncertain); does not agree if the CI excludes the paper's value and holds 0; cannot
    tell without a CI (n < 4)."""
    if c is None or not math.isfinite(c.rho) or not math.isfinite(c.rho_low):
        return UNKNOWN
    if c.rho_low > 0 and c.rho >= paper - 0.1:
        return AGREES
    if c.rho_low > 0:
        return PARTLY
    if c.rho_high >= paper:
        return UNSUPPORTED
    return DISAGREES


def claims_from(df: Any, cells: Any, corr: Any, ratios: Any, bse: Any) -> List[Dict[str, Any]]:
    """The paper's six findings, each measured on this data."""
    claims: List[Dict[str, Any]] = []
    modelled = sorted(
        {
            d
            for v in df.get("estimated_domains", [])
            for d in str(v).split(",")
            if d and d != "none" and d != "nan"
        }
    )

    # 1. energy is linear in time
    c = correlation_of(corr, "all", "energy_j", "duration_s")
    if c is None or not math.isfinite(c.r):
        verdict, finding = UNKNOWN, "too few cells with energy and duration to correlate"
    else:
        verdict = AGREES if c.r >= 0.95 else PARTLY if c.r >= 0.8 else DISAGREES
        finding = f"energy vs duration over all cells: Pearson {_r_text(c)}"
    power = cells["mean_power_w"].to_numpy(dtype=float) if "mean_power_w" in cells else []
    power = power[np.isfinite(power)] if len(power) else power
    note = ""
    if len(power) >= 2 and np.mean(power) > 0:
        cv = float(np.std(power, ddof=1) / np.mean(power))
        note = (
            f"Mean power across cells: {_f(float(np.min(power)), 1)} to "
            f"{_f(float(np.max(power)), 1)} W (coefficient of variation {cv:.0%}, "
            f"n = {len(power)}), so a short profile's mean power times the planned duration "
            f"predicts a long run's energy to about +/-{cv:.0%} here."
        )
    if modelled:
        note += (
            f" Caution: {' and '.join(modelled)} {'are' if len(modelled) > 1 else 'is'} "
            "modelled, not measured (a power model times "
            "utilisation), so energy is close to proportional to time by construction; this "
            "agreement says little about real hardware."
        )
    claims.append(
        {
            "id": "energy_time",
            "title": "Energy is linear in time",
            "paper": f"Pearson r = {PAPER['energy_time_r']} between energy and time",
            "finding": finding,
            "value": c.r if c else math.nan,
            "n": c.n if c else 0,
            "verdict": verdict,
            "note": note.strip(),
        }
    )

    # 2./3. MACs and MACs per parameter vs energy per sample
    for key, feat, title in (
        ("macs", "macs", "MACs correlate with energy"),
        ("macs_per_param", "macs_per_param", "MACs per parameter correlate more strongly"),
    ):
        paper = PAPER[f"{key}_rho"]
        parts, verdicts, best = [], [], None
        for subset in ("train", "inference"):
            c = correlation_of(corr, subset, "energy_per_sample_j", feat)
            if c is None:
                continue
            parts.append(f"{subset}: Spearman {_rho_text(c)}")
            verdicts.append(_rank_verdict(c, paper))
            if best is None or (math.isfinite(c.rho) and c.rho > (best.rho or -2)):
                best = c
        if not verdicts:
            verdict = UNKNOWN
        elif all(v == AGREES for v in verdicts):
            verdict = AGREES
        elif all(v == UNKNOWN for v in verdicts):
            verdict = UNKNOWN
        elif any(v in (AGREES, PARTLY) for v in verdicts):
            verdict = PARTLY
        elif any(v == UNSUPPORTED for v in verdicts):
            verdict = UNSUPPORTED
        else:
            verdict = DISAGREES
        note = (
            "Energy per sample is used (cells differ in sample count when batch sizes differ); "
            "the paper trained every model on the same data, where total and per-sample energy "
            "rank alike."
        )
        if key == "macs_per_param":
            a = [
                correlation_of(corr, s, "energy_per_sample_j", "macs")
                for s in ("train", "inference")
            ]
            b = [
                correlation_of(corr, s, "energy_per_sample_j", "macs_per_param")
                for s in ("train", "inference")
            ]
            pairs = [
                (x.rho, y.rho)
                for x, y in zip(a, b)
                if x and y and math.isfinite(x.rho) and math.isfinite(y.rho)
            ]
            if pairs:
                stronger = sum(1 for x, y in pairs if y > x)
                note += (
                    f" MACs per parameter ranks energy better than MACs in {stronger} of "
                    f"{len(pairs)} phases here."
                )
        claims.append(
            {
                "id": key,
                "title": title,
                "paper": f"Spearman rho ~ {paper}",
                "finding": "; ".join(parts) if parts else "no cells",
                "value": best.rho if best else math.nan,
                "n": best.n if best else 0,
                "verdict": verdict,
                "note": note,
            }
        )

    # 4. accuracy vs total energy
    c = correlation_of(corr, "train", "energy_j", "accuracy")
    if c is None or not math.isfinite(c.rho) or not math.isfinite(c.rho_low):
        verdict = UNKNOWN
        finding = (
            f"too few training cells with accuracy (n = {c.n if c else 0})"
            if c is None or not math.isfinite(c.rho_low)
            else "no variation to correlate"
        )
    else:
        # the paper found no correlation: a significant one contradicts it
        verdict = DISAGREES if c.rho_p < 0.05 else AGREES
        finding = f"training energy vs accuracy: Spearman {_rho_text(c)}"
    claims.append(
        {
            "id": "accuracy",
            "title": "Accuracy does not correlate with total energy",
            "paper": "no significant correlation",
            "finding": finding,
            "value": c.rho if c else math.nan,
            "n": c.n if c else 0,
            "verdict": verdict,
            "note": (
                "Accuracy here is measured after this study's short training runs, not at "
                "convergence as in the paper; models that train longer (larger batches, same "
                "steps) both spend more energy and learn more, which pushes towards a positive "
                "correlation."
            ),
        }
    )

    # 5. batch size
    pairs = []
    plateaus = []
    for (model, phase), g in bse.groupby(["model", "phase"]):
        g = g.sort_values("batch_size")
        if len(g) >= 2:
            pairs.append(float(g["relative_to_smallest"].iloc[-1]))
            p = g["plateau_batch_size"].iloc[0]
            if math.isfinite(p):
                plateaus.append((model, phase, int(p)))
    arr = np.array(pairs, dtype=float)
    arr = arr[np.isfinite(arr)]
    if not pairs:
        verdict, finding, value = (
            UNKNOWN,
            "only one batch size: no batch-size effect to see",
            math.nan,
        )
    elif arr.size == 0:
        verdict, finding, value = UNKNOWN, "no energy per sample to compare", math.nan
    else:
        cheaper = int(np.sum(arr < 1.0))
        value = float(np.median(arr)) if arr.size else math.nan
        smallest = int(bse["batch_size"].min())
        largest = int(bse["batch_size"].max())
        finding = (
            f"energy per sample at batch size {largest} relative to {smallest}: median "
            f"{_f(value)}x (range {_f(float(np.min(arr)))} to {_f(float(np.max(arr)))}); "
            f"larger batches were cheaper per sample in {cheaper} of {arr.size} model-phase pairs"
        )
        verdict = (
            AGREES
            if cheaper >= 0.75 * arr.size
            else PARTLY
            if cheaper > arr.size / 2
            else DISAGREES
        )
    n_bs = int(bse["batch_size"].nunique()) if len(bse) else 0
    if n_bs < 3:
        plateau_note = (
            f"Where the benefit plateaus cannot be located with {n_bs} batch size(s); sweep "
            "at least 3 (e.g. 16,64,256)."
        )
    elif plateaus:
        shown = ", ".join(f"{m} {ph} at {b}" for m, ph, b in plateaus[:8])
        plateau_note = (
            f"The next larger batch saves < {PLATEAU_GAIN:.0%} per sample from: {shown} "
            f"({len(plateaus)} of {len(pairs)} model-phase pairs reach a plateau in the sweep)."
        )
    else:
        plateau_note = "No model-phase pair reached a plateau within the swept batch sizes."
    claims.append(
        {
            "id": "batch_size",
            "title": "Small batches cost more energy; the benefit of larger ones plateaus",
            "paper": "energy per sample falls with batch size, then levels off",
            "finding": finding,
            "value": value,
            "n": len(pairs),
            "verdict": verdict,
            "note": plateau_note,
        }
    )

    # 6. training vs inference
    times = ratios["time_ratio"].to_numpy(dtype=float) if ratios is not None else np.array([])
    if not np.isfinite(times).any():
        claims.append(
            {
                "id": "train_inference",
                "title": "Training takes about 3x the time of inference; one does not predict "
                "the other",
                "paper": "time ratio ~ 3:1",
                "finding": "no cell has both phases",
                "value": math.nan,
                "n": 0,
                "verdict": UNKNOWN,
                "note": "",
            }
        )
    else:
        tr = ratios["time_ratio"].to_numpy(dtype=float)
        tr = tr[np.isfinite(tr)]
        med = float(np.median(tr))
        q1, q3 = (float(v) for v in np.percentile(tr, [25, 75]))
        cv = float(np.std(tr, ddof=1) / np.mean(tr)) if tr.size > 1 else math.nan
        verdict = AGREES if 2.0 <= med <= 4.0 else PARTLY if 1.5 <= med <= 6.0 else DISAGREES
        c = None
        models = ratios.groupby("model")[["train_j", "inference_j"]].mean()
        if len(models) >= 3:
            from ._stats import correlate

            c = correlate(models["inference_j"], models["train_j"], "inference_j", "train_j")
        # "does not predict" is contradicted when inference ranks training tightly (CI > 0.5)
        predicts = c is not None and math.isfinite(c.rho_low) and c.rho_low > 0.5
        if math.isfinite(cv):
            spread = (
                f"the ratio varies between cells (coefficient of variation {cv:.0%}, "
                f"{_f(float(np.min(tr)), 1)} to {_f(float(np.max(tr)), 1)}), so one phase's "
                "time times a fixed ratio predicts the other's only roughly"
            )
        else:
            spread = "one pair only: nothing about predictability"
        if c is not None and math.isfinite(c.rho):
            spread += (
                f". Across models, inference energy per sample ranks training energy per sample "
                f"with Spearman {_rho_text(c)}"
            )
            spread += (
                ": the ranking of one phase does predict the other's here, against the paper's "
                "finding"
                if predicts
                else ": the ranking of one phase does not reliably predict the other's, as the "
                "paper found"
            )
        if predicts and verdict == AGREES:
            verdict = PARTLY
        claims.append(
            {
                "id": "train_inference",
                "title": "Training takes about 3x the time of inference; one does not predict "
                "the other",
                "paper": "time ratio ~ 3:1; inference does not predict training",
                "finding": (
                    f"training / inference time per sample: median {_f(med)} "
                    f"(interquartile {_f(q1)} to {_f(q3)}, n = {tr.size} model-batch-repetition "
                    f"pairs); {spread}"
                ),
                "value": med,
                "n": int(tr.size),
                "verdict": verdict,
                "note": (
                    "A training step is a forward pass, a backward pass (about twice the "
                    "forward's multiply-accumulates) and an optimizer update, hence ~3x."
                ),
            }
        )
    return claims


def render(df: Any, cells: Any, claims: List[Dict[str, Any]], pareto: Any) -> str:
    """The guidelines document (Markdown)."""
    models = sorted(df["model"].unique())
    hw = sorted(str(h) for h in df["hardware"].unique()) if "hardware" in df else []
    devices = sorted(str(d) for d in df["device"].unique()) if "device" in df else []
    modelled = sorted(
        {
            d
            for v in df.get("estimated_domains", [])
            for d in str(v).split(",")
            if d and d not in ("none", "nan")
        }
    )
    reps = int(df["repetition"].nunique()) if "repetition" in df else 1
    lines = [
        "# Energy guidelines from this study",
        "",
        f"Data: {len(df)} measurements of {len(models)} models ({', '.join(models)}), "
        f"{len(cells)} cells (model x phase x batch size, {reps} repetition(s) averaged), "
        f"batch sizes {', '.join(str(b) for b in sorted(df['batch_size'].unique()))}, "
        f"on {'; '.join(hw) or 'unknown hardware'} ({', '.join(devices) or 'unknown device'}).",
        "",
    ]
    if modelled:
        lines += [
            f"**Energy here is modelled, not measured**: {' and '.join(modelled)} "
            f"{'come' if len(modelled) > 1 else 'comes'} from a "
            "power model of CPU utilisation (see study.json for which), because this machine "
            "exposes no energy counter. Every energy figure below is an estimate; the model "
            "reads machine-wide busy time, so other processes' load counts too; and the "
            "energy-time relation is partly built into the model.",
            "",
        ]
    lines += [
        "Each finding of Mavromatis, Katsaros and Khan (2024), 'Computing Within Limits', is "
        "checked against these data. Verdicts: *agrees*, *partly agrees* (same direction, "
        "weaker), *not supported by these data* (the 95% CI holds both no effect and the "
        "paper's value), *does not agree*, *cannot tell* (too little data). n is the number of "
        "points behind each number.",
        "",
    ]
    for i, c in enumerate(claims, 1):
        lines += [
            f"## {i}. {c['title']}: {c['verdict']}",
            "",
            f"- Paper: {c['paper'].rstrip('.')}.",
            f"- Here: {c['finding'].rstrip('.')}.",
        ]
        if c.get("note"):
            lines.append(f"- {c['note']}")
        lines.append("")
    front = pareto[pareto["on_front"]] if len(pareto) else pareto
    if len(front):
        lines += [
            "## Accuracy vs training energy: the Pareto front",
            "",
            f"{len(front)} of {len(pareto)} training cells are on the front (no other cell "
            "reaches at least their accuracy for less energy):",
            "",
            "| model | batch size | training energy (J) | accuracy |",
            "|---|---|---|---|",
        ]
        for _, r in front.iterrows():
            lines.append(
                f"| {r['model']} | {int(r['batch_size'])} | {r['energy_j']:.4g} | "
                f"{r['accuracy']:.3f} |"
            )
        lines.append("")
    lines += [
        "## What to do with this",
        "",
    ]
    by_id = {c["id"]: c for c in claims}
    if by_id.get("energy_time", {}).get("verdict") == AGREES:
        lines.append(
            "- Profile a few steps and extrapolate: energy grew linearly with time here "
            f"(r = {_f(by_id['energy_time']['value'], 3)}, n = {by_id['energy_time']['n']})."
        )
    bs = by_id.get("batch_size")
    if bs and bs["verdict"] in (AGREES, PARTLY):
        lines.append(
            "- Use the largest batch that fits and trains well: energy per sample at the largest "
            f"batch was {_f(bs['value'])}x that at the smallest (median, n = {bs['n']})."
        )
    mpp = by_id.get("macs_per_param")
    if mpp and mpp["verdict"] in (AGREES, PARTLY):
        lines.append(
            "- Rank candidate models by MACs per parameter before measuring: it ranked energy "
            f"per sample with rho up to {_f(mpp['value'])} (n = {mpp['n']})."
        )
    if not lines[-1].startswith("- "):
        lines.append("- These data support no recommendation yet: measure more models or steps.")
    lines.append("")
    return "\n".join(lines)
