"""Fake hardware with known ground truth, for end-to-end accuracy tests of meters.

:class:`RaplWriter` runs ``powercap_writer.c`` (built once per session) against a fake
powercap tree: every ``update_us`` it rewrites each zone's ``energy_uj`` in place with the
exact integral of a scripted power profile ``P(tau) = base_w + amp_w sin(2 pi freq_hz tau)``
since ``t0_ns`` (floored to whole microjoules, modulo the zone's ``max_energy_range_uj``), so
the true energy of any CLOCK_MONOTONIC window is known in closed form::

    root = rapl_tree(tmp_path, range_uj=DEFAULT_RANGE_UJ)           # intel-rapl:0 (+ dram)
    with RaplWriter(root, {"intel-rapl:0": (40.0, 10.0, 3.0)}) as w:
        rt = make_runtime(powercap_root=root, sources={"rapl"}, interval_ms=1)
        ...
        truth = w.true_energy_j("intel-rapl:0", t0_ns, t1_ns)

The NVML fake (``fakes.nvml``) has its own profile; :func:`nvml_true_energy_j` is its truth.
No pytest import here: plain helpers usable from tests, conftest or scripts.
"""

from __future__ import annotations

import atexit
import math
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple, TypeVar, Union

__all__ = [
    "DEFAULT_RANGE_UJ",
    "RaplWriter",
    "build_powercap_writer",
    "make_runtime",
    "meter_window_ns",
    "nvml_true_energy_j",
    "phase_windows_ns",
    "poll_until",
    "powercap_writer_path",
    "profile_energy_j",
    "rapl_tree",
    "relative_error",
    "Runtimes",
    "warm_up",
]

PathLike = Union[str, "os.PathLike[str]"]
Profile = Tuple[float, float, float]  # (base_w, amp_w, freq_hz)
T = TypeVar("T")

#: max_energy_range_uj of a typical Intel package zone.
DEFAULT_RANGE_UJ = 262143328850

SOURCE = Path(__file__).resolve().parent / "powercap_writer.c"


# ---------------------------------------------------------------------------- closed forms


def profile_energy_j(base_w: float, amp_w: float, freq_hz: float, tau_s: float) -> float:
    """Integral of ``base_w + amp_w sin(2 pi freq_hz t)`` from 0 to ``tau_s`` (J); the same
    formula as powercap_writer.c and fake_nvml.c."""
    if freq_hz == 0:
        return base_w * tau_s
    w = 2.0 * math.pi * freq_hz
    return base_w * tau_s + amp_w / w * (1.0 - math.cos(w * tau_s))


def _window_energy(profile: Profile, t0_ns: int, start_ns: int, end_ns: int) -> float:
    base, amp, freq = profile
    return profile_energy_j(base, amp, freq, (end_ns - t0_ns) / 1e9) - profile_energy_j(
        base, amp, freq, (start_ns - t0_ns) / 1e9
    )


def nvml_true_energy_j(profile: Profile, t0_ns: int, start_ns: int, end_ns: int,
                       burst: Optional[Tuple[float, float, float]] = None) -> float:
    """Exact energy of a fake-NVML profile (``FakeNvml.set_profile``) over a window (J)."""
    e = _window_energy(profile, t0_ns, start_ns, end_ns)
    if burst is not None:
        e += _burst_energy(burst, (end_ns - t0_ns) / 1e9) - _burst_energy(
            burst, (start_ns - t0_ns) / 1e9)
    return e


def relative_error(measured: float, truth: float) -> float:
    return abs(measured - truth) / abs(truth) if truth else math.inf


# ---------------------------------------------------------------------------- the tree


def rapl_tree(
    tmp_path: PathLike,
    sockets: int = 1,
    dram: bool = True,
    range_uj: int = DEFAULT_RANGE_UJ,
    energy_uj: int = 0,
) -> Path:
    """A fake powercap tree under ``<tmp_path>/powercap`` as sysfs lays it out: top zones
    ``intel-rapl:<s>`` named ``package-<s>`` and, with ``dram``, nested ``intel-rapl:<s>:0``
    named ``dram`` (plus the flat link sysfs adds). Returns the root."""
    root = Path(tmp_path) / "powercap"
    root.mkdir(parents=True, exist_ok=True)
    control = root / "intel-rapl"
    control.mkdir(exist_ok=True)
    (control / "enabled").write_text("1\n")

    def zone(d: Path, name: str) -> None:
        d.mkdir(parents=True)
        (d / "name").write_text(f"{name}\n")
        (d / "energy_uj").write_text(f"{int(energy_uj)}\n")
        (d / "max_energy_range_uj").write_text(f"{int(range_uj)}\n")

    for s in range(sockets):
        top = root / f"intel-rapl:{s}"
        zone(top, f"package-{s}")
        if dram:
            zone(top / f"intel-rapl:{s}:0", "dram")
            os.symlink(f"intel-rapl:{s}/intel-rapl:{s}:0", root / f"intel-rapl:{s}:0")
    return root


