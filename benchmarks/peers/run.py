#!/usr/bin/env python3
"""greenml beside its peers on the same fake hardware, with known truth.

One command::

    python benchmarks/peers/run.py [--quick] [--tools greenml,zeus,...]

1. Installs each peer from PyPI into its own virtual environment under
   ``/tmp/greenml-peers/<tool>`` (skipped when already there with the same requirement).
2. Builds the fake hardware: a powercap tree laid out as sysfs lays it out
   (``intel-rapl/intel-rapl:0`` with its ``dram`` subzone, the flat ``intel-rapl:0`` links,
   ``intel-rapl/subsystem``), driven by ``tests/fakes/powercap_writer.c`` every 1 ms with a
   known power profile, and a fake ``libnvidia-ml.so.1``: ``tests/fakes/fake_nvml.c``
   compiled together with ``nvml_shim.c`` (the extra NVML calls pynvml-based tools make),
   whose energy counter follows a known profile and moves every 20 ms, and whose power reading
   is the trailing 1 s mean.
3. Runs ``probe.py`` once per tool, in the tool's venv, inside a private mount and network
   namespace (``unshare -m -n``) where the fake tree is bind-mounted at
   ``/sys/class/powercap`` (the peers hard-code that path) and ``LD_LIBRARY_PATH`` finds the
   fake NVML. greenml runs the same way, at its defaults.
4. Compares every window with the closed-form truth and writes
   ``benchmarks/results/peers.json`` and ``peers.md``.

Needs root (for the mount namespace), a C compiler and network access to PyPI for the first
install. The full run takes about 8 minutes after the installs; ``--quick`` about 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(HERE.parent))  # benchmarks/: _machine

from _machine import cpu_model_name  # noqa: E402
from fakes.nvml import FakeNvml, profile_true_energy_j  # noqa: E402
from fakes.truth import DEFAULT_RANGE_UJ, RaplWriter  # noqa: E402

# ------------------------------------------------------------------------------ settings

#: tool -> pip requirement (None: greenml itself, from this repository's .venv).
#: Pinned to the versions this comparison was written against; --unpinned takes the newest.
TOOLS: Dict[str, Optional[str]] = {
    "greenml": None,
    "zeus": "zeus==0.16.0",
    "codecarbon": "codecarbon==3.3.2",
    "pyjoules": "pyJoules[nvidia]==0.5.1",
    "carbontracker": "carbontracker==2.4.7",
}
LABELS = {"greenml": "greenml", "zeus": "Zeus", "codecarbon": "CodeCarbon",
          "pyjoules": "pyJoules", "carbontracker": "Carbontracker"}

#: Scripted power, P(t) = base + amp sin(2 pi f t): (base_w, amp_w, freq_hz).
#: The frequencies are deliberately incommensurate with 1 s and 2 s: a tool averaging power
#: over exactly 1 s, or sampling every 1 or 2 s, would otherwise see a whole number of periods
#: (exact by luck) or always the same phase (aliasing), and the comparison would say more
#: about the profile than about the tools.
PACKAGE = (60.0, 40.0, 2.7)
DRAM = (5.0, 0.0, 0.0)
GPU = (250.0, 150.0, 0.37)
GPU_UPDATE_MS = 20.0
RAPL_UPDATE_US = 1000
PKG_ZONE = "intel-rapl/intel-rapl:0"
DRAM_ZONE = "intel-rapl/intel-rapl:0/intel-rapl:0:0"

FULL = {"windows": [[0.01, 20], [0.1, 20], [1.0, 20], [10.0, 3]], "overhead_s": 10.0}
QUICK = {"windows": [[0.01, 10], [0.1, 10], [1.0, 5]], "overhead_s": 5.0}

CLASSES = ("package", "gpu", "dram")
CLASS_LABELS = {"package": "CPU package", "cpu+dram": "CPU package + DRAM", "gpu": "GPU",
                "dram": "DRAM"}

# ------------------------------------------------------------------------------ installs


def venv_python(root: Path, tool: str) -> Path:
    return root / tool / "bin" / "python"


def ensure_venv(root: Path, tool: str, requirement: str, reinstall: bool, log) -> Tuple[bool, str]:
    """The tool's venv with ``requirement`` installed; (ok, message)."""
    d = root / tool
    marker = d / ".greenml-peers-requirement"
    py = venv_python(root, tool)
    if not reinstall and py.exists() and marker.exists() and marker.read_text() == requirement:
        return True, f"cached in {d}"
    base = shutil.which("python3") or sys.executable
    t0 = time.monotonic()
    if reinstall and d.exists():
        shutil.rmtree(d)
    if not py.exists():
        p = subprocess.run([base, "-m", "venv", str(d)], capture_output=True, text=True)
        if p.returncode != 0:
            return False, f"python3 -m venv {d} failed: {(p.stdout + p.stderr)[-800:]}"
    log(f"  installing {requirement} into {d} ...")
    p = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                        requirement], capture_output=True, text=True)
    if p.returncode != 0:
        lines = [ln for ln in (p.stdout + p.stderr).splitlines()
                 if "is ignored: it is neither a file nor a directory" not in ln]
        return False, f"pip install {requirement} failed: " + "\n".join(lines)[-1500:]
    marker.write_text(requirement)
    return True, f"installed in {time.monotonic() - t0:.0f} s"


