"""Prometheus exporter: ``greenml export --port PORT`` or, in-process,
``greenml.exporter.start(port=9464)``.

Serves ``/metrics`` with, per domain, ``greenml_energy_joules_total`` (energy since the exporter
started: a counter) and ``greenml_power_watts`` (mean power over the last ``power_window_s``
seconds: a gauge), and, per function decorated with ``@greenml.measure``, its calls and energy.

Everything is read when Prometheus scrapes, never in between: a scrape reads every counter once,
synchronously (microseconds for RAPL), and subtracts the reading taken when the exporter
started. The sampler's cumulative energies already unwrap counter wraps and count a counter
reset from zero, so the counters only go up; the exporter also never lets a value it has served
go down. An idle exporter adds no thread that polls the hardware: only the HTTP server's
accept loop (``prometheus_client``'s, which wakes twice a second) and the sampler's usual
once-a-second idle reading.

``prometheus_client`` is imported only when an exporter starts (``pip install
"greenml[prometheus]"``); ``import greenml.exporter`` itself needs nothing.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
import warnings
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ._errors import GreenmlError
from ._runtime import Runtime, default_runtime

#: Default TCP port (Prometheus' default-port allocation page lists 9464 for OpenTelemetry-style
#: exporters; override with --port).
DEFAULT_PORT = 9464
#: Default address: localhost only. Serving every interface is a choice (``--addr 0.0.0.0``).
DEFAULT_ADDR = "127.0.0.1"
#: ``greenml_power_watts`` is the mean power over at least this many trailing seconds.
DEFAULT_POWER_WINDOW_S = 10.0
#: A power gauge needs at least this much time between its two readings (else it is omitted):
#: a GPU counter updates every 20-100 ms, so a shorter span would be mostly quantisation.
MIN_POWER_SPAN_S = 0.5

_INSTALL_HINT = 'pip install "greenml[prometheus]"'


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise GreenmlError(
            f"the Prometheus exporter needs prometheus_client, which is not installed: "
            f"{_INSTALL_HINT}"
        ) from exc
    return prometheus_client


def _flag(b: bool) -> str:
    return "true" if b else "false"


class GreenmlCollector:
    """A ``prometheus_client`` collector that reads the runtime's counters when scraped.

    Register it in any registry (``registry.register(GreenmlCollector())``) to add greenml's
    metrics to an application's own ``/metrics``; :func:`start` does that and serves them.
    Thread-safe: concurrent scrapes are served one at a time. Nothing raised while reading
    reaches the HTTP server: the part that failed is omitted from that scrape, counted in
    ``greenml_scrape_errors_total{part=...}`` and warned about once.
    """

    #: The parts a scrape reads; each fails on its own.
    PARTS = ("domains", "power", "functions")

    def __init__(
        self,
        runtime: Optional[Runtime] = None,
        *,
        power_window_s: float = DEFAULT_POWER_WINDOW_S,
        functions: bool = True,
    ) -> None:
        if not (isinstance(power_window_s, (int, float)) and 0 < power_window_s <= 86_400):
            raise GreenmlError(
                f"power_window_s={power_window_s!r}: give the power gauge's averaging window in "
                "seconds, between 0 and 86400 (e.g. 10)"
            )
        self._rt = runtime if runtime is not None else default_runtime()
        self._power_window_ns = int(power_window_s * 1e9)
        self._functions = functions
        self._lock = threading.Lock()
        self._errors = {part: 0 for part in self.PARTS}
        self._warned: set = set()
        sampler = self._rt.ensure_started()
        self._channels = list(self._rt.channels)
        # Power-only channels (GPUs without an energy counter) are integrated sample by sample:
        # their energy is only as good as the sampling rate, so they keep it at full rate.
        self._demand = self._rt.needs_full_rate_in_windows
        if self._demand:
            sampler.add_demand(1)
        _, self.t0_ns, e0, _, _ = sampler.read_now()
        #: When the exporter started: Unix time (s) and CLOCK_MONOTONIC (ns) of its first reading.
        self.t0_unix = time.time()
        self._e0 = [float(x) for x in e0]
        self._served = [0.0] * len(self._channels)  # the last value served, per channel
        self._fn_served: Dict[str, Tuple[float, float, float, float]] = {}

    def close(self) -> None:
        """Releases the full-rate demand taken for power-only channels (idempotent)."""
        with self._lock:
            if self._demand:
                self._demand = False
                self._rt.sampler.add_demand(-1)

    # -- prometheus_client's collector protocol -------------------------------------------

    def describe(self) -> List[Any]:
        """The metric families, without reading anything (called at registration)."""
        return self._families(empty=True)

    def collect(self) -> List[Any]:
        with self._lock:
            return self._families(empty=False)

    # -- the scrape --------------------------------------------------------------------------

    def _families(self, empty: bool) -> List[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        dom = ["domain", "measured", "in_total"]
        energy = CounterMetricFamily(
            "greenml_energy_joules",
            'Energy per domain since the exporter started (J). Sum only in_total="true" '
            "domains: the others (core, uncore, psys) lie inside them.",
            labels=dom,
        )
        power = GaugeMetricFamily(
            "greenml_power_watts",
            f"Mean power per domain over the last {self._power_window_ns / 1e9:g} s or a little "
            "more (W); for exact averages use rate(greenml_energy_joules_total[...]).",
            labels=dom,
        )
        up = GaugeMetricFamily(
            "greenml_domain_up",
            "1 while the domain's last reading succeeded, 0 while its reads fail.",
            labels=["domain"],
        )
        fn = ["function"]
        calls = CounterMetricFamily(
            "greenml_function_calls",
            "Calls of each @greenml.measure function (raised ones included).",
            labels=fn,
        )
        errors = CounterMetricFamily(
            "greenml_function_errors", "Calls that raised, per measured function.", labels=fn
        )
        fenergy = CounterMetricFamily(
            "greenml_function_energy_joules",
            "Energy of the calls of each @greenml.measure function (J), over the in_total domains.",
            labels=fn,
        )
        fseconds = CounterMetricFamily(
            "greenml_function_duration_seconds",
            "Wall time of the calls of each @greenml.measure function (s).",
            labels=fn,
        )
        scrape_errors = CounterMetricFamily(
            "greenml_scrape_errors",
            "Scrapes in which a part of greenml's metrics could not be read (and was omitted).",
            labels=["part"],
        )
        families = [energy, power, up, calls, errors, fenergy, fseconds, scrape_errors]
        if empty:
            return families
        reading = self._guard("domains", self._read_domains, energy, up)
        if reading is not None:
            self._guard("power", self._read_power, power, reading)
        if self._functions:
            self._guard("functions", self._read_functions, calls, errors, fenergy, fseconds)
        for part in self.PARTS:
            scrape_errors.add_metric([part], self._errors[part])
        return families

    def _guard(self, part: str, read: Any, *args: Any) -> Any:
        try:
            return read(*args)
        except Exception as exc:  # noqa: BLE001 - a scrape must never take the server down
            self._errors[part] += 1
            if part not in self._warned:
                self._warned.add(part)
                try:
                    warnings.warn(
                        f"greenml exporter: reading the {part} failed ({exc!r}); scrapes omit "
                        f'them while it fails, greenml_scrape_errors_total{{part="{part}"}} '
                        "counts the failures (warned once)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                except Exception:  # noqa: BLE001 - warnings turned into errors must not escape
                    pass
            return None

    def _read_domains(self, energy: Any, up: Any) -> Tuple[int, List[float], List[int]]:
        sampler = self._rt.ensure_started()
        _, t_ns, e, _, ct = sampler.read_now()
        e = [float(x) for x in e]
        failing = self._failing_domains()
        for i, ch in enumerate(self._channels):
            v = e[i] - self._e0[i]
            if not math.isfinite(v):
                continue
            # The sampler's cumulative energy does not go down (wraps unwrapped, a reset counted
            # from zero); a served counter never does either, whatever happens below.
            v = max(v, self._served[i])
            self._served[i] = v
            labels = [ch.domain, _flag(ch.measured), _flag(ch.in_total)]
            energy.add_metric(labels, v, created=self.t0_unix)
            up.add_metric([ch.domain], 0.0 if ch.domain in failing else 1.0)
        return t_ns, e, [int(x) for x in ct]

    def _failing_domains(self) -> set:
        failing: set = set()
        for ev in self._rt.events():
            if ev.kind == "read_failed":
                failing.add(ev.domain)
            elif ev.kind == "read_recovered":
                failing.discard(ev.domain)
        return failing

    def _read_power(self, power: Any, reading: Tuple[int, List[float], List[int]]) -> None:
        t_ns, e, ct = reading
        # The run-long history keeps a row about every second: the newest row at or before the
        # window's start, else the exporter's own first reading.
        _, _, he, _, hct = self._rt.sampler.history(t_ns - self._power_window_ns, t_ns)
        base_e: Optional[List[float]] = None
        base_ct: Optional[List[int]] = None
        if len(he) and t_ns - int(hct[0].min()) >= MIN_POWER_SPAN_S * 1e9:
            base_e, base_ct = [float(x) for x in he[0]], [int(x) for x in hct[0]]
        for i, ch in enumerate(self._channels):
            if base_e is not None and base_ct is not None:
                e0, c0 = base_e[i], base_ct[i]
            else:
                e0, c0 = self._e0[i], self.t0_ns
            span_s = (ct[i] - c0) / 1e9
            p = (e[i] - e0) / span_s if span_s >= MIN_POWER_SPAN_S else math.nan
            if math.isfinite(p):
                labels = [ch.domain, _flag(ch.measured), _flag(ch.in_total)]
                power.add_metric(labels, max(0.0, p))

    def _read_functions(self, calls: Any, errors: Any, fenergy: Any, fseconds: Any) -> None:
        from ._measure import _live

        sums: Dict[str, List[float]] = {}
        for stats in list(_live):
            # The calls whose counter updates have arrived; never waits for the rest, which the
            # next scrape counts.
            n, n_err, e, s = stats.snapshot()
            acc = sums.setdefault(stats.name, [0.0, 0.0, 0.0, 0.0])
            acc[0] += n
            acc[1] += n_err
            acc[2] += e if n else 0.0
            acc[3] += s
        for name, (n_calls, n_err, joules, secs) in sorted(sums.items()):
            p_n, p_err, p_e, p_s = self._fn_served.get(name, (0.0, 0.0, 0.0, 0.0))
            # A wrapper that was garbage-collected leaves its name's sum: what was served
            # stays where it was rather than go down.
            n_calls, n_err, secs = max(n_calls, p_n), max(n_err, p_err), max(secs, p_s)
            calls.add_metric([name], n_calls)
            errors.add_metric([name], n_err)
            fseconds.add_metric([name], secs)
            if math.isfinite(joules):  # NaN when nothing is measurable here
                p_e = max(joules, p_e)
                fenergy.add_metric([name], p_e)
            self._fn_served[name] = (n_calls, n_err, p_e, secs)


class Exporter:
    """A running exporter (from :func:`start`): ``.url``, ``.port``, ``.stop()``; also a
    context manager that stops it on exit."""

    def __init__(self, collector: GreenmlCollector, registry: Any, server: Any, thread: Any):
        self.collector = collector
        self.registry = registry
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.addr: str = host
        self.port: int = int(port)
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/metrics"
        self._stopped = False

    def stop(self) -> None:
        """Stops serving, closes the socket and removes greenml's collector (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
        try:
            self.registry.unregister(self.collector)
        except KeyError:
            pass
        self.collector.close()

    def __enter__(self) -> "Exporter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<greenml.exporter.Exporter {self.url} {'stopped' if self._stopped else 'serving'}>"


