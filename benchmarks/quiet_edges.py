#!/usr/bin/env python3
"""What a quiet spell costs a window: accuracy of windows opened while the sampler idles.

greenml samples at full rate only near window edges; after a quiet spell (no edge for longer
than the full-rate hold) it reads once a second. A window opened then gets a synchronous reading
at its start, so RAPL edges stay exact; a slow GPU counter (here: updated every 20 ms) has no
recent update before the edge, so its first increment is spread over a longer, less certain
interval. This benchmark measures both, on the fake hardware of ``accuracy.py``: windows of
10 ms and 100 ms, each opened either in a busy stretch (the previous window closed 20-50 ms
before) or after a quiet spell of 1.5 s. Reported per domain: median and worst relative error,
median relative uncertainty, and coverage (share of windows with |error| <= uncertainty).

Usage::

    python benchmarks/quiet_edges.py [--count 20] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
for _dir in (REPO / "tests", REPO / "benchmarks"):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

import greenml  # noqa: E402
from _machine import cpu_model, utc_now  # noqa: E402
from accuracy import RAPL_ZONES  # noqa: E402
from fakes.nvml import FakeNvml  # noqa: E402
from fakes.truth import (  # noqa: E402
    RaplWriter,
    make_runtime,
    meter_window_ns,
    nvml_true_energy_j,
    rapl_tree,
    warm_up,
)

GPU_PROFILE = (200.0, 100.0, 2.0)  # W: base, amplitude, Hz
GPU_UPDATE_MS = 20.0
LENGTHS_S = (0.01, 0.1)
QUIET_S = 1.5


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20, help="windows per length and condition")
    ap.add_argument("--interval-ms", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    rng = random.Random(7)
    tmp = Path(tempfile.mkdtemp(prefix="greenml-quiet-"))
    fake = FakeNvml(tmp)
    fake.add_device(name="NVIDIA Fake gpu:0", energy_mj=0, power_mw=0)
    os.environ.update(fake.env)  # the fake reads FAKE_NVML_DIR on every call
    t_gpu = time.monotonic_ns()
    fake.set_profile(0, *GPU_PROFILE, update_ms=GPU_UPDATE_MS, t0_ns=t_gpu)
    root = rapl_tree(tmp)
    rows: List[Dict[str, Any]] = []
    with RaplWriter(root, {z: p for z, p in RAPL_ZONES.values()}) as writer:
        rt = make_runtime(powercap_root=root, nvml_library=fake.library_path,
                          sources={"rapl", "nvml"}, interval_ms=args.interval_ms)
        try:
            warm_up(rt, seconds=0.3)
            plan = [(n, c) for n in LENGTHS_S for c in ("busy", "quiet") for _ in range(args.count)]
            rng.shuffle(plan)
            for length, cond in plan:
                time.sleep(QUIET_S if cond == "quiet" else rng.uniform(0.02, 0.05))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = greenml.Meter(runtime=rt, sync_cuda=False)
                    with m:
                        time.sleep(length)
                    r = m.result(wait=True)  # the settled, final result
                a, b = meter_window_ns(m)
                truth = {d: writer.true_energy_j(z, a, b) for d, (z, _) in RAPL_ZONES.items()}
                truth["gpu:0"] = nvml_true_energy_j(GPU_PROFILE, t_gpu, a, b)
                for dom, e in truth.items():
                    err = r.by_domain[dom] - e
                    rows.append({"length_s": length, "condition": cond, "domain": dom,
                                 "rel_err": abs(err) / e,
                                 "rel_unc": r.uncertainty_by_domain[dom] / e,
                                 "covered": abs(err) <= r.uncertainty_by_domain[dom]})
        finally:
            rt.stop()

    cells: Dict[str, Dict[str, float]] = {}
    for length in LENGTHS_S:
        for cond in ("busy", "quiet"):
            for dom in ("package:0", "dram:0", "gpu:0"):
                sel = [r for r in rows if (r["length_s"], r["condition"], r["domain"]) ==
                       (length, cond, dom)]
                cells[f"{length * 1e3:g} ms|{cond}|{dom}"] = {
                    "median_rel_err_pct": 100 * statistics.median(r["rel_err"] for r in sel),
                    "worst_rel_err_pct": 100 * max(r["rel_err"] for r in sel),
                    "median_rel_unc_pct": 100 * statistics.median(r["rel_unc"] for r in sel),
                    "coverage_pct": 100 * sum(r["covered"] for r in sel) / len(sel),
                    "n": len(sel),
                }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quiet_edges.json").write_text(json.dumps(
        {"when": utc_now(), "cpu": cpu_model(), "interval_ms": args.interval_ms,
         "gpu_update_ms": GPU_UPDATE_MS, "quiet_s": QUIET_S, "cells": cells, "rows": rows},
        indent=1) + "\n")
    lines = [
        "# Windows opened after a quiet spell",
        "",
        f"{utc_now()}, {cpu_model()}; sampler {args.interval_ms:g} ms, GPU energy counter "
        f"updated every {GPU_UPDATE_MS:g} ms, RAPL every 1 ms; quiet = {QUIET_S:g} s with no "
        f"window before, busy = 20-50 ms; {args.count} windows per cell. Command: "
        f"`python benchmarks/quiet_edges.py --count {args.count}`.",
        "",
        "| window | before | domain | median error | worst error | median uncertainty "
        "| coverage |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, c in cells.items():
        length, cond, dom = key.split("|")
        lines.append(f"| {length} | {cond} | {dom} | {c['median_rel_err_pct']:.2f}% "
                     f"| {c['worst_rel_err_pct']:.2f}% | {c['median_rel_unc_pct']:.2f}% "
                     f"| {c['coverage_pct']:.0f}% |")
    (args.out / "quiet_edges.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