# ------------------------------------------------------------------------------ fake hardware


def build_tree(root: Path) -> Path:
    """A powercap tree as sysfs shows it on an Intel machine with one socket."""
    tree = root / "powercap"
    control = tree / "intel-rapl"
    control.mkdir(parents=True)
    (control / "enabled").write_text("1\n")
    # sysfs: /sys/class/powercap/intel-rapl/subsystem -> the class directory itself.
    os.symlink("..", control / "subsystem")

    def zone(d: Path, name: str, max_power_uw: int) -> None:
        d.mkdir()
        for fname, text in (("name", name), ("energy_uj", "0"),
                            ("max_energy_range_uj", str(DEFAULT_RANGE_UJ)), ("enabled", "1"),
                            ("constraint_0_name", "long_term"),
                            ("constraint_0_power_limit_uw", str(max_power_uw)),
                            ("constraint_0_time_window_us", "999424"),
                            ("constraint_0_max_power_uw", str(max_power_uw))):
            (d / fname).write_text(text + "\n")

    zone(tree / PKG_ZONE, "package-0", 150_000_000)
    zone(tree / DRAM_ZONE, "dram", 30_000_000)
    os.symlink(PKG_ZONE, tree / "intel-rapl:0")
    os.symlink(DRAM_ZONE, tree / "intel-rapl:0:0")
    return tree


def build_nvml(out_dir: Path) -> Path:
    """fake_nvml.c + nvml_shim.c -> out_dir/libnvidia-ml.so.1."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "libnvidia-ml.so.1"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise SystemExit("no C compiler (cc, gcc or clang) to build the fake libnvidia-ml")
    cmd = [cc, "-shared", "-fPIC", "-O2", "-Wall", str(REPO / "tests" / "fakes" / "fake_nvml.c"),
           str(HERE / "nvml_shim.c"), "-o", str(out), "-lm"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"building the fake NVML failed ({' '.join(cmd)}):\n{p.stdout}{p.stderr}")
    # CodeCarbon decides whether the machine has an NVIDIA GPU by running `nvidia-smi --help`:
    # a stand-in on PATH, as a driver install provides one beside libnvidia-ml.
    smi = out_dir / "bin" / "nvidia-smi"
    smi.parent.mkdir(exist_ok=True)
    smi.write_text("#!/bin/sh\n"
                   "echo 'NVIDIA System Management Interface (stand-in for the fake NVML of "
                   "benchmarks/peers)'\nexit 0\n")
    smi.chmod(0o755)
    return out


#: Runs inside `unshare -m -n`: shows the fake tree at /sys/class/powercap, then execs.
#: Where /sys/class/powercap does not exist (no RAPL driver, e.g. a VM), a tmpfs replaces
#: /sys/class, every original class directory is bind-mounted back into it, and the
#: powercap directory is created there.
NAMESPACE_SH = r"""
set -e
tree=$1; save=$2; shift 2
if [ -d /sys/class/powercap ]; then
  mount --bind "$tree" /sys/class/powercap
else
  mkdir -p "$save"
  mount --bind /sys/class "$save"
  mount -t tmpfs -o mode=755 greenml-peers /sys/class
  for e in "$save"/*; do
    n=${e##*/}
    mkdir "/sys/class/$n"
    mount --bind "$e" "/sys/class/$n"
  done
  mkdir /sys/class/powercap
  mount --bind "$tree" /sys/class/powercap
