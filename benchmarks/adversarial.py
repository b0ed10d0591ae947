#!/usr/bin/env python3
"""How often does the truth fall outside ``uncertainty_j`` under adversarial power?

Power that changes faster than the counters update: a RAPL package counter (updated every
1 ms) with +400 W bursts of 0.5 ms every 7.3 ms on 40 W, and a GPU energy counter (updated
every 20 ms) with +500 W bursts of 3 ms every 37 ms on 150 W. Inside one update interval the
counters cannot tell when the energy came, so this is the worst case for a window edge. Windows
of 5 ms to 10 s, at 1 ms and 10 ms sampling, settled results; truth in closed form. Reports,
per domain, rate and length: median and worst relative error, and the share of windows whose
error exceeds the reported uncertainty (and by how much at worst).

Usage::

    python benchmarks/adversarial.py [--quick] [--out benchmarks/results]
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
from fakes.nvml import FakeNvml  # noqa: E402
from fakes.truth import (  # noqa: E402
    RaplWriter,
    make_runtime,
    meter_window_ns,
    nvml_true_energy_j,
    rapl_tree,
    warm_up,
)

CPU_BURST = (400.0, 7.3, 0.5)  # W, period ms, width ms
GPU_BURST = (500.0, 37.0, 3.0)
GPU_PROFILE = (150.0, 0.0, 0.0)
LENGTHS_S = (0.005, 0.01, 0.1, 1.0, 10.0)
COUNTS = {0.005: 40, 0.01: 40, 0.1: 30, 1.0: 10, 10.0: 3}
QUICK = {0.005: 15, 0.01: 15, 0.1: 10, 1.0: 4, 10.0: 1}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    counts = QUICK if args.quick else COUNTS
    rng = random.Random(11)
    tmp = Path(tempfile.mkdtemp(prefix="greenml-adversarial-"))
    fake = FakeNvml(tmp)
    fake.add_device(name="NVIDIA Fake gpu:0", energy_mj=0, power_mw=0)
    os.environ.update(fake.env)
    t_gpu = time.monotonic_ns()
    fake.set_profile(0, *GPU_PROFILE, update_ms=20.0, t0_ns=t_gpu, burst=GPU_BURST)
    root = rapl_tree(tmp, dram=False)
    rows: List[Dict[str, Any]] = []
    with RaplWriter(root, {"intel-rapl:0": (40.0, 0.0, 0.0)}, burst=CPU_BURST) as writer:
        for rate_ms in (10.0, 1.0):
            rt = make_runtime(powercap_root=root, nvml_library=fake.library_path,
                              sources={"rapl", "nvml"}, interval_ms=rate_ms)
            try:
                warm_up(rt, seconds=0.3)
                plan = [n for n, c in counts.items() for _ in range(c)]
                rng.shuffle(plan)
                for length in plan:
                    time.sleep(rng.uniform(0.0, 0.03))
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        m = greenml.Meter(runtime=rt, sync_cuda=False)
                        with m:
                            time.sleep(length)
                        r = m.result(wait=True)
                    a, b = meter_window_ns(m)
                    truth = {
                        "package:0": writer.true_energy_j("intel-rapl:0", a, b),
                        "gpu:0": nvml_true_energy_j(GPU_PROFILE, t_gpu, a, b, burst=GPU_BURST),
                    }
                    for dom, e in truth.items():
                        err = abs(r.by_domain[dom] - e)
                        unc = r.uncertainty_by_domain[dom]
                        rows.append({"rate_ms": rate_ms, "length_s": length, "domain": dom,
                                     "rel_err": err / e, "rel_unc": unc / e,
                                     "outside": err > unc, "excess": err / unc if unc else None})
            finally:
                rt.stop()
    cells = []
    for rate_ms in (10.0, 1.0):
        for dom in ("package:0", "gpu:0"):
            for length in LENGTHS_S:
                sel = [r for r in rows if (r["rate_ms"], r["domain"], r["length_s"]) ==
                       (rate_ms, dom, length)]
                out = [r for r in sel if r["outside"]]
                cells.append({
                    "rate_ms": rate_ms, "domain": dom, "length_s": length, "n": len(sel),
                    "median_rel_err_pct": 100 * statistics.median(r["rel_err"] for r in sel),
                    "worst_rel_err_pct": 100 * max(r["rel_err"] for r in sel),
                    "median_rel_unc_pct": 100 * statistics.median(r["rel_unc"] for r in sel),
                    "outside": len(out),
                    "worst_excess": max((r["excess"] for r in out), default=None),
                })
    total = len(rows)
    outside = sum(r["outside"] for r in rows)
    coverage = 100 * (total - outside) / total
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adversarial.json").write_text(json.dumps(
        {"when": utc_now(), "cpu": cpu_model(), "cpu_burst": CPU_BURST, "gpu_burst": GPU_BURST,
         "coverage_pct": coverage, "windows": total, "cells": cells, "rows": rows}, indent=1)
        + "\n")
    lines = [
        "# Uncertainty under adversarial power",
        "",
        f"{utc_now()}, {cpu_model()}. RAPL package: 40 W plus {CPU_BURST[0]:g} W for "
        f"{CPU_BURST[2]:g} ms every {CPU_BURST[1]:g} ms, counter updated every 1 ms. GPU: "
        f"{GPU_PROFILE[0]:g} W plus {GPU_BURST[0]:g} W for {GPU_BURST[2]:g} ms every "
        f"{GPU_BURST[1]:g} ms, energy counter updated every 20 ms. Settled results. Command: "
        f"`python benchmarks/adversarial.py{' --quick' if args.quick else ''}`.",
        "",
        f"**Coverage: the truth lay within `uncertainty_j` in {coverage:.1f}% of "
        f"{total} window-domain pairs ({outside} outside).**",
        "",
        "| sampling | domain | window | n | median error | worst error | median uncertainty "
        "| outside | worst error / uncertainty |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        excess = "-" if c["worst_excess"] is None else f"{c['worst_excess']:.2f}x"
        lines.append(
            f"| {c['rate_ms']:g} ms | {c['domain']} | {c['length_s'] * 1e3:g} ms | {c['n']} "
            f"| {c['median_rel_err_pct']:.2f}% | {c['worst_rel_err_pct']:.2f}% "
            f"| {c['median_rel_unc_pct']:.2f}% | {c['outside']} | {excess} |")
    (args.out / "adversarial.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
