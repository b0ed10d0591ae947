#!/usr/bin/env python3
"""GPU energy check for a machine with an NVIDIA GPU and PyTorch, no network needed.

How to run (normally through ``check.sh``, which installs greenml from the checkout first)::

    benchmarks/gpu/check.sh OUTDIR                # build+install greenml, then this script
    python benchmarks/gpu/check.py OUTDIR [--quick] [--gpu N]   # greenml already installed

Against the fake NVML library of tests/fakes (no GPU), see ``run_fake.sh`` here.

Environment: ``GREENML_NVML_LIBRARY`` selects the NVML library (default ``libnvidia-ml.so.1``);
``FAKE_NVML_DIR`` set means the fake library is in use, and every output says so.

What it measures (each section independent: a failure is recorded, the rest still runs):

1. ``greenml sensors`` (CLI output) and ``greenml.sensors()``;
2. NVML call latency per function through ctypes (median/p99 µs): energy counter, power,
   instantaneous power field (when the driver has it), next to a trivial ctypes call;
3. the energy counter's update period: polled every ~0.2 ms for 2 s, the median interval
   between value changes (idle, and under load when CUDA is usable); the same for power;
4. agreement between the energy counter and integrated power readings: idle (3 s), a steady
   torch matmul load (10 s), and bursts of 10-500 ms (energy over a padded window, above idle);
5. greenml's window energy (``greenml.Meter``) against the raw counter, polled at ~0.5 ms in
   a separate thread and interpolated between its change instants, for 20 ms .. 5 s windows,
   sampling at 10 ms and 1 ms, under load when CUDA is usable (idle otherwise);
6. the sampler thread's CPU cost (``thread_cpu_ns``) at 1 kHz and 100 Hz while the GPU is busy;
7. a ``greenml.meter`` around a 10 s torch matmul loop (energy, power, uncertainty, vs the raw
   counter and the achieved TFLOP/s);
8. a power-limit sweep (``greenml.powercap.sweep``) of a fixed-work matmul step over the GPU's
   limit range, about 2 minutes, written to ``OUTDIR/powercap/`` and compared with the paper's
   FROST savings; skipped when this process may not change the limit (needs root).

Everything goes to ``OUTDIR/results.json``, ``OUTDIR/sensors.txt`` and a short
``OUTDIR/summary.txt``. Total runtime about 4-5 minutes (``--quick``: about 2).
Parts that need a CUDA load are skipped, with a message saying so, when torch.cuda is not
available.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

NVML_FI_DEV_POWER_INSTANT = 186  # nvmlFieldValue_t field id (newer drivers)
NVML_SUCCESS = 0


def now_ns() -> int:
    return time.monotonic_ns()  # CLOCK_MONOTONIC, the clock greenml's samples use


def jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (np.floating,)):
        return jsonable(float(x))
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def pstats(x_us: Sequence[float]) -> Dict[str, float]:
    a = np.asarray(x_us, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "median": float(np.median(a)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


# ------------------------------------------------------------------------------------ NVML


class FieldValue(ctypes.Structure):
    """nvmlFieldValue_t (nvml.h)."""

    _fields_ = [
        ("fieldId", ctypes.c_uint),
        ("scopeId", ctypes.c_uint),
        ("timestamp", ctypes.c_longlong),
        ("latencyUsec", ctypes.c_longlong),
        ("valueType", ctypes.c_int),
        ("nvmlReturn", ctypes.c_int),
        ("value", ctypes.c_ulonglong),  # a union of 8 bytes; decoded by valueType
    ]


class Nvml:
    """The few NVML calls this check needs, through ctypes (ctypes releases the GIL)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lib = ctypes.CDLL(path)
        init = self._fn("nvmlInit_v2", "nvmlInit")
        rc = init()
        if rc != NVML_SUCCESS:
            raise RuntimeError(f"nvmlInit failed: {self.error(rc)} ({rc})")
        count = ctypes.c_uint(0)
        rc = self._fn("nvmlDeviceGetCount_v2", "nvmlDeviceGetCount")(ctypes.byref(count))
        if rc != NVML_SUCCESS:
            raise RuntimeError(f"nvmlDeviceGetCount failed: {self.error(rc)}")
        self.count = count.value
        get = self._fn("nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex")
        self.handles: List[ctypes.c_void_p] = []
        for i in range(self.count):
            h = ctypes.c_void_p()
            rc = get(ctypes.c_uint(i), ctypes.byref(h))
            if rc != NVML_SUCCESS:
                raise RuntimeError(f"nvmlDeviceGetHandleByIndex({i}) failed: {self.error(rc)}")
            self.handles.append(h)
        self._energy = getattr(self.lib, "nvmlDeviceGetTotalEnergyConsumption", None)
        self._power = getattr(self.lib, "nvmlDeviceGetPowerUsage", None)
        self._fields = getattr(self.lib, "nvmlDeviceGetFieldValues", None)
        self._errstr = getattr(self.lib, "nvmlErrorString", None)
        if self._errstr is not None:
            self._errstr.restype = ctypes.c_char_p

    def _fn(self, *names: str) -> Any:
        for n in names:
            f = getattr(self.lib, n, None)
            if f is not None:
                return f
        raise RuntimeError(f"{self.path} has none of {names}")

    def error(self, rc: int) -> str:
        if self._errstr is None:
            return f"error {rc}"
        return self._errstr(ctypes.c_int(rc)).decode(errors="replace")

    def _string(self, fn: str, i: int) -> str:
        """A device string from NVML function ``fn`` (a 96-byte buffer), or "?"."""
        buf = ctypes.create_string_buffer(96)
        f = getattr(self.lib, fn, None)
        if f is None or f(self.handles[i], buf, ctypes.c_uint(96)) != NVML_SUCCESS:
            return "?"
        return buf.value.decode(errors="replace")

    def name(self, i: int) -> str:
        return self._string("nvmlDeviceGetName", i)

    def uuid(self, i: int) -> str:
        return self._string("nvmlDeviceGetUUID", i)

    def power_limit_w(self, i: int) -> Optional[float]:
        f = getattr(self.lib, "nvmlDeviceGetEnforcedPowerLimit", None)
        v = ctypes.c_uint(0)
        if f is None or f(self.handles[i], ctypes.byref(v)) != NVML_SUCCESS:
            return None
        return v.value / 1e3

    def energy_mj(self, i: int) -> Optional[int]:
        """The energy counter (mJ), or None when unsupported / failing."""
        if self._energy is None:
            return None
        e = ctypes.c_ulonglong(0)  # per call: the poller thread and the main thread both read
        rc = self._energy(self.handles[i], ctypes.byref(e))
        return e.value if rc == NVML_SUCCESS else None

    def energy_rc(self, i: int) -> int:
        if self._energy is None:
            return -1
        return int(self._energy(self.handles[i], ctypes.byref(ctypes.c_ulonglong(0))))

    def power_mw(self, i: int) -> Optional[int]:
        if self._power is None:
            return None
        p = ctypes.c_uint(0)
        rc = self._power(self.handles[i], ctypes.byref(p))
        return p.value if rc == NVML_SUCCESS else None

    def power_instant_mw(self, i: int) -> Optional[float]:
        """NVML_FI_DEV_POWER_INSTANT through nvmlDeviceGetFieldValues (None if unavailable)."""
        if self._fields is None:
            return None
        fv = FieldValue()
        fv.fieldId = NVML_FI_DEV_POWER_INSTANT
        fv.scopeId = 0
        rc = self._fields(self.handles[i], ctypes.c_int(1), ctypes.byref(fv))
        if rc != NVML_SUCCESS or fv.nvmlReturn != NVML_SUCCESS:
            return None
        raw = fv.value
        vt = fv.valueType
        if vt == 0:  # double
            return ctypes.c_double.from_buffer_copy(raw.to_bytes(8, "little")).value
        if vt == 1:  # unsigned int
            return float(raw & 0xFFFFFFFF)
        if vt == 5:  # signed int
            return float(ctypes.c_int(raw & 0xFFFFFFFF).value)
        if vt == 6:  # unsigned short
            return float(raw & 0xFFFF)
        if vt == 4:  # signed long long
            return float(ctypes.c_longlong(raw).value)
        return float(raw)

    def trivial(self) -> None:
        if self._errstr is not None:
            self._errstr(ctypes.c_int(0))


