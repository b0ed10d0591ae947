#!/usr/bin/env python3
"""One tool's side of the peer comparison: runs inside that tool's virtual environment and a
private mount namespace where the fake powercap tree is ``/sys/class/powercap`` and the fake
NVML is the ``libnvidia-ml.so.1`` on ``LD_LIBRARY_PATH`` (see ``run.py``).

Standard library only (plus the tool itself), so it runs in every peer's venv::

    python probe.py --tool zeus --config cfg.json --out result.json

The config names the windows (``[[length_s, count], ...]``), the gap between windows, the
seed and the overhead duration. The probe writes, per window, the CLOCK_MONOTONIC stamps
around the tool's start and stop calls and the energies the tool reported per domain class
(``package``, ``dram``, ``gpu``; joules); ``run.py`` computes the truth from the stamps.

Phases, in order:

1. import the tool; ``baseline``: process CPU over a plain sleep of ``overhead_s``;
2. ``setup``: build the tool's meter (timed, and its CPU counted);
3. ``warmup`` windows (discarded: first calls spawn helpers, open files, ...);
4. ``windows``: for each length, ``count`` windows separated by random gaps;
5. ``overhead``: one window of ``overhead_s`` at the tool's defaults, with the process CPU
   (this process, its threads and every descendant process) counted over it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any, Callable, Dict, List, Optional

KWH_J = 3.6e6


def mono_ns() -> int:
    return time.monotonic_ns()


# --------------------------------------------------------------------------- CPU accounting

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> Optional[tuple]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    # fields after comm: state(3) ppid(4) ... utime(14) stime(15): rest[0] is field 3
    return int(rest[1]), int(rest[11]) + int(rest[12])


def _pid_cpu_s(pid: int, ticks: int) -> float:
    """CPU (s) of one process: its threads' schedstat run time (ns), else stat's clock ticks."""
    total_ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total_ns += int(f.read().split()[0])
        return total_ns / 1e9
    except (OSError, ValueError, IndexError):
        return ticks / _TICK


def _descendants_cpu_s(root: int) -> float:
    """CPU (s) of every live descendant process of ``root``."""
    children: Dict[int, List[int]] = {}
    ticks: Dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _proc_stat(int(name))
        if st is None:
            continue
        children.setdefault(st[0], []).append(int(name))
        ticks[int(name)] = st[1]
    total = 0.0
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        total += _pid_cpu_s(pid, ticks.get(pid, 0))
        stack.extend(children.get(pid, []))
    return total


def tree_cpu_s() -> float:
    """CPU seconds of this process (all threads), its reaped children and live descendants."""
    t = os.times()
    reaped = t.children_user + t.children_system
    return time.process_time() + reaped + _descendants_cpu_s(os.getpid())


def _descendant_pids(root: int) -> List[int]:
    children: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _proc_stat(int(name))
            if st is not None:
                children.setdefault(st[0], []).append(int(name))
    out: List[int] = []
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def kill_descendants() -> None:
    """Ends the helper processes this probe's tool started (by pid, children of this one)."""
    import signal

    pids = _descendant_pids(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if sig == signal.SIGTERM and pids:
            time.sleep(0.3)
            pids = _descendant_pids(os.getpid())


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


# --------------------------------------------------------------------------- adapters


class Adapter:
    """One tool's documented window API. ``read`` returns joules per domain class."""

    #: distribution names whose versions are recorded
    packages: tuple = ()
    #: a reading that is not a measurement of the fake counter (e.g. a RAM model), per class
    estimated: Dict[str, str] = {}
    #: windows this run will open in all (carbontracker needs its epoch count up front)
    epochs_total: int = 0

    def setup(self) -> None:
        raise NotImplementedError

    def begin(self) -> None:
        raise NotImplementedError

    def end(self) -> Any:
        raise NotImplementedError

    def read(self, result: Any) -> Dict[str, Optional[float]]:
        raise NotImplementedError

    def finalize(self, records: List[dict]) -> None:
        """For tools that attribute energy to windows only at the end."""

    def close(self) -> None:
        pass

    def describe(self) -> Dict[str, Any]:
        return {}


class Greenml(Adapter):
    packages = ("greenml",)

    def setup(self) -> None:
        import greenml
        from greenml._config import Settings

        self.greenml = greenml
        # Defaults (10 ms sampler, every source); env={} so no GREENML_* variable leaks in.
        self.rt = greenml.Runtime(Settings(env={}))
        self.m: Any = None

    def begin(self) -> None:
        self.m = self.greenml.Meter(runtime=self.rt)
        self.m.start()

    def end(self) -> Any:
        self.m.stop()
        return self.m

    def read(self, m: Any) -> Dict[str, Optional[float]]:
        bd = m.result(wait=True).by_domain  # the settled result, as the other tools' final reads
        return {"package": bd.get("package:0"), "dram": bd.get("dram:0"), "gpu": bd.get("gpu:0")}

    def describe(self) -> Dict[str, Any]:
        return {
            "api": "greenml.Meter(runtime=greenml.Runtime(Settings(env={})))"
                   ".start()/.stop(); .by_domain",
            "interval_ms": self.rt.settings.interval_ms,
            "sensors": [f"{s.domain}: {s.source} {'ok' if s.available else s.reason}"
                        for s in self.rt.sensors()],
        }


class Zeus(Adapter):
    packages = ("zeus", "nvidia-ml-py")

    def setup(self) -> None:
        from zeus.monitor import ZeusMonitor

        self.mon = ZeusMonitor()  # defaults: every GPU and CPU package found
        self.n = 0

    # sync_execution=False: there is no torch in this venv (and no CUDA work to wait for);
    # with its default (True) Zeus raises "Failed to import Pytorch" when GPUs are monitored.
    def begin(self) -> None:
        self.n += 1
        self.mon.begin_window(f"w{self.n}", sync_execution=False)

    def end(self) -> Any:
        return self.mon.end_window(f"w{self.n}", sync_execution=False)

    def read(self, r: Any) -> Dict[str, Optional[float]]:
        cpu = r.cpu_energy or {}
        dram = r.dram_energy or {}
        gpu = r.gpu_energy or {}
        return {"package": cpu.get(0), "dram": dram.get(0), "gpu": gpu.get(0)}

    def describe(self) -> Dict[str, Any]:
        return {
            "api": "zeus.monitor.ZeusMonitor().begin_window(key, sync_execution=False)/"
                   "end_window(key, sync_execution=False) -> Measurement",
            "gpu_indices": list(self.mon.gpu_indices),
            "cpu_indices": list(self.mon.cpu_indices),
            "approx_instant_energy": self.mon.approx_instant_energy,
            "gpu_energy_counter": [self.mon.gpus.supports_get_total_energy_consumption(i)
                                   for i in self.mon.gpu_indices],
        }


class CodeCarbon(Adapter):
    packages = ("codecarbon", "nvidia-ml-py")
    estimated = {"dram": "ram_energy is CodeCarbon's RAM power model, not the RAPL dram zone"}

    def _tracker(self) -> Any:
        from codecarbon import OfflineEmissionsTracker

        # Offline (no geolocation request) and no output files; everything else at its
        # defaults (measure_power_secs=15, tracking_mode="machine").
        return OfflineEmissionsTracker(country_iso_code="USA", save_to_file=False,
                                       log_level="error")

    def setup(self) -> None:
        self.t = self._tracker()

    def begin(self) -> None:
        self.t.start_task()

    def end(self) -> Any:
        return self.t.stop_task()

    def read(self, d: Any) -> Dict[str, Optional[float]]:
        if d is None:
            return {"package": None, "dram": None, "gpu": None}
        return {"package": d.cpu_energy * KWH_J, "dram": d.ram_energy * KWH_J,
                "gpu": d.gpu_energy * KWH_J}

    # The long (overhead) window uses the whole-run API at its defaults.
    def long_prepare(self) -> None:
        self.long = self._tracker()

    def long_begin(self) -> None:
        self.long.start()

    def long_end(self) -> Any:
        self.long.stop()
        return self.long.final_emissions_data

    def describe(self) -> Dict[str, Any]:
        t = self.t
        hw = []
        for h in getattr(t, "_hardware", []):
            hw.append(f"{type(h).__name__}: {getattr(h, '_mode', '')}".rstrip(": "))
        return {
            "api": "OfflineEmissionsTracker(...).start_task()/stop_task() -> EmissionsData "
                   "for windows; .start()/.stop() for the overhead window",
            "measure_power_secs": getattr(t, "_measure_power_secs", None),
            "hardware": hw,
        }


class PyJoules(Adapter):
    packages = ("pyJoules", "pynvml", "nvidia-ml-py")

    def setup(self) -> None:
        from pyJoules.device import DeviceFactory
        from pyJoules.device.nvidia_device import NvidiaGPUDomain
        from pyJoules.device.rapl_device import RaplDramDomain, RaplPackageDomain
        from pyJoules.energy_meter import EnergyMeter

        domains = [RaplPackageDomain(0), RaplDramDomain(0), NvidiaGPUDomain(0)]
        self.meter = EnergyMeter(DeviceFactory.create_devices(domains))

    def begin(self) -> None:
        self.meter.start(tag="w")

    def end(self) -> Any:
        self.meter.stop()
        return self.meter.get_trace()

    def read(self, trace: Any) -> Dict[str, Optional[float]]:
        e = trace[0].energy
        # pyJoules reports RAPL domains in uJ and NVIDIA domains in mJ (the raw counter units).
        pkg = e.get("package_0")
        dram = e.get("dram_0")
        gpu = e.get("nvidia_gpu_0")
        return {"package": pkg / 1e6 if pkg is not None else None,
                "dram": dram / 1e6 if dram is not None else None,
                "gpu": gpu / 1e3 if gpu is not None else None}

    def describe(self) -> Dict[str, Any]:
        return {"api": "pyJoules EnergyMeter(DeviceFactory.create_devices([RaplPackageDomain(0), "
                       "RaplDramDomain(0), NvidiaGPUDomain(0)])).start()/stop()/get_trace()"}


class Carbontracker(Adapter):
    packages = ("carbontracker", "nvidia-ml-py")

    def setup(self) -> None:
        from carbontracker.tracker import CarbonTracker

        self.logdir = tempfile.mkdtemp(prefix="carbontracker-")
        # One epoch per window (+ warm-up + overhead window); defaults otherwise
        # (update_interval=1 s, components="all"); verbose=0 keeps stdout quiet.
        self.t = CarbonTracker(epochs=self.epochs_total, log_dir=self.logdir, verbose=0)

    def begin(self) -> None:
        self.t.epoch_start()

    def end(self) -> Any:
        self.t.epoch_end()
        return len(self.t.tracker.epoch_times) - 1

    def read(self, epoch: Any) -> Dict[str, Optional[float]]:
        return {"epoch": epoch}  # attributed in finalize(), as carbontracker does at the end

    def _per_epoch(self) -> Dict[str, List[float]]:
        out: Dict[str, List[float]] = {}
        times = self.t.tracker.epoch_times
        for comp in self.t.tracker.components:
            # Component.energy_usage: kWh per epoch, before carbontracker's PUE factor.
            out[comp.name] = [float(x) * KWH_J for x in comp.energy_usage(times)]
        return out

    def finalize(self, records: List[dict]) -> None:
        per = self._per_epoch()
        for r in records:
            m = r.get("measured") or {}
            ep = m.pop("epoch", None)
            if ep is None:
                continue
            cpu = per.get("cpu")
            gpu = per.get("gpu")
            # carbontracker's "cpu" component covers the package *and* DRAM zones.
            m["cpu+dram"] = cpu[ep] if cpu is not None and ep < len(cpu) else None
            m["gpu"] = gpu[ep] if gpu is not None and ep < len(gpu) else None

    def close(self) -> None:
        try:
            self.t.stop()
        except Exception:
            pass

    def describe(self) -> Dict[str, Any]:
        comps = []
        for c in self.t.tracker.components:
            try:
                comps.append(f"{c.name}: {', '.join(c.devices())}")
            except Exception as e:  # pragma: no cover - depends on the tool
                comps.append(f"{c.name}: ? ({e})")
        last = {}
        for c in self.t.tracker.components:
            samples = c.power_usages[-1] if c.power_usages else []
            last[c.name] = [round(float(x), 3) for x in samples][:8]
        return {"api": "CarbonTracker(epochs=N).epoch_start()/epoch_end(); per-epoch energy "
                       "from each component's energy_usage() (kWh, before PUE)",
                "update_interval_s": self.t.update_interval, "components": comps,
                "power_usages_of_last_epoch_w": last}


ADAPTERS: Dict[str, Callable[[], Adapter]] = {
    "greenml": Greenml,
    "zeus": Zeus,
    "codecarbon": CodeCarbon,
    "pyjoules": PyJoules,
    "carbontracker": Carbontracker,
}


# --------------------------------------------------------------------------- phases


def versions(packages: tuple) -> Dict[str, Optional[str]]:
    from importlib import metadata

    out: Dict[str, Optional[str]] = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def one_window(a: Adapter, length_s: float, target_s: Optional[float] = None) -> dict:
    target_s = length_s if target_s is None else target_s
    tb0 = mono_ns()
    a.begin()
    tb1 = mono_ns()
    # The "workload": wait until target_s after the start call returned.
    deadline = tb1 + int(target_s * 1e9)
    while True:
        left = deadline - mono_ns()
        if left <= 0:
            break
        time.sleep(left / 1e9)
    te0 = mono_ns()
    res = a.end()
    te1 = mono_ns()
    measured = a.read(res)
    tr1 = mono_ns()
    return {"length_s": length_s, "target_s": target_s, "tb0": tb0, "tb1": tb1, "te0": te0,
            "te1": te1, "tr1": tr1, "measured": measured}


def run(tool: str, cfg: dict) -> dict:
    out: dict = {"tool": tool, "ok": False, "python": sys.version.split()[0],
                 "pid": os.getpid(), "phases": {}}
    warnings.simplefilter("ignore")  # the same for every tool: no per-window warning output
    rng = random.Random(cfg.get("seed", 1))
    gap = cfg.get("gap_s", [0.01, 0.06])
    overhead_s = float(cfg["overhead_s"])
    windows = [(float(L), int(n)) for L, n in cfg["windows"]]
    warmup = int(cfg.get("warmup", 3))

    a = ADAPTERS[tool]()
    a.epochs_total = warmup + sum(n for _, n in windows) + 2  # carbontracker's epoch count
    out["versions"] = versions(a.packages)
    out["estimated"] = dict(a.estimated)

    # 1. baseline: this process asleep (tool imported in setup, not yet built).
    c0, w0 = tree_cpu_s(), mono_ns()
    time.sleep(overhead_s)
    c1, w1 = tree_cpu_s(), mono_ns()
    out["baseline"] = {"cpu_s": c1 - c0, "wall_s": (w1 - w0) / 1e9, "threads": thread_count()}

    # 2. setup
    c0, w0 = tree_cpu_s(), mono_ns()
    a.setup()
    c1, w1 = tree_cpu_s(), mono_ns()
    out["setup"] = {"cpu_s": c1 - c0, "wall_s": (w1 - w0) / 1e9}
    # 3. warm-up windows (first calls spawn helper processes, open files, ...).
    c0, w0 = tree_cpu_s(), mono_ns()
    for _ in range(warmup):
        time.sleep(rng.uniform(*gap))
        one_window(a, 0.1)
    c1, w1 = tree_cpu_s(), mono_ns()
    out["warmup"] = {"windows": warmup, "cpu_s": c1 - c0, "wall_s": (w1 - w0) / 1e9}

    # 4. windows
    records: List[dict] = []
    t_phase = mono_ns()
    jitter = float(cfg.get("length_jitter", 0.0))
    for length_s, count in windows:
        for _ in range(count):
            time.sleep(rng.uniform(*gap))
            # Lengths vary by +-jitter so that windows do not line up with counter update
            # periods or with the power profile's period.
            target = length_s * (1.0 + rng.uniform(-jitter, jitter))
            records.append(one_window(a, length_s, target))
    a.finalize(records)
    out["windows_wall_s"] = (mono_ns() - t_phase) / 1e9
    out["windows"] = records
    try:  # after the windows: some tools detect their hardware on first use
        out["describe"] = a.describe()
    except Exception as e:
        out["describe"] = {"error": repr(e)}

    # 5. overhead: one long window at the tool's defaults, CPU of the whole process tree.
    long_begin = getattr(a, "long_begin", None)
    long_end = getattr(a, "long_end", None)
    if hasattr(a, "long_prepare"):
        a.long_prepare()
    c0, w0 = tree_cpu_s(), mono_ns()
    if long_begin is not None:
        long_begin()
    else:
        a.begin()
    threads_during = thread_count()
    time.sleep(overhead_s)
    if long_end is not None:
        long_end()
    else:
        a.read(a.end())
    c1, w1 = tree_cpu_s(), mono_ns()
    out["overhead"] = {"cpu_s": c1 - c0, "wall_s": (w1 - w0) / 1e9, "threads": threads_during}
    # Helper processes still alive (for the record).
    out["descendants_cpu_s"] = _descendants_cpu_s(os.getpid())
    a.close()
    out["ok"] = True
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tool", required=True, choices=sorted(ADAPTERS))
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.config) as f:
        cfg = json.load(f)
    try:
        result = run(args.tool, cfg)
        rc = 0
    except BaseException as e:  # noqa: BLE001 - report any failure to the runner
        result = {"tool": args.tool, "ok": False, "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc()}
        rc = 1
    with open(args.out, "w") as f:
        json.dump(result, f)
    sys.stdout.flush()
    # Some tools leave non-daemon threads behind: run the exit handlers (they stop helper
    # processes), end any helper process still alive (our own descendants, by pid), and leave.
    try:
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        pass
    kill_descendants()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    main()
