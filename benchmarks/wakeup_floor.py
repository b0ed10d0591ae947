#!/usr/bin/env python3
"""The sampler against its floor, and what an idle process pays for greenml.

Three measurements, interleaved over ``--rounds`` rounds, medians reported:

1. **Floor ratio.** CPU of the sampler thread (4 fake RAPL zones, full rate) at 100 Hz and
   1 kHz, against a bare C loop that does nothing but ``clock_nanosleep(TIMER_ABSTIME)`` on the
   same absolute grid, in the same round. On a VM one timer wake-up costs tens of us of CPU, so
   the ratio, not the absolute figure, says what greenml adds. Target: at most 1.3x.
2. **Idle after use.** A fresh process imports greenml, uses a meter once (the default
   runtime, over the fake tree), closes it, then does nothing for ``--idle-seconds``: its whole
   CPU time over that stretch, as % of one core. Target: under 0.02%.
3. **Meter open, process idle.** Same, with the meter still open while the process sleeps.

Usage::

    python benchmarks/wakeup_floor.py [--seconds 5] [--idle-seconds 10] [--rounds 3]
        [--out benchmarks/results]

Writes ``wakeup_floor.json`` and ``wakeup_floor.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
for _dir in (REPO / "tests", REPO / "benchmarks"):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

from _machine import cpu_model, loadavg, uname_a, utc_now  # noqa: E402
from fakes.truth import rapl_tree  # noqa: E402

BARE_LOOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
/* bare_loop PERIOD_NS SECONDS: wakes on an absolute grid, does nothing else. */
int main(int argc, char** argv) {
  long long period = atoll(argv[1]);
  double seconds = atof(argv[2]);
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  long long t = now.tv_sec * 1000000000LL + now.tv_nsec;
  long long end = t + (long long)(seconds * 1e9);
  long long wakeups = 0;
  struct rusage r0;
  getrusage(RUSAGE_SELF, &r0); /* the loop only: not process start-up */
  while (t < end) {
    t += period;
    struct timespec d = {(time_t)(t / 1000000000LL), (long)(t % 1000000000LL)};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &d, NULL);
    ++wakeups;
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  long long cpu = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec - r0.ru_utime.tv_sec - r0.ru_stime.tv_sec) *
                      1000000000LL +
                  (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec - r0.ru_utime.tv_usec - r0.ru_stime.tv_usec) *
                      1000LL;
  printf("%lld %lld\n", cpu, wakeups);
  return 0;
}
"""

# The greenml sampler alone, at full rate: its thread's own CPU clock over a steady window.
SAMPLER_CODE = textwrap.dedent(
    """
    import json, sys, time
    from greenml import _core
    root, period_ns, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    sources = [] if root == "none" else [_core.RaplSource(root)]
    s = _core.Sampler(sources, period_ns, 1 << 16)
    s.start()
    time.sleep(0.2)
    c0, r0, t0 = s.stats()["thread_cpu_ns"], s.stats()["reads"], time.monotonic()
    time.sleep(seconds)
    c1, r1, t1 = s.stats()["thread_cpu_ns"], s.stats()["reads"], time.monotonic()
    s.stop()
    print(json.dumps({"cpu_ns": c1 - c0, "wakeups": r1 - r0, "wall_s": t1 - t0}))
    """
)

# A process that uses greenml once (or keeps a meter open) and then idles.
IDLE_CODE = textwrap.dedent(
    """
    import json, resource, sys, time
    import greenml
    open_meter, seconds = sys.argv[1] == "open", float(sys.argv[2])
    m = greenml.meter("once", sync_cuda=False).start()
    time.sleep(0.05)
    if not open_meter:
        m.stop()
        m.energy_j
    time.sleep(1.0)  # past the edge's full-rate hold
    def cpu():
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime
    c0, t0 = cpu(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu(), time.monotonic()
    if open_meter:
        m.stop()
    print(json.dumps({"cpu_s": c1 - c0, "wall_s": t1 - t0}))
    """
)


