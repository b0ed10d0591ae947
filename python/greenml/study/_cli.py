"""``greenml study``: options (from flags and an optional TOML file), the run, the analysis.

Importing this module does not import torch: the parser is built at every ``greenml`` call.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List

from .._errors import ConfigError

DEFAULTS: Dict[str, Any] = {
    "models": "lenet,mobilenetv2,resnet18",
    "batch_sizes": "16,64",
    "steps": None,
    "samples": None,
    "phases": "train,inference",
    "repetitions": 1,
    "width": 1.0,
    "device": "auto",
    "warmup_steps": 1,
    "idle": 0.0,
    "cifar10": None,
    "seed": 0,
    "lr": 0.05,
    "threads": None,
    "out": "greenml-study",
}

#: TOML keys accepted in --config (same names as the flags, with underscores).
CONFIG_KEYS = tuple(DEFAULTS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.toml", help="options from a TOML file (flags win)")
    p.add_argument("--models", help="comma list of zoo names (default lenet,mobilenetv2,resnet18)")
    p.add_argument("--batch-sizes", dest="batch_sizes", help="comma list (default 16,64)")
    p.add_argument("--steps", type=int, help="measured steps per cell (default 20)")
    p.add_argument("--samples", type=int, help="measured samples per cell (instead of --steps)")
    p.add_argument("--phases", help="train,inference (default both)")
    p.add_argument("--repetitions", type=int, help="repetitions of every cell (default 1)")
    p.add_argument("--width", type=float, help="channel multiplier of zoo models (default 1)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:<i> (default auto)")
    p.add_argument("--warmup-steps", dest="warmup_steps", type=int, help="unmeasured (1)")
    p.add_argument("--idle", type=float, metavar="SECONDS", help="idle baseline first (0: none)")
    p.add_argument("--cifar10", metavar="DIR", help="CIFAR-10 python batches in DIR (no download)")
    p.add_argument("--seed", type=int, help="seed of models and data (default 0)")
    p.add_argument("--lr", type=float, help="SGD learning rate (default 0.05)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 = steadiest)")
    p.add_argument("--out", help="output directory (default greenml-study)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="measure every cell")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _read_config(path: str) -> Dict[str, Any]:
    try:
        import tomllib  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - Python < 3.11
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise ConfigError(
                "--config needs Python 3.11+ or the tomli package (`pip install tomli`)"
            ) from None
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config {path!r}: {exc.strerror}; give a readable TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path!r} is not valid TOML ({exc})") from None
    data = data.get("study", data)  # a [study] table or top-level keys
    out: Dict[str, Any] = {}
    for key, value in data.items():
        k = key.replace("-", "_")
        if k not in CONFIG_KEYS:
            raise ConfigError(
                f"--config {path!r}: unknown key {key!r}; use {', '.join(CONFIG_KEYS)}"
            )
        out[k] = ",".join(str(v) for v in value) if isinstance(value, list) else value
    return out


def _ints(text: Any, option: str) -> List[int]:
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option}={text!r}: give whole numbers separated by commas, e.g. 16,64")
    if not vals or any(v <= 0 for v in vals):
        raise ConfigError(f"{option}={text!r}: give positive numbers, e.g. 16,64")
    return vals


def options(args: argparse.Namespace) -> Dict[str, Any]:
    """Defaults, overridden by --config, overridden by flags."""
    opts = dict(DEFAULTS)
    if args.config:
        opts.update(_read_config(args.config))
    flags = {k: getattr(args, k, None) for k in CONFIG_KEYS}
    if flags["steps"] is not None or flags["samples"] is not None:
        opts["steps"] = opts["samples"] = None  # a flag replaces the file's length, not adds
    for k, v in flags.items():
        if v is not None:
            opts[k] = v
    if opts["steps"] is None and opts["samples"] is None:
        opts["steps"] = 20
    return opts


def main(args: argparse.Namespace) -> int:
    from . import analyze, run

    o = options(args)
    out = str(o["out"])
    df = run(
        models=[m.strip() for m in str(o["models"]).split(",") if m.strip()],
        batch_sizes=_ints(o["batch_sizes"], "--batch-sizes"),
        steps=o["steps"],
        samples=o["samples"],
        phases=[p.strip() for p in str(o["phases"]).split(",") if p.strip()],
        repetitions=int(o["repetitions"]),
        width=float(o["width"]),
        device=str(o["device"]),
        warmup_steps=int(o["warmup_steps"]),
        idle_s=float(o["idle"]),
        cifar10_root=o["cifar10"],
        seed=int(o["seed"]),
        lr=float(o["lr"]),
        threads=int(o["threads"]) if o["threads"] is not None else None,
        out_dir=out,
        resume=args.resume,
        progress=not args.quiet,
    )
    a = analyze(df, out_dir=out, plots=args.plots)
    print(a.guidelines)
    written = [os.path.join(out, "results.csv")]
    if os.path.exists(os.path.join(out, "results.parquet")):
        written.append(os.path.join(out, "results.parquet"))
    print(f"wrote {', '.join(written + a.files)}", file=sys.stderr)
    return 0
