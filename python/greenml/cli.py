"""The ``greenml`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence

from ._errors import GreenmlError


def _table(rows: List[List[str]], headers: List[str]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def _cmd_sensors(args: argparse.Namespace) -> int:
    from ._config import settings_from_env
    from ._runtime import build_sources, sensors_of

    from .powercap import limits as power_limits
    from .powercap._cli import LIMIT_HEADERS, limits_table

    settings = settings_from_env()
    sources, extra = build_sources(settings)
    found = sensors_of(sources, extra)
    # Assumptions of the modelled domains that will be reported here.
    notes = {c.domain: c.detail for src in sources for c in src.channels() if not c.measured}
    usable = any(s.available for s in found)
    limits = {lim.domain: lim for lim in power_limits(settings=settings)}
    if args.json:
        out = [
            {
                **asdict(s),
                **({"assumptions": notes[s.domain]} if s.domain in notes else {}),
                **({"power_limit": limits[s.domain].to_dict()} if s.domain in limits else {}),
            }
            for s in found
        ]
        print(json.dumps(out, indent=2))
        return 0 if usable else 1
    rows = [
        [
            s.domain,
            s.source,
            "measured" if s.measured else "estimated",
            "yes" if s.available else "no",
        ]
        for s in found
    ]
    print(_table(rows, ["domain", "source", "kind", "available"]))
    if limits:
        print("\nPower limits (greenml powercap):")
        print(_table(limits_table(list(limits.values())), LIMIT_HEADERS))
    reasons = [s for s in found if not s.available]
    if reasons:
        print("\nWhy not:")
        for s in reasons:
            wrapped = textwrap.fill(
                s.reason, width=100, initial_indent="  ", subsequent_indent="    "
            )
            print(f"- {s.domain} ({s.source}):\n{wrapped}")
    if notes:
        print("\nEstimated, not measured (their uncertainty is the model's error):")
        for dom, line in notes.items():
            print(textwrap.fill(f"- {dom}: {line}", width=100, subsequent_indent="    "))
        print(textwrap.fill(_MEASURED_INSTEAD, width=100))
    if not usable:
        print("\nNothing can be measured or estimated on this machine.", file=sys.stderr)
    return 0 if usable else 1


_MEASURED_INSTEAD = (
    "For measured numbers instead, run where a counter is readable: RAPL on a bare-metal Intel "
    "or AMD Linux machine (/sys/class/powercap; since Linux 5.10 energy_uj is readable by root "
    "only: run as root or `sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj`), NVML "
    "for NVIDIA GPUs. Cloud VMs expose no CPU or DRAM counter. GREENML_ESTIMATE=off (or "
    "--no-estimate) reports measured numbers only."
)


def _runtime_from_args(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from ._config import parse_interval_ms, settings_from_env
    from ._runtime import Runtime

    settings = settings_from_env()
    if args.interval_ms is not None:
        settings = replace(
            settings, interval_ms=parse_interval_ms(str(args.interval_ms), "--interval-ms")
        )
    if getattr(args, "no_estimate", False):
        settings = replace(settings, estimate=False)
    return Runtime(settings)


def _peak_power_w(df: Any, channels: List[Any]) -> Optional[float]:
    cols = [f"{c.domain}_w" for c in channels if c.in_total and f"{c.domain}_w" in df]
    if not cols or df.empty:
        return None
    data = df[cols].copy()
    # A modelled channel's per-sample power is quantised by its busy-time counter (a jiffy,
    # 10 ms), so between close samples it aliases far above and below the model's power: its
    # peak is taken over 0.5 s means.
    model = [f"{c.domain}_w" for c in channels if not c.measured and f"{c.domain}_w" in data]
    if model and "t_s" in df:
        import pandas as pd

        when = pd.to_timedelta(df["t_s"].to_numpy(), unit="s")
        data[model] = data[model].set_index(when).rolling("500ms").mean().to_numpy()
    total = data.sum(axis=1, min_count=len(cols))
    return float(total.max()) if total.notna().any() else None


def _cmd_run(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from ._baseline import idle_baseline
    from ._meter import Meter
    from ._records import RecordLog

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print(
            "greenml run: give the command to measure after --, e.g. "
            "`greenml run -- python train.py`",
            file=sys.stderr,
        )
        return 2
    if shutil.which(cmd[0]) is None and not os.path.exists(cmd[0]):
        print(f"greenml run: {cmd[0]}: command not found", file=sys.stderr)
        return 127
    _check_run_options(args)
    # Every output is checked before the command runs: a bad path must not lose the result.
    from ._trace import check_trace_path

    if args.trace:
        check_trace_path(args.trace)
    log = RecordLog(args.log) if args.log else None
    for option, path in (("--json", args.json), ("--trace", args.trace)):
        if path:
            try:
                with open(path, "a", encoding="utf-8"):
                    pass
            except OSError as exc:
                raise GreenmlError(
                    f"cannot write {option} {path!r} ({exc.strerror}); pick a writable path"
                ) from None
    rt = _runtime_from_args(args)
    baseline = None
    if args.idle is not None:
        print(f"greenml: measuring idle power for {args.idle:g} s ...", file=sys.stderr)
        baseline = idle_baseline(args.idle, runtime=rt)
    m = Meter(
        " ".join(cmd)[:200],
        runtime=rt,
        region=args.region,
        carbon_intensity=args.carbon_intensity,
        pue=args.pue,
        baseline=baseline,
        sync_cuda=False,
    )
    relay = _SignalRelay()
    relay.install()  # before the child exists: a signal now is kept and delivered to it
    if args.trace:  # a trace needs every sample at the full rate, not only around the edges
        rt.ensure_started().add_demand(1)
    try:
        m.start()
        try:
            child = subprocess.Popen(cmd)
        except OSError as exc:
            m.stop()
            print(f"greenml run: cannot start {cmd[0]}: {exc.strerror}", file=sys.stderr)
            return 127 if isinstance(exc, FileNotFoundError) else 126  # as a shell does
        relay.attach(child)
        try:
            rc = child.wait()
        finally:
            relay.detach()  # from here on a signal is noted, never raised: reporting finishes
            m.stop()
        code = rc if rc >= 0 else 128 - rc
        try:
            _report_run(args, cmd, code, m, rt, log)
        except Exception as exc:  # the command's exit code is kept whatever happens here
            print(f"greenml run: could not report the measurement: {exc}", file=sys.stderr)
        finally:
            rt.stop()
        return code
    finally:
        relay.uninstall()


def _check_run_options(args: argparse.Namespace) -> None:
    """Invalid ``greenml run`` options fail here, named as typed, before anything runs."""
    import math

    from . import _carbon

    if args.region is not None:
        if not args.region.strip():
            raise GreenmlError(
                "--region='' is empty; give an ISO 3166 alpha-2 or alpha-3 code such as DE or "
                "DEU, or leave the option out for GREENML_REGION or the World average"
            )
        _carbon._lookup_region(args.region, "--region")
    if args.carbon_intensity is not None:
        _carbon._check_intensity(args.carbon_intensity, "--carbon-intensity", args.carbon_intensity)
    if not math.isfinite(args.pue) or args.pue < 1.0:
        raise GreenmlError(
            f"--pue={args.pue!r} is not a valid power usage effectiveness: give a finite number "
            ">= 1.0 (1.0 = IT energy only; about 1.1-1.6 for data centres)"
        )
    if args.idle is not None and not (math.isfinite(args.idle) and args.idle > 0):
        raise GreenmlError(
            f"--idle={args.idle!r} is not a duration: give the seconds of idle power to "
            "measure first, a finite number > 0 (e.g. 10), or leave the option out"
        )


# Signals greenml run relays to the command. The terminal sends the keyboard ones (^C, ^\) and
# hang-up to its whole foreground process group, which holds the command too: those are relayed
# only when the command did not get its own copy (no terminal, greenml in the background, or a
# command that moved to a process group of its own). The others are always relayed.
RELAYED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
TERMINAL_SIGNALS = ("SIGINT", "SIGQUIT", "SIGHUP")


def _terminal_reached(pid: int) -> bool:
    """Whether a signal the terminal sends to its foreground group also reached ``pid``: it is
    in greenml's process group and that group is in the foreground of greenml's terminal."""
    try:
        group = os.getpgrp()
        if os.getpgid(pid) != group:
            return False
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:  # no such process any more, or no controlling terminal
        return False
    try:
        return os.tcgetpgrp(fd) == group
    except OSError:
        return False
    finally:
        os.close(fd)


class _SignalRelay:
    """Relays signals sent to ``greenml run`` to the command, each exactly once.

    Before the command starts a signal is kept and delivered once it exists; while it runs a
    signal is relayed (see :data:`TERMINAL_SIGNALS` for the ones the terminal delivered
    itself); after it ended a signal is only noted, so the result, log and exit status are
    always written whatever arrives while reporting.
    """

    def __init__(self) -> None:
        import signal

        self.signums = [getattr(signal, n) for n in RELAYED_SIGNALS if hasattr(signal, n)]
        self._terminal = {getattr(signal, n) for n in TERMINAL_SIGNALS if hasattr(signal, n)}
        self._child: Any = None
        self._done = False
        self._early: List[int] = []
        self._old: Dict[int, Any] = {}
        self.received: List[int] = []

    def install(self) -> None:
        import signal

        for s in self.signums:
            self._old[s] = signal.signal(s, self._handle)

    def uninstall(self) -> None:
        import signal

        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()

    def attach(self, child: Any) -> None:
        self._child = child
        early, self._early = self._early, []
        for s in early:  # the command did not exist yet: nobody, the terminal included, told it
            self._send(s)

    def detach(self) -> None:
        self._done = True

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received.append(signum)
        if self._done:
            return
        child = self._child
        if child is None:
            self._early.append(signum)
        elif not (signum in self._terminal and _terminal_reached(child.pid)):
            self._send(signum)

    def _send(self, signum: int) -> None:
        try:
            self._child.send_signal(signum)  # a no-op once the child is reaped
        except ProcessLookupError:
            pass


def _report_run(
    args: argparse.Namespace, cmd: List[str], code: int, m: Any, rt: Any, log: Any
) -> None:
    from ._trace import write_trace
    from ._report import describe_result

    result = m.result().to_dict()
    df = m.to_dataframe()
    result["peak_power_w"] = _peak_power_w(df, rt.channels)
    result["type"] = "run"
    result["command"] = cmd
    result["exit_code"] = code
    if args.trace:
        result["trace"] = os.path.abspath(args.trace)
    if log is not None:
        log.write(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    if args.trace:
        write_trace(df, args.trace)
    print(describe_result(result, title=f"greenml run (exit {code})"), file=sys.stderr)


def _cmd_report(args: argparse.Namespace) -> int:
    from ._records import read_records
    from ._report import describe_result, format_rows, load_trace, plot_run, summary_rows

    path = args.file
    if not os.path.exists(path):
        print(f"greenml report: {path}: no such file", file=sys.stderr)
        return 2
    if path.lower().endswith((".csv", ".parquet")):
        trace = load_trace(path)
        if "t_s" not in trace:
            print(f"greenml report: {path} is not a greenml trace (no t_s column)", file=sys.stderr)
            return 2
        import numpy as np

        rows = []
        t = trace["t_s"].to_numpy()
        for c in [c for c in trace.columns if c.endswith("_w")]:
            w = trace[c].to_numpy(dtype=float)
            ok = np.isfinite(w)
            e = float(np.sum(np.where(ok, w, 0.0) * np.diff(t, prepend=t[0])))
            rows.append(
                {
                    "type": "trace",
                    "name": c[:-2],
                    "duration_s": float(t[-1] - t[0]) if t.size else 0.0,
                    "energy_j": e,
                }
            )
        print(format_rows(rows, args.format))
        if args.plot:
            plot_run(trace, args.plot, title=os.path.basename(path))
        return 0
    records = read_records(path)
    if not records:
        print(f"greenml report: {path} holds no greenml records", file=sys.stderr)
        return 1
    print(format_rows(summary_rows(records), args.format))
    if args.plot:
        tops = [r for r in records if r.get("type") in ("meter", "run") and r.get("trace")]
        if not tops:
            print(
                "greenml report: --plot needs a trace; record one with meter(trace=...) or "
                "`greenml run --trace FILE`",
                file=sys.stderr,
            )
            return 1
        top = tops[-1]
        spans = {
            r["name"]: r.get("spans_s") or []
            for r in records
            if r.get("type") == "phase" and r.get("run_id") == top.get("run_id")
        }
        plot_run(
            load_trace(top["trace"]),
            args.plot,
            spans=spans,
            title=f"{top.get('name') or 'run'}",
            estimated=top.get("estimated_domains") or [],
        )
        print(f"plot written to {args.plot}", file=sys.stderr)
    if args.verbose:
        for r in records:
            if r.get("type") in ("meter", "run"):
                print(describe_result(r, title=str(r.get("name"))))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    if args.no_estimate:
        from dataclasses import replace

        from ._config import settings_from_env
        from ._runtime import Runtime

        rt = Runtime(replace(settings_from_env(), estimate=False))
        try:
            return run_demo(args.out, quick=args.quick, runtime=rt)
        finally:
            rt.stop()
    return run_demo(args.out, quick=args.quick)


def _cmd_study(args: argparse.Namespace) -> int:
    from .study._cli import main as study_main

    return study_main(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from .exporter import main as export_main

    return export_main(args)


def _cmd_powercap(args: argparse.Namespace) -> int:
    from .powercap._cli import main as powercap_main

    return powercap_main(args)


def _cmd_forecast(args: argparse.Namespace) -> int:
    from ._forecast import forecast

    f = forecast(
        args.log,
        args.total_steps,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        confidence=args.confidence,
        run_id=args.run_id,
    )
    print(json.dumps(f.to_dict(), indent=2) if args.json else f.describe())
    return 0


def _cmd_estimate(args: argparse.Namespace) -> int:
    from ._estimate import Estimator

    info = sys.stderr if args.json else sys.stdout
    if args.source.lower().endswith(".json"):
        est = Estimator.load(args.source)
    else:
        est = Estimator(family=args.family).fit(args.source, hardware=args.hardware, verbose=False)
    print(est.describe(), file=info)
    if args.save:
        est.save(args.save)
        print(f"estimator written to {args.save}", file=info)
    if args.model is None and args.params is None:
        if args.json:
            print(json.dumps({"hardware": est.hardware, "cv": est.cv}, indent=2))
        return 0
    if args.batch_size is None or args.samples is None:
        raise GreenmlError("give --batch-size and --samples to estimate a model")
    if args.model is not None:
        from . import zoo

        what: Any = zoo.create(args.model, width=args.width)
    else:
        what = {"params": args.params, "macs": args.macs, "train_macs": args.train_macs}
    r = est.predict(
        what,
        phase=args.phase,
        batch_size=args.batch_size,
        samples=args.samples,
        hardware=args.hardware,
        force=args.force,
    )
    print(json.dumps(r.to_dict(), indent=2) if args.json else r.describe())
    return 0


_NO_ESTIMATE_HELP = (
    "measured numbers only: no cpu:estimated / dram:estimated where no counter exists "
    "(as GREENML_ESTIMATE=off)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greenml", description="Energy profiler for machine learning."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("sensors", help="what can be measured here, and why not the rest")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_sensors)

    p = sub.add_parser(
        "run",
        help="measure a whole command, keep its exit code",
        usage="greenml run [options] -- CMD [ARGS...]",
    )
    p.add_argument("--json", metavar="FILE", help="write the result as one JSON object")
    p.add_argument("--log", metavar="FILE", help="append the result to a JSON Lines log")
    p.add_argument("--trace", metavar="FILE", help="per-sample power trace (.csv or .parquet)")
    p.add_argument("--interval-ms", type=float, help="sampling period in ms (default 10)")
    p.add_argument("--region", help="ISO 3166 alpha-2/alpha-3 code for carbon intensity")
    p.add_argument(
        "--carbon-intensity",
        type=float,
        metavar="G_PER_KWH",
        help="grid intensity in gCO2e/kWh (overrides --region)",
    )
    p.add_argument("--pue", type=float, default=1.0, help="power usage effectiveness (>= 1)")
    p.add_argument(
        "--idle",
        type=float,
        metavar="SECONDS",
        help="measure an idle baseline first and report energy above idle",
    )
    p.add_argument("--no-estimate", action="store_true", help=_NO_ESTIMATE_HELP)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("report", help="summarise a saved log or trace (table, plots)")
    p.add_argument("file", help="a JSON Lines log, or a .csv/.parquet trace")
    p.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table")
    p.add_argument("--plot", metavar="OUT.png", help="draw power and cumulative energy")
    p.add_argument("-v", "--verbose", action="store_true", help="also describe each run")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="train and evaluate a small model, measured, and report")
    p.add_argument("--out", default="greenml-demo", help="directory for the log and plot")
    p.add_argument("--quick", action="store_true", help="a few seconds instead of ~30")
    p.add_argument("--no-estimate", action="store_true", help=_NO_ESTIMATE_HELP)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("study", help="the energy study: models x batch sizes x phases, analysed")
    from .study._cli import add_arguments as add_study_arguments  # no torch import

    add_study_arguments(p)
    p.set_defaults(func=_cmd_study)

    p = sub.add_parser("forecast", help="total of a run from its first steps, with interval")
    p.add_argument("log", help="a greenml log with a step profile, or a CSV with energy_j/step")
    p.add_argument("--total-steps", type=int, help="steps of the whole run")
    p.add_argument("--epochs", type=float, help="epochs of the whole run (with --steps-per-epoch)")
    p.add_argument("--steps-per-epoch", type=int, help="steps in one epoch")
    p.add_argument("--confidence", type=float, default=0.9, help="interval coverage (0.9)")
    p.add_argument("--run-id", help="the run to use when the log holds several")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_forecast)

    p = sub.add_parser("estimate", help="energy of a model from its features (study results)")
    p.add_argument(
        "source",
        help="a study's results.csv/.parquet (or its folder) to fit on, "
        "or an estimator saved with --save (.json)",
    )
    p.add_argument(
        "--hardware", help="fingerprint to fit on and predict for (default: this machine's)"
    )
    p.add_argument(
        "--family",
        choices=["auto", "loglinear", "gbm"],
        default="auto",
        help="model family (auto: chosen by leave-one-model-out error)",
    )
    p.add_argument("--save", metavar="EST.json", help="write the fitted estimator")
    p.add_argument("--model", help="a zoo model to estimate (see greenml.zoo.names())")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of --model")
    p.add_argument("--params", type=float, help="parameters of the model (instead of --model)")
    p.add_argument("--macs", type=float, help="forward MACs per sample")
    p.add_argument("--train-macs", type=float, help="training-step MACs per sample")
    p.add_argument("--phase", choices=["train", "inference"], default="train")
    p.add_argument("--batch-size", type=int, help="samples per step")
    p.add_argument("--samples", type=int, help="samples to estimate for")
    p.add_argument("--force", action="store_true", help="predict for other hardware anyway")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_estimate)

    p = sub.add_parser("export", help="serve Prometheus /metrics: energy and power per domain")
    from .exporter import add_arguments as add_export_arguments  # no prometheus_client import

    add_export_arguments(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("powercap", help="read, sweep, tune and restore power limits")
    from .powercap._cli import add_arguments as add_powercap_arguments

    add_powercap_arguments(p)
    p.set_defaults(func=_cmd_powercap)
    return parser


def _short_warning(
    message: Any, category: Any, filename: str, lineno: int, line: Any = None
) -> str:
    return f"greenml: warning: {message}\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    import warnings

    warnings.formatwarning = _short_warning  # type: ignore[assignment]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except GreenmlError as exc:
        print(f"greenml: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
