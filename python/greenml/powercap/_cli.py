"""``greenml powercap``: show limits, sweep them over a command, restore them after a crash."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import warnings
from typing import Any, List, Optional, Sequence

from ._limits import PowercapError, PowerLimit


def _w(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:g}"


def limits_table(found: Sequence[PowerLimit]) -> List[List[str]]:
    """Rows for a table of limits (W): domain, current, default, min, max, enforced, writable."""
    return [
        [
            lim.domain,
            _w(lim.current_w),
            _w(lim.default_w),
            _w(lim.min_w),
            _w(lim.max_w),
            _w(lim.enforced_w),
            "yes" if lim.writable else "no",
        ]
        for lim in found
    ]


LIMIT_HEADERS = ["domain", "limit W", "default W", "min W", "max W", "enforced W", "settable"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="powercap_cmd", metavar="{show,sweep,restore}")
    sub.required = True

    s = sub.add_parser("show", help="every GPU's and RAPL zone's power limits (no root needed)")
    s.add_argument("--json", action="store_true", help="print JSON")

    s = sub.add_parser(
        "sweep",
        help="run a command once per step under each limit; energy and time per run",
        usage="greenml powercap sweep [--limits auto|W,W,...] [--device gpu:0] "
        "[--steps-per-limit N] [--out DIR] -- CMD [ARGS...]",
        description="Runs CMD (a fixed amount of work) --steps-per-limit times under each power "
        "limit and compares energy and time per run: one run is one step. Make each run long "
        "next to its start-up (e.g. a few hundred training steps). Needs root to change a "
        "limit; the original is restored at the end, on errors, on SIGINT/SIGTERM, and by "
        "`greenml powercap restore` after a crash.",
    )
    s.add_argument("--limits", default="auto", help="'auto' (the device's range) or W,W,...")
    s.add_argument("--device", default="gpu:0", help="gpu:<i> or package:<s> (default gpu:0)")
    s.add_argument("--steps-per-limit", type=int, default=3, help="runs per limit (default 3)")
    s.add_argument("--warmup-steps", type=int, default=0, help="uncounted runs per limit")
    s.add_argument("--settle-s", type=float, default=1.0, help="seconds after each change")
    s.add_argument("--max-slowdown", type=float, default=0.05, help="budget for the choice")
    s.add_argument("--cost", type=float, metavar="ETA", help="choose by eta*E + (1-eta)*Pmax*t")
    s.add_argument("--out", metavar="DIR", help="write sweep.csv, sweep.json and sweep.png")
    s.add_argument("--state", metavar="FILE", help="state file (default: see docs)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")

    s = sub.add_parser(
        "restore", help="restore the limits saved in the state file (after a crash or kill)"
    )
    s.add_argument("--state", metavar="FILE", help="state file (default: see docs)")
    s.add_argument(
        "--force",
        action="store_true",
        help="even if the process that set them still runs, or the file was written on another "
        "host or before this host's last reboot",
    )


def _parse_limits(text: str) -> Any:
    if text == "auto":
        return "auto"
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PowercapError(f"--limits {text!r}: give 'auto' or watts like 150,200,250") from None


def _show(args: argparse.Namespace) -> int:
    from ..cli import _table  # the command line's one table format
    from ._limits import limits

    found = limits()
    if args.json:
        print(json.dumps([lim.to_dict() for lim in found], indent=2))
        return 0
    if not found:
        print("No power limit readable here (no NVIDIA GPU with NVML, no RAPL constraint files).")
        return 0
    print(_table(limits_table(found), LIMIT_HEADERS))
    notes = [lim for lim in found if lim.reason]
    if notes:
        print()
        for lim in notes:
            print(f"- {lim.domain}: {lim.reason}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from ._sweep import sweep

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("greenml powercap sweep: give the command after --", file=sys.stderr)
        return 2
    runs = {"n": 0}

    def run_once() -> None:
        runs["n"] += 1
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            raise PowercapError(
                f"run {runs['n']} of {shlex.join(cmd)} exited with {rc}; the sweep stopped and "
                "the original limit is restored"
            )

    result = sweep(
        run_once,
        limits=_parse_limits(args.limits),
        steps_per_limit=args.steps_per_limit,
        warmup_steps=args.warmup_steps,
        device=args.device,
        settle_s=args.settle_s,
        max_slowdown=args.max_slowdown,
        cost=args.cost,
        state_path=args.state,
    )
    result.command = shlex.join(cmd)
    if args.out:
        result.save(args.out)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    cols = [
        "limit_w",
        "steps",
        "energy_j",
        "energy_se_j",
        "time_s",
        "time_se_s",
        "slowdown",
        "energy_saving",
        "pareto",
    ]
    print(result.table[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"\nchosen (max slowdown {args.max_slowdown:g}): {result.chosen}")
    if args.out:
        print(f"written: {args.out}/sweep.csv, sweep.json, sweep.png")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from ._safety import default_state_path, restore_from_state

    path = args.state or default_state_path()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", RuntimeWarning)
        done = restore_from_state(path, force=args.force)
    for w in said:  # a stale file (written before a reboot): removed, nothing written
        print(f"greenml powercap: {w.message}", file=sys.stderr)
    if said and not done:
        return 0
    if not done:
        print(f"nothing to restore: no state file at {path}")
        return 0
    for e in done:
        print(f"restored {e['domain']} to {e['original_w']:g} W")
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        if args.powercap_cmd == "show":
            return _show(args)
        if args.powercap_cmd == "sweep":
            return _sweep(args)
        return _restore(args)
    except PowercapError as exc:
        print(f"greenml powercap: {exc}", file=sys.stderr)
        return 1
