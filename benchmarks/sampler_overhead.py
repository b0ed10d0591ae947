#!/usr/bin/env python3
"""How much does greenml's sampler cost? A reproducible overhead benchmark.

Runs the native sampler (``greenml._core.Sampler``) over a fake powercap tree
(4 RAPL zones: package-0, dram under it, package-1, dram under it) and a fake
libnvidia-ml with 2 GPUs (energy counters), at 10 Hz, 100 Hz, 1 kHz and
10 kHz, and reports for each rate:

* sampler-thread CPU time per wall second, as % of one core (delta of
  ``stats()['thread_cpu_ns']``, the thread's own CPU clock, over the wall
  time of a steady-state window that excludes thread start and stop);
* samples achieved vs expected, missed deadlines, max lateness;
* jitter: |interval - period| between consecutive ring timestamps (µs);
* context switches of the sampler thread (from /proc/self/task/<tid>).

Then the cost of one synchronous ``read_now()`` (RAPL only, fake NVML only,
both, and a sampler with no source = the binding floor), and of ``read()`` of
100k samples into numpy.

The fake NVML opens and reads small files on every call (several open()s per
GPU per read), which is far slower than real NVML's ioctl; RAPL-only runs are
reported too so the cost of the sampler itself is visible.

Usage::

    python benchmarks/sampler_overhead.py [--seconds 5] [--out benchmarks/results]
        [--rounds 3] [--quiet-below 15]

Every configuration runs ``--rounds`` times, interleaved; the round with the
median CPU % is reported with the range. On a shared machine,
``--quiet-below PCT`` waits before each measurement until the whole machine is
under PCT% busy. Writes ``sampler_overhead.json`` and ``sampler_overhead.md``
to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# tests/: fakes.nvml (the fake libnvidia-ml helper); benchmarks/: _machine
for _dir in (REPO / "tests", REPO / "benchmarks"):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

from _machine import cpu_jiffies, cpu_model, loadavg, uname_a, utc_now  # noqa: E402
from fakes.nvml import FakeNvml  # noqa: E402
from greenml import _core  # noqa: E402

#: Targets from the project brief: share of one core used by the sampler thread.
TARGETS_PCT = {100: 0.2, 1000: 1.0}

RATES_HZ = (10, 100, 1000, 10000)
RAPL_ONLY_RATES_HZ = (100, 1000, 10000)
#: A sampler with no source at all: its thread only sleeps, wakes, stamps and
#: pushes an empty row, i.e. the floor any source adds to.
NO_SOURCE_RATES_HZ = (10, 100, 1000)

SOURCE_LABELS = {"rapl+nvml": "RAPL+NVML", "rapl": "RAPL", "nvml": "NVML", "none": "none"}

#: max_energy_range_uj of a typical Intel package zone.
RANGE_UJ = 262143328850

WARMUP_S = 0.25  # after start(), before the measured window


# --------------------------------------------------------------------------- fakes


def make_powercap_tree(root: Path, sockets: int = 2, dram: bool = True) -> Path:
    """A fake /sys/class/powercap with package-<s> zones and nested dram subzones.

    Layout as the kernel shows it: ``intel-rapl`` (control type),
    ``intel-rapl:<s>/{name,energy_uj,max_energy_range_uj}``, the dram subzone
    nested as ``intel-rapl:<s>/intel-rapl:<s>:0/`` and linked flat at the top
    (RaplSource reads only the nested copy).
    """
    root = Path(root) / "powercap"
    (root / "intel-rapl").mkdir(parents=True)
    (root / "intel-rapl" / "enabled").write_text("1\n")

    def zone(d: Path, name: str, energy_uj: int) -> None:
        d.mkdir()
        (d / "name").write_text(f"{name}\n")
        # Same digit count as a live counter mid-range.
        (d / "energy_uj").write_text(f"{energy_uj}\n")
        (d / "max_energy_range_uj").write_text(f"{RANGE_UJ}\n")

    for s in range(sockets):
        top = f"intel-rapl:{s}"
        zone(root / top, f"package-{s}", 123456789012 + s)
        if dram:
            sub = f"{top}:0"
            zone(root / top / sub, "dram", 23456789012 + s)
            os.symlink(os.path.join(top, sub), root / sub)
    return root


def make_fake_nvml(root: Path, gpus: int = 2) -> FakeNvml:
    """A fake NVML machine with ``gpus`` devices exposing energy counters.

    Sets FAKE_NVML_DIR in os.environ (the fake calls getenv() on every read,
    also on the sampler thread): set it once, before any NvmlSource exists,
    and never change it while a sampler runs.
    """
    fake = FakeNvml(root)
    for i in range(gpus):
        fake.add_device(name="NVIDIA Fake H100", energy_mj=987654321 + i, power_mw=250000)
    os.environ.update(fake.env)
    return fake


class Fixture:
    """The fake hardware and its sources, built once per run."""

    def __init__(self, tmp: Path) -> None:
        self.powercap_root = make_powercap_tree(tmp)
        self.fake_nvml = make_fake_nvml(tmp)
        self.rapl = _core.RaplSource(str(self.powercap_root))
        self.nvml = _core.NvmlSource(
            str(self.fake_nvml.library_path), None, cuda_device_order="PCI_BUS_ID"
        )
        rapl_domains = [c.domain for c in self.rapl.channels()]
        nvml_domains = [c.domain for c in self.nvml.channels()]
        if rapl_domains != ["package:0", "dram:0", "package:1", "dram:1"]:
            raise RuntimeError(f"fake powercap tree gave channels {rapl_domains}: "
                               f"{self.rapl.status()}")
        if nvml_domains != ["gpu:0", "gpu:1"] or any(
                c.kind != "counter" for c in self.nvml.channels()):
            raise RuntimeError(f"fake NVML gave channels {self.nvml.channels()}: "
                               f"{self.nvml.status()}")

    def sources(self, which: str) -> List[Any]:
        table: Dict[str, List[Any]] = {"rapl+nvml": [self.rapl, self.nvml], "rapl": [self.rapl],
                                       "nvml": [self.nvml], "none": []}
        return table[which]


# --------------------------------------------------------------------- machine state


def wait_for_quiet(below_pct: float, timeout_s: float, window_s: float = 1.0,
                   windows: int = 3) -> Tuple[float, bool]:
    """Waits until the machine is busy under below_pct% for `windows` windows in a row.

    Returns (seconds waited, whether it got quiet before timeout_s). A shared
    machine (other builds, a VM's neighbours) disturbs both wake-up latency
    and CPU per sample; measuring in quiet windows makes runs comparable.
    """
    t0 = time.monotonic()
    quiet = 0
    while True:
        a = cpu_jiffies()
        time.sleep(window_s)
        b = cpu_jiffies()
        busy = 100.0 * (b[0] - a[0]) / max(1, b[1] - a[1])
        quiet = quiet + 1 if busy < below_pct else 0
        waited = time.monotonic() - t0
        if quiet >= windows:
            return waited, True
        if waited >= timeout_s:
            return waited, False


def thread_ids() -> set:
    return set(os.listdir("/proc/self/task"))


def thread_sched(tid: Optional[str]) -> Dict[str, int]:
    """Context switches and run-queue wait of one thread of this process (zeros if unknown)."""
    out = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0, "runqueue_wait_ns": 0}
    if tid is None:
        return out
    try:
        with open(f"/proc/self/task/{tid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in out:
                    out[key] = int(value.split()[0])
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            out["runqueue_wait_ns"] = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return out


# ------------------------------------------------------------------------ measuring


def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if a.size else float("nan")


def run_rate(fx: Fixture, which: str, rate_hz: int, seconds: float) -> Dict[str, Any]:
    """Runs the sampler thread at rate_hz for `seconds` of steady state and measures it."""
    period_ns = int(round(1e9 / rate_hz))
    expected_total = int(seconds * rate_hz) + int(WARMUP_S * rate_hz) + 16
    capacity = 1 << max(16, (2 * expected_total - 1).bit_length())
    sampler = _core.Sampler(fx.sources(which), period_ns, capacity)
    before_threads = thread_ids()
    try:
        sampler.start()
        new = sorted(thread_ids() - before_threads)
        tid = new[0] if len(new) == 1 else None
        time.sleep(WARMUP_S)

        st_a = sampler.stats()
        sch_a = thread_sched(tid)
        head_a = sampler.head
        t_a = _core.monotonic_ns()
        cpu_a = cpu_jiffies()

        time.sleep(seconds)

        cpu_b = cpu_jiffies()
        t_b = _core.monotonic_ns()
        head_b = sampler.head
        sch_b = thread_sched(tid)
        st_b = sampler.stats()
    finally:
        sampler.stop()
    st_end = sampler.stats()

    wall_ns = t_b - t_a
    cpu_ns = st_b["thread_cpu_ns"] - st_a["thread_cpu_ns"]
    samples = st_b["samples"] - st_a["samples"]
    expected = wall_ns / period_ns
    t, _energy, _power, _next, lost = sampler.read(head_a, head_b - head_a)
    intervals = np.diff(t.astype(np.int64))
    dev_us = np.abs(intervals - period_ns) / 1e3
    busy = (cpu_b[0] - cpu_a[0]) / max(1, cpu_b[1] - cpu_a[1])
    steal = (cpu_b[2] - cpu_a[2]) / max(1, cpu_b[1] - cpu_a[1])
    ncpu = os.cpu_count() or 1
    cpu_pct = 100.0 * cpu_ns / wall_ns
    sampler_busy_share = cpu_ns / max(1.0, wall_ns * ncpu)
    vol = sch_b["voluntary_ctxt_switches"] - sch_a["voluntary_ctxt_switches"]
    invol = sch_b["nonvoluntary_ctxt_switches"] - sch_a["nonvoluntary_ctxt_switches"]
    result: Dict[str, Any] = {
        "sources": which,
        "channels": len(sampler.channels()),
        "rate_hz": rate_hz,
        "period_ns": period_ns,
        "window_s": wall_ns / 1e9,
        "thread_cpu_ns": cpu_ns,
        "cpu_pct_of_core": cpu_pct,
        "cpu_us_per_sample": (cpu_ns / samples / 1e3) if samples else float("nan"),
        "samples": samples,
        "samples_expected": expected,
        "samples_ratio": samples / expected if expected else float("nan"),
        "missed_deadlines": st_b["missed_deadlines"] - st_a["missed_deadlines"],
        "failed_reads": st_b["failed_reads"] - st_a["failed_reads"],
        "max_lateness_us": st_end["max_lateness_ns"] / 1e3,
        "jitter_median_us": pct(dev_us, 50),
        "jitter_p99_us": pct(dev_us, 99),
        "jitter_max_us": float(dev_us.max()) if dev_us.size else float("nan"),
        "ring_samples_read": int(t.size),
        "ring_lost": int(lost),
        "wakeups_per_s": vol / (wall_ns / 1e9),
        "involuntary_switches": invol,
        "runqueue_wait_us_per_sample": ((sch_b["runqueue_wait_ns"] - sch_a["runqueue_wait_ns"])
                                        / samples / 1e3) if samples else float("nan"),
        "machine_busy_pct": 100.0 * busy,
        "machine_busy_other_pct": max(0.0, 100.0 * (busy - sampler_busy_share)),
        "steal_pct": 100.0 * steal,
        "thread_id_found": tid is not None,
    }
    target = TARGETS_PCT.get(rate_hz)
    if target is not None:
        result["target_pct"] = target
        result["meets_target"] = cpu_pct < target
    return result


def median_rounds(runs_all: Sequence[Dict[str, Any]],
                  plan: Sequence[Tuple[str, int]]) -> List[Dict[str, Any]]:
    """Per configuration, the round with the median CPU % (the lower one of an even
    count), annotated with the range over all rounds."""
    out = []
    for which, hz in plan:
        rs = sorted((r for r in runs_all if r["sources"] == which and r["rate_hz"] == hz),
                    key=lambda r: r["cpu_pct_of_core"])
        if not rs:
            continue
        row = dict(rs[(len(rs) - 1) // 2])
        row["rounds"] = len(rs)
        row["cpu_pct_min"] = rs[0]["cpu_pct_of_core"]
        row["cpu_pct_max"] = rs[-1]["cpu_pct_of_core"]
        row["cpu_us_per_sample_min"] = min(r["cpu_us_per_sample"] for r in rs)
        row["cpu_us_per_sample_max"] = max(r["cpu_us_per_sample"] for r in rs)
        row["missed_deadlines_by_round"] = [r["missed_deadlines"] for r in
                                            sorted(rs, key=lambda r: r["round"])]
        out.append(row)
    return out


def time_read_now(fx: Fixture, which: str, calls: int) -> Dict[str, Any]:
    """Per-call wall time of Sampler.read_now() from Python (sampler thread not running)."""
    sampler = _core.Sampler(fx.sources(which), 10_000_000, 1 << 12)
    read_now = sampler.read_now
    clock = time.perf_counter_ns
    for _ in range(min(2000, calls)):  # warm caches and the allocator
        read_now()
    out = np.empty(calls, dtype=np.int64)
    for i in range(calls):
        t0 = clock()
        read_now()
        out[i] = clock() - t0
    # The cost of the two clock calls themselves, to read the numbers against.
    empty = np.empty(calls, dtype=np.int64)
    for i in range(calls):
        t0 = clock()
        empty[i] = clock() - t0
    us = out / 1e3
    return {
        "sources": which,
        "channels": len(sampler.channels()),
        "calls": calls,
        "median_us": pct(us, 50),
        "p99_us": pct(us, 99),
        "mean_us": float(us.mean()),
        "min_us": float(us.min()),
        "timer_overhead_median_us": pct(empty / 1e3, 50),
    }


def time_bulk_read(fx: Fixture, which: str, n: int, repeats: int) -> Dict[str, Any]:
    """Fill a ring with n samples through read_now(), then time read(from, n) into numpy."""
    capacity = 1 << max(17, (n - 1).bit_length())  # >= 131072
    sampler = _core.Sampler(fx.sources(which), 10_000_000, capacity)
    read_now = sampler.read_now
    t0 = time.perf_counter_ns()
    first = read_now()[0]
    for _ in range(n - 1):
        read_now()
    push_ns = time.perf_counter_ns() - t0
    head = sampler.head
    assert head - first == n, (head, first, n)
    sampler.read(first, n)  # warm-up: first-touch of the output pages
    times = []
    faults = []
    shape = None
    for _ in range(repeats):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter_ns()
        t, energy, power, nxt, lost = sampler.read(first, n)
        times.append(time.perf_counter_ns() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        shape = energy.shape
        if t.size != n or lost != 0 or nxt != head:
            raise RuntimeError(f"read returned {t.size} samples, lost={lost}, next={nxt}")
        del t, energy, power
    ms = np.array(times) / 1e6
    return {
        "sources": which,
        "channels": len(sampler.channels()),
        "capacity": sampler.capacity,
        "samples": n,
        "repeats": repeats,
        "energy_shape": list(shape) if shape else None,
        "median_ms": pct(ms, 50),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "per_sample_ns": pct(ms, 50) * 1e6 / n,
        # Output and staging buffers of MBs: whether malloc recycles them or
        # hands out fresh pages (page faults) depends on its trim/mmap state.
        "minor_faults_per_call_median": float(np.median(faults)),
        "fill_read_now_mean_us": push_ns / n / 1e3,
    }


# ------------------------------------------------------------------------ reporting


def fmt(x: object, nd: int = 2) -> str:
    if isinstance(x, float):
        if x != x:
            return "n/a"
        return f"{x:.{nd}f}"
    return str(x)


def rate_label(hz: int) -> str:
    return f"{hz // 1000} kHz" if hz >= 1000 else f"{hz} Hz"


RUN_COLUMNS = [
    ("sources", "sources", None),
    ("rate", "rate", None),
    ("CPU % core", "cpu_pct_of_core", 3),
    ("range over rounds", "cpu_range", None),
    ("target", "target", None),
    ("µs CPU/sample", "cpu_us_per_sample", 2),
    ("samples/expected", "samples_vs", None),
    ("missed", "missed_deadlines", None),
    ("jitter med µs", "jitter_median_us", 1),
    ("jitter p99 µs", "jitter_p99_us", 1),
    ("max late µs", "max_lateness_us", 0),
    ("wakeups/s", "wakeups_per_s", 0),
    ("other load %", "machine_busy_other_pct", 1),
]


def run_row(r: Dict[str, Any]) -> List[str]:
    cells = []
    for _, key, nd in RUN_COLUMNS:
        if key == "sources":
            cells.append(SOURCE_LABELS[str(r["sources"])])
        elif key == "rate":
            cells.append(rate_label(int(r["rate_hz"])))
        elif key == "target":
            if "target_pct" in r:
                ok = "ok" if r["meets_target"] else "MISS"
                cells.append(f"<{r['target_pct']}% {ok}")
            else:
                cells.append("-")
        elif key == "cpu_range":
            cells.append(f"{r.get('cpu_pct_min', r['cpu_pct_of_core']):.3f}–"
                         f"{r.get('cpu_pct_max', r['cpu_pct_of_core']):.3f}")
        elif key == "samples_vs":
            cells.append(f"{r['samples']}/{r['samples_expected']:.0f} "
                         f"({100 * float(r['samples_ratio']):.1f}%)")
        else:
            cells.append(fmt(r[key], nd if nd is not None else 2))
    return cells


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


READ_NOW_HEADERS = ["sources", "channels", "calls", "median µs", "p99 µs", "mean µs", "min µs"]


def read_now_row(r: Dict[str, Any]) -> List[str]:
    label = {"rapl": "RAPL (4 zones)", "nvml": "NVML fake (2 GPUs)",
             "rapl+nvml": "RAPL + NVML fake",
             "none": "no source (binding floor)"}[str(r["sources"])]
    return [label, str(r["channels"]), str(r["calls"]), fmt(r["median_us"]), fmt(r["p99_us"]),
            fmt(r["mean_us"]), fmt(r["min_us"])]


def summary_lines(results: Dict[str, Any]) -> List[str]:
    """Verdicts on the targets, one line each, with the cost above the no-source floor."""
    runs = results["runs"]
    floor = {r["rate_hz"]: r["cpu_us_per_sample"] for r in runs if r["sources"] == "none"}
    lines = []
    for r in runs:
        if "target_pct" not in r:
            continue
        verdict = "meets" if r["meets_target"] else "MISSES"
        ratio = r["cpu_pct_of_core"] / r["target_pct"]
        budget_us = r["target_pct"] / 100.0 * r["period_ns"] / 1e3
        line = (f"{SOURCE_LABELS[r['sources']]} at {rate_label(r['rate_hz'])}: "
                f"{r['cpu_pct_of_core']:.3f}% of a core = {r['cpu_us_per_sample']:.2f} µs CPU per "
                f"sample (budget {budget_us:.0f} µs) {verdict} the <{r['target_pct']}% target "
                f"({ratio:.2f}x the budget)")
        base = floor.get(r["rate_hz"])
        if r["sources"] != "none" and base is not None:
            line += (f"; {r['cpu_us_per_sample'] - base:.2f} µs per sample above the no-source "
                     f"floor of {base:.2f} µs")
        lines.append(line)
    return lines


def quiet_line(results: Dict[str, Any]) -> str:
    below = results["meta"].get("quiet_below_pct")
    if below is None:
        return "- measurements did not wait for a quiet machine (no --quiet-below)"
    rounds = results.get("runs_all_rounds", results["runs"])
    items = list(rounds) + list(results["read_now"]) + [results["read_bulk"]]
    loud = sum(1 for r in items if not r.get("quiet", True))
    loud_shown = sum(1 for r in results["runs"] if not r.get("quiet", True))
    return (f"- each measurement waited for the machine to be under {below}% busy for 3 s "
            f"(--quiet-below, at most --quiet-timeout); {loud} of {len(items)} measurements "
            f"(all rounds) started without getting quiet, {loud_shown} of them in the rows shown "
            "below")


def write_markdown(path: Path, results: Dict[str, Any]) -> None:
    meta = results["meta"]
    runs = results["runs"]
    headers = [h for h, _, _ in RUN_COLUMNS]
    bulk = results["read_bulk"]
    md = [
        "# Sampler overhead",
        "",
        f"Generated by `{meta['command']}` on {meta['date']}.",
        "",
        "## Machine",
        "",
        f"- `uname -a`: `{meta['uname']}`",
        f"- CPU: {meta['cpu_model']}, nproc = {meta['nproc']}",
        f"- clocksource: {meta['clocksource']}",
        f"- timer slack of this process: {meta['timerslack_ns']} ns",
        f"- Python {meta['python']}, numpy {meta['numpy']}, "
        f"greenml._core at `{meta['core_module']}`",
        f"- load average (1/5/15 min) before: {meta['loadavg_before']}, "
        f"after: {meta['loadavg_after']}",
        f"- fake files live on: {meta['tmp_fs']}",
        quiet_line(results),
        "",
        "## Sampler thread at each rate",
        "",
        f"Steady-state window of {meta['seconds']} s per run "
        f"({meta['seconds_10khz']} s at 10 kHz), {meta['rounds']} interleaved rounds per "
        "configuration; each row is the round with the median CPU % (all its columns come from "
        "that round), *range over rounds* the lowest and highest CPU % seen; every round is in "
        "the JSON (`runs_all_rounds`). Each run starts "
        f"with a {WARMUP_S} s warm-up; thread start and stop are excluded. "
        "*CPU % core* = sampler-thread CPU time (its own CPU clock) / wall time. "
        "*Jitter* = |interval - period| between consecutive ring timestamps (each timestamp is the "
        "midpoint of that tick's source reads). *max late* = worst wake-up after a deadline since "
        "start. *wakeups/s* = voluntary context switches of the sampler thread. "
        "*other load %* = machine-wide busy time not explained by the sampler, from /proc/stat "
        "(100% = all cores busy).",
        "",
        md_table(headers, [run_row(r) for r in runs]),
        "",
        "Targets: sampler under 0.2% of a core at 100 Hz and under 1% at 1 kHz.",
        "",
        *[f"- {line}" for line in summary_lines(results)],
        "",
        "## One synchronous `read_now()` from Python",
        "",
        f"Sampler thread not running; {results['read_now'][0]['calls']} timed calls each "
        "(per-call `perf_counter_ns` pair; the timer itself costs "
        f"{results['read_now'][0]['timer_overhead_median_us']:.3f} µs). Includes the pybind11 "
        "call, the read lock, the source reads, the ring push and building the two numpy arrays.",
        "",
        md_table(READ_NOW_HEADERS, [read_now_row(r) for r in results["read_now"]]),
        "",
        f"## `read(from, n)` of {bulk['samples']} samples into numpy",
        "",
        f"Sources {bulk['sources']} ({bulk['channels']} channels), "
        f"ring capacity {bulk['capacity']}, "
        f"filled with {bulk['samples']} `read_now()` calls "
        f"(mean {bulk['fill_read_now_mean_us']:.2f} µs each). "
        f"Returns t_ns[{bulk['samples']}], energy_j{tuple(bulk['energy_shape'])}, power_w of the "
        f"same shape. Over {bulk['repeats']} repeats:",
        "",
        md_table(["median ms", "min ms", "max ms", "per sample ns (median)",
                  "minor page faults per call (median)"],
                 [[fmt(bulk["median_ms"], 3), fmt(bulk["min_ms"], 3), fmt(bulk["max_ms"], 3),
                   fmt(bulk["per_sample_ns"], 1), fmt(bulk["minor_faults_per_call_median"], 0)]]),
        "",
        "The call allocates its outputs (t, energy, power: about "
        f"{bulk['samples'] * (8 + 16 * bulk['channels']) / 1e6:.1f} MB) plus native staging "
        "buffers; when the allocator returns such blocks to the kernel between calls, every call "
        "page-faults them in again and costs several times more (seen under pytest-benchmark, "
        "see bench_core.py's extra_info).",
        "",
        "## Caveats",
        "",
        *[f"- {n}" for n in results["notes"]],
        "",
    ]
    path.write_text("\n".join(md))


NOTES = [
    "The fake libnvidia-ml (tests/fakes/fake_nvml.c) reads small files on every call: per GPU "
    "and energy read it calls getenv() and tries three open()s (`<i>/energy_error` and "
    "`<i>/profile`, both absent, then `<i>/energy_mj`), plus fread/fclose. That is far slower "
    "than real NVML, whose energy query is one ioctl into the driver, so the RAPL + NVML rows "
    "overstate NVML's cost; the RAPL-only rows show the cost of the sampler itself.",
    "Real RAPL `energy_uj` reads go through the powercap driver and an MSR read (an IPI when the "
    "package is another socket's), typically a few µs each; the fake tree is plain files on a "
    "regular filesystem, so the RAPL rows understate real RAPL read cost.",
    "The sampler thread waits on one condition variable on the monotonic clock until its next "
    "deadline; stop(), resume(), a period change and a window edge signal it directly, so it "
    "wakes once per sample at every rate. At full rate it sets its timer slack to 1/20 of the "
    "period (at most 50 µs), which bounds how late a wake-up may be.",
    "The *none* rows are a sampler with no source: its thread only sleeps until the deadline, "
    "wakes, takes the lock, stamps and pushes an empty row. Their CPU per sample is the floor "
    "set by the kernel's sleep/wake path on this machine; a source's own cost is the "
    "difference to that floor at the same rate.",
    "The machine may be shared (other processes, a virtual machine's neighbours): wake-up "
    "latency (jitter, max lateness, missed deadlines) depends on what else runs, and CPU per "
    "sample also rises under contention (colder caches, preemption). See the load averages "
    "above and *other load %* per run; rerun when the machine is quiet.",
]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="steady-state wall seconds per rate (default 5)")
    ap.add_argument("--seconds-10khz", type=float, default=3.0,
                    help="wall seconds at 10 kHz (default 3)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds of every rate; the round with the median CPU %% "
                         "is reported, with the range (default 3)")
    ap.add_argument("--calls", type=int, default=20000,
                    help="read_now() calls to time (default 20000)")
    ap.add_argument("--bulk", type=int, default=100000,
                    help="samples for the read() test (default 100000)")
    ap.add_argument("--repeats", type=int, default=20,
                    help="repeats of the read() test (default 20)")
    ap.add_argument("--quiet-below", type=float, default=None, metavar="PCT",
                    help="before each measurement, wait until the whole machine is under PCT%% "
                         "busy for 3 s in a row (for shared machines; default: do not wait)")
    ap.add_argument("--quiet-timeout", type=float, default=300.0,
                    help="longest wait for quiet per measurement, seconds (default 300); the "
                         "measurement then runs anyway and is flagged")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                    help="output directory for sampler_overhead.{json,md}")
    args = ap.parse_args(argv)

    meta = {
        "date": utc_now(),
        "uname": uname_a(),
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "core_module": _core.__file__,
        "seconds": args.seconds,
        "seconds_10khz": args.seconds_10khz,
        "rounds": args.rounds,
        "quiet_below_pct": args.quiet_below,
        "command": " ".join(["python", *sys.argv]) if argv is None else
                   " ".join(["python", "benchmarks/sampler_overhead.py", *argv]),
        "loadavg_before": loadavg(),
    }
    try:
        meta["clocksource"] = Path(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource").read_text().strip()
    except OSError:
        meta["clocksource"] = "unknown"

    try:
        meta["timerslack_ns"] = int(Path("/proc/self/timerslack_ns").read_text())
    except (OSError, ValueError):
        meta["timerslack_ns"] = "unknown"

    runs_all: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="greenml-bench-") as tmp:
        try:
            meta["tmp_fs"] = subprocess.run(["df", "-T", tmp], capture_output=True, text=True,
                                            check=True).stdout.splitlines()[-1].split()[1]
        except (OSError, subprocess.CalledProcessError, IndexError):
            meta["tmp_fs"] = "unknown"
        fx = Fixture(Path(tmp))
        plan = ([("rapl+nvml", hz) for hz in RATES_HZ]
                + [("rapl", hz) for hz in RAPL_ONLY_RATES_HZ]
                + [("none", hz) for hz in NO_SOURCE_RATES_HZ])
        def settle() -> Dict[str, Any]:
            if args.quiet_below is None:
                return {}
            waited, ok = wait_for_quiet(args.quiet_below, args.quiet_timeout)
            if not ok:
                print(f"  machine not quiet (< {args.quiet_below}% busy) after {waited:.0f} s; "
                      "measuring anyway", file=sys.stderr, flush=True)
            return {"waited_for_quiet_s": waited, "quiet": ok}

        # Rounds are interleaved so that slow drifts of the machine (neighbours,
        # frequency, host load) hit every configuration alike.
        for rnd in range(args.rounds):
            for which, hz in plan:
                secs = args.seconds_10khz if hz >= 10000 else args.seconds
                pre = settle()
                print(f"round {rnd + 1}/{args.rounds}: {which} at {rate_label(hz)} for "
                      f"{secs:g} s ...", file=sys.stderr, flush=True)
                runs_all.append({**run_rate(fx, which, hz, secs), **pre, "round": rnd + 1})
        runs = median_rounds(runs_all, plan)

        read_now = []
        for w in ("rapl", "nvml", "rapl+nvml", "none"):
            pre = settle()
            print(f"timing read_now() on {w} ...", file=sys.stderr, flush=True)
            read_now.append({**time_read_now(fx, w, args.calls), **pre})
        pre = settle()
        print(f"timing read() of {args.bulk} samples ...", file=sys.stderr, flush=True)
        bulk = {**time_bulk_read(fx, "rapl+nvml", args.bulk, args.repeats), **pre}

    meta["loadavg_after"] = loadavg()
    results: Dict[str, Any] = {
        "meta": meta,
        "targets_pct_of_core": {str(k): v for k, v in TARGETS_PCT.items()},
        "runs": runs,
        "runs_all_rounds": runs_all,
        "read_now": read_now,
        "read_bulk": bulk,
        "notes": NOTES,
    }

    headers = [h for h, _, _ in RUN_COLUMNS]
    print()
    print(f"{meta['cpu_model']}, nproc={meta['nproc']}, load average before "
          f"{meta['loadavg_before']}, after {meta['loadavg_after']}")
    print()
    print("Sampler thread (RAPL: 4 fake zones; NVML: fake, 2 GPUs)")
    print(text_table(headers, [run_row(r) for r in runs]))
    print()
    for line in summary_lines(results):
        print(" ", line)
    print()
    print(f"read_now() from Python, {args.calls} calls each")
    print(text_table(READ_NOW_HEADERS, [read_now_row(r) for r in read_now]))
    print()
    print(f"read(from, {bulk['samples']}) into numpy "
          f"({bulk['sources']}, {bulk['channels']} channels): "
          f"median {bulk['median_ms']:.3f} ms "
          f"(min {bulk['min_ms']:.3f}, max {bulk['max_ms']:.3f}), "
          f"{bulk['per_sample_ns']:.1f} ns per sample, "
          f"{bulk['minor_faults_per_call_median']:.0f} minor page faults per call")
    print()
    print("note: the fake NVML opens and reads small files on every call, far slower than real "
          "NVML's ioctl; the RAPL-only rows show the sampler's own cost.")

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "sampler_overhead.json"
    md_path = args.out / "sampler_overhead.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(md_path, results)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
