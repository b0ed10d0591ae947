"""What the Prometheus exporter costs: idle CPU while nobody scrapes, and the time of a scrape.

Idle: three processes over a fake powercap tree (one package and its dram zone), side by side
over the same ``--seconds`` window: python that imported greenml and sleeps (bare), the same
with greenml's sampler started, the same with ``greenml.exporter.start()`` serving and nobody
scraping. Each reports its own CPU time (all threads, getrusage: exact, not clock ticks) over the
window. Reported: CPU ms, % of one core, ratios exporter / bare and exporter / sampler.

Scrape: ``greenml export`` (the command) scraped ``--scrapes`` times over HTTP from this process
(urllib, a new connection each, as Prometheus makes), then stopped with SIGTERM; and, in this
process, ``generate_latest`` of an exporter's registry with ``--functions`` decorated functions
(no HTTP): median and p90 in ms.

    python benchmarks/exporter_cost.py --seconds 30 --scrapes 200 --out benchmarks/results/exporter
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _machine import loadavg, run_header  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def fake_tree(tmp: Path) -> Path:
    from fakes.powercap import PowercapTree

    tree = PowercapTree(tmp)
    tree.add_package(0, energy_uj=1_000_000, dram=True)
    return tree.root


def percentiles_ms(xs: List[float]) -> Dict[str, float]:
    xs = sorted(xs)
    return {
        "median_ms": statistics.median(xs) * 1e3,
        "p90_ms": xs[int(0.9 * (len(xs) - 1))] * 1e3,
        "min_ms": xs[0] * 1e3,
        "max_ms": xs[-1] * 1e3,
    }


#: Run in a child process: get to the idle state of ``mode``, then print the CPU time (s) of the
#: whole process (every thread; getrusage is exact, not rounded to clock ticks) over the window.
CHILD = """
import resource, sys, time
mode, seconds = sys.argv[1], float(sys.argv[2])
import greenml
if mode == "sampler":
    greenml._runtime.default_runtime().ensure_started()
elif mode == "exporter":
    from greenml import exporter
    ex = exporter.start(port=0)