fi
exec "$@"
"""


def namespace_cmd(tree: Path, save: Path, argv: List[str]) -> List[str]:
    return ["unshare", "-m", "-n", "--propagation", "private", "sh", "-c", NAMESPACE_SH, "sh",
            str(tree), str(save)] + argv


def check_namespace(tree: Path, work: Path) -> Optional[str]:
    """None when the fake tree shows at /sys/class/powercap in a namespace, else why not."""
    if shutil.which("unshare") is None:
        return "no `unshare` (util-linux) on PATH"
    probe = ["cat", "/sys/class/powercap/intel-rapl/intel-rapl:0/name"]
    cmd = namespace_cmd(tree, work / "ns-check", probe)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 or p.stdout.strip() != "package-0":
        return (f"`unshare -m -n` + bind mount failed (rc {p.returncode}; needs root): "
                f"{(p.stdout + p.stderr).strip()[-500:]}")
    return None


# ------------------------------------------------------------------------------ truth & stats


class Truth:
    def __init__(self, writer: RaplWriter, gpu_t0_ns: int) -> None:
        self.w = writer
        self.gpu_t0 = gpu_t0_ns

    def energy(self, cls: str, a: int, b: int) -> float:
        if cls == "package":
            return self.w.true_energy_j(PKG_ZONE, a, b)
        if cls == "dram":
            return self.w.true_energy_j(DRAM_ZONE, a, b)
        if cls == "cpu+dram":
            return self.energy("package", a, b) + self.energy("dram", a, b)
        if cls == "gpu":
            return profile_true_energy_j(*GPU, self.gpu_t0, a, b)
        raise KeyError(cls)


def score_windows(windows: List[dict], truth: Truth) -> None:
    """Adds truth and relative errors to each window, in place."""
    for w in windows:
        mid0 = (w["tb0"] + w["tb1"]) // 2
        mid1 = (w["te0"] + w["te1"]) // 2
        w["t_window_s"] = (mid1 - mid0) / 1e9
        w["truth"], w["err"], w["bracketed"] = {}, {}, {}
        for cls, value in (w.get("measured") or {}).items():
            try:
                t = truth.energy(cls, mid0, mid1)
            except KeyError:
                continue
            w["truth"][cls] = t
            if value is None or not math.isfinite(value):
                w["err"][cls] = None
                continue
            w["err"][cls] = (value - t) / t
            # Inside what any start/stop instant within the API calls could give.
            lo = truth.energy(cls, w["tb1"], w["te0"])
            hi = truth.energy(cls, w["tb0"], w["te1"])
            w["bracketed"][cls] = lo <= value <= hi


def _median(xs: List[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def summarize(result: dict, lengths: List[float]) -> dict:
    windows = result.get("windows", [])
    acc: Dict[str, Dict[str, dict]] = {}
    classes = sorted({c for w in windows for c in (w.get("err") or {})})
    for cls in classes:
        acc[cls] = {}
        for L in lengths:
            ws = [w for w in windows if w["length_s"] == L and cls in w["err"]]
            errs = [w["err"][cls] for w in ws if w["err"][cls] is not None]
            absd = [abs(e) for e in errs]
            acc[cls][f"{L:g}"] = {
                "n": len(ws),
                "n_reported": len(errs),
                "median_abs_rel_err": _median(absd),
                "worst_abs_rel_err": max(absd) if absd else None,
                "median_rel_err": _median(errs),
                "zero_readings": sum(1 for w in ws if w["measured"].get(cls) == 0),
                "bracketed": sum(1 for w in ws if w["bracketed"].get(cls)),
            }
    begin_us = [(w["tb1"] - w["tb0"]) / 1e3 for w in windows]
    end_us = [(w["te1"] - w["te0"]) / 1e3 for w in windows]
    read_us = [(w["tr1"] - w["te1"]) / 1e3 for w in windows]
    api = {
        "start_stop_us_median": _median([b + e for b, e in zip(begin_us, end_us)]),
        "start_us_median": _median(begin_us),
        "stop_us_median": _median(end_us),
        "read_us_median": _median(read_us),
        "start_stop_us_max": max((b + e for b, e in zip(begin_us, end_us)), default=None),
    }
    ov = result.get("overhead") or {}
    base = result.get("baseline") or {}
    overhead = None
    if ov.get("wall_s") and base.get("wall_s"):
        base_rate = base["cpu_s"] / base["wall_s"]
        overhead = {
            "window_s": ov["wall_s"],
            "cpu_s": ov["cpu_s"],
            "baseline_cpu_s": base["cpu_s"],
            "baseline_wall_s": base["wall_s"],
            "pct_of_one_core": 100.0 * (ov["cpu_s"] - base_rate * ov["wall_s"]) / ov["wall_s"],
            "threads_during": ov.get("threads"),
        }
    return {"accuracy": acc, "api": api, "overhead": overhead}


# ------------------------------------------------------------------------------ running


def run_probe(tool: str, python: Path, cfg_path: Path, work: Path, tree: Path, env: Dict[str, str],
              timeout_s: float) -> dict:
    out = work / f"{tool}.json"
    log = work / f"{tool}.log"
    argv = [str(python), str(HERE / "probe.py"), "--tool", tool, "--config", str(cfg_path),
            "--out", str(out)]
    cmd = namespace_cmd(tree, work / f"ns-{tool}", argv)
    home = work / f"home-{tool}"
    home.mkdir()
    t0 = time.monotonic()
    with open(log, "w") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env, cwd=str(home),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the probe's own process group
            proc.wait()
            rc = None
    wall = time.monotonic() - t0
    tail = log.read_text(errors="replace")[-3000:]
    if rc is None:
        return {"tool": tool, "ok": False, "error": f"timed out after {timeout_s:.0f} s",
                "log_tail": tail, "wall_s": wall}
    if not out.exists():
        return {"tool": tool, "ok": False, "error": f"probe exited {rc} without a result",
                "log_tail": tail, "wall_s": wall}
    res = json.loads(out.read_text())
    res["wall_s"] = wall
    res["exit_code"] = rc
    if not res.get("ok"):
        res["log_tail"] = tail
    return res


def machine_info() -> dict:
    return {
        "uname": " ".join(os.uname()),
        "cpu": cpu_model_name() or "",
        "nproc": os.cpu_count(),
        "python_runner": sys.version.split()[0],
    }


def expected_probe_s(cfg: dict) -> float:
    win = sum(L * n + 0.04 * n for L, n in cfg["windows"])
    return 2 * cfg["overhead_s"] + win + 0.5


def main() -> int:
    ap = argparse.ArgumentParser(description="greenml vs Zeus, CodeCarbon, pyJoules, "
                                 "Carbontracker on the same fake hardware, with known truth")
    ap.add_argument("--quick", action="store_true", help="fewer, shorter windows (about 2 min)")
    ap.add_argument("--tools", default=",".join(TOOLS),
                    help=f"comma list, from {','.join(TOOLS)}")
    ap.add_argument("--venvs", default=os.environ.get("GREENML_PEERS_VENVS", "/tmp/greenml-peers"),
                    help="where the peers' virtual environments live")
    ap.add_argument("--reinstall", action="store_true", help="rebuild the peers' venvs")
    ap.add_argument("--unpinned", action="store_true", help="install the newest peer releases")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--seed", type=int, default=20261127)
    ap.add_argument("--render", metavar="PEERS_JSON",
                    help="only rewrite peers.md (beside the file) from a saved peers.json")
    args = ap.parse_args()
    if args.render:
        src = Path(args.render)
        doc = json.loads(src.read_text())
        tools_r = [t for t in TOOLS if t in doc["tools"]]
        lengths_r = [float(L) for L, _ in doc["config"]["windows"]]
        (src.parent / "peers.md").write_text(render_md(doc, tools_r, lengths_r))
        print(f"wrote {src.parent / 'peers.md'}")
        return 0

    def log(msg: str) -> None:
        print(msg, flush=True)

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in tools:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r}; choose from {', '.join(TOOLS)}")
    cfg: Dict[str, Any] = dict(QUICK if args.quick else FULL)
    cfg["seed"] = args.seed
    cfg["gap_s"] = [0.01, 0.06]
    cfg["warmup"] = 3
    cfg["length_jitter"] = 0.1
    lengths = [float(x[0]) for x in cfg["windows"]]
    venvs = Path(args.venvs)
    venvs.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = list(os.getloadavg())
    t_start = time.monotonic()
    results: Dict[str, dict] = {}

    # 1. installs
    log("== peers' virtual environments")
    pythons: Dict[str, Path] = {}
    install_s = time.monotonic()
    for tool in tools:
        req = TOOLS[tool]
        if req is None:
            py = REPO / ".venv" / "bin" / "python"
            py = py if py.exists() else Path(sys.executable)
            chk = subprocess.run([str(py), "-c", "import greenml, greenml._core"],
                                 capture_output=True, text=True)
            if chk.returncode != 0:
                results[tool] = {"status": "skipped",
                                 "reason": f"greenml does not import with {py}: "
                                           f"{chk.stderr.strip()[-500:]}"}
                continue
            pythons[tool] = py
            log(f"  greenml: {py}")
            continue
        if args.unpinned:
            req = req.split("==")[0]
        ok, msg = ensure_venv(venvs, tool, req, args.reinstall, log)
        log(f"  {tool}: {msg}")
        if ok:
            pythons[tool] = venv_python(venvs, tool)
        else:
            results[tool] = {"status": "skipped", "reason": msg}
    install_s = time.monotonic() - install_s

    # 2. fake hardware
    work = Path(tempfile.mkdtemp(prefix="greenml-peers-run-"))
    tree = build_tree(work)
    lib = build_nvml(work / "nvml")
    ns_problem = check_namespace(tree, work)
    if ns_problem:
        log(f"cannot present the fake hardware at /sys/class/powercap: {ns_problem}")
        for tool in list(pythons):
            results[tool] = {"status": "skipped", "reason": ns_problem}
        pythons.clear()
    fake = FakeNvml(work, library=lib)
    fake.add_device(name="NVIDIA H100 80GB HBM3", energy_mj=0, power_mw=0)
    # An H100 SXM's limits (the profile's 400 W peak stays under them: nothing is capped).
    fake.set_limits(0, 700, min_w=200, max_w=700, default_w=700)
    cfg_path = work / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GREENML_", "CUDA_", "CODECARBON_", "VIRTUAL_ENV"))}
    env.update(fake.env)
    env["LD_LIBRARY_PATH"] = str(lib.parent) + (
        ":" + os.environ["LD_LIBRARY_PATH"] if os.environ.get("LD_LIBRARY_PATH") else "")
    env["PATH"] = str(lib.parent / "bin") + os.pathsep + os.environ.get("PATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"

    log(f"== fake hardware in {work}")
    with RaplWriter(tree, {PKG_ZONE: PACKAGE, DRAM_ZONE: DRAM}, update_us=RAPL_UPDATE_US) as writer:
        gpu_t0 = fake.set_profile(0, *GPU, update_ms=GPU_UPDATE_MS)
        truth = Truth(writer, gpu_t0)
        timeout = 3 * expected_probe_s(cfg) + 180
        for tool in tools:
            if tool not in pythons:
                continue
            env_t = dict(env, HOME=str(work / f"home-{tool}"))
            log(f"== {tool}")
            res = run_probe(tool, pythons[tool], cfg_path, work, tree, env_t, timeout)
            if not res.get("ok"):
                why = res.get("error", "failed")
                log(f"  FAILED: {why}\n{res.get('log_tail', '')[-1500:]}")
                results[tool] = {"status": "failed", "reason": why, "detail": res}
                continue
            score_windows(res["windows"], truth)
            res["summary"] = summarize(res, lengths)
            res["status"] = "ok"
            results[tool] = res
            s = res["summary"]
            for cls in ("package", "cpu+dram", "gpu"):
                a = s["accuracy"].get(cls)
                if a:
                    cells = "  ".join(
                        f"{L}: {_pct(v['median_abs_rel_err'])}/{_pct(v['worst_abs_rel_err'])}"
                        for L, v in a.items())
                    log(f"  {cls:9s} |err| median/worst  {cells}")
            ov = s["overhead"] or {}
            log(f"  API start+stop {_num(s['api']['start_stop_us_median'])} us, read "
                f"{_num(s['api']['read_us_median'])} us; CPU {_num(ov.get('pct_of_one_core'), 3)}% "
                f"of a core; probe took {res['wall_s']:.0f} s")
        writer_stats = dict(writer.stats)
    writer_stats.update(writer.stats)

    total_s = time.monotonic() - t_start
    doc = {
        "generated": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": "python benchmarks/peers/run.py" + (" --quick" if args.quick else "")
                   + ("" if args.tools == ",".join(TOOLS) else f" --tools {args.tools}"),
        "machine": dict(machine_info(), loadavg_start=load_start,
                        loadavg_end=list(os.getloadavg())),
        "durations_s": {"total": total_s, "installs": install_s,
                        "probes": {t: r.get("wall_s") for t, r in results.items()}},
        "fake_hardware": {
            "package_w": _profile_text(PACKAGE), "dram_w": _profile_text(DRAM),
            "gpu_w": _profile_text(GPU), "gpu_counter_update_ms": GPU_UPDATE_MS,
            "gpu_power_reading": "mean over the trailing 1 s (like nvmlDeviceGetPowerUsage)",
            "rapl_update_us": RAPL_UPDATE_US, "rapl_writer": writer_stats,
            "powercap_layout": "sysfs: intel-rapl/intel-rapl:0 (package-0) with nested "
                               "intel-rapl:0:0 (dram), flat links intel-rapl:0 and "
                               "intel-rapl:0:0, intel-rapl/subsystem -> ..",
            "nvml": "tests/fakes/fake_nvml.c + benchmarks/peers/nvml_shim.c as libnvidia-ml.so.1 "
                    "(and a stand-in `nvidia-smi` on PATH)",
        },
        "config": cfg,
        "tools": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    (out / "peers.md").write_text(render_md(doc, tools, lengths))
    log(f"== wrote {out / 'peers.json'} and {out / 'peers.md'} ({total_s:.0f} s in all)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


# ------------------------------------------------------------------------------ report


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def _profile_text(p: Tuple[float, float, float]) -> str:
    base, amp, f = p
    return f"{base:g}" if amp == 0 else f"{base:g} + {amp:g} sin(2 pi {f:g} Hz t)"


def _pct(x: Optional[float]) -> str:
    if x is None:
        return "-"
    v = 100 * x
    if v >= 99.95:
        return f"{v:.0f}%"
    return f"{v:.2g}%" if v < 1 else f"{v:.1f}%"


def _num(x: Optional[float], digits: int = 0) -> str:
    if x is None:
        return "-"
    if abs(x) < 0.5 * 10 ** -digits:
        x = 0.0  # no "-0.000"
    return f"{x:,.{digits}f}"


def _ok_tools(doc: dict, tools: List[str]) -> List[Tuple[str, dict]]:
    """(tool, result) of the tools whose run succeeded, in the order of ``tools``."""
    return [(t, doc["tools"][t]) for t in tools if doc["tools"].get(t, {}).get("status") == "ok"]


def _abs_err_cell(v: Optional[dict]) -> str:
    """Median / worst |relative error| of one window length, and windows that read 0 or none."""
    if not v:
        return "-"
    c = f"{_pct(v['median_abs_rel_err'])} / {_pct(v['worst_abs_rel_err'])}"
    if v["zero_readings"]:
        c += f" ({v['zero_readings']}/{v['n']} zero)"
    if v["n_reported"] < v["n"]:
        c += f" ({v['n'] - v['n_reported']}/{v['n']} none)"
    return c


def _bias_cell(v: Optional[dict]) -> str:
    """Signed median relative error of one window length."""
    s: Any = v and v["median_rel_err"]
    return "-" if s is None else f"{100 * s:+.2g}%" if abs(s) < 0.01 else f"{100 * s:+.1f}%"


def _accuracy_table(doc: dict, tools: List[str], L: List[str], lab: Dict[str, str],
                    classes: Tuple[str, ...], cell: Callable[[Optional[dict]], str]) -> List[str]:
    """Markdown lines of a tool x domain table with a column per window length: a row for each
    successful tool and each of ``classes`` it reports, ``cell`` of that length's summary."""
    rows = ["| tool | domain | " + " | ".join(lab.get(x, x + " s") for x in L) + " |",
            "|" + "---|" * (2 + len(L))]
    for t, r in _ok_tools(doc, tools):
        acc = r["summary"]["accuracy"]
        for cls in classes:
            if cls not in acc:
                continue
            if cls == "dram" and cls in r.get("estimated", {}):
                name = "RAM (its power model, not RAPL)"
            else:
                name = CLASS_LABELS[cls]
            rows.append(f"| {LABELS[t]} | {name} | "
                        + " | ".join(cell(acc[cls].get(x)) for x in L) + " |")
    return rows


