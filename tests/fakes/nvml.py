"""Build and script the fake libnvidia-ml.so.1 (tests/fakes/fake_nvml.c).

The fake reads everything from files under ``$FAKE_NVML_DIR`` on every call,
so a test can change the "hardware" while the code under test runs::

    fake = FakeNvml(tmp_path)
    fake.add_device(uuid="GPU-aaaa...", name="NVIDIA H100", energy_mj=1000)
    monkeypatch.setenv("FAKE_NVML_DIR", fake.env["FAKE_NVML_DIR"])   # or: with fake.activate():
    src = greenml._core.NvmlSource(str(fake.library_path), None)
    fake.set_error(0, "energy", GPU_IS_LOST)

The fake calls getenv() each time, so in-process use needs the variable in
``os.environ``; subprocesses get it from ``fake.env``.

For the sampler's tests: ``fake.reset_counter(i)`` makes the energy counter jump
back (a driver reload), ``fake.lose(i)`` makes every read of a GPU fail with
GPU_IS_LOST, ``fake.set_error(i, "energy", NOT_SUPPORTED)`` makes a counter
that worked stop being supported. ``fake.log_calls()`` then ``fake.calls()``
tell which process called which NVML function, in order; the fake keeps
nvmlInit per process, so a forked child that did not call nvmlInit itself
gets NVML_ERROR_UNINITIALIZED from every device call.

Caveats: a process loads one copy of a given library path, and the fake keeps
its nvmlInit count per loaded copy. Variants (``variant="no_energy"``,
``"no_v2"``) are built to separate paths so they can coexist.

No pytest import here: the module is a plain helper usable from conftest or
scripts.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

__all__ = [
    "SOURCE",
    "VARIANTS",
    "FakeNvml",
    "CappedWorkload",
    "build_fake_nvml",
    "fake_nvml_library",
    "profile_energy_mj",
    "profile_power_mw",
    "profile_true_energy_j",
    "time_ns_monotonic",
    "SUCCESS",
    "NOT_SUPPORTED",
    "NO_PERMISSION",
    "DRIVER_NOT_LOADED",
    "GPU_IS_LOST",
    "UNKNOWN",
]

#: nvmlReturn_t values worth injecting.
SUCCESS = 0
UNINITIALIZED = 1
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
DRIVER_NOT_LOADED = 9
GPU_IS_LOST = 15
LIB_RM_VERSION_MISMATCH = 18
UNKNOWN = 999

SOURCE = Path(__file__).resolve().parent / "fake_nvml.c"

#: variant name -> extra compiler flags
VARIANTS: Dict[Optional[str], list] = {
    None: [],
    "no_energy": ["-DFAKE_NVML_NO_ENERGY"],
    "no_v2": ["-DFAKE_NVML_NO_V2"],
}

PathLike = Union[str, "os.PathLike[str]"]


def build_fake_nvml(out_dir: PathLike, variant: Optional[str] = None) -> Path:
    """Compile the fake into ``out_dir/libnvidia-ml.so.1`` and return its path.

    Raises RuntimeError (with the compiler's output) when the build fails and
    FileNotFoundError when no C compiler is found.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown fake NVML variant {variant!r}; expected one of {list(VARIANTS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "libnvidia-ml.so.1"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise FileNotFoundError("no C compiler (cc, gcc or clang) to build the fake libnvidia-ml")
    cmd = [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", *VARIANTS[variant],
           str(SOURCE), "-o", str(out), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"building the fake libnvidia-ml failed ({' '.join(cmd)}):\n{proc.stdout}{proc.stderr}"
        )
    return out


_cache: Dict[Optional[str], Path] = {}
_cache_lock = threading.Lock()
_cache_root: Optional[Path] = None


def fake_nvml_library(variant: Optional[str] = None) -> Path:
    """The fake built once per process (per variant), in a temp dir removed at exit."""
    global _cache_root
    with _cache_lock:
        if variant not in _cache:
            if _cache_root is None:
                _cache_root = Path(tempfile.mkdtemp(prefix="greenml-fake-nvml-"))
                atexit.register(shutil.rmtree, str(_cache_root), True)
            _cache[variant] = build_fake_nvml(_cache_root / (variant or "default"), variant)
        return _cache[variant]


# ---- the fake's time-driven profile, mirrored so tests know the truth -------


def _profile_energy_j(base_w: float, amp_w: float, freq_hz: float, tau_s: float) -> float:
    """Integral of P(t) = base_w + amp_w*sin(2*pi*freq_hz*t) from 0 to tau_s."""
    if freq_hz == 0:
        return base_w * tau_s
    w = 2.0 * math.pi * freq_hz
    return base_w * tau_s + amp_w / w * (1.0 - math.cos(w * tau_s))


def profile_energy_mj(base_w: float, amp_w: float, freq_hz: float, update_ms: float,
                      t0_ns: int, now_ns: int) -> int:
    """What nvmlDeviceGetTotalEnergyConsumption reports at CLOCK_MONOTONIC now_ns.

    The counter moves only every update_ms: the energy since t0 up to the last
    multiple of update_ms, floored to whole millijoules (see fake_nvml.c).
    Floating point may differ from C by 1 mJ at an exact boundary.
    """
    u = int(round(update_ms * 1e6))
    d = now_ns - t0_ns
    if d < 0:
        return 0
    if u > 0:
        d = (d // u) * u
    return max(0, math.floor(1000.0 * _profile_energy_j(base_w, amp_w, freq_hz, d / 1e9)))


def profile_true_energy_j(base_w: float, amp_w: float, freq_hz: float, t0_ns: int,
                          start_ns: int, end_ns: int) -> float:
    """Exact energy of the profile between two CLOCK_MONOTONIC times (no quantisation)."""
    return (_profile_energy_j(base_w, amp_w, freq_hz, (end_ns - t0_ns) / 1e9)
            - _profile_energy_j(base_w, amp_w, freq_hz, (start_ns - t0_ns) / 1e9))


def profile_power_mw(base_w: float, amp_w: float, freq_hz: float, t0_ns: int, now_ns: int) -> int:
    """What nvmlDeviceGetPowerUsage reports: mean power over the last second, in mW."""
    tau = (now_ns - t0_ns) / 1e9
    mw = 1000.0 * (_profile_energy_j(base_w, amp_w, freq_hz, tau)
                   - _profile_energy_j(base_w, amp_w, freq_hz, tau - 1.0))
    return max(0, int(math.floor(mw + 0.5)))  # C llround for non-negative values


class FakeNvml:
    """One scripted machine: a directory of files the fake reads on every call."""

    _KINDS = ("energy", "power", "handle", "uuid", "name", "set_limit")
    _PROFILE_FIELDS = ("base_w", "amp_w", "freq_hz", "update_ms")

    def __init__(self, root: PathLike, variant: Optional[str] = None,
                 library: Optional[PathLike] = None) -> None:
        self.dir = Path(root) / "fake_nvml"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.variant = variant
        self.library_path = Path(library) if library is not None else fake_nvml_library(variant)
        self._count = 0
        self._profiles: Dict[int, Dict[str, float]] = {}
        self._write("count", 0)

    # -- plumbing --

    @property
    def env(self) -> Dict[str, str]:
        """Variables the fake needs: merge into os.environ or a subprocess env."""
        return {"FAKE_NVML_DIR": str(self.dir)}

    @contextlib.contextmanager
    def activate(self) -> Iterator["FakeNvml"]:
        """Set FAKE_NVML_DIR in os.environ for the block, restoring it after."""
        old = os.environ.get("FAKE_NVML_DIR")
        os.environ["FAKE_NVML_DIR"] = str(self.dir)
        try:
            yield self
        finally:
            if old is None:
                os.environ.pop("FAKE_NVML_DIR", None)
            else:
                os.environ["FAKE_NVML_DIR"] = old

    def _write(self, rel: str, value: object) -> None:
        # Write then rename: the fake may read concurrently and must never see
        # a half-written file.
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"{value}\n")
        os.replace(tmp, path)

    def _remove(self, rel: str) -> None:
        try:
            (self.dir / rel).unlink()
        except FileNotFoundError:
            pass

    def _check(self, index: int) -> None:
        if not 0 <= index < self._count:
            raise IndexError(f"fake NVML has {self._count} device(s), no device {index}")

    # -- machine --

    @property
    def count(self) -> int:
        return self._count

    def set_count(self, n: int) -> None:
        """Override the device count NVML reports (devices beyond use defaults)."""
        self._count = n
        self._write("count", n)

    def set_init_error(self, code: Optional[int]) -> None:
        """nvmlInit_v2 returns ``code``; None restores success."""
        if code is None:
            self._remove("init_error")
        else:
            self._write("init_error", int(code))

    def add_device(self, uuid: Optional[str] = None, name: str = "NVIDIA Fake GPU",
                   energy_mj: Optional[int] = 0, power_mw: Optional[int] = 0,
                   pci_bus_id: Optional[str] = None, power_limit_mw: Optional[int] = None,
                   power_max_limit_mw: Optional[int] = None,
                   cuda_cc: Optional[str] = None) -> int:
        """Add a device and return its NVML index.

        ``energy_mj=None`` makes the energy counter NOT_SUPPORTED (pre-Volta),
        ``power_mw=None`` likewise for power. ``pci_bus_id`` ("0000:3b:00.0";
        default bus 16 + index, so PCI order is NVML order), ``power_limit_mw``
        (enforced limit), ``power_max_limit_mw`` (largest settable limit) and
        ``cuda_cc`` ("8.6") are NOT_SUPPORTED-when-None except the bus id.
        """
        i = self._count
        for rel, value in (("pci_bus_id", pci_bus_id), ("power_limit_mw", power_limit_mw),
                           ("power_max_limit_mw", power_max_limit_mw), ("cuda_cc", cuda_cc)):
            if value is not None:
                self._write(f"{i}/{rel}", value)
        if uuid is None:
            uuid = f"GPU-{i:08x}-0000-4000-8000-{0xfeed0000 + i:012x}"
        self._write(f"{i}/uuid", uuid)
        self._write(f"{i}/name", name)
        if energy_mj is None:
            self._remove(f"{i}/energy_mj")
        else:
            self._write(f"{i}/energy_mj", int(energy_mj))
        if power_mw is None:
            self._remove(f"{i}/power_mw")
        else:
            self._write(f"{i}/power_mw", int(power_mw))
        self.set_count(i + 1)
        return i

    def set_energy(self, index: int, energy_mj: Optional[int]) -> None:
        self._check(index)
        if energy_mj is None:
            self._remove(f"{index}/energy_mj")
        else:
            self._write(f"{index}/energy_mj", int(energy_mj))

    def set_power(self, index: int, power_mw: Optional[int]) -> None:
        self._check(index)
        if power_mw is None:
            self._remove(f"{index}/power_mw")
        else:
            self._write(f"{index}/power_mw", int(power_mw))

    def set_limits(self, index: int, current_w: Optional[float], min_w: Optional[float] = None,
                   max_w: Optional[float] = None, default_w: Optional[float] = None) -> None:
        """Script gpu ``index``'s power limits in watts (None removes that file: NOT_SUPPORTED,
        or 0 for the minimum). Starts a fresh limit history (the limit in force for all time is
        ``current_w``); nvmlDeviceSetPowerManagementLimit changes it from then on."""
        self._check(index)
        self._remove(f"{index}/limit_history")
        for rel, w in (("power_limit_mw", current_w), ("power_min_limit_mw", min_w),
                       ("power_max_limit_mw", max_w), ("power_default_limit_mw", default_w)):
            if w is None:
                self._remove(f"{index}/{rel}")
            else:
                self._write(f"{index}/{rel}", int(round(w * 1000)))

    def limit_w(self, index: int) -> Optional[float]:
        """The power limit in force on gpu ``index`` (W), as the hardware would enforce it."""
        self._check(index)
        try:
            return int((self.dir / str(index) / "power_limit_mw").read_text()) / 1000.0
        except FileNotFoundError:
            return None

    def limit_history(self, index: int) -> List[Tuple[int, float]]:
        """Every limit set so far as (CLOCK_MONOTONIC ns, W), oldest first (the first line
        is the limit before the first set, at t = 0; -0.001 W = none)."""
        try:
            text = (self.dir / str(index) / "limit_history").read_text()
        except FileNotFoundError:
            return []
        return [(int(t), int(mw) / 1000.0) for t, mw in (ln.split() for ln in text.splitlines())]

    def add_mig(self, index: int, *uuids: str) -> None:
        """Give gpu ``index`` MIG instances with these UUIDs ("MIG-...")."""
        self._check(index)
        self._write(f"{index}/mig_uuids", "\n".join(uuids))

    def set_error(self, index: int, kind: str, code: Optional[int]) -> None:
        """Inject an nvmlReturn_t into one call kind of one device; None clears it.

        kind: 'energy', 'power', 'handle', 'uuid', 'name' or 'set_limit' (4 = NO_PERMISSION is
        a process without root: the set fails and nothing changes).
        """
        if kind not in self._KINDS:
            raise ValueError(f"unknown fake NVML error kind {kind!r}; expected one of {self._KINDS}")
        self._check(index)
        if code is None or code == SUCCESS:
            self._remove(f"{index}/{kind}_error")
        else:
            self._write(f"{index}/{kind}_error", int(code))

    def set_profile(self, index: int, base_w: float, amp_w: float = 0.0, freq_hz: float = 0.0,
                    update_ms: float = 100.0, t0_ns: Optional[int] = None,
                    burst: Optional[Tuple[float, float, float]] = None) -> int:
        """Drive energy and power from time; returns t0_ns (default: now).

        Keep base_w >= abs(amp_w) so the counter never goes backwards. Use
        profile_energy_mj / profile_power_mw / profile_true_energy_j for truth. ``burst`` =
        (watts, period_ms, width_ms) adds that power for the first width_ms of every period_ms
        (truth: ``fakes.truth.nvml_true_energy_j(..., burst=...)``).
        """
        self._check(index)
        if base_w < abs(amp_w):
            raise ValueError("base_w must be >= abs(amp_w): power cannot go negative")
        if t0_ns is None:
            t0_ns = time_ns_monotonic()
        extra = "" if burst is None else " " + " ".join(repr(float(x)) for x in burst)
        self._write(f"{index}/profile",
                    f"{base_w!r} {amp_w!r} {freq_hz!r} {update_ms!r} {int(t0_ns)}{extra}")
        self._profiles[index] = dict(base_w=base_w, amp_w=amp_w, freq_hz=freq_hz,
                                     update_ms=update_ms)
        return int(t0_ns)

    def clear_profile(self, index: int) -> None:
        self._check(index)
        self._profiles.pop(index, None)
        self._remove(f"{index}/profile")

    # -- mid-run events, for the sampler's tests --

    def reset_counter(self, index: int, energy_mj: int = 0) -> Optional[int]:
        """The energy counter jumps back, as after a driver reload or GPU reset.

        With a profile, the profile restarts now (its counter starts again at 0
        and ``energy_mj`` must be 0); returns the new t0_ns. Without one, the
        static counter becomes ``energy_mj``; returns None.
        """
        self._check(index)
        profile = self._profiles.get(index)
        if profile is None:
            self.set_energy(index, energy_mj)
            return None
        if energy_mj != 0:
            raise ValueError("a profile's counter restarts at 0; pass energy_mj=0")
        return self.set_profile(index, **profile)

    def lose(self, index: int, code: int = GPU_IS_LOST) -> None:
        """Every energy and power read of this GPU fails with ``code`` from now on."""
        self.set_error(index, "energy", code)
        self.set_error(index, "power", code)

    # -- which process called what --

    def log_calls(self) -> Path:
        """From now on every NVML call appends "<pid> <call>" to a log; returns its path."""
        path = self.dir / "calls.log"
        path.touch()
        return path

    def calls(self, pid: Optional[int] = None) -> List[Tuple[int, str]]:
        """The logged calls as (pid, call) in order, only those of ``pid`` when given.

        Calls: init, shutdown, count, handle, handle_by_uuid, uuid, name, pci,
        energy, power, limit, cc, set_limit, mig_parent. Empty unless log_calls() came first.
        """
        try:
            text = (self.dir / "calls.log").read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            who, call = line.split()
            if pid is None or int(who) == pid:
                out.append((int(who), call))
        return out

    def init_count(self) -> int:
        """nvmlInit minus nvmlShutdown calls of this process in its copy of the fake.

        ctypes dlopens the same path, so it sees the copy _core loaded; the
        copy stays loaded while ctypes holds it.
        """
        lib = ctypes.CDLL(str(self.library_path))
        return int(lib.fake_nvml_init_count())


class CappedWorkload:
    """A simulated GPU step whose speed follows the fake's power limit, with a known optimum.

    Model (a GPU whose dynamic power grows as the cube of its clock, the clock it can hold under
    a limit L): power P(f) = static_w + (demand_w - static_w) * f**3 for a clock f in (0, 1]
    (f = 1 uncapped, drawing demand_w); under a limit L the GPU draws min(L, demand_w) -- what
    the fake's capped profile draws -- at the clock f(L) that power buys, and a step of fixed
    work takes t(L) = t_max_s / f(L). Energy per step E(L) = min(L, demand_w) * t(L) is convex
    in L with its minimum at L* = 1.5 * static_w (dE/dL = 0 <=> 3 (L - static_w) = L).

    ``step()`` sleeps t(L) for the limit in force on the fake GPU (read back from it), so
    energy per step measured through the fake's counter follows E(L).
    """

    def __init__(self, fake: "FakeNvml", index: int = 0, static_w: float = 100.0,
                 demand_w: float = 300.0, t_max_s: float = 0.02) -> None:
        self.fake = fake
        self.index = index
        self.static_w = static_w
        self.demand_w = demand_w
        self.t_max_s = t_max_s

    @property
    def optimum_w(self) -> float:
        return 1.5 * self.static_w

    def start(self, min_w: float = 125.0, update_ms: float = 1.0) -> None:
        """Give the fake GPU limits [min_w, demand_w] (default and current: demand_w) and a
        constant demand of demand_w, its counter updating every update_ms."""
        self.fake.set_limits(self.index, self.demand_w, min_w=min_w, max_w=self.demand_w,
                             default_w=self.demand_w)
        self.fake.set_profile(self.index, base_w=self.demand_w, update_ms=update_ms)

    def time_s(self, limit_w: float) -> float:
        p = min(limit_w, self.demand_w)
        return self.t_max_s / ((p - self.static_w) / (self.demand_w - self.static_w)) ** (1 / 3)

    def energy_j(self, limit_w: float) -> float:
        return min(limit_w, self.demand_w) * self.time_s(limit_w)

    def step(self) -> None:
        limit = self.fake.limit_w(self.index)
        time.sleep(self.time_s(limit if limit is not None else self.demand_w))


def time_ns_monotonic() -> int:
    """CLOCK_MONOTONIC in ns, the clock the fake's profile runs on."""
    return time.monotonic_ns()