time.sleep(2.0)  # past start-up
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c0, t0 = cpu(), time.monotonic()
time.sleep(seconds)
print(cpu() - c0, time.monotonic() - t0)
"""

MODES = {
    "bare": "python that imported greenml, sleeping",
    "sampler": "the same with greenml's sampler started (idle: one reading a second)",
    "exporter": "the same with greenml.exporter.start() serving, no scrapes",
}


def idle_cpu(root: Path, seconds: float, env: Dict[str, str]) -> Dict[str, Any]:
    """The three modes side by side over the same window."""
    procs = {
        mode: subprocess.Popen(
            [sys.executable, "-c", CHILD, mode, str(seconds)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for mode in MODES
    }
    out: Dict[str, Any] = {}
    for mode, p in procs.items():
        stdout, _ = p.communicate(timeout=seconds + 120)
        cpu, wall = (float(x) for x in stdout.split())
        out[mode] = {
            "what": MODES[mode],
            "cpu_s": cpu,
            "wall_s": wall,
            "pct_of_one_core": 100 * cpu / wall,
        }
    bare = out["bare"]["cpu_s"]
    out["ratio_exporter_to_bare"] = out["exporter"]["cpu_s"] / bare if bare > 0 else None
    out["ratio_exporter_to_sampler"] = (
        out["exporter"]["cpu_s"] / out["sampler"]["cpu_s"] if out["sampler"]["cpu_s"] > 0 else None
    )
    return out


def http_scrapes(env: Dict[str, str], scrapes: int) -> Dict[str, Any]:
    """``greenml export`` as users run it: scraped ``scrapes`` times, then SIGTERM."""
    with subprocess.Popen(
        [sys.executable, "-m", "greenml", "export", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    ) as exporter:
        try:
            line = exporter.stderr.readline()
            found = re.search(r"http://\S+/metrics", line)
            if not found:
                raise RuntimeError(f"greenml export did not start: {line!r}")
            url = found.group(0)
            times = []
            for _ in range(scrapes):
                t = time.perf_counter()
                with urllib.request.urlopen(url, timeout=10) as r:
                    body = r.read()
                times.append(time.perf_counter() - t)
            exporter.terminate()
            exporter.communicate(timeout=10)
        finally:
            if exporter.poll() is None:
                exporter.kill()
                exporter.communicate()
    return {
        "scrapes": scrapes,
        "bytes": len(body),
        **percentiles_ms(times),
        "exit_code_after_sigterm": exporter.returncode,
    }


def in_process_collect(root: Path, functions: int, repeats: int) -> Dict[str, Any]:
    import prometheus_client

    import greenml
    from greenml import exporter
    from fakes.truth import make_runtime

    rt = make_runtime(powercap_root=root, sources={"rapl"})
    fns = []
    for k in range(functions):

        @greenml.measure(f"bench-fn-{k}", runtime=rt)
        def f() -> None:
            pass

        fns.append(f)
    for f in fns:
        for _ in range(10):
            f()
    registry = prometheus_client.CollectorRegistry()
    ex = exporter.start(port=0, registry=registry, runtime=rt)
    try:
        prometheus_client.generate_latest(registry)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            prometheus_client.generate_latest(registry)
            times.append(time.perf_counter() - t)
    finally:
        ex.stop()
        rt.stop()
    return {"functions": functions, "repeats": repeats, **percentiles_ms(times)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="idle window (s)")
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--functions", type=int, default=20, help="decorated functions served")
    ap.add_argument("--out", type=Path, help="directory for exporter_cost.json / .md")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = fake_tree(Path(tmp))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GREENML_")}
        env.update(GREENML_POWERCAP_ROOT=str(root), GREENML_SOURCES="rapl", GREENML_ESTIMATE="off")
        load_before = loadavg()
        idle = idle_cpu(root, args.seconds, env)
        http = http_scrapes(env, args.scrapes)
        collect = in_process_collect(root, args.functions, args.scrapes)
    out = {
        **run_header("exporter_cost.py", argv),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "idle": idle,
        "http_scrape": http,
        "in_process_collect": collect,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "exporter_cost.json").write_text(text + "\n")
        i, h, c = out["idle"], out["http_scrape"], out["in_process_collect"]
        rows = "\n".join(
            f"| idle {i[m]['wall_s']:.1f} s: {i[m]['what']} | {i[m]['cpu_s'] * 1e3:.1f} ms "
            f"({i[m]['pct_of_one_core']:.4f} % of one core) |"
            for m in MODES
        )

        def ratio(x: Optional[float]) -> str:
            return "n/a (0 CPU in the reference)" if x is None else f"{x:.2f}"

        md = f"""# Exporter cost

Command: `{out["command"]}` ({out["date"]}, {out["nproc"]} CPUs, load average before
{out["loadavg_before"]}, after {out["loadavg_after"]}). Fake powercap tree (package-0 and
dram-0); the three idle processes run side by side over the same window; CPU time of each whole
process (all threads) from getrusage.

| | value |
|---|---|
{rows}
| ratio exporter / bare | {ratio(i["ratio_exporter_to_bare"])} |
| ratio exporter / sampler alone | {ratio(i["ratio_exporter_to_sampler"])} |
| one HTTP scrape of `greenml export`'s /metrics ({h["bytes"]} bytes), median / p90 of {h["scrapes"]} | {h["median_ms"]:.2f} / {h["p90_ms"]:.2f} ms |
| `generate_latest` in process, {c["functions"]} decorated functions, median / p90 | {c["median_ms"]:.3f} / {c["p90_ms"]:.3f} ms |
| `greenml export` exit code after SIGTERM | {h["exit_code_after_sigterm"]} |
"""
        (args.out / "exporter_cost.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
