#!/usr/bin/env python3
"""Memory of long runs: 1M repeats of a phase in one meter, and 10M calls of a decorated
function, against fake RAPL counters. Reports the process's resident memory (RSS) before and
after, per item, and the bounded structures' own sizes.

Usage::

    python benchmarks/memory_bound.py [--phases 1000000] [--calls 10000000]
        [--out benchmarks/results]

Writes ``memory_bound.json`` and ``memory_bound.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
for _dir in (REPO / "tests", REPO / "benchmarks"):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

import greenml  # noqa: E402
from _machine import cpu_model, utc_now  # noqa: E402
from fakes.truth import RaplWriter, make_runtime, rapl_tree  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phases", type=int, default=1_000_000)
    ap.add_argument("--calls", type=int, default=10_000_000)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    root = rapl_tree(Path(tempfile.mkdtemp(prefix="greenml-mem-")))
    out = {"when": utc_now(), "cpu": cpu_model()}
    with RaplWriter(root, {"intel-rapl:0": (40.0, 0.0, 0.0), "intel-rapl:0:0": (6.0, 0.0, 0.0)}):
        rt = make_runtime(powercap_root=root, sources={"rapl"}, interval_ms=10.0)
        try:
            rt.ensure_started()
            # Phases: one meter, the same phase entered and left N times.
            gc.collect()
            before = rss_mb()
            t = time.perf_counter()
            with greenml.meter("phases", runtime=rt, sync_cuda=False) as m:
                for _ in range(args.phases):
                    with m.phase("p"):
                        pass
            p = m.phases["p"]
            gc.collect()
            after = rss_mb()
            out["phases"] = {
                "repeats": args.phases, "counted": p.count, "rss_before_mb": before,
                "rss_after_mb": after, "bytes_per_repeat": (after - before) * 2**20 / args.phases,
                "spans_kept": len(m.phase_spans_s()["p"]), "seconds": time.perf_counter() - t,
            }
            del m, p
            # Decorated calls.
            @greenml.measure("f", runtime=rt, sync_cuda=False)
            def f() -> None:
                pass

            gc.collect()
            before = rss_mb()
            t = time.perf_counter()
            for _ in range(args.calls):
                f()
            calls = f.energy.calls
            gc.collect()
            after = rss_mb()
            out["calls"] = {
                "calls": args.calls, "counted": calls, "rss_before_mb": before,
                "rss_after_mb": after, "bytes_per_call": (after - before) * 2**20 / args.calls,
                "records_kept": int(f.energy._reservoir.energies.size),
                "seconds": time.perf_counter() - t,
            }
        finally:
            rt.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory_bound.json").write_text(json.dumps(out, indent=2) + "\n")
    ph, ca = out["phases"], out["calls"]
    lines = [
        "# Memory of long runs",
        "",
        f"{out['when']}, {out['cpu']}; fake RAPL, sampler 10 ms. Command: `python "
        f"benchmarks/memory_bound.py --phases {args.phases} --calls {args.calls}`.",
        "",
        "| workload | items | counted | RSS before -> after (MB) | growth per item | kept |",
        "|---|---|---|---|---|---|",
        f"| phase repeats in one meter | {ph['repeats']:,} | {ph['counted']:,} | "
        f"{ph['rss_before_mb']:.1f} -> {ph['rss_after_mb']:.1f} | "
        f"{ph['bytes_per_repeat']:.2f} B | {ph['spans_kept']:,} spans |",
        f"| decorated calls | {ca['calls']:,} | {ca['counted']:,} | "
        f"{ca['rss_before_mb']:.1f} -> {ca['rss_after_mb']:.1f} | "
        f"{ca['bytes_per_call']:.2f} B | {ca['records_kept']:,} records |",
    ]
    (args.out / "memory_bound.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
