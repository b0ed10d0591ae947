#!/usr/bin/env python3
"""How good is a forecast of a training run's energy from its first 10 %? Real CPU training
runs, greenml's forecast against Carbontracker's first-epoch rule on the same runs.

How to run (from the repository root, package and torch installed; ~4 min of one CPU core)::

    python benchmarks/forecast_training.py --out benchmarks/results/forecast

Writes ``forecast_training.json`` and ``forecast_training.md`` to ``--out``.

Each run trains a small PyTorch model (an MLP or a small CNN, several widths and batch
sizes) for 10 epochs on generated data (no download), with ``m.step()`` after every optimiser
step and a validation pass at the end of every epoch (inside the epoch's last step, as a
training loop that evaluates per epoch has it). One thread (``torch.set_num_threads(1)``).

Energy: this machine has no RAPL and no GPU, so the meter uses greenml's ``cpu:estimated``
TDP model (``GREENML_CPU_TDP_W`` = ``--tdp-w`` watts x the machine's busy share from
/proc/stat, 100 Hz jiffies) and the constant ``dram:estimated``. Step
energies are therefore real measurements of this machine's load, noise from other processes on
the shared machine included; absolute joules depend on the assumed TDP, relative errors do not.

A second series per run, ``cpu``: this process's CPU time per step x TDP / CPUs, the training's
own cost, which other processes disturb far less (through caches and memory bandwidth only).

Per run and series, with the whole run's step energies as the truth:

* greenml: ``greenml.forecast`` of the first 10 % of the steps (the first epoch) for the whole
  run, 90 % prediction interval; the same profile a live ``m.forecast()`` at 10 % resolves;
* Carbontracker's rule: the first epoch's energy x the number of epochs.

Reported: per-run relative error of both, greenml's interval and whether it covers the truth;
overall median absolute error, and interval coverage; and, per run, how much the steps after
the first epoch cost against the first epoch's steps after its warm-up (what any forecast from
the first epoch has to assume stays the same).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
for _dir in (REPO / "tests", REPO / "benchmarks"):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

import greenml  # noqa: E402
from _machine import loadavg, run_header, uptime_line  # noqa: E402
from greenml._config import Settings  # noqa: E402
from greenml._forecast import carbontracker_rule, forecast_blocks  # noqa: E402

EPOCHS = 10

# (name, model kind, width, batch size, steps per epoch)
RUNS = [
    ("mlp-256-b64", "mlp", 256, 64, 100),
    ("mlp-512-b128", "mlp", 512, 128, 80),
    ("mlp-1024-b32", "mlp", 1024, 32, 100),
    ("cnn-16-b32", "cnn", 16, 32, 80),
    ("cnn-32-b16", "cnn", 32, 16, 80),
    ("cnn-8-b64", "cnn", 8, 64, 80),
    ("mlp-2048-b16", "mlp", 2048, 16, 100),
    ("cnn-24-b16", "cnn", 24, 16, 100),
]


def make_model(kind: str, width: int) -> Any:
    from torch import nn

    if kind == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * 16 * 16, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 10),
        )
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 8 * 8, 10),
    )


def train_run(rt: Any, kind: str, width: int, batch: int, steps_per_epoch: int) -> Dict[str, Any]:
    import torch

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    n = batch * steps_per_epoch
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    xv = torch.randn(4 * batch, 3, 16, 16, generator=g)
    model = make_model(kind, width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    cpu = np.empty(EPOCHS * steps_per_epoch + 1)
    j = 0
    cpu[0] = time.process_time()
    with greenml.meter("train", runtime=rt, sync_cuda=False) as m:
        for _epoch in range(EPOCHS):
            perm = torch.randperm(n, generator=g)
            for i in range(steps_per_epoch):
                idx = perm[i * batch : (i + 1) * batch]
                opt.zero_grad()
                loss_fn(model(x[idx]), y[idx]).backward()
                opt.step()
                if i == steps_per_epoch - 1:  # validation at the end of every epoch
                    with torch.no_grad():
                        model(xv).argmax(dim=1)
                m.step()
                j += 1
                cpu[j] = time.process_time()
    wall = time.perf_counter() - t0
    c, e, d = m.steps.ordered.blocks()
    assert np.all(c == 1), "runs this short keep every step"
    return {"energy_j": e, "duration_s": d, "wall_s": wall, "cpu_s": np.diff(cpu)}


def evaluate(
    e: np.ndarray, d: np.ndarray, steps_per_epoch: int, confidence: float, prefix: str = ""
) -> Dict[str, Any]:
    total = e.size
    k = total // EPOCHS  # 10 %: the first epoch
    truth = float(e.sum())
    f = forecast_blocks(
        np.ones(k, dtype=np.int64),
        e[:k],
        d[:k],
        total,
        confidence=confidence,
        period_hint=steps_per_epoch,  # what greenml.forecast(epochs=..., steps_per_epoch=...) does
    )
    ct = carbontracker_rule(e, steps_per_epoch, total)
    row = {
        "steps": total,
        "profiled_steps": k,
        "truth_j": truth,
        "greenml_j": f.energy_j,
        "greenml_low_j": f.low_j,
        "greenml_high_j": f.high_j,
        "greenml_error": (f.energy_j - truth) / truth,
        "greenml_covered": bool(f.low_j <= truth <= f.high_j),
        "greenml_half_width": f.relative_error,
        "greenml_stationary": f.stationary,
        "greenml_warmup_steps": f.warmup_steps,
        "greenml_period_steps": f.period_steps,
        "carbontracker_j": ct,
        "carbontracker_error": (ct - truth) / truth,
    }
    # How the rest of the run compares with the profile: steps after the first epoch against
    # the first epoch's steps after its warm-up (what the forecast extrapolates).
    w = min(f.warmup_steps, k - 1)
    row["later_vs_profile"] = float(e[k:].mean() / e[w:k].mean() - 1)
    if np.all(np.isfinite(d)):
        row["truth_duration_s"] = float(d.sum())
        row["greenml_duration_error"] = (f.duration_s - float(d.sum())) / float(d.sum())
    return {prefix + key: v for key, v in row.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/forecast")
    ap.add_argument("--tdp-w", type=float, default=100.0)
    ap.add_argument("--interval-ms", type=float, default=10.0)
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--runs", type=int, default=len(RUNS), help="the first N configurations")
    ap.add_argument("--repeats", type=int, default=2, help="runs of every configuration")
    ap.add_argument("--save-sequences", metavar="FILE.npz", help="keep every run's step series")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    header = run_header("forecast_training.py", argv)
    up_before = uptime_line()
    settings = Settings(
        sources=frozenset({"model"}),
        interval_ms=args.interval_ms,
        env={"GREENML_CPU_TDP_W": str(args.tdp_w)},
    )
    rt = greenml.Runtime(settings)
    rows: List[Dict[str, Any]] = []
    series: Dict[str, np.ndarray] = {}
    per_cpu_w = args.tdp_w / (os.cpu_count() or 1)
    try:
        for rep in range(args.repeats):
            for name, kind, width, batch, spe in RUNS[: args.runs]:
                load0 = loadavg()[0]
                r = train_run(rt, kind, width, batch, spe)
                row = {
                    "run": name,
                    "repeat": rep,
                    "steps_per_epoch": spe,
                    "epochs": EPOCHS,
                    "wall_s": r["wall_s"],
                    "load_before": load0,
                    "load_after": loadavg()[0],
                }
                row.update(evaluate(r["energy_j"], r["duration_s"], spe, args.confidence, "meter_"))
                cpu_j = r["cpu_s"] * per_cpu_w
                series[f"{name}#{rep}"] = np.stack([r["energy_j"], cpu_j, r["duration_s"]])
                row.update(evaluate(cpu_j, r["duration_s"], spe, args.confidence, "cpu_"))
                rows.append(row)
                print(
                    f"{name}#{rep}: meter: greenml {row['meter_greenml_error']:+.2%} "
                    f"(+/- {row['meter_greenml_half_width']:.1%}), carbontracker "
                    f"{row['meter_carbontracker_error']:+.2%}; cpu: greenml "
                    f"{row['cpu_greenml_error']:+.2%} (+/- {row['cpu_greenml_half_width']:.1%}), "
                    f"carbontracker {row['cpu_carbontracker_error']:+.2%}",
                    file=sys.stderr,
                )
    finally:
        rt.stop()
    if args.save_sequences:
        np.savez_compressed(args.save_sequences, **series)

    def summarise(p: str) -> Dict[str, float]:
        g = np.abs([r[p + "greenml_error"] for r in rows])
        c = np.abs([r[p + "carbontracker_error"] for r in rows])
        return {
            "runs": len(rows),
            "greenml_median_abs_error": float(np.median(g)),
            "greenml_p90_abs_error": float(np.percentile(g, 90)),
            "greenml_max_abs_error": float(np.max(g)),
            "greenml_coverage": float(np.mean([r[p + "greenml_covered"] for r in rows])),
            "greenml_median_half_width": float(
                np.median([r[p + "greenml_half_width"] for r in rows])
            ),
            "greenml_flagged_non_stationary": int(
                sum(not r[p + "greenml_stationary"] for r in rows)
            ),
            "carbontracker_median_abs_error": float(np.median(c)),
            "carbontracker_p90_abs_error": float(np.percentile(c, 90)),
            "carbontracker_max_abs_error": float(np.max(c)),
        }

    summary = {"meter": summarise("meter_"), "cpu": summarise("cpu_")}
    meta = {
        **header,
        "uptime_before": up_before,
        "uptime_after": uptime_line(),
        "energy_meter": f"greenml meter: cpu:estimated (TDP model, {args.tdp_w:g} W x "
        "machine-wide busy share from /proc/stat, every process on the machine) + "
        "dram:estimated (constant)",
        "energy_cpu": f"this process's CPU time per step x {per_cpu_w:g} W (TDP / CPUs)",
        "confidence": args.confidence,
        "epochs": EPOCHS,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "forecast_training.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=2) + "\n"
    )
    lines = [
        "# Forecast from the first 10 % of real training runs",
        "",
        f"Generated by `{meta['command']}` on {meta['date']}.",
        "",
        f"- `{meta['uname']}`, nproc {meta['nproc']}, Python {meta['python']}; "
        "a 2-vCPU AMD EPYC KVM guest shared with other work, no GPU, no RAPL",
        f"- `uptime` before: `{up_before}`; after: `{meta['uptime_after']}`",
        f"- {EPOCHS} epochs per run, validation pass at the end of every epoch; forecast from "
        f"the first epoch (10 % of the steps), {args.confidence:.0%} interval; Carbontracker's "
        "rule = first epoch x epochs",
        "- two step-energy sequences per run, each forecast and compared with its own total:",
        f"  - **meter**: {meta['energy_meter']}: what greenml measures on this machine; other "
        "people's work on the shared machine changes it mid-run, which no forecast from the "
        "first epoch can know",
        f"  - **cpu**: {meta['energy_cpu']}: the training's own cost, insensitive to other "
        "processes (relative errors do not depend on the wattage)",
        "",
        "| run | steps | load (1 min) | meter: greenml | +/- | covered | carbontracker | "
        "cpu: greenml | +/- | covered | carbontracker | warm-up steps (cpu) | "
        "later steps vs profile (cpu) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']}#{r['repeat']} | {r['meter_steps']} | "
            f"{r['load_before']:.1f}-{r['load_after']:.1f} | "
            f"{r['meter_greenml_error']:+.2%} | {r['meter_greenml_half_width']:.2%} | "
            f"{'yes' if r['meter_greenml_covered'] else 'no'} | "
            f"{r['meter_carbontracker_error']:+.2%} | "
            f"{r['cpu_greenml_error']:+.2%} | {r['cpu_greenml_half_width']:.2%} | "
            f"{'yes' if r['cpu_greenml_covered'] else 'no'} | "
            f"{r['cpu_carbontracker_error']:+.2%} | {r['cpu_greenml_warmup_steps']} | "
            f"{r['cpu_later_vs_profile']:+.1%} |"
        )
    lines.append("")
    for p, label in (
        ("cpu", "cpu (the training's own cost)"),
        ("meter", "meter (machine-wide, shared machine)"),
    ):
        sm = summary[p]
        lines += [
            f"**{label}**: greenml median |error| {sm['greenml_median_abs_error']:.2%} (p90 "
            f"{sm['greenml_p90_abs_error']:.2%}, max {sm['greenml_max_abs_error']:.2%}), "
            f"{args.confidence:.0%} interval covered the truth in {sm['greenml_coverage']:.0%} "
            f"of {sm['runs']} runs (median half-width {sm['greenml_median_half_width']:.2%}), "
            f"{sm['greenml_flagged_non_stationary']} flagged non-stationary; Carbontracker's "
            f"rule median |error| {sm['carbontracker_median_abs_error']:.2%} (p90 "
            f"{sm['carbontracker_p90_abs_error']:.2%}, max "
            f"{sm['carbontracker_max_abs_error']:.2%}), no interval.",
            "",
        ]
    (out / "forecast_training.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