def build_bare_loop(workdir: Path) -> Path:
    src, exe = workdir / "bare_loop.c", workdir / "bare_loop"
    src.write_text(BARE_LOOP_C)
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def run_json(cmd: List[str], env: Dict[str, str]) -> Dict[str, Any]:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def bare(exe: Path, period_ns: int, seconds: float) -> Dict[str, float]:
    out = subprocess.run([str(exe), str(period_ns), str(seconds)], check=True,
                         capture_output=True, text=True).stdout.split()
    return {"cpu_ns": float(out[0]), "wakeups": float(out[1]), "wall_s": seconds}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="greenml-floor-"))
    root = rapl_tree(work, sockets=2, dram=True)  # 4 RAPL zones, static values
    exe = build_bare_loop(work)
    env = dict(os.environ, GREENML_POWERCAP_ROOT=str(root), GREENML_SOURCES="rapl")
    py = sys.executable
    rates = {"100 Hz": 10_000_000, "1 kHz": 1_000_000}
    rows: Dict[str, List[Dict[str, float]]] = {}
    for _ in range(args.rounds):
        for label, period in rates.items():
            b = bare(exe, period, args.seconds)
            g = run_json([py, "-c", SAMPLER_CODE, str(root), str(period), str(args.seconds)], env)
            n = run_json([py, "-c", SAMPLER_CODE, "none", str(period), str(args.seconds)], env)
            row = {
                "bare_pct": 100 * b["cpu_ns"] / 1e9 / b["wall_s"],
                "greenml_pct": 100 * g["cpu_ns"] / 1e9 / g["wall_s"],
                "nosource_pct": 100 * n["cpu_ns"] / 1e9 / n["wall_s"],
                "bare_us_per_wakeup": b["cpu_ns"] / 1e3 / b["wakeups"],
                "greenml_us_per_wakeup": g["cpu_ns"] / 1e3 / max(g["wakeups"], 1),
                "nosource_us_per_wakeup": n["cpu_ns"] / 1e3 / max(n["wakeups"], 1),
            }
            row["ratio"] = row["greenml_pct"] / row["bare_pct"]
            row["nosource_ratio"] = row["nosource_pct"] / row["bare_pct"]
            rows.setdefault(label, []).append(row)
        for mode in ("closed", "open"):
            r = run_json([py, "-c", IDLE_CODE, mode, str(args.idle_seconds)], env)
            rows.setdefault(f"idle, meter {mode}", []).append(
                {"pct_of_core": 100 * r["cpu_s"] / r["wall_s"],
                 "ms_per_10s": 1e3 * r["cpu_s"] / r["wall_s"] * 10}
            )

    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in rows.items()}
    result = {
        "when": utc_now(),
        "machine": {"cpu": cpu_model(), "uname": uname_a(), "loadavg": loadavg()},
        "seconds": args.seconds, "idle_seconds": args.idle_seconds, "rounds": args.rounds,
        "median": med, "rounds_raw": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wakeup_floor.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Sampler against its wake-up floor, and idle cost",
        "",
        f"{result['when']}, {result['machine']['cpu']}; {args.rounds} rounds, medians; "
        f"command: `python benchmarks/wakeup_floor.py --seconds {args.seconds:g} "
        f"--idle-seconds {args.idle_seconds:g} --rounds {args.rounds}`.",
        "",
        "| rate | bare loop, % of a core | sampler, no source, % (ratio) "
        "| sampler, 4 RAPL zones, % (ratio) | us per wake-up: bare / no source / 4 zones |",
        "|---|---|---|---|---|",
    ]
    for label in rates:
        m = med[label]
        lines.append(
            f"| {label} | {m['bare_pct']:.3f} | {m['nosource_pct']:.3f} "
            f"({m['nosource_ratio']:.2f}x) | {m['greenml_pct']:.3f} ({m['ratio']:.2f}x) "
            f"| {m['bare_us_per_wakeup']:.1f} / {m['nosource_us_per_wakeup']:.1f} / "
            f"{m['greenml_us_per_wakeup']:.1f} |"
        )
    lines += [
        "",
        "| process state (over the idle stretch) | % of one core | ms CPU per 10 s |",
        "|---|---|---|",
    ]
    for mode in ("closed", "open"):
        m = med[f"idle, meter {mode}"]
        lines.append(f"| greenml imported, meter {mode} | {m['pct_of_core']:.4f} "
                     f"| {m['ms_per_10s']:.2f} |")
    (args.out / "wakeup_floor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
