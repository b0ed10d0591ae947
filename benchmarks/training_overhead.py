#!/usr/bin/env python3
"""How much does greenml slow a training loop down? Interleaved A/B runs of a PyTorch CPU loop.

How to run (from the repository root, package and torch installed, a C compiler on PATH;
~3 min)::

    python benchmarks/training_overhead.py --out benchmarks/results

Writes ``training_overhead.json`` and ``training_overhead.md`` to ``--out``.

The workload: a small CNN (2 conv + 1 linear, ~25k parameters) trained with SGD on a fixed
synthetic CIFAR-sized data set (25 batches of 32 images = one epoch), ``torch.set_num_threads(1)``,
~11 ms per step, 10 epochs (~2.5-3 s) per run. Model and optimiser are re-initialised from the
same seed before every run, so every run does exactly the same arithmetic.

Conditions, each run the same loop:

* ``off``: no greenml at all (the plain loop);
* ``off (A/A)``: the same plain loop again, a control that shows the noise floor;
* ``100 Hz`` / ``1 kHz``: ``with greenml.meter(runtime=rt) as m`` around the whole run, a
  ``with m.phase(f"epoch-{i}")`` per epoch and ``m.step()`` after every optimiser step; the
  runtime samples a fake powercap tree (``package:0`` + ``dram:0``) every 10 ms / 1 ms. The
  sampler thread is started by the meter (in the timed region) and stopped after each run.

A C writer process (``tests/fakes/powercap_writer.c``) updates the fake RAPL counters every
1 ms during *all* runs, so it disturbs every condition alike. Conditions are interleaved in
rounds (the order rotated every round), after one discarded warm-up round. Slowdown of a
greenml condition in a round = its wall time / the geometric mean of the two plain runs of the
same round − 1 (the A/A control: ``off (A/A)`` / ``off`` − 1); reported: median with a bootstrap
95% confidence interval, min, max and IQR over rounds, plus the ratio of the medians. Resolving the energies
after the run (``m.energy_j``, ``m.phases``, ``m.steps``) happens after the loop and is timed
separately. Target: slowdown under 0.5 % at 100 Hz.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
for _dir in (REPO / "tests", REPO / "benchmarks"):  # fakes.*, _machine
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

import torch  # noqa: E402

import greenml  # noqa: E402
from _machine import cpu_jiffies, loadavg, run_header, uptime_line  # noqa: E402
from fakes.truth import RaplWriter, make_runtime, rapl_tree  # noqa: E402

ZONES = {"intel-rapl:0": (60.0, 40.0, 3.0), "intel-rapl:0:0": (12.0, 8.0, 17.0)}
CONDITIONS = ("off", "off_aa", "100Hz", "1kHz")
INTERVAL_MS = {"100Hz": 10.0, "1kHz": 1.0}
LABELS = {"off": "off", "off_aa": "off (A/A control)", "100Hz": "greenml 100 Hz",
          "1kHz": "greenml 1 kHz"}
TARGET_PCT = {"100Hz": 0.5}


# ------------------------------------------------------------------------------ machine


def machine_jiffies() -> Tuple[int, int]:
    """(busy, total) jiffies of the whole machine (all CPUs); busy counts steal as busy."""
    busy, total, steal = cpu_jiffies()
    return busy + steal, total


# ------------------------------------------------------------------------------ workload


class Workload:
    def __init__(self, batches: int, batch_size: int, epochs: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.data = [(torch.randn(batch_size, 3, 32, 32, generator=g),
                      torch.randint(0, 10, (batch_size,), generator=g)) for _ in range(batches)]
        self.epochs = epochs
        self.seed = seed
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def fresh(self) -> Tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(self.seed)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 10))
        return net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    @property
    def steps(self) -> int:
        return self.epochs * len(self.data)

    def plain(self, net: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
        loss_fn = self.loss_fn
        loss = None
        for _ in range(self.epochs):
            for x, y in self.data:
                opt.zero_grad()
                loss = loss_fn(net(x), y)
                loss.backward()
                opt.step()
        return float(loss.detach())

    def metered(self, net: torch.nn.Module, opt: torch.optim.Optimizer, rt: Any) -> Tuple[float, Any]:
        loss_fn = self.loss_fn
        loss = None
        with greenml.meter("train", runtime=rt) as m:
            for epoch in range(self.epochs):
                with m.phase(f"epoch-{epoch}"):
                    for x, y in self.data:
                        opt.zero_grad()
                        loss = loss_fn(net(x), y)
                        loss.backward()
                        opt.step()
                        m.step()
        return float(loss.detach()), m


# ------------------------------------------------------------------------------ running


def one_run(cond: str, wl: Workload, rts: Dict[str, Any]) -> Dict[str, Any]:
    net, opt = wl.fresh()
    rt = rts.get(cond)
    j0 = machine_jiffies()
    c0 = time.process_time()
    th0 = time.thread_time()
    t0 = time.perf_counter()
    if rt is None:
        loss = wl.plain(net, opt)
        m = None
    else:
        s0 = rt.sampler.stats()
        loss, m = wl.metered(net, opt, rt)
    wall = time.perf_counter() - t0
    thread_cpu = time.thread_time() - th0
    cpu = time.process_time() - c0
    j1 = machine_jiffies()
    busy = (j1[0] - j0[0]) / max(1, j1[1] - j0[1])  # share of all CPUs busy
    ncpu = os.cpu_count() or 1
    rec: Dict[str, Any] = {
        "condition": cond,
        "wall_s": wall,
        "process_cpu_s": cpu,
        "main_thread_cpu_s": thread_cpu,
        "loss": loss,
        "machine_busy_pct": 100.0 * busy,
        # Busy time of the machine not explained by this process, in % of all CPUs.
        "other_load_pct": max(0.0, 100.0 * busy - 100.0 * cpu / wall / ncpu),
    }
    if m is not None:
        s1 = rt.sampler.stats()
        rt.stop()  # the next run of this condition starts the sampler again, in its meter
        r0 = time.perf_counter()
        energy = m.energy_j
        phases = m.phases
        steps = m.steps.to_dict()
        rec.update({
            "resolve_s": time.perf_counter() - r0,
            "energy_j": energy,
            "phases": len(phases),
            "steps": steps["count"],
            "sampler_samples": s1["samples"] - s0["samples"],
            "sampler_missed": s1["missed_deadlines"] - s0["missed_deadlines"],
            "sampler_thread_cpu_s": (s1["thread_cpu_ns"] - s0["thread_cpu_ns"]) / 1e9,
        })
    return rec


def describe(x: Sequence[float]) -> Dict[str, float]:
    a = np.asarray(x, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "min": float(a.min()),
        "max": float(a.max()),
        "q1": float(np.percentile(a, 25)),
        "q3": float(np.percentile(a, 75)),
        "mean": float(a.mean()),
    }


def median_ci(x: Sequence[float], level: float = 0.95, n_boot: int = 10_000,
              seed: int = 0) -> Tuple[float, float]:
    """Bootstrap confidence interval of the median."""
    a = np.asarray(x, dtype=np.float64)
    if a.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    meds = np.median(a[rng.integers(0, a.size, (n_boot, a.size))], axis=1)
    lo, hi = np.percentile(meds, [50 * (1 - level), 100 - 50 * (1 - level)])
    return float(lo), float(hi)


def summarise(runs: List[Dict[str, Any]], rounds: int) -> Dict[str, Any]:
    """Paired slowdowns. The A/A control compares ``off_aa`` with ``off`` of the same round;
    a greenml condition is compared with the geometric mean of both plain runs of its round
    (two baselines halve the baseline's variance)."""
    by: Dict[str, List[Dict[str, Any]]] = {c: [] for c in CONDITIONS}
    for r in runs:
        if r["round"] >= 0:
            by[r["condition"]].append(r)
    out: Dict[str, Any] = {}
    off = {r["round"]: r for r in by["off"]}
    aa = {r["round"]: r for r in by["off_aa"]}

    def baseline(cond: str, rnd: int, key: str) -> Optional[float]:
        if cond == "off_aa":
            return off[rnd][key] if rnd in off else None
        if rnd in off and rnd in aa:
            return math.sqrt(off[rnd][key] * aa[rnd][key])
        return None

    off_med = float(np.median([r["wall_s"] for r in by["off"] + by["off_aa"]]))
    for cond in CONDITIONS:
        rs = by[cond]
        walls = [r["wall_s"] for r in rs]
        cell: Dict[str, Any] = {"n": len(rs), "wall_s": describe(walls)}
        cell["process_cpu_s"] = describe([r["process_cpu_s"] for r in rs])
        cell["other_load_pct"] = describe([r["other_load_pct"] for r in rs])
        if cond != "off":
            def paired(key: str) -> List[float]:
                vals = []
                for r in rs:
                    b = baseline(cond, r["round"], key)
                    if b:
                        vals.append(100.0 * (r[key] / b - 1.0))
                return vals

            slow = paired("wall_s")
            cell["slowdown_pct"] = describe(slow)
            cell["slowdown_pct"]["per_round"] = slow
            cell["slowdown_pct"]["median_ci95"] = median_ci(slow)
            cell["cpu_increase_pct"] = describe(paired("process_cpu_s"))
            main = paired("main_thread_cpu_s")
            cell["main_thread_cpu_increase_pct"] = describe(main)
            cell["main_thread_cpu_increase_pct"]["per_round"] = main
            cell["ratio_of_medians_pct"] = 100.0 * (float(np.median(walls)) / off_med - 1.0)
        if cond in INTERVAL_MS:
            cell["resolve_s"] = describe([r["resolve_s"] for r in rs])
            cell["sampler_thread_cpu_pct_of_wall"] = describe(
                [100.0 * r["sampler_thread_cpu_s"] / r["wall_s"] for r in rs])
            cell["sampler_missed"] = int(sum(r["sampler_missed"] for r in rs))
            cell["sampler_samples"] = int(sum(r["sampler_samples"] for r in rs))
            cell["steps_per_run"] = rs[0]["steps"] if rs else 0
            cell["phases_per_run"] = rs[0]["phases"] if rs else 0
        out[cond] = cell
    return out


def target_status(s: Dict[str, Any], limit: float) -> str:
    """met / MISSED when the median's 95% CI lies wholly below / above the limit."""
    lo, hi = s["median_ci95"]
    if hi < limit:
        return "met"
    if lo >= limit:
        return "MISSED"
    return "NOT RESOLVED"


def verdicts(summary: Dict[str, Any]) -> List[str]:
    out = []
    aa = summary["off_aa"]["slowdown_pct"]
    noise = max(abs(aa["min"]), abs(aa["max"]))
    out.append(f"A/A control (off vs off): median {aa['median']:+.2f}% (95% CI "
               f"{aa['median_ci95'][0]:+.2f}%..{aa['median_ci95'][1]:+.2f}%), range "
               f"{aa['min']:+.2f}%..{aa['max']:+.2f}%: one paired comparison is noisy to about "
               f"±{noise:.2f}%")
    for cond, limit in TARGET_PCT.items():
        s = summary[cond]["slowdown_pct"]
        ok = s["median"] < limit
        lo, hi = s["median_ci95"]
        status = target_status(s, limit)
        line = (f"{LABELS[cond]}: median slowdown {s['median']:+.2f}% (95% CI of the median "
                f"{lo:+.2f}%..{hi:+.2f}%; IQR {s['q1']:+.2f}%..{s['q3']:+.2f}%, range "
                f"{s['min']:+.2f}%..{s['max']:+.2f}%) vs target < {limit:g}%: {status}")
        if status == "NOT RESOLVED":
            line += (f" (the median is {'below' if ok else 'above'} the target, but the "
                     f"confidence interval spans it: this box's noise cannot decide)")
        elif not ok:
            line += f" by {s['median'] - limit:.2f} percentage points"
        out.append(line)
    for cond in INTERVAL_MS:
        t = summary[cond]["main_thread_cpu_increase_pct"]
        a = summary["off_aa"]["main_thread_cpu_increase_pct"]
        out.append(f"{LABELS[cond]}: training-thread CPU time {t['median']:+.2f}% (range "
                   f"{t['min']:+.2f}%..{t['max']:+.2f}%; A/A control {a['median']:+.2f}%, range "
                   f"{a['min']:+.2f}%..{a['max']:+.2f}%)")
    for cond in INTERVAL_MS:
        b = summary[cond]["bottom_up"]
        out.append(f"{LABELS[cond]} bottom-up (measured parts): API calls in the training thread "
                   f"{b['api_ms_per_run']:.3f} ms per run = {b['api_pct_of_run']:.4f}% (step "
                   f"{b['step_us']:.2f} µs, phase {b['phase_us']:.2f} µs, meter {b['meter_us']:.2f} "
                   f"µs); sampler thread "
                   f"{summary[cond]['sampler_thread_cpu_pct_of_wall']['median']:.2f}% of a core, "
                   "which slows training only when it has to share the training thread's core")
    s = summary["1kHz"]["slowdown_pct"]
    out.append(f"{LABELS['1kHz']} (no target): median slowdown {s['median']:+.2f}% (range "
               f"{s['min']:+.2f}%..{s['max']:+.2f}%)")
    return out


def fmt_desc(d: Dict[str, float], unit: str = "%", nd: int = 2) -> str:
    return f"{d['median']:+.{nd}f}{unit}"


def write_markdown(path: Path, res: Dict[str, Any]) -> None:
    meta, s = res["meta"], res["summary"]
    L = [
        "# Training-loop overhead",
        "",
        f"Generated by `{meta['command']}` on {meta['date']}; {meta['elapsed_s']:.0f} s.",
        "",
        f"- `{meta['uname']}`, nproc {meta['nproc']}, Python {meta['python']}, torch "
        f"{meta['torch']} ({meta['torch_threads']} thread), greenml {meta['greenml']}",
        f"- `uptime` before: `{meta['uptime_before']}`",
        f"- `uptime` after: `{meta['uptime_after']}`",
        f"- workload: small CNN, {meta['steps_per_run']} steps per run ({meta['epochs']} epochs "
        f"× {meta['batches']} batches of {meta['batch_size']}), ~{meta['step_ms']:.1f} ms per step; "
        f"{meta['rounds']} measured rounds after 1 warm-up round, conditions interleaved with the "
        "order rotated every round",
        f"- fake RAPL tree (package:0 + dram:0), C writer updating every 1 ms during every run "
        f"(writer: {res['writer'].get('updates')} updates, max lateness "
        f"{res['writer'].get('max_late_ns', 0) / 1e6:.2f} ms, real-time "
        f"{bool(res['writer'].get('realtime'))})",
        "",
        "Slowdown = wall time / baseline of the same round − 1, where the baseline is the "
        "geometric mean of both plain runs (`off`, `off (A/A)`) of that round; the A/A control "
        "compares `off (A/A)` with `off` alone. *95% CI* = bootstrap interval of the median. "
        "*ratio of medians* = median wall / median of all plain runs − 1. *CPU increase* is the "
        "same for process CPU time (all threads, so it includes the sampler thread); *main-thread "
        "CPU increase* is the training thread's own CPU time (`time.thread_time`), which excludes "
        "time spent waiting for a core (when it is as noisy as the wall time, the noise is the "
        "CPU's own speed varying, not competition for a core). *other load* = machine busy time not from this process, in % of all CPUs (noise indicator).",
        "",
        "| condition | n | wall s (median, min–max) | slowdown median (95% CI) | IQR | min–max "
        "| ratio of medians | main-thread CPU increase median (min–max) | process CPU increase "
        "median | other load median | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cond in CONDITIONS:
        c = s[cond]
        w = c["wall_s"]
        row = f"| {LABELS[cond]} | {c['n']} | {w['median']:.3f} ({w['min']:.3f}–{w['max']:.3f}) "
        if "slowdown_pct" in c:
            sd = c["slowdown_pct"]
            row += (f"| {sd['median']:+.2f}% ({sd['median_ci95'][0]:+.2f}%..{sd['median_ci95'][1]:+.2f}%) "
                    f"| {sd['q1']:+.2f}%..{sd['q3']:+.2f}% "
                    f"| {sd['min']:+.2f}%..{sd['max']:+.2f}% | {c['ratio_of_medians_pct']:+.2f}% "
                    f"| {c['main_thread_cpu_increase_pct']['median']:+.2f}% "
                    f"({c['main_thread_cpu_increase_pct']['min']:+.2f}%..."
                    f"{c['main_thread_cpu_increase_pct']['max']:+.2f}%) "
                    f"| {c['cpu_increase_pct']['median']:+.2f}% ")
        else:
            row += "| - | - | - | - | - | - "
        row += f"| {c['other_load_pct']['median']:.1f}% "
        if cond in TARGET_PCT:
            row += f"| < {TARGET_PCT[cond]:g}%: {target_status(c['slowdown_pct'], TARGET_PCT[cond])} |"
        else:
            row += "| - |"
        L.append(row)
    L += ["", "greenml runs:", ""]
    for cond in INTERVAL_MS:
        c = s[cond]
        L.append(f"- {LABELS[cond]}: {c['steps_per_run']} steps and {c['phases_per_run']} phases "
                 f"per run; sampler thread CPU {c['sampler_thread_cpu_pct_of_wall']['median']:.2f}% "
                 f"of the run's wall time (median); {c['sampler_samples']} samples, "
                 f"{c['sampler_missed']} missed deadlines in all runs; resolving energy, phases "
                 f"and steps after the run took {1e3 * c['resolve_s']['median']:.1f} ms (median, "
                 "not in the slowdown)")
    L += ["", "Per-round slowdowns (%):", ""]
    for cond in CONDITIONS[1:]:
        L.append(f"- {LABELS[cond]}: " + ", ".join(
            f"{x:+.2f}" for x in s[cond]["slowdown_pct"]["per_round"]))
    L += ["", "## Targets", ""] + [f"- {v}" for v in res["verdicts"]] + [""]
    path.write_text("\n".join(L))


def api_costs_us(rt: Any, n: int = 20_000) -> Dict[str, float]:
    """Median cost (µs) of the calls the metered loop adds to the training thread, measured
    here on the same runtime: m.step(), a phase enter+exit, a meter enter+exit."""
    clock = time.perf_counter_ns
    m = greenml.Meter(runtime=rt, max_step_records=1000)

    def timed(op: Callable[[], Any], k: int) -> float:
        d = np.empty(k)
        for i in range(k):
            a = clock()
            op()
            d[i] = clock() - a
        return float(np.median(d)) / 1e3

    def phase() -> None:
        with m.phase("p"):
            pass

    def meter() -> None:
        with greenml.meter(runtime=rt):
            pass

    with m:
        step = timed(m.step, n)
        ph = timed(phase, n // 10)
    met = timed(meter, n // 10)
    rt.stop()
    return {"step_us": step, "phase_us": ph, "meter_us": met}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batches", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--render-only", action="store_true",
                    help="re-write the Markdown and verdicts from OUT/training_overhead.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        res = json.loads((out / "training_overhead.json").read_text())
        res["verdicts"] = verdicts(res["summary"])
        (out / "training_overhead.json").write_text(json.dumps(res, indent=1) + "\n")
        write_markdown(out / "training_overhead.md", res)
        print("\n".join(res["verdicts"]))
        return 0
    torch.set_num_threads(1)
    wl = Workload(args.batches, args.batch_size, args.epochs)
    meta: Dict[str, Any] = {
        **run_header("training_overhead.py", argv),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "greenml": getattr(greenml, "__version__", "?"),
        "uptime_before": uptime_line(),
        "loadavg_before": loadavg(),
        "rounds": args.rounds,
        "epochs": args.epochs,
        "batches": args.batches,
        "batch_size": args.batch_size,
        "steps_per_run": wl.steps,
    }
    runs: List[Dict[str, Any]] = []
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="greenml-training-overhead-") as tmp:
        root = rapl_tree(tmp)
        with RaplWriter(root, ZONES) as writer:
            rts = {c: make_runtime(powercap_root=root, sources={"rapl"}, interval_ms=ms)
                   for c, ms in INTERVAL_MS.items()}
            try:
                for rnd in range(-1, args.rounds):  # round -1: warm-up, discarded
                    k = (rnd + 1) % len(CONDITIONS)
                    order = list(CONDITIONS[k:] + CONDITIONS[:k])
                    for cond in order:
                        rec = one_run(cond, wl, rts)
                        rec["round"] = rnd
                        runs.append(rec)
                    print(f"round {rnd}: " + ", ".join(
                        f"{r['condition']} {r['wall_s']:.3f}s" for r in runs[-len(order):]),
                        flush=True)
                api = {c: api_costs_us(rt) for c, rt in rts.items()}
            finally:
                for rt in rts.values():
                    rt.stop()
    meta["elapsed_s"] = time.monotonic() - t_all
    meta["uptime_after"] = uptime_line()
    meta["loadavg_after"] = loadavg()
    summary = summarise(runs, args.rounds)
    meta["step_ms"] = 1e3 * summary["off"]["wall_s"]["median"] / wl.steps
    for cond, costs in api.items():
        c = summary[cond]
        per_run_ms = (c["steps_per_run"] * costs["step_us"] + c["phases_per_run"]
                      * costs["phase_us"] + costs["meter_us"]) / 1e3
        c["bottom_up"] = {**costs, "api_ms_per_run": per_run_ms,
                          "api_pct_of_run": 100.0 * per_run_ms / 1e3 / summary["off"]["wall_s"]["median"]}
    res = {"meta": meta, "runs": runs, "summary": summary, "writer": dict(writer.stats)}
    res["verdicts"] = verdicts(summary)
    (out / "training_overhead.json").write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(out / "training_overhead.md", res)
    print("\n".join(res["verdicts"]))
    print(f"wrote {out / 'training_overhead.json'} and {out / 'training_overhead.md'} "
          f"({meta['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