# ---------------------------------------------------------------------------- the writer

_cache_lock = threading.Lock()
_cached: Optional[Path] = None


def build_powercap_writer(out_dir: PathLike) -> Path:
    """Compile powercap_writer.c into ``out_dir``; FileNotFoundError without a C compiler,
    RuntimeError (with the compiler's output) when the build fails."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "powercap_writer"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise FileNotFoundError("no C compiler (cc, gcc or clang) to build the fake RAPL writer")
    cmd = [cc, "-O2", "-Wall", "-Wextra", str(SOURCE), "-o", str(out), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the fake RAPL writer failed ({' '.join(cmd)}):\n"
                           f"{proc.stdout}{proc.stderr}")
    return out


def powercap_writer_path() -> Path:
    """The writer, built once per process in a temp dir removed at exit."""
    global _cached
    with _cache_lock:
        if _cached is None:
            d = Path(tempfile.mkdtemp(prefix="greenml-rapl-writer-"))
            atexit.register(shutil.rmtree, str(d), True)
            _cached = build_powercap_writer(d)
        return _cached


class RaplWriter:
    """Runs the fake RAPL hardware for a ``with`` block.

    ``zones`` maps a zone directory relative to ``tree_root`` (``"intel-rapl:0"``,
    ``"intel-rapl:0:0"`` or ``"intel-rapl:0/intel-rapl:0:0"``) to ``(base_w, amp_w, freq_hz)``.
    Every zone's profile starts at ``t0_ns`` (default: when the writer starts), where its
    energy is 0. Entering waits (bounded) until every zone holds its first value.
    """

    def __init__(
        self,
        tree_root: PathLike,
        zones: Mapping[str, Profile],
        update_us: int = 1000,
        t0_ns: Optional[int] = None,
        ready_timeout_s: float = 10.0,
        burst: Optional[Tuple[float, float, float]] = None,
    ) -> None:
        """``burst`` = (watts, period_ms, width_ms) adds that power for the first width_ms of
        every period_ms to every zone: power that changes faster than the counter updates."""
        if not zones:
            raise ValueError("RaplWriter needs at least one zone")
        self.burst = burst
        self.root = Path(tree_root)
        self.zones: Dict[str, Profile] = {}
        for name, prof in zones.items():
            base, amp, freq = (float(x) for x in prof)
            if base < abs(amp):
                raise ValueError(f"zone {name}: base_w must be >= |amp_w| (no negative power)")
            if not (self.root / name / "energy_uj").exists():
                raise FileNotFoundError(f"no {self.root / name}/energy_uj: build the tree first")
            self.zones[name] = (base, amp, freq)
        self.update_us = int(update_us)
        self.t0_ns = t0_ns
        self.ready_timeout_s = ready_timeout_s
        self.proc: Optional[subprocess.Popen] = None
        self.stats: Dict[str, int] = {}  # updates, max_late_ns, realtime: filled when stopped

    def start(self) -> "RaplWriter":
        if self.t0_ns is None:
            self.t0_ns = time.monotonic_ns()
        args = [str(powercap_writer_path()), str(self.root), str(self.t0_ns), str(self.update_us)]
        for name, (base, amp, freq) in self.zones.items():
            args += [name, repr(base), repr(amp), repr(freq)]
        env = dict(os.environ)
        env.pop("POWERCAP_WRITER_BURST", None)
        if self.burst is not None:
            env["POWERCAP_WRITER_BURST"] = ",".join(repr(float(x)) for x in self.burst)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.ready_timeout_s
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not ready:
                self.stop()
                raise TimeoutError(
                    f"the fake RAPL writer did not start in {self.ready_timeout_s} s")
            chunk = os.read(self.proc.stdout.fileno(), 1)
            if not chunk:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self.proc.wait()
                raise RuntimeError(f"the fake RAPL writer exited ({self.proc.returncode}): {err}")
            line += chunk
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"unexpected output from the fake RAPL writer: {line!r}")
        return self

    def stop(self) -> None:
        p = self.proc
        if p is None or p.returncode is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            out, _ = p.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        for word in out.decode(errors="replace").split():
            key, _, value = word.partition("=")
            if value.lstrip("-").isdigit():
                self.stats[key] = int(value)

    def __enter__(self) -> "RaplWriter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def profile(self, zone: str) -> Profile:
        try:
            return self.zones[zone]
        except KeyError:
            raise KeyError(f"the writer drives {sorted(self.zones)}, not {zone!r}") from None

    def power_w(self, zone: str, t_ns: int) -> float:
        """The scripted power of ``zone`` at ``t_ns`` (W)."""
        base, amp, freq = self.profile(zone)
        assert self.t0_ns is not None
        return base + amp * math.sin(2.0 * math.pi * freq * (t_ns - self.t0_ns) / 1e9)

    def true_energy_j(self, zone: str, t0_ns: int, t1_ns: int) -> float:
        """Exact energy of ``zone`` over ``[t0_ns, t1_ns]`` (CLOCK_MONOTONIC ns), closed form."""
        assert self.t0_ns is not None, "the writer has not started"
        e = _window_energy(self.profile(zone), self.t0_ns, t0_ns, t1_ns)
        if self.burst is not None:
            e += _burst_energy(self.burst, (t1_ns - self.t0_ns) / 1e9)
            e -= _burst_energy(self.burst, (t0_ns - self.t0_ns) / 1e9)
        return e


def _burst_energy(burst: Tuple[float, float, float], tau: float) -> float:
    """Energy (J) of the burst term from the profile's start to ``tau`` (s): the writer's."""
    watts, period_ms, width_ms = burst
    if tau <= 0:
        return 0.0
    p, w = period_ms / 1e3, width_ms / 1e3
    k = math.floor(tau / p)
    return watts * (k * w + min(tau - k * p, w))


# ---------------------------------------------------------------------------- runtimes


def make_runtime(
    *,
    powercap_root: Optional[PathLike] = None,
    nvml_library: Optional[PathLike] = None,
    sources: Iterable[str] = ("rapl",),
    interval_ms: float = 10.0,
    env: Optional[Mapping[str, str]] = None,
    capacity: int = 1 << 16,
    cuda_device_order: Optional[str] = "PCI_BUS_ID",
    **runtime_options,
):
    """A ``greenml.Runtime`` over fakes only: the caller must ``stop()`` it.

    ``env`` defaults to an empty mapping, so no GREENML_* variable of the machine running the
    tests leaks in. A missing root or library points at a path that does not exist.
    """
    import greenml
    from greenml._config import Settings

    missing = "/nonexistent/greenml-test/"
    settings = Settings(
        powercap_root=str(powercap_root) if powercap_root is not None else missing + "powercap",
        nvml_library=str(nvml_library) if nvml_library is not None else missing + "libnvidia-ml.so",
        interval_ms=float(interval_ms),
        sources=frozenset(sources),
        env=dict(env or {}),
        # The fake GPUs are different models listed in PCI order: say which order CUDA uses.
        cuda_device_order=cuda_device_order,
    )
    return greenml.Runtime(settings, capacity=capacity, **runtime_options)


class Runtimes:
    """Makes runtimes (see :func:`make_runtime`) and stops them all in :meth:`stop_all`; a
    fixture yields ``Runtimes().make`` and calls ``stop_all`` at teardown."""

    def __init__(self) -> None:
        self.made: list = []

    def make(self, **kwargs):
        rt = make_runtime(**kwargs)
        self.made.append(rt)
        return rt

    def stop_all(self) -> None:
        for rt in self.made:
            rt.stop()


def warm_up(rt, seconds: float = 0.1, timeout_s: float = 5.0) -> None:
    """Starts ``rt`` and waits (bounded) until its ring holds ``seconds`` of samples, so a
    window does not open on the very first sample (as in a process that has been running)."""
    sampler = rt.ensure_started()
    # Full rate while warming up (an idle runtime reads once a second), then the usual hold.
    sampler.touch(int(seconds * 1e9) + rt.edge_hold_ns)
    want = sampler.head + max(2, int(seconds * 1e9 / sampler.period_ns))
    poll_until(lambda: sampler.head >= want, timeout_s=timeout_s, what="sampler warm-up")


def meter_window_ns(m) -> Tuple[int, int]:
    """The CLOCK_MONOTONIC edges a stopped meter measured (its own clock reads)."""
    w = m._window
    assert w is not None and w.t1_ns is not None, "the meter has not stopped"
    return int(w.t0_ns), int(w.t1_ns)


def phase_windows_ns(m, name: str) -> list:
    """The CLOCK_MONOTONIC edges of every closed repeat of phase ``name`` of meter ``m``."""
    totals = m._phase_totals.get(name)
    return [(int(a), int(b)) for a, b in totals.spans] if totals is not None else []


def poll_until(predicate: Callable[[], T], timeout_s: float = 5.0, interval_s: float = 0.002,
               what: str = "condition") -> T:
    """Polls ``predicate`` until truthy; raises AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s} s")
        time.sleep(interval_s)