TOOL_NOTES = {
    "greenml": "10 ms native sampler thread over RAPL + NVML (its defaults); a window is "
               "resolved from ring samples around its edges, reading `by_domain` waits for the "
               "GPU counter update that covers the window's end (the *read* column).",
    "zeus": "Reads the counters synchronously in `begin_window`/`end_window` (RAPL energy_uj, "
            "`nvmlDeviceGetTotalEnergyConsumption`): exact CPU package, GPU quantised to the "
            "20 ms counter updates (`approx_instant_energy=False`, its default, so windows "
            "shorter than an update can read 0). Spawns one helper process per RAPL file to "
            "watch for counter wrap-around (polls every 1 s).",
    "codecarbon": "Windows with `start_task`/`stop_task` (reads the RAPL package counter and the "
                  "NVML energy counter at both edges; DRAM is its RAM power model, not the RAPL "
                  "dram zone, unless `rapl_include_dram`); the overhead window uses "
                  "`start`/`stop` at its defaults (a measurement every 15 s plus a 1 s power "
                  "monitor thread).",
    "pyjoules": "Reads the counters synchronously in `start`/`stop`; no background thread. "
                "GPU quantised to the 20 ms counter updates.",
    "carbontracker": "One epoch per window. A background thread samples power while an epoch "
                     "runs: the GPU's NVML power reading (a 1 s trailing mean), and the CPU by "
                     "reading RAPL, sleeping 1 s and reading again; then waits `update_interval` "
                     "(1 s). Epoch energy = mean sampled power x epoch duration; an epoch with no "
                     "sample borrows the next one's. Its *cpu* component covers the package "
                     "and DRAM zones, so it is compared with package + DRAM truth. It reads "
                     "both zones correctly (see `power_usages_of_last_epoch_w`: package and "
                     "DRAM samples alternate), but appends the "
                     "per-device powers of every sample to one flat list and takes its mean "
                     "(`power_usages[-1] += handler.power_usage()`, then `np.mean(..., "
                     "axis=0)`), so the component reports the *average* of package and DRAM "
                     "power, (60 + 5) / 2 W, instead of their sum: -50%. The same would "
                     "average, not add, several GPUs.",
}


