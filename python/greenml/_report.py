"""Reports: tables and plots from records (the JSON Lines log) and traces. Never touches the
sampler: everything here works on plain records, so it is tested with hand-made ones."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Iterable, List, Optional

from ._errors import GreenmlError, LogError

_COLUMNS = [
    "type",
    "name",
    "count",
    "duration_s",
    "energy_j",
    "uncertainty_j",
    "mean_power_w",
    "j_per_step",
    "j_per_item",
    "co2e_g",
    "estimated",
]


def _f(x: Any) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def summary_rows(records: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per meter, phase, run or decorated function (calls aggregated by name)."""
    rows: List[Dict[str, Any]] = []
    calls: Dict[str, Dict[str, Any]] = {}
    for r in records:
        kind = r.get("type", "?")
        if kind == "call":
            c = calls.setdefault(
                r.get("name") or "?",
                {
                    "type": "function",
                    "name": r.get("name"),
                    "count": 0,
                    "duration_s": 0.0,
                    "energy_j": 0.0,
                    "uncertainty_j": 0.0,
                    "co2e_g": 0.0,
                    "estimated": set(),
                    "assumptions": "",
                },
            )
            c["count"] += 1
            c["duration_s"] += _f(r.get("duration_s")) or 0.0
            for key in ("energy_j", "uncertainty_j", "co2e_g"):
                v = _f(r.get(key))
                c[key] = c[key] + v if (v is not None and c[key] is not None) else None
            c["estimated"].update(d for d, m in (r.get("measured") or {}).items() if not m)
            c["assumptions"] = c["assumptions"] or _assumptions_text(r)
            continue
        steps = r.get("steps") or {}
        energy = _f(r.get("energy_j"))
        name = r.get("name") if kind != "phase" else f"{r.get('meter') or ''}/{r.get('name')}"
        if kind in ("meter", "phase") and r.get("rank") is not None:
            # One rank's own measurement in a distributed job (its host counted by each rank
            # on it): labelled, so it is not mistaken for the job's; the "job" row is the total.
            name = f"{name} [rank {r.get('rank')} on {r.get('host')}]"
        rows.append(
            {
                "type": kind,
                "name": name,
                "count": r.get("count", 1),
                "duration_s": _f(r.get("duration_s")),
                "energy_j": energy,
                "uncertainty_j": _f(r.get("uncertainty_j")),
                "mean_power_w": _f(r.get("mean_power_w")),
                "j_per_step": _f(steps.get("mean_j")) if steps.get("count") else None,
                "j_per_item": _f(r.get("energy_per_item_j")),
                "co2e_g": _f(r.get("co2e_g")),
                "estimated": ",".join(r.get("estimated_domains") or []),
                "assumptions": _assumptions_text(r),
            }
        )
    for c in calls.values():
        e, d = c["energy_j"], c["duration_s"]
        rows.append(
            {
                **c,
                "mean_power_w": e / d if (e is not None and d) else None,
                "j_per_step": None,
                "j_per_item": e / c["count"] if e is not None else None,
                "estimated": ",".join(sorted(c["estimated"])),
            }
        )
    return rows


def _assumptions_text(record: Dict[str, Any]) -> str:
    """The estimated domains' assumptions of a record, one ``domain: line`` each, joined."""
    return " | ".join(f"{d}: {a}" for d, a in (record.get("assumptions") or {}).items() if a)