# ------------------------------------------------------------------------------------ load


class Load:
    """A torch matmul load on one CUDA device, in a background thread or inline."""

    def __init__(self, torch: Any, device: int, size: int) -> None:
        self.torch = torch
        self.dev = torch.device("cuda", device)
        dtype = torch.float16
        g = torch.Generator(device=self.dev).manual_seed(0)
        self.a = torch.randn(size, size, device=self.dev, dtype=dtype, generator=g)
        self.b = torch.randn(size, size, device=self.dev, dtype=dtype, generator=g)
        self.flop = 2.0 * size ** 3
        self.matmuls = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.run_for(0.3)  # warm up cuBLAS

    def run_for(self, seconds: float) -> int:
        """Issues matmuls for ``seconds`` (wall), then waits for them; returns how many."""
        torch = self.torch
        end = time.perf_counter() + seconds
        n = 0
        with torch.cuda.device(self.dev):
            while time.perf_counter() < end:
                torch.matmul(self.a, self.b)
                n += 1
                if n % 4 == 0:
                    torch.cuda.synchronize()  # keep the queue short; releases the GIL
            torch.cuda.synchronize()
        self.matmuls += n
        return n

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_for(0.02)

    def start(self) -> "Load":
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="gpu-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class Poller:
    """Polls NVML readings in a background thread at a fixed period (spin-sleep)."""

    def __init__(self, nv: Nvml, idx: int, period_s: float, power: bool = True,
                 instant: bool = False) -> None:
        self.nv, self.idx, self.period_s = nv, idx, period_s
        self.power, self.instant = power, instant
        self.rows: List[Tuple[int, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nvml-poll", daemon=True)

    def _loop(self) -> None:
        nv, i = self.nv, self.idx
        period_ns = int(self.period_s * 1e9)
        nxt = now_ns()
        while not self._stop.is_set():
            e = nv.energy_mj(i)
            p = nv.power_mw(i) if self.power else None
            q = nv.power_instant_mw(i) if self.instant else None
            t = now_ns()
            self.rows.append((t, math.nan if e is None else float(e),
                              math.nan if p is None else float(p),
                              math.nan if q is None else float(q)))
            nxt += period_ns
            delay = nxt - now_ns()
            if delay > 300_000:
                time.sleep((delay - 200_000) / 1e9)
            while now_ns() < nxt:
                pass
            if now_ns() - nxt > 50 * period_ns:
                nxt = now_ns()

    def __enter__(self) -> "Poller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def arrays(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        a = np.array(self.rows, dtype=np.float64).reshape(-1, 4)
        return a[:, 0].astype(np.int64), a[:, 1], a[:, 2], a[:, 3]


def change_points(t: np.ndarray, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(instants, values) where a polled value first appears (the first sample kept)."""
    ok = np.isfinite(v)
    t, v = t[ok], v[ok]
    if v.size == 0:
        return t, v
    keep = np.concatenate(([True], v[1:] != v[:-1]))
    return t[keep], v[keep]


def counter_reference(t: np.ndarray, e_mj: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Energy (J) at given times from the raw counter, linear between change instants."""
    tc, ec = change_points(t, e_mj)
    tc = tc.astype(np.float64)
    ej = ec / 1e3
    return lambda x: np.interp(np.asarray(x, dtype=np.float64), tc, ej)


def trapezoid_j(t: np.ndarray, p_mw: np.ndarray, a: int, b: int) -> float:
    """Integral of polled power (mW) over [a, b] (ns), linear between polls."""
    ok = np.isfinite(p_mw)
    t, p = t[ok].astype(np.float64), p_mw[ok] / 1e3
    if t.size < 2:
        return math.nan
    grid = np.concatenate(([a], t[(t > a) & (t < b)], [b])).astype(np.float64)
    pw = np.interp(grid, t, p)
    return float(np.sum((pw[1:] + pw[:-1]) / 2 * np.diff(grid)) / 1e9)


# ------------------------------------------------------------------------------------ sections


class Check:
    def __init__(self, out: Path, quick: bool, gpu: Optional[int]) -> None:
        self.out = out
        self.quick = quick
        self.scale = 0.5 if quick else 1.0
        self.lib = os.environ.get("GREENML_NVML_LIBRARY") or "libnvidia-ml.so.1"
        self.fake = bool(os.environ.get("FAKE_NVML_DIR"))
        self.results: Dict[str, Any] = {}
        self.summary: List[str] = []
        self.nv: Optional[Nvml] = None
        self.torch: Any = None
        self.cuda_reason = ""
        self.cuda_index = gpu if gpu is not None else 0
        self.nvml_index = 0
        self.load: Optional[Load] = None

    # -- plumbing --

    def section(self, name: str, fn: Callable[[], Any]) -> None:
        t0 = time.monotonic()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        try:
            r = fn()
            if r is None:
                r = {}
            r.setdefault("status", "ok")
        except Skip as e:
            r = {"status": "skipped", "reason": str(e)}
            self.summary.append(f"{name}: SKIPPED: {e}")
            print(f"    skipped: {e}", flush=True)
        except Exception as e:  # noqa: BLE001 - one broken section must not stop the rest
            r = {"status": "error", "error": f"{type(e).__name__}: {e}",
                 "traceback": traceback.format_exc()}
            self.summary.append(f"{name}: ERROR: {type(e).__name__}: {e}")
            print(f"    error: {type(e).__name__}: {e}", flush=True)
        r["seconds"] = time.monotonic() - t0
        self.results[name] = r
        self.save()

    def save(self) -> None:
        (self.out / "results.json").write_text(json.dumps(jsonable(self.results), indent=1) + "\n")

    def need_nvml(self) -> Nvml:
        if self.nv is None:
            raise Skip(f"NVML could not be loaded from {self.lib}")
        return self.nv

    def need_cuda(self) -> Load:
        if self.load is None:
            raise Skip(f"no CUDA load possible ({self.cuda_reason}); load parts skipped")
        return self.load

    def runtime(self, interval_ms: float) -> Any:
        import greenml
        from greenml._config import Settings

        env = dict(os.environ)
        from greenml._config import parse_cuda_device_order

        settings = Settings(nvml_library=self.lib, interval_ms=interval_ms,
                            sources=frozenset({"nvml"}),
                            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                            cuda_device_order=parse_cuda_device_order(
                                os.environ.get("CUDA_DEVICE_ORDER", "")),
                            env=env)
        return greenml.Runtime(settings)

    @property
    def domain(self) -> str:
        return f"gpu:{self.cuda_index}"

    # -- 0. environment --

    def environment(self) -> Dict[str, Any]:
        r: Dict[str, Any] = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "uname": " ".join(platform.uname()),
            "python": sys.version.split()[0],
            "nproc": os.cpu_count(),
            "nvml_library": self.lib,
            "fake_nvml": self.fake,
            "fake_nvml_dir": os.environ.get("FAKE_NVML_DIR"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
        try:
            with open("/proc/loadavg") as f:
                r["loadavg"] = f.read().split()[:3]
        except OSError:
            pass
        try:
            import greenml

            r["greenml"] = getattr(greenml, "__version__", "?")
            r["greenml_path"] = str(Path(greenml.__file__).parent)
        except Exception as e:  # noqa: BLE001
            r["greenml_error"] = repr(e)
        smi = shutil.which("nvidia-smi")
        if smi and not self.fake:
            q = subprocess.run([smi, "--query-gpu=index,name,uuid,driver_version,power.limit,"
                                "power.draw,clocks.sm,temperature.gpu", "--format=csv"],
                               capture_output=True, text=True, timeout=30)
            r["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
        try:
            import torch

            self.torch = torch
            r["torch"] = torch.__version__
            r["torch_cuda"] = getattr(torch.version, "cuda", None)
            if torch.cuda.is_available():
                r["cuda_devices"] = [torch.cuda.get_device_name(i)
                                     for i in range(torch.cuda.device_count())]
            else:
                self.cuda_reason = "torch.cuda.is_available() is False"
        except ImportError as e:
            self.cuda_reason = f"torch cannot be imported ({e})"
        try:
            self.nv = Nvml(self.lib)
            r["nvml_devices"] = [{"index": i, "name": self.nv.name(i), "uuid": self.nv.uuid(i),
                                  "power_limit_w": self.nv.power_limit_w(i),
                                  "energy_counter": self.nv.energy_mj(i) is not None}
                                 for i in range(self.nv.count)]
        except Exception as e:  # noqa: BLE001
            r["nvml_error"] = f"{type(e).__name__}: {e}"
        # The NVML index of the CUDA device under load: matched by UUID.
        if self.torch is not None and not self.cuda_reason and self.nv is not None:
            try:
                props = self.torch.cuda.get_device_properties(self.cuda_index)
                u = str(getattr(props, "uuid", "")).lower().replace("gpu-", "")
                for i in range(self.nv.count):
                    if self.nv.uuid(i).lower().replace("gpu-", "") == u and u:
                        self.nvml_index = i
                        break
                else:
                    self.nvml_index = self.cuda_index
                    r["index_note"] = "CUDA UUID not found in NVML; assuming the same index"
            except Exception as e:  # noqa: BLE001
                self.nvml_index = self.cuda_index
                r["index_note"] = f"UUID match failed ({e}); assuming the same index"
        r["cuda_index"] = self.cuda_index
        r["nvml_index"] = self.nvml_index
        if self.torch is not None and not self.cuda_reason:
            try:
                self.load = Load(self.torch, self.cuda_index, 8192)
            except Exception as e:  # noqa: BLE001
                self.cuda_reason = f"building the matmul load failed: {e}"
        r["cuda_load"] = self.load is not None
        r["cuda_reason"] = self.cuda_reason or None
        return r

    # -- 1. sensors --

    def sensors(self) -> Dict[str, Any]:
        p = subprocess.run([sys.executable, "-m", "greenml", "sensors"], capture_output=True,
                           text=True, timeout=120)
        text = p.stdout + (("\n[stderr]\n" + p.stderr) if p.stderr.strip() else "")
        (self.out / "sensors.txt").write_text(text)
        import greenml

        found = [s.__dict__ if hasattr(s, "__dict__") else s._asdict() for s in greenml.sensors()]
        gpu = [s for s in found if str(s.get("domain", "")).startswith("gpu:")]
        self.summary.append(f"greenml sensors: exit {p.returncode}; GPU domains: "
                            + (", ".join(f"{s['domain']} ({'ok' if s['available'] else 'unavailable: ' + s['reason']})"
                                         for s in gpu) or "none"))
        return {"cli_rc": p.returncode, "cli_output": text, "sensors": found}

    # -- 2. latency --

    def latency(self) -> Dict[str, Any]:
        nv = self.need_nvml()
        i = self.nvml_index
        n = int(2000 * self.scale)
        calls: Dict[str, Callable[[], Any]] = {
            "ctypes floor (nvmlErrorString)": nv.trivial,
            "nvmlDeviceGetTotalEnergyConsumption": lambda: nv.energy_mj(i),
            "nvmlDeviceGetPowerUsage": lambda: nv.power_mw(i),
        }
        if nv.power_instant_mw(i) is not None:
            calls["nvmlDeviceGetFieldValues(POWER_INSTANT)"] = lambda: nv.power_instant_mw(i)
        out: Dict[str, Any] = {"device": i, "calls": n}
        clock = time.perf_counter_ns
        for name, fn in calls.items():
            for _ in range(50):
                fn()
            d = np.empty(n)
            for k in range(n):
                a = clock()
                fn()
                d[k] = clock() - a
            out[name] = pstats(d / 1e3)
        out["energy_rc"] = nv.energy_rc(i)
        parts = [f"{k.split(' (')[0].replace('nvmlDevice', '')}: {v['median']:.1f}/{v['p99']:.1f}"
                 for k, v in out.items() if isinstance(v, dict) and "median" in v]
        self.summary.append("NVML latency median/p99 µs: " + "; ".join(parts))
        return out

    # -- 3. update period --

    def _update_period(self, seconds: float) -> Dict[str, Any]:
        nv = self.need_nvml()
        with Poller(nv, self.nvml_index, 0.0002, power=True) as pl:
            time.sleep(seconds)
        t, e, p, _ = pl.arrays()
        r: Dict[str, Any] = {"polls": int(t.size),
                             "poll_interval_us_median": float(np.median(np.diff(t)) / 1e3)
                             if t.size > 1 else None}
        for name, v in (("energy", e), ("power", p)):
            tc, _ = change_points(t, v)
            iv = np.diff(tc) / 1e6
            r[name] = {"changes": int(tc.size), "interval_ms": pstats(iv)} if iv.size else {
                "changes": int(tc.size), "note": "no change seen"}
        return r

    def update_period(self) -> Dict[str, Any]:
        r = {"idle": self._update_period(2.0 * self.scale)}
        if self.load is not None:
            self.load.start()
            try:
                time.sleep(0.5)
                r["load"] = self._update_period(2.0 * self.scale)
            finally:
                self.load.stop()
        else:
            r["load"] = {"status": "skipped", "reason": self.cuda_reason}
        for k in ("idle", "load"):
            en = r[k].get("energy", {}).get("interval_ms", {})
            pw = r[k].get("power", {}).get("interval_ms", {})
            if en.get("n"):
                self.summary.append(f"update period ({k}): energy counter median "
                                    f"{en['median']:.2f} ms, power median "
                                    f"{pw.get('median', float('nan')):.2f} ms")
        return r

    # -- 4. agreement --

    def _agreement(self, seconds: float, load: bool) -> Dict[str, Any]:
        nv = self.need_nvml()
        instant = nv.power_instant_mw(self.nvml_index) is not None
        if load:
            self.need_cuda().start()
            time.sleep(1.0)
        try:
            with Poller(nv, self.nvml_index, 0.001, power=True, instant=instant) as pl:
                time.sleep(seconds)
        finally:
            if load and self.load is not None:
                self.load.stop()
        t, e, p, q = pl.arrays()
        tc, ec = change_points(t, e)
        if tc.size < 2:
            raise RuntimeError("the energy counter did not change")
        a, b = int(tc[0]), int(tc[-1])  # from one update to another: exact counter delta
        e_j = (ec[-1] - ec[0]) / 1e3
        p_j = trapezoid_j(t, p, a, b)
        r = {"span_s": (b - a) / 1e9, "counter_j": e_j, "power_integral_j": p_j,
             "counter_mean_w": e_j / ((b - a) / 1e9), "power_vs_counter": p_j / e_j - 1.0}
        if instant:
            qi = trapezoid_j(t, q, a, b)
            r["instant_power_integral_j"] = qi
            r["instant_vs_counter"] = qi / e_j - 1.0
        return r

    def agreement_idle(self) -> Dict[str, Any]:
        r = self._agreement(3.0 * self.scale, load=False)
        self.summary.append(f"counter vs integrated power, idle {r['span_s']:.1f} s: counter "
                            f"{r['counter_j']:.2f} J ({r['counter_mean_w']:.1f} W), power "
                            f"{r['power_integral_j']:.2f} J ({100 * r['power_vs_counter']:+.2f}%)")
        return r

    def agreement_steady(self) -> Dict[str, Any]:
        self.need_cuda()
        r = self._agreement(10.0 * self.scale, load=True)
        line = (f"counter vs integrated power, steady matmul {r['span_s']:.1f} s: counter "
                f"{r['counter_j']:.1f} J ({r['counter_mean_w']:.1f} W), power "
                f"{r['power_integral_j']:.1f} J ({100 * r['power_vs_counter']:+.2f}%)")
        if "instant_vs_counter" in r:
            line += f", instant power {100 * r['instant_vs_counter']:+.2f}%"
        self.summary.append(line)
        return r

    def bursts(self) -> Dict[str, Any]:
        load = self.need_cuda()
        nv = self.need_nvml()
        lengths = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
        reps = 1 if self.quick else 2
        pre, post = 0.3, 1.3  # post > 1 s: a 1 s averaged power reading has caught up
        instant = nv.power_instant_mw(self.nvml_index) is not None
        rows = []
        with Poller(nv, self.nvml_index, 0.001, power=True, instant=instant) as pl:
            time.sleep(1.5)  # idle reference
            t_idle0 = now_ns() - 1_200_000_000
            t_idle1 = now_ns() - 200_000_000
            marks = []
            for L in lengths * reps:
                time.sleep(pre)
                a = now_ns()
                n = load.run_for(L)
                b = now_ns()
                time.sleep(post)
                marks.append((L, a, b, n))
        t, e, p, q = pl.arrays()
        ref = counter_reference(t, e)
        idle_w = float((ref(t_idle1) - ref(t_idle0)) / ((t_idle1 - t_idle0) / 1e9))
        idle_pw = trapezoid_j(t, p, t_idle0, t_idle1) / ((t_idle1 - t_idle0) / 1e9)
        for L, a, b, n in marks:
            wa, wb = a - int(pre * 0.8e9), b + int(post * 0.95e9)
            span = (wb - wa) / 1e9
            ce = float(ref(wb) - ref(wa))
            pe = trapezoid_j(t, p, wa, wb)
            row = {"length_s": L, "actual_s": (b - a) / 1e9, "matmuls": n,
                   "window_s": span, "counter_j": ce, "power_j": pe,
                   "counter_above_idle_j": ce - idle_w * span,
                   "power_above_idle_j": pe - idle_pw * span}
            if instant:
                row["instant_j"] = trapezoid_j(t, q, wa, wb)
            row["power_vs_counter_above_idle"] = (row["power_above_idle_j"]
                                                  / row["counter_above_idle_j"] - 1.0
                                                  if row["counter_above_idle_j"] > 0 else None)
            rows.append(row)
        by: Dict[float, List[Dict[str, Any]]] = {}
        for r in rows:
            by.setdefault(r["length_s"], []).append(r)

        def med(rs: List[Dict[str, Any]], key: str) -> float:
            return float(np.median([r[key] for r in rs]))

        self.summary.append(
            f"bursts, energy above idle (idle {idle_w:.1f} W by counter, {idle_pw:.1f} W by "
            "power), counter J / power-integral J: " + "; ".join(
                f"{1e3 * L:g} ms {med(rs, 'counter_above_idle_j'):.2f}/"
                f"{med(rs, 'power_above_idle_j'):.2f}" for L, rs in by.items()))
        return {"idle_counter_w": idle_w, "idle_power_w": idle_pw, "bursts": rows}

    # -- 5. greenml windows vs raw counter --

    def windows(self) -> Dict[str, Any]:
        import warnings

        import greenml

        nv = self.need_nvml()
        plan = [(0.02, 8), (0.05, 6), (0.1, 6), (1.0, 3), (5.0, 1)]
        if self.quick:
            plan = [(0.02, 4), (0.1, 4), (1.0, 2), (5.0, 1)]
        out: Dict[str, Any] = {"under_load": self.load is not None,
                               "note": None if self.load is not None else
                               f"idle (no CUDA load: {self.cuda_reason})"}
        for interval_ms in (10.0, 1.0):
            rt = self.runtime(interval_ms)
            chans = {c.domain: c.kind for c in rt.channels}
            if self.domain not in chans:
                rt.stop()
                raise RuntimeError(f"greenml has no {self.domain} channel here: {chans}; "
                                   f"sensors: {rt.sensors()}")
            rt.ensure_started()
            rows = []
            if self.load is not None:
                self.load.start()
            try:
                time.sleep(0.5)
                with Poller(nv, self.nvml_index, 0.0005, power=False) as pl:
                    time.sleep(0.3)
                    meters = []
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", greenml.ShortWindowWarning)
                        for L, n in plan:
                            for _ in range(n):
                                m = greenml.Meter(runtime=rt, sync_cuda=False)
                                with m:
                                    time.sleep(L)
                                meters.append((L, m))
                                time.sleep(0.05)
                        time.sleep(0.4)  # let the last counter update arrive
                        results = [(L, m, m.result(wait=True)) for L, m in meters]
            finally:
                if self.load is not None:
                    self.load.stop()
                stats = rt.sampler.stats()
                rt.stop()
            t, e, _, _ = pl.arrays()
            ref = counter_reference(t, e)
            for L, m, r in results:
                w = getattr(m, "_window", None)
                a, b = int(w.t0_ns), int(w.t1_ns)
                ref_j = float(ref(b) - ref(a))
                g = r.by_domain[self.domain]
                u = r.uncertainty_by_domain[self.domain]
                rows.append({"length_s": L, "duration_s": (b - a) / 1e9, "greenml_j": g,
                             "uncertainty_j": u, "raw_ref_j": ref_j,
                             "rel_diff": (g - ref_j) / ref_j if ref_j else None,
                             "within_uncertainty": abs(g - ref_j) <= u})
            cells = {}
            for L, _ in plan:
                rs = [r for r in rows if r["length_s"] == L and r["rel_diff"] is not None]
                if rs:
                    d = [abs(r["rel_diff"]) for r in rs]
                    cells[f"{L:g}"] = {"n": len(rs), "median_abs_rel_diff": float(np.median(d)),
                                       "max_abs_rel_diff": float(np.max(d)),
                                       "within_uncertainty": sum(r["within_uncertainty"] for r in rs),
                                       "median_rel_uncertainty": float(np.median(
                                           [r["uncertainty_j"] / abs(r["raw_ref_j"]) for r in rs]))}
            out[f"{interval_ms:g}ms"] = {"channel_kind": chans[self.domain], "rows": rows,
                                         "summary": cells,
                                         "sampler_missed": stats.get("missed_deadlines")}
            self.summary.append(
                f"greenml vs raw counter, sampling {interval_ms:g} ms"
                f"{'' if self.load is not None else ' (idle)'}: " + "; ".join(
                    f"{1e3 * float(k):g} ms med {100 * c['median_abs_rel_diff']:.2f}% max "
                    f"{100 * c['max_abs_rel_diff']:.2f}% (in unc {c['within_uncertainty']}/{c['n']})"
                    for k, c in cells.items()))
        return out

    # -- 6. sampler overhead --

    def sampler_overhead(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"under_load": self.load is not None}
        seconds = 4.0 * self.scale
        if self.load is not None:
            self.load.start()
        try:
            for interval_ms in (1.0, 10.0):
                rt = self.runtime(interval_ms)
                s = rt.ensure_started()
                time.sleep(0.3)
                s0, t0 = s.stats(), now_ns()
                time.sleep(seconds)
                s1, t1 = s.stats(), now_ns()
                rt.stop()
                cpu = (s1["thread_cpu_ns"] - s0["thread_cpu_ns"]) / 1e9
                wall = (t1 - t0) / 1e9
                n = s1["samples"] - s0["samples"]
                out[f"{interval_ms:g}ms"] = {
                    "wall_s": wall, "samples": n, "expected": wall / (interval_ms / 1e3),
                    "missed_deadlines": s1["missed_deadlines"] - s0["missed_deadlines"],
                    "failed_reads": s1["failed_reads"] - s0["failed_reads"],
                    "thread_cpu_pct_of_core": 100.0 * cpu / wall,
                    "cpu_us_per_sample": 1e6 * cpu / max(n, 1),
                    "max_lateness_ms": s1["max_lateness_ns"] / 1e6}
        finally:
            if self.load is not None:
                self.load.stop()
        self.summary.append("sampler thread" + (" (GPU busy)" if self.load else " (GPU idle)")
                            + ": " + "; ".join(
                                f"{k}: {v['thread_cpu_pct_of_core']:.2f}% of a core, "
                                f"{v['cpu_us_per_sample']:.1f} µs/sample, {v['samples']}/"
                                f"{v['expected']:.0f} samples, {v['missed_deadlines']} missed"
                                for k, v in out.items() if isinstance(v, dict)))
        return out

    # -- 7. meter around a 10 s matmul loop --

    def meter_matmul(self) -> Dict[str, Any]:
        import greenml

        load = self.need_cuda()
        nv = self.need_nvml()
        rt = self.runtime(10.0)
        try:
            m = greenml.Meter("matmul-10s", runtime=rt)  # sync_cuda: edges wait for the GPU
            e0 = nv.energy_mj(self.nvml_index)
            n0 = load.matmuls
            with m:
                load.run_for(10.0 * self.scale)
            e1 = nv.energy_mj(self.nvml_index)
            n = load.matmuls - n0
            r = m.result(wait=True)
        finally:
            rt.stop()
        tflops = n * load.flop / r.duration_s / 1e12
        if e0 is None or e1 is None:
            raise RuntimeError("the raw energy counter could not be read around the meter")
        raw = (e1 - e0) / 1e3
        g = r.by_domain.get(self.domain)
        if g is None:
            raise RuntimeError(f"the meter has no {self.domain} domain: {sorted(r.by_domain)}")
        out = {"duration_s": r.duration_s, "energy_j": r.energy_j, "by_domain": r.by_domain,
               "uncertainty_j": r.uncertainty_j, "mean_power_w": r.mean_power_w,
               "co2e_g": r.co2e_g, "settled": r.settled, "raw_counter_delta_j": raw,
               "greenml_vs_raw": (g / raw - 1.0) if raw else None, "matmuls": n,
               "tflops": tflops, "j_per_tflop": (g / (n * load.flop / 1e12)) if g else None}
        self.summary.append(
            f"greenml.meter around {r.duration_s:.1f} s of fp16 matmul: {g:.1f} J ± "
            f"{r.uncertainty_by_domain.get(self.domain, float('nan')):.2f} J on {self.domain}, "
            f"{g / r.duration_s:.1f} W; raw counter delta {raw:.1f} J "
            f"({100 * out['greenml_vs_raw']:+.2f}%); {tflops:.1f} TFLOP/s, "
            f"{out['j_per_tflop']:.3f} J/TFLOP")
        return out

    # -- 8. power-limit sweep --

    def powercap_sweep(self) -> Dict[str, Any]:
        """A sweep of a matmul-heavy step over the GPU's power-limit range (auto grid), bounded to
        about 2 minutes (1 with --quick); needs root to change the limit, which greenml restores.
        Written to OUTDIR/powercap/ (sweep.csv, sweep.json, sweep.png)."""
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from powercap_sweep import gpu_sweep

        nv = self.need_nvml()
        if self.fake:
            # Give the loaded GPU the fake's limits (whatever it had), and a step that slows
            # under a lower limit, to run this section end to end (figures are the fake's).
            # The fake's GPUs are mixed models in PCI order: say which order CUDA would use.
            os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
            d = Path(os.environ["FAKE_NVML_DIR"]) / str(self.nvml_index)
            for name, mw in (("power_limit_mw", 450000), ("power_min_limit_mw", 150000),
                             ("power_max_limit_mw", 450000), ("power_default_limit_mw", 450000)):
                (d / name).write_text(f"{mw}\n")

            def step() -> None:
                limit = nv.power_limit_w(self.nvml_index) or 450.0
                time.sleep(0.01 * (450.0 / limit) ** (1 / 3))

            step_s: Optional[float] = 0.01
        else:
            load = self.need_cuda()
            torch = load.torch
            per = 1.0 / max(1, load.run_for(0.5) / 0.5)  # seconds per matmul
            k = max(1, int(0.1 / per))  # a step of fixed work: ~0.1 s at the current limit

            def step() -> None:
                with torch.cuda.device(load.dev):
                    for _ in range(k):
                        torch.matmul(load.a, load.b)
                    torch.cuda.synchronize()

            step_s = None
        try:
            r = gpu_sweep(step, self.domain, self.out / "powercap",
                          budget_s=110.0 * self.scale, settle_s=2.0 * self.scale, step_s=step_s)
        except PermissionError as e:
            raise Skip(f"cannot change the power limit here: {e}") from None
        self.summary.append(f"power-limit sweep of {self.domain} over {r['limits_w']} W "
                            f"({r['steps_per_limit']} steps per limit, {r['seconds']:.0f} s): "
                            f"least energy per step at {r['best_energy_w']:g} W")
        self.summary += ["    " + line for line in r["summary"]]
        return r

    # -- driver --

    def run(self) -> int:
        t0 = time.monotonic()
        self.section("environment", self.environment)
        self.section("sensors", self.sensors)
        self.section("nvml_latency", self.latency)
        self.section("update_period", self.update_period)
        self.section("agreement_idle", self.agreement_idle)
        self.section("agreement_steady", self.agreement_steady)
        self.section("bursts", self.bursts)
        self.section("greenml_windows", self.windows)
        self.section("sampler_overhead", self.sampler_overhead)
        self.section("meter_matmul", self.meter_matmul)
        self.section("powercap_sweep", self.powercap_sweep)
        total = time.monotonic() - t0
        self.results["total_seconds"] = total
        self.save()
        env = self.results.get("environment", {})
        head = [
            "greenml GPU check" + ("  ***  FAKE NVML LIBRARY: these numbers describe the test "
                                   "fake (tests/fakes/fake_nvml.c), not a GPU  ***"
                                   if self.fake else ""),
            f"date {env.get('date')}; {env.get('uname')}; python {env.get('python')}; "
            f"greenml {env.get('greenml')}; torch {env.get('torch')} (CUDA "
            f"{env.get('torch_cuda')}); NVML {self.lib}",
            "NVML devices: " + ", ".join(f"{d['index']}: {d['name']}" for d in
                                        env.get("nvml_devices", [])),
            f"load device: cuda:{self.cuda_index} = NVML {self.nvml_index}" if self.load else
            f"no CUDA load: {self.cuda_reason} -> load parts skipped",
            f"loadavg {env.get('loadavg')}; total {total:.0f} s",
            "",
        ]
        statuses = {k: v.get("status") for k, v in self.results.items() if isinstance(v, dict)}
        tail = ["", "sections: " + ", ".join(f"{k}={v}" for k, v in statuses.items())]
        text = "\n".join(head + self.summary + tail) + "\n"
        (self.out / "summary.txt").write_text(text)
        print("\n" + text)
        errors = [k for k, v in statuses.items() if v == "error"]
        return 1 if errors else 0


class Skip(Exception):
    """A section that cannot run here (no CUDA, no NVML)."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="greenml GPU energy check (see the module doc)")
    ap.add_argument("outdir")
    ap.add_argument("--quick", action="store_true", help="shorter runs (about 1 minute)")
    ap.add_argument("--gpu", type=int, default=None, help="CUDA device index to load (default 0)")
    args = ap.parse_args(argv)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    sys.setswitchinterval(0.0002)  # the poller thread must get the GIL promptly
    return Check(out, args.quick, args.gpu).run()


if __name__ == "__main__":
    sys.exit(main())