def start(
    port: int = DEFAULT_PORT,
    addr: str = DEFAULT_ADDR,
    registry: Any = None,
    *,
    runtime: Optional[Runtime] = None,
    power_window_s: float = DEFAULT_POWER_WINDOW_S,
    functions: bool = True,
) -> Exporter:
    """Serves Prometheus ``/metrics`` from this process, on a daemon thread; returns an
    :class:`Exporter` (``.url``, ``.stop()``).

    ``port=0`` picks a free port (see ``.port``). ``addr`` is localhost unless told otherwise
    (``"0.0.0.0"`` or ``"::"`` serve every interface). ``registry``: None serves greenml's
    metrics alone, from a registry of their own; pass ``prometheus_client.REGISTRY`` (or yours)
    to serve them beside the application's. Energy counters start at zero now;
    ``greenml_power_watts`` is the mean power over the last ``power_window_s`` seconds (a
    little more: the history keeps a row about every second).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise GreenmlError(
            f"port={port!r}: give a TCP port from 0 to 65535 (0 picks a free one), e.g. 9464"
        )
    prom = _prometheus()
    collector = GreenmlCollector(runtime, power_window_s=power_window_s, functions=functions)
    if registry is None:
        registry = prom.CollectorRegistry(auto_describe=True)
    try:
        registry.register(collector)
    except ValueError as exc:
        collector.close()
        raise GreenmlError(
            f"this registry already serves greenml's metrics ({exc}): stop the other exporter "
            "first, or pass a registry of its own"
        ) from exc
    try:
        server, thread = prom.start_http_server(int(port), addr=addr, registry=registry)
    except OSError as exc:
        registry.unregister(collector)
        collector.close()
        raise GreenmlError(
            f"cannot serve /metrics on {addr}:{port} ({exc.strerror or exc}): choose another "
            "port with --port (0 picks a free one) or another address with --addr"
        ) from exc
    return Exporter(collector, registry, server, thread)


# -- greenml export ------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"TCP port ({DEFAULT_PORT}; 0 = any free)"
    )
    p.add_argument(
        "--addr",
        default=DEFAULT_ADDR,
        help=f"address to bind ({DEFAULT_ADDR}: this machine only; 0.0.0.0 = every interface)",
    )
    p.add_argument(
        "--interval-ms",
        type=float,
        help="sampling period in ms while something needs full rate (default 10); the "
        "exporter's counters are exact at any rate",
    )
    p.add_argument(
        "--power-window-s",
        type=float,
        default=DEFAULT_POWER_WINDOW_S,
        help=f"greenml_power_watts averages over this many trailing seconds "
        f"({DEFAULT_POWER_WINDOW_S:g})",
    )
    p.add_argument(
        "--no-estimate", action="store_true", help="serve measured domains only (no model)"
    )


def _wait_for_signal(signals: Iterable[int]) -> int:
    """Blocks until one of ``signals`` arrives; returns it. Restores the old handlers."""
    got: List[int] = []
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        got.append(signum)
        done.set()

    old = {s: signal.signal(s, on_signal) for s in signals}
    try:
        done.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return got[0]


def main(args: argparse.Namespace) -> int:
    from .cli import _runtime_from_args

    _prometheus()  # fail before building anything
    rt = _runtime_from_args(args)
    try:
        exporter = start(args.port, args.addr, runtime=rt, power_window_s=args.power_window_s)
        try:
            domains = [c.domain for c in rt.channels]
            print(
                f"greenml: serving {exporter.url} "
                f"({', '.join(domains) if domains else 'no domain: see `greenml sensors`'}); "
                "Ctrl-C or SIGTERM stops",
                file=sys.stderr,
                flush=True,
            )
            _wait_for_signal((signal.SIGINT, signal.SIGTERM))
        finally:
            exporter.stop()
    finally:
        rt.stop()
    return 0


__all__ = [
    "DEFAULT_ADDR",
    "DEFAULT_PORT",
    "DEFAULT_POWER_WINDOW_S",
    "Exporter",
    "GreenmlCollector",
    "start",
]