def _assumption_notes(rows: List[Dict[str, Any]]) -> List[str]:
    """Distinct assumptions lines of the rows, in order, for notes under a table."""
    seen: List[str] = []
    for r in rows:
        for part in (r.get("assumptions") or "").split(" | "):
            if part and part not in seen:
                seen.append(part)
    return seen


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_rows(rows: List[Dict[str, Any]], fmt: str = "table") -> str:
    """Text table (default), csv, json or markdown."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        cols = [*_COLUMNS, "assumptions"]
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
        return buf.getvalue().rstrip("\n")
    cells = [[_cell(r.get(k)) for k in _COLUMNS] for r in rows]
    if fmt == "markdown":
        out = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        out += ["| " + " | ".join(v.replace("|", "\\|") for v in c) + " |" for c in cells]
        notes = _assumption_notes(rows)
        if notes:
            out += ["", "Estimated domains (uncertainty_j includes the model's error):"]
            out += [f"- {n}" for n in notes]
        return "\n".join(out)
    if fmt != "table":
        raise GreenmlError(f"unknown format {fmt!r}: use table, csv, json or markdown")
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(_COLUMNS)]
    out = ["  ".join(h.ljust(w) for h, w in zip(_COLUMNS, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    notes = _assumption_notes(rows)
    if notes:
        out += ["", "estimated domains (uncertainty_j includes the model's error):"]
        out += [f"  {n}" for n in notes]
    return "\n".join(out)


def load_trace(path: str) -> Any:
    import pandas as pd

    if not os.path.exists(path):
        raise LogError(f"trace file {path!r} does not exist; check the path")
    if path.lower().endswith(".parquet"):
        return pd.read_parquet(path)
    return pd.read_csv(path)


def plot_run(
    trace: Any,
    out_png: str,
    spans: Optional[Dict[str, List[List[float]]]] = None,
    title: str = "greenml",
    estimated: Iterable[str] = (),
) -> None:
    """Power per domain over time (phases shaded) above cumulative energy, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    est = set(estimated)
    fig, (ax_p, ax_e) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, dpi=100)
    t = trace["t_s"].to_numpy()
    cols = [c for c in trace.columns if c.endswith("_w")]
    for c in cols:
        dom = c[:-2]
        label = f"{dom} (estimated)" if dom in est else dom
        watts = trace[c].to_numpy(dtype=float)
        ax_p.plot(t, watts, label=label, linewidth=1.2)
        ok = np.isfinite(watts)
        energy = np.zeros_like(watts)
        if ok.sum() > 1:
            dt = np.diff(t, prepend=t[0])
            energy = np.cumsum(np.where(ok, watts, 0.0) * dt)
        ax_e.plot(t, energy, label=label, linewidth=1.2)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, intervals) in enumerate((spans or {}).items()):
        color = colors[(k + 3) % len(colors)]
        for j, (a, b) in enumerate(intervals):
            for ax in (ax_p, ax_e):
                ax.axvspan(
                    a, b, color=color, alpha=0.15, label=name if (j == 0 and ax is ax_p) else None
                )
    ax_p.set_ylabel("power (W)")
    ax_e.set_ylabel("cumulative energy (J)")
    ax_e.set_xlabel("time since start (s)")
    ax_p.set_title(title)
    for ax in (ax_p, ax_e):
        ax.grid(True, alpha=0.3)
    if cols or spans:
        ax_p.legend(loc="upper right", fontsize=8)
    if not cols:
        ax_p.text(0.5, 0.5, "no domain could be measured", ha="center", transform=ax_p.transAxes)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


def describe_result(d: Dict[str, Any], title: str = "greenml") -> str:
    """A human summary of one measurement record (``Measurement.to_dict()``)."""
    lines = [f"{title}: {_cell(_f(d.get('duration_s')))} s"]
    energy = _f(d.get("energy_j"))
    if energy is None:
        lines.append(
            "  energy: not measured - nothing can be measured or estimated here "
            "(run `greenml sensors` to see why)"
        )
    else:
        unc = _f(d.get("uncertainty_j"))
        kind = {
            "estimated": ", ESTIMATED",
            "mixed": ", mixes measured and estimated domains",
        }.get(d.get("total_kind") or "", "")
        lines.append(
            f"  energy: {energy:.4g} J (+/- {unc:.2g} J{kind})"
            if unc is not None
            else f"  energy: {energy:.4g} J{f' ({kind[2:]})' if kind else ''}"
        )
        lines.append(
            f"  mean power: {_cell(_f(d.get('mean_power_w')))} W"
            + (f", peak {d['peak_power_w']:.4g} W" if _f(d.get("peak_power_w")) else "")
        )
    measured = d.get("measured") or {}
    in_total = d.get("in_total") or {}
    unc_by = d.get("uncertainty_by_domain") or {}
    for dom, e in (d.get("by_domain") or {}).items():
        tag = "measured" if measured.get(dom, True) else "ESTIMATED"
        extra = "" if in_total.get(dom, True) else ", not in total"
        u = _f(unc_by.get(dom))
        pm = f" +/- {u:.2g} J" if u is not None else ""
        lines.append(f"    {dom:<14} {_cell(_f(e)):>10} J{pm}  ({tag}{extra})")
    if d.get("net_energy_j") is not None:
        lines.append(f"  above idle: {_cell(_f(d.get('net_energy_j')))} J")
    carbon = d.get("carbon") or {}
    if _f(d.get("co2e_g")) is not None:
        year = f" {carbon.get('year')}" if carbon.get("year") else ""
        lines.append(
            f"  carbon: {d['co2e_g']:.4g} gCO2e at {carbon.get('gco2e_per_kwh')} g/kWh "
            f"({carbon.get('region')}{year}; PUE {carbon.get('pue')})"
        )
    assumptions = d.get("assumptions") or {}
    for dom in d.get("estimated_domains") or []:
        why = assumptions.get(dom)
        lines.append(f"  {dom} is a model, not a counter: {why}" if why else f"  {dom}: a model")
    for dom, why in (d.get("unavailable") or {}).items():
        lines.append(f"  not measured: {dom}: {why[:160]}{'...' if len(why) > 160 else ''}")
    return "\n".join(lines)
