"""Machine and load helpers shared by the benchmark scripts.

Used by ``accuracy.py``, ``meter_overhead.py``, ``training_overhead.py``,
``sampler_overhead.py`` and ``peers/run.py``; each puts this directory on
``sys.path`` first, so ``python benchmarks/X.py`` works from any directory.
Standard library only. ``peers/probe.py`` does not use it: it runs inside the
peers' own virtual environments and stays self-contained.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple


def utc_now() -> str:
    """The current UTC time as the results files write it: ``YYYY-mm-dd HH:MM:SS UTC``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def command_line(script: str, argv: Optional[Sequence[str]]) -> str:
    """How the results files record the run: ``python benchmarks/<script> <arguments>``."""
    return f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])


def run_header(script: str, argv: Optional[Sequence[str]]) -> Dict[str, Any]:
    """The first keys of a results file's metadata: command, date, uname, nproc, python."""
    return {
        "command": command_line(script, argv),
        "date": utc_now(),
        "uname": " ".join(platform.uname()),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
    }


def loadavg() -> List[float]:
    """The 1, 5 and 15 minute load averages from /proc/loadavg."""
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def uptime_line() -> str:
    """What ``uptime`` prints (the load average where it cannot run)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"loadavg {loadavg()}"


def uname_a() -> str:
    """What ``uname -a`` prints (``platform.uname()`` where it cannot run)."""
    try:
        return subprocess.run(["uname", "-a"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return " ".join(platform.uname())


def cpu_model_name() -> Optional[str]:
    """The first ``model name`` in /proc/cpuinfo, or None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo, else ``platform.processor()``, else ``unknown``."""
    model = cpu_model_name()
    if model is not None:
        return model
    return platform.processor() or "unknown"


def cpu_jiffies() -> Tuple[int, int, int]:
    """(busy, total, steal) jiffies of the whole machine (all CPUs) from /proc/stat.

    busy excludes idle, iowait and steal; total counts the first eight fields.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    steal = fields[7] if len(fields) > 7 else 0
    total = sum(fields[:8])
    return total - idle - steal, total, steal