def highlights(doc: dict, tools: List[str], L: List[str], lab: Dict[str, str]) -> List[str]:
    """Who has the lowest median error per domain and window length, and the lowest costs."""
    ok = [t for t, _ in _ok_tools(doc, tools)]
    out: List[str] = []
    for cls, name in (("package", "CPU package"), ("gpu", "GPU")):
        parts = []
        for x in L:
            vals = []
            for t in ok:
                v = doc["tools"][t]["summary"]["accuracy"].get(cls, {}).get(x)
                if v and v["median_abs_rel_err"] is not None:
                    vals.append((v["median_abs_rel_err"], t))
            if not vals:
                continue
            vals.sort()
            best = vals[0]
            text = f"{lab.get(x, x + ' s')}: {LABELS[best[1]]} {_pct(best[0])}"
            if best[1] != "greenml":
                g = [v for v in vals if v[1] == "greenml"]
                if g:
                    rank = [t for _, t in vals].index("greenml") + 1
                    text += f" (greenml {_pct(g[0][0])}, #{rank} of {len(vals)})"
            parts.append(text)
        if parts:
            out.append(f"Lowest median |error|, {name}: " + "; ".join(parts) + ".")
    costs = []
    for key, what, digits in (("start_stop_us_median", "start+stop", 0),
                              ("read_us_median", "read", 0)):
        vals = sorted((doc["tools"][t]["summary"]["api"][key], t) for t in ok
                      if doc["tools"][t]["summary"]["api"][key] is not None)
        if vals:
            costs.append(f"{what}: " + ", ".join(f"{LABELS[t]} {_num(v, digits)} µs"
                                                for v, t in vals))
    vals = sorted((doc["tools"][t]["summary"]["overhead"]["pct_of_one_core"], t) for t in ok
                  if doc["tools"][t]["summary"].get("overhead"))
    if vals:
        costs.append("CPU over a long window: " + ", ".join(f"{LABELS[t]} {_num(v, 3)}%"
                                                           for v, t in vals))
    for c in costs:
        out.append("Cheapest first, " + c + ".")
    return out


