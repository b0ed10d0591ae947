#!/usr/bin/env python3
"""What does greenml's Python API cost per call? Meter, decorator, step and phase overheads.

How to run (from the repository root, package installed, a C compiler on PATH; ~1 min)::

    python benchmarks/meter_overhead.py --out benchmarks/results

Writes ``meter_overhead.json`` and ``meter_overhead.md`` to ``--out``.

Everything runs against a fake powercap tree (``package:0`` with ``dram:0``) whose
``energy_uj`` files a C writer process (``tests/fakes/powercap_writer.c``) rewrites every
1 ms, with greenml's sampler thread running over it (10 ms by default, ``--interval-ms``).
The runtime is built from explicit settings (``greenml.Runtime(Settings(...))``, through
``tests/fakes/truth.make_runtime``) and passed as ``runtime=``; one row also uses the
process-wide default runtime, configured through ``GREENML_POWERCAP_ROOT`` and
``GREENML_SOURCES=rapl`` before its first use, so it is literally ``with greenml.meter(): pass``.

Operations timed (each op individually with ``time.perf_counter_ns``, the median cost of an
empty timer pair subtracted; ops are spread over several interleaved rounds so machine noise
hits all of them alike):

* ``meter enter+exit``: ``with greenml.meter(runtime=rt): pass`` including construction
  (energy is resolved lazily, when a result is first read, so that is not in it);
* ``@greenml.measure`` per-call overhead: a decorated no-op minus the bare no-op;
* ``m.step()`` inside a running meter;
* ``with m.phase("p"): pass`` inside a running meter;
* informational: the first ``m.result()`` of a 1 ms meter (resolution, including the wait for
  the counter update that follows the window's end).

Reported: median, p90, p99 and mean µs per op (the mean includes amortised batch work, e.g.
the decorator resolving pending calls every 1024). Targets: meter enter+exit < 10 µs,
decorator < 5 µs (medians).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
for _dir in (REPO / "tests", REPO / "benchmarks"):  # fakes.*, _machine
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

import greenml  # noqa: E402
from _machine import loadavg, run_header, uptime_line  # noqa: E402
from fakes.truth import RaplWriter, make_runtime, rapl_tree, warm_up  # noqa: E402

ZONES = {"intel-rapl:0": (60.0, 40.0, 3.0), "intel-rapl:0:0": (12.0, 8.0, 17.0)}
TARGETS_US = {"meter_enter_exit": 10.0, "meter_enter_exit_default_runtime": 10.0,
              "decorator_overhead": 5.0, "step": 2.0}
LABELS = {
    "timer_pair": "empty timer pair (subtracted from all rows)",
    "meter_enter_exit": "`with greenml.meter(runtime=rt): pass` (incl. construction)",
    "meter_enter_exit_default_runtime": "`with greenml.meter(): pass` (default runtime, env)",
    "bare_call": "bare no-op function call",
    "decorated_call": "`@greenml.measure(runtime=rt)` no-op call",
    "decorator_overhead": "decorator per-call overhead (decorated − bare)",
    "step": "`m.step()` in a running meter",
    "phase_enter_exit": "`with m.phase(\"p\"): pass` in a running meter",
    "result_first_read": "first `m.result()` of a 1 ms meter (default: no settle wait)",
    "result_first_read_wait": "first `m.result(wait=True)` of a 1 ms meter (resolve + settle wait)",
    "loop_100ms_default": "loop of 100 ms meters, each read at once: cost per window (default)",
    "loop_100ms_wait": "loop of 100 ms meters, each read at once: cost per window (wait=True)",
}


def timer_floor_ns(n: int = 200_000) -> float:
    clock = time.perf_counter_ns
    d = np.empty(n, dtype=np.int64)
    for i in range(n):
        a = clock()
        d[i] = clock() - a
    return float(np.median(d))


def time_each(op: Callable[[], Any], n: int) -> np.ndarray:
    """Individual durations (ns) of n calls of op, raw (timer cost included)."""
    clock = time.perf_counter_ns
    d = np.empty(n, dtype=np.int64)
    for i in range(n):
        a = clock()
        op()
        d[i] = clock() - a
    return d


def time_batch(op: Callable[[], Any], n: int) -> float:
    """Mean ns per call of n back-to-back calls (timer cost negligible)."""
    clock = time.perf_counter_ns
    a = clock()
    for _ in range(n):
        op()
    return (clock() - a) / n


def stats_us(samples_ns: np.ndarray, floor_ns: float) -> Dict[str, float]:
    x = (samples_ns.astype(np.float64) - floor_ns) / 1e3
    return {
        "n": int(x.size),
        "median_us": float(np.median(x)),
        "p90_us": float(np.percentile(x, 90)),
        "p99_us": float(np.percentile(x, 99)),
        "max_us": float(x.max()),
        "mean_us": float(x.mean()),
    }


def run(args: argparse.Namespace, root: Path) -> Dict[str, Any]:
    rt = make_runtime(powercap_root=root, sources={"rapl"}, interval_ms=args.interval_ms)
    warm_up(rt, seconds=0.2)
    floor = timer_floor_ns()

    def meter_op() -> None:
        with greenml.meter(runtime=rt):
            pass

    def bare() -> None:
        return None

    @greenml.measure(runtime=rt)
    def decorated() -> None:
        return None

    step_meter = greenml.Meter(runtime=rt, max_step_records=10_000)
    step_meter.start()
    phase_meter = greenml.Meter(runtime=rt)
    phase_meter.start()

    def phase_op() -> None:
        with phase_meter.phase("p"):
            pass

    ops: Dict[str, Callable[[], Any]] = {
        "meter_enter_exit": meter_op,
        "bare_call": bare,
        "decorated_call": decorated,
        "step": step_meter.step,
        "phase_enter_exit": phase_op,
    }
    per_round = max(1, args.reps // args.rounds)
    raw: Dict[str, List[np.ndarray]] = {k: [] for k in ops}
    batch: Dict[str, List[float]] = {k: [] for k in ops}
    for op in ops.values():  # warm-up: caches, lazy imports, first flushes
        for _ in range(500):
            op()
    stats_before = rt.sampler.stats()
    t0 = time.monotonic()
    for r in range(args.rounds):
        names = list(ops)
        names = names[r % len(names):] + names[:r % len(names)]  # rotate the order
        for name in names:
            gc.collect()
            raw[name].append(time_each(ops[name], per_round))
            batch[name].append(time_batch(ops[name], max(100, per_round // 4)))
    elapsed = time.monotonic() - t0
    stats_after = rt.sampler.stats()
    step_meter.stop()
    phase_meter.stop()

    results: Dict[str, Any] = {"timer_pair": {"median_ns": floor}}
    for name in ops:
        allx = np.concatenate(raw[name])
        results[name] = stats_us(allx, floor)
        results[name]["round_medians_us"] = [float(np.median(x) - floor) / 1e3 for x in raw[name]]
        results[name]["batch_mean_us"] = float(np.median(batch[name])) / 1e3
    dec = np.concatenate(raw["decorated_call"]).astype(np.float64)
    bar = np.concatenate(raw["bare_call"]).astype(np.float64)
    results["decorator_overhead"] = {
        "n": int(dec.size),
        "median_us": float(np.median(dec) - np.median(bar)) / 1e3,
        "p90_us": float(np.percentile(dec, 90) - np.percentile(bar, 90)) / 1e3,
        "p99_us": float(np.percentile(dec, 99) - np.percentile(bar, 99)) / 1e3,
        "max_us": float(dec.max() - np.median(bar)) / 1e3,
        "mean_us": float(dec.mean() - bar.mean()) / 1e3,
        "round_medians_us": [float(np.median(a) - np.median(b)) / 1e3
                             for a, b in zip(raw["decorated_call"], raw["bare_call"])],
        "batch_mean_us": (float(np.median(batch["decorated_call"]))
                          - float(np.median(batch["bare_call"]))) / 1e3,
    }
    # Sanity: the decorated calls were all resolved into energies.
    decorated.energy.flush()
    results["decorated_call"]["calls_resolved"] = decorated.energy.calls

    # Informational: the first read of a short meter's result, by default (no settle wait for
    # a window this short) and waiting for the counter update that covers its end.
    for key, wait in (("result_first_read", None), ("result_first_read_wait", True)):
        firsts = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", greenml.ShortWindowWarning)  # 1 ms < sample spacing
            for _ in range(args.result_reps):
                m = greenml.Meter(runtime=rt)
                with m:
                    time.sleep(0.001)
                a = time.perf_counter_ns()
                m.result(wait=wait)
                firsts.append(time.perf_counter_ns() - a)
        results[key] = stats_us(np.array(firsts), floor)

    # A loop that opens, closes and reads 100 ms windows: what greenml adds per window (open,
    # close and the read), as a share of the 100 ms of work.
    for key, wait in (("loop_100ms_default", None), ("loop_100ms_wait", True)):
        costs = []
        for _ in range(args.loop_windows):
            a = time.perf_counter_ns()
            m = greenml.Meter(runtime=rt, sync_cuda=False)
            with m:
                b = time.perf_counter_ns()
                time.sleep(0.1)
                c = time.perf_counter_ns()
            m.result(wait=wait)
            costs.append((time.perf_counter_ns() - a) - (c - b))
        results[key] = stats_us(np.array(costs), floor)
        results[key]["slowdown_pct_of_100ms"] = float(np.mean(costs)) / 1e8 * 100
    rt.stop()

    # The same meter on the process-wide default runtime, configured by the environment.
    os.environ["GREENML_POWERCAP_ROOT"] = str(root)
    os.environ["GREENML_SOURCES"] = "rapl"
    os.environ["GREENML_INTERVAL_MS"] = f"{args.interval_ms:g}"
    from greenml._runtime import default_runtime, reset_default_runtime

    def default_meter_op() -> None:
        with greenml.meter():
            pass

    for _ in range(500):
        default_meter_op()
    drt = default_runtime()
    chans = [c.domain for c in drt.channels]
    xs = []
    for _ in range(args.rounds):
        gc.collect()
        xs.append(time_each(default_meter_op, per_round))
    results["meter_enter_exit_default_runtime"] = stats_us(np.concatenate(xs), floor)
    results["meter_enter_exit_default_runtime"]["round_medians_us"] = [
        float(np.median(x) - floor) / 1e3 for x in xs]
    results["meter_enter_exit_default_runtime"]["channels"] = chans
    reset_default_runtime()

    return {
        "results": results,
        "elapsed_s": elapsed,
        "channels": [c.domain for c in rt.channels],
        "sampler": {
            "samples": stats_after["samples"] - stats_before["samples"],
            "missed_deadlines": stats_after["missed_deadlines"] - stats_before["missed_deadlines"],
            "thread_cpu_pct": 100.0 * (stats_after["thread_cpu_ns"] - stats_before["thread_cpu_ns"])
            / 1e9 / max(elapsed, 1e-9),
        },
    }


ROW_ORDER = ["meter_enter_exit", "meter_enter_exit_default_runtime", "bare_call",
             "decorated_call", "decorator_overhead", "step", "phase_enter_exit",
             "result_first_read", "result_first_read_wait", "loop_100ms_default",
             "loop_100ms_wait"]


def verdicts(results: Dict[str, Any]) -> List[str]:
    out = []
    for key, limit in TARGETS_US.items():
        r = results[key]
        ok = r["median_us"] < limit
        out.append(f"{LABELS[key]}: median {r['median_us']:.2f} µs, p90 {r['p90_us']:.2f} µs "
                   f"vs target < {limit:g} µs: {'met' if ok else 'MISSED'}"
                   + ("" if ok else f" ({r['median_us'] / limit:.2f}x)")
                   + ("" if r["p90_us"] < limit else " (p90 above the target)"))
    for key in ("loop_100ms_default", "loop_100ms_wait"):
        pct = results[key]["slowdown_pct_of_100ms"]
        goal = " vs target < 5% (the default)" if key == "loop_100ms_default" else ""
        out.append(f"{LABELS[key]}: mean {pct:.2f}% of each 100 ms window{goal}"
                   + (": met" if key == "loop_100ms_default" and pct < 5 else
                      ": MISSED" if key == "loop_100ms_default" else ""))
    return out


def md_rows(results: Dict[str, Any]) -> List[str]:
    lines = ["| operation | n | median µs | p90 µs | p99 µs | mean µs | batch mean µs "
             "| round medians µs | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in ROW_ORDER:
        r = results[key]
        rm = r.get("round_medians_us")
        rms = f"{min(rm):.2f}–{max(rm):.2f}" if rm else "-"
        bm = r.get("batch_mean_us")
        target = f"< {TARGETS_US[key]:g} µs" if key in TARGETS_US else "-"
        if key in TARGETS_US:
            target += " met" if r["median_us"] < TARGETS_US[key] else " MISSED"
        lines.append(
            f"| {LABELS[key]} | {r['n']} | {r['median_us']:.2f} | {r['p90_us']:.2f} "
            f"| {r['p99_us']:.2f} | {r['mean_us']:.2f} | {'-' if bm is None else f'{bm:.2f}'} "
            f"| {rms} | {target} |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--interval-ms", type=float, default=10.0, help="sampler period")
    ap.add_argument("--reps", type=int, default=200_000, help="timed calls per operation")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    ap.add_argument("--result-reps", type=int, default=50)
    ap.add_argument("--loop-windows", type=int, default=30, help="100 ms windows per loop row")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta: Dict[str, Any] = {
        **run_header("meter_overhead.py", argv),
        "greenml": getattr(greenml, "__version__", "?"),
        "greenml_path": str(Path(greenml.__file__).parent),
        "uptime_before": uptime_line(),
        "loadavg_before": loadavg(),
        "interval_ms": args.interval_ms,
        "reps": args.reps,
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory(prefix="greenml-meter-overhead-") as tmp:
        root = rapl_tree(tmp)
        with RaplWriter(root, ZONES) as writer:
            res = run(args, root)
        res["writer"] = dict(writer.stats)
    meta["uptime_after"] = uptime_line()
    meta["loadavg_after"] = loadavg()
    res["meta"] = meta
    res["verdicts"] = verdicts(res["results"])
    (out / "meter_overhead.json").write_text(json.dumps(res, indent=1) + "\n")

    s = res["sampler"]
    w = res["writer"]
    md = [
        "# Meter API overhead",
        "",
        f"Generated by `{meta['command']}` on {meta['date']}.",
        "",
        f"- `{meta['uname']}`, nproc {meta['nproc']}, Python {meta['python']}, greenml "
        f"{meta['greenml']} from `{meta['greenml_path']}`",
        f"- `uptime` before: `{meta['uptime_before']}`",
        f"- `uptime` after: `{meta['uptime_after']}`",
        f"- fake RAPL tree (`{', '.join(res['channels'])}`), C writer updating every 1 ms "
        f"({w.get('updates')} updates, max lateness {w.get('max_late_ns', 0) / 1e6:.2f} ms, "
        f"real-time {bool(w.get('realtime'))}); sampler every {meta['interval_ms']:g} ms "
        f"({s['samples']} samples, {s['missed_deadlines']} missed deadlines, thread CPU "
        f"{s['thread_cpu_pct']:.2f}% of a core during the timed rounds)",
        f"- {meta['reps']} timed calls per operation in {meta['rounds']} interleaved rounds; "
        f"each call timed alone with `perf_counter_ns`, minus the median empty timer pair "
        f"({res['results']['timer_pair']['median_ns']:.0f} ns). *batch mean* = back-to-back "
        "calls timed as a block (median over rounds); *round medians* = the spread of the "
        "per-round medians.",
        "",
    ]
    md += md_rows(res["results"])
    md += ["", "## Targets", ""] + [f"- {v}" for v in res["verdicts"]] + [""]
    (out / "meter_overhead.md").write_text("\n".join(md))
    print("\n".join(md_rows(res["results"])))
    print("\n".join(res["verdicts"]))
    print(f"wrote {out / 'meter_overhead.json'} and {out / 'meter_overhead.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