def render_md(doc: dict, tools: List[str], lengths: List[float]) -> str:
    m = doc["machine"]
    fh = doc["fake_hardware"]
    L = [f"{x:g}" for x in lengths]
    lab = {"0.01": "10 ms", "0.1": "100 ms", "1": "1 s", "10": "10 s"}
    out: List[str] = []
    w = out.append
    w("# greenml and its peers on the same fake hardware\n")
    w(f"Generated by `{doc['command']}` on {doc['generated']}; the run took "
      f"{doc['durations_s']['total']:.0f} s ({doc['durations_s']['installs']:.0f} s of it "
      f"installing or checking the peers' venvs).\n")
    w("## Machine\n")
    w(f"- `{m['uname']}`")
    w(f"- CPU: {m['cpu']}, {m['nproc']} cores; load average (1/5/15 min) at start "
      f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
      f"{', '.join(f'{x:.2f}' for x in m['loadavg_end'])}")
    w(f"- runner: Python {m['python_runner']}")
    vers = []
    for t in tools:
        r = doc["tools"].get(t, {})
        v = r.get("versions")
        if v:
            vers.append(f"{LABELS[t]} ({', '.join(f'{k} {x}' for k, x in v.items() if x)}; "
                        f"Python {r.get('python')})")
    if vers:
        w("- versions: " + "; ".join(vers))
    w("")
    w("## Fake hardware and truth\n")
    w(f"- RAPL (`tests/fakes/powercap_writer.c`, rewritten every {fh['rapl_update_us']} µs): "
      f"package-0 = {fh['package_w']} W, dram = {fh['dram_w']} W. Layout: {fh['powercap_layout']}; "
      "bind-mounted at `/sys/class/powercap` in a private mount namespace for every tool.")
    w(f"- NVIDIA GPU 0 ({fh['nvml']}, found through `LD_LIBRARY_PATH`): {fh['gpu_w']} W; the "
      f"energy counter moves every {fh['gpu_counter_update_ms']:g} ms; the power reading is the "
      "mean over the trailing 1 s.")
    w("- Truth: the closed-form integral of the profile between the midpoints of the tool's "
      "start call and of its stop call (CLOCK_MONOTONIC stamps taken around each call). Where "
      "inside its calls a tool takes its edges is its own business, so this convention leaves "
      "an ambiguity of about half a call's duration per edge: with calls of 0.2-1 ms, about "
      "1-5% of a 10 ms window at 60-100 W, 0.1-0.5% of a 100 ms one. `peers.json` also "
      "counts, per window, whether the reading lies between the truth of the inner interval "
      "(start returned .. stop entered) and of the outer one (`bracketed`).")
    rs = fh.get("rapl_writer") or {}
    if rs:
        w(f"- RAPL writer: {rs.get('updates', '?')} updates, worst lateness "
          f"{rs.get('max_late_ns', 0) / 1e3:.0f} µs, real-time priority: "
          f"{'yes' if rs.get('realtime') else 'no'}.")
    w("- Windows: " + ", ".join(f"{n} x {lab.get(f'{x:g}', f'{x:g} s')}"
                                for x, n in doc["config"]["windows"])
      + f" (each length drawn uniformly within +-{100 * doc['config']['length_jitter']:g}% "
      "of the nominal one, so that windows do not line up with the 20 ms GPU counter period "
      "or the profiles' periods), random gaps of "
      f"{doc['config']['gap_s'][0] * 1e3:.0f}-"
      f"{doc['config']['gap_s'][1] * 1e3:.0f} ms between them, after "
      f"{doc['config']['warmup']} discarded warm-up windows of 100 ms. The workload inside a "
      "window is a sleep (the fake power does not depend on it).\n")

    w("## Highlights (computed from the tables below)\n")
    for line in highlights(doc, tools, L, lab):
        w(f"- {line}")
    w("")
    w("## Accuracy: |relative error| per window, median / worst\n")
    out.extend(_accuracy_table(doc, tools, L, lab, ("package", "cpu+dram", "gpu", "dram"),
                               _abs_err_cell))
    w("")
    w("Signed median error (bias), same windows:\n")
    out.extend(_accuracy_table(doc, tools, L, lab, ("package", "cpu+dram", "gpu"), _bias_cell))
    w("")

    w("## Cost\n")
    w("*start+stop*: median wall time of the tool's start call plus its stop call per window "
      "(µs). *read*: from the stop call's return until the energies are in hand (µs). "
      "*CPU*: process CPU time (this process, its threads and its helper processes) over one "
      f"{doc['config']['overhead_s']:g} s window at the tool's defaults, minus the same "
      "process asleep before the tool was built, as % of one core. *setup*: building the "
      "tool's meter, wall time and CPU, plus what the first (warm-up) windows cost.\n")
    w("| tool | start+stop µs | start µs | stop µs | read µs | worst start+stop µs | "
      "CPU % of a core | threads during | setup wall s | setup+warm-up CPU s |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for t, r in _ok_tools(doc, tools):
        a = r["summary"]["api"]
        o = r["summary"]["overhead"] or {}
        setup = r.get("setup", {})
        warm = r.get("warmup", {})
        w(f"| {LABELS[t]} | {_num(a['start_stop_us_median'])} | {_num(a['start_us_median'])} | "
          f"{_num(a['stop_us_median'])} | {_num(a['read_us_median'])} | "
          f"{_num(a['start_stop_us_max'])} | {_num(o.get('pct_of_one_core'), 3)} | "
          f"{o.get('threads_during', '-')} | {setup.get('wall_s', 0):.2f} | "
          f"{setup.get('cpu_s', 0) + warm.get('cpu_s', 0):.2f} |")
    w("")

    skipped = [(t, doc["tools"][t]) for t in tools
               if doc["tools"].get(t, {}).get("status") in ("skipped", "failed")]
    if skipped:
        w("## Skipped or failed\n")
        for t, r in skipped:
            w(f"- **{LABELS[t]}** ({r['status']}): {r['reason']}")
        w("")

    w("## How each tool was driven\n")
    for t, r in _ok_tools(doc, tools):
        d = r.get("describe") or {}
        w(f"- **{LABELS[t]}**: `{d.get('api', '?')}`. {TOOL_NOTES.get(t, '')}")
        extra = {k: v for k, v in d.items() if k != "api"}
        if extra:
            w(f"  Seen by the probe: {json.dumps(extra)}")
    w("")
    w("## Caveats\n")
    w("- The fake NVML reads small files on every call, far slower than a real driver, so "
      "tools that call NVML often (greenml's 10 ms sampler above all) pay more CPU here than on "
      "real hardware; the RAPL files are on a normal filesystem, not sysfs.")
    w("- greenml's CPU share is that of its 10 ms sampler thread reading 2 RAPL files and the "
      "fake NVML every tick; `benchmarks/results/sampler_overhead.md` splits that cost by "
      "source (the fake NVML dominates). The peers read the counters only at window edges "
      "(Zeus, pyJoules, CodeCarbon tasks) or sample every 1-15 s.")
    w("- The machine is shared and small (see the load average): wall-time costs and CPU "
      "shares carry scheduling noise; medians are reported for that reason.")
    w("- A window's workload is a sleep; tools whose sampling threads compete with a busy "
      "workload for a core could do worse on a loaded machine.")
    w("- Power readings (1 s trailing mean) lag a changing load, so tools that integrate power "
      "rather than counters are biased by the profile's phase, not only by sampling.")
    w("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
