"""The Prometheus exporter, scraped over real HTTP with ``prometheus_client`` serving it.

Energies are checked against fake RAPL hardware whose energy is known in closed form
(fakes/truth.py); counter resets and wraps against a powercap tree scripted by hand; the
``greenml export`` command as a user runs it, in a subprocess stopped by a signal.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Dict, Tuple

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import greenml  # noqa: E402
from greenml import exporter  # noqa: E402
from greenml.exporter import GreenmlCollector  # noqa: E402

from fakes.truth import warm_up  # noqa: E402

PKG = (40.0, 10.0, 3.0)  # package-0: base_w, amp_w, freq_hz
DRAM = (6.0, 0.0, 0.0)  # its dram subzone, at constant power
PKG_MAX_W = PKG[0] + PKG[1]
# A counter read at t holds the energy up to its last update: the writer updates every 1 ms,
# and on a busy machine a little late. Each edge of a span may lag this much.
RAPL_STALENESS_S = 0.005

Series = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(url: str) -> Series:
    """Every sample served at ``url``, keyed by (sample name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def by_label(series: Series, name: str, label: str) -> Dict[str, float]:
    return {dict(k)[label]: v for (n, k), v in series.items() if n == name}


@pytest.fixture
def rapl_writer(fake_rapl):
    return fake_rapl({"intel-rapl:0": PKG, "intel-rapl:0:0": DRAM})


@pytest.fixture
def serve(runtimes):
    """``serve(runtime=..., **start_options)`` starts an exporter stopped at teardown."""
    started = []

    def start(**options):
        ex = exporter.start(port=0, **options)
        started.append(ex)
        return ex

    yield start
    for ex in started:
        ex.stop()


# ---------------------------------------------------------------------- energy and power


def test_given_fake_rapl_when_scraped_twice_then_counters_match_truth_and_only_grow(
    rapl_writer, runtimes, serve
):
    # Given: an exporter started over package and dram counters with known power, in a process
    # whose sampler has been running (its counters do not start at zero)
    rt = runtimes(powercap_root=rapl_writer.root, sources={"rapl"})
    warm_up(rt, seconds=0.3)
    ex = serve(runtime=rt)
    t0 = ex.collector.t0_ns
    assert ex.url.startswith("http://127.0.0.1:")

    def truth(zone: str, t1: int) -> float:
        return rapl_writer.true_energy_j(zone, t0, t1)

    zones = {"package:0": ("intel-rapl:0", PKG_MAX_W), "dram:0": ("intel-rapl:0:0", DRAM[0])}
    previous: Dict[str, float] = {}
    for wait_s in (0.6, 0.4):
        time.sleep(wait_s)  # energy accrues; no synchronisation involved
        # When: scraped over HTTP
        before = time.monotonic_ns()
        series = scrape(ex.url)
        after = time.monotonic_ns()
        energy = by_label(series, "greenml_energy_joules_total", "domain")

        # Then: each counter lies between the truth up to the request and up to the response,
        # give or take the counter's staleness at both edges
        assert set(energy) == set(zones)
        for dom, (zone, max_w) in zones.items():
            slack = 2 * RAPL_STALENESS_S * max_w
            low, high = truth(zone, before) - slack, truth(zone, after) + slack
            assert low <= energy[dom] <= high, (dom, low, energy[dom], high)
            # and it never goes back
            assert energy[dom] >= previous.get(dom, 0.0)
        previous = energy
    assert previous["package:0"] > 30.0  # a second at ~40 W: the check above is not vacuous

    labels = {dict(k)["domain"]: dict(k) for (n, k) in series if n == "greenml_energy_joules_total"}
    assert labels["package:0"] == {"domain": "package:0", "measured": "true", "in_total": "true"}


def test_given_constant_power_when_scraped_then_power_gauge_is_that_power(
    rapl_writer, runtimes, serve
):
    # Given: dram at a constant 6 W, package oscillating within 40 +/- 10 W
    rt = runtimes(powercap_root=rapl_writer.root, sources={"rapl"})
    ex = serve(runtime=rt, power_window_s=1.0)
    time.sleep(1.2)

    # When
    power = by_label(scrape(ex.url), "greenml_power_watts", "domain")

    # Then: the mean over the last second or so
    assert power["dram:0"] == pytest.approx(DRAM[0], rel=0.02)
    assert PKG[0] - PKG[1] <= power["package:0"] <= PKG[0] + PKG[1]


def test_given_a_fresh_exporter_when_scraped_at_once_then_power_is_omitted_not_guessed(
    powercap, runtimes, serve
):
    # Given: a counter that has not moved, and no reading half a second old yet
    powercap.add_package(0, energy_uj=1_000_000, dram=False)
    rt = runtimes(powercap_root=powercap.root, sources={"rapl"}, history_period_ns=0)
    ex = serve(runtime=rt)

    # When
    series = scrape(ex.url)

    # Then: energy is there, power is not (too short a span to say)
    assert by_label(series, "greenml_energy_joules_total", "domain") == {"package:0": 0.0}
    assert by_label(series, "greenml_power_watts", "domain") == {}


# ---------------------------------------------------------------------- resets and wraps


def test_given_counter_reset_and_wrap_when_scraped_then_counters_keep_growing_exactly(
    powercap, runtimes, serve
):
    # Given: package-0 with the usual range, package-1 with a 10 J range; digit counts kept
    # constant so the idle sampler thread never reads a half-written value
    powercap.add_package(0, energy_uj=5_000_000, dram=False)
    powercap.add_package(1, energy_uj=5_000_000, range_uj=9_999_999, dram=False)
    rt = runtimes(powercap_root=powercap.root, sources={"rapl"})
    ex = serve(runtime=rt)

    def energy() -> Dict[str, float]:
        return by_label(scrape(ex.url), "greenml_energy_joules_total", "domain")

    # When: both count 3 J
    powercap.set_energy("package:0", 8_000_000)
    powercap.set_energy("package:1", 8_000_000)
    first = energy()
    # then package-0 resets (driver reload, resume) and counts 1.5 J from zero, and package-1
    # wraps past its range while counting 3 J
    powercap.set_energy("package:0", 1_500_000)
    powercap.set_energy("package:1", 1_000_000)
    second = energy()

    # Then: exact, and never backwards
    assert first == pytest.approx({"package:0": 3.0, "package:1": 3.0}, abs=1e-9)
    assert second == pytest.approx({"package:0": 4.5, "package:1": 6.0}, abs=1e-9)
    kinds = {(e.domain, e.kind) for e in rt.events()}
    assert ("package:0", "counter_reset") in kinds
    assert ("package:1", "counter_reset") not in kinds


def test_given_a_counter_that_stops_reading_when_scraped_then_domain_down_and_counter_held(
    powercap, runtimes, serve
):
    # Given
    powercap.add_package(0, energy_uj=5_000_000, dram=False)
    rt = runtimes(powercap_root=powercap.root, sources={"rapl"})
    ex = serve(runtime=rt)
    powercap.set_energy("package:0", 7_000_000)
    ok = scrape(ex.url)

    # When: the zone returns garbage
    powercap.set_text("package:0", "garbage\n")
    bad = scrape(ex.url)

    # Then: the domain says it is down; its counter keeps the last good value
    assert by_label(ok, "greenml_domain_up", "domain") == {"package:0": 1.0}
    assert by_label(bad, "greenml_domain_up", "domain") == {"package:0": 0.0}
    assert by_label(bad, "greenml_energy_joules_total", "domain")["package:0"] == pytest.approx(2.0)
    # and recovers
    powercap.set_energy("package:0", 7_500_000)
    again = scrape(ex.url)
    assert by_label(again, "greenml_domain_up", "domain") == {"package:0": 1.0}
    assert by_label(again, "greenml_energy_joules_total", "domain")["package:0"] >= 2.0


# ---------------------------------------------------------------------- decorated functions


def test_given_a_decorated_function_called_n_times_when_scraped_then_calls_and_energy(
    rapl_writer, runtimes, serve, wait_until
):
    # Given: a function measured on fake RAPL, one call of which raises
    rt = runtimes(powercap_root=rapl_writer.root, sources={"rapl"})

    @greenml.measure("exporter-test-infer", runtime=rt)
    def infer(fail: bool = False) -> None:
        time.sleep(0.005)
        if fail:
            raise ValueError("bad input")

    ex = serve(runtime=rt)

    # When: called 7 times
    for _ in range(6):
        infer()
    with pytest.raises(ValueError):
        infer(fail=True)

    # Then: scrapes count every call once its counter updates have arrived (never waiting)
    def calls() -> float:
        return by_label(scrape(ex.url), "greenml_function_calls_total", "function").get(
            "exporter-test-infer", 0.0
        )

    wait_until(lambda: calls() == 7, timeout=5.0, message="7 calls on /metrics")
    series = scrape(ex.url)
    fn = "exporter-test-infer"
    assert by_label(series, "greenml_function_errors_total", "function")[fn] == 1
    served_j = by_label(series, "greenml_function_energy_joules_total", "function")[fn]
    stats = infer.energy
    assert served_j == pytest.approx(stats.total_j, rel=1e-9)
    # the calls ran at 40 +/- 10 W (package) + 6 W (dram) for their total duration
    seconds = by_label(series, "greenml_function_duration_seconds_total", "function")[fn]
    assert seconds == pytest.approx(stats.total_s, rel=1e-9)
    lo = (PKG[0] - PKG[1] + DRAM[0]) * seconds - stats.uncertainty_j
    hi = (PKG[0] + PKG[1] + DRAM[0]) * seconds + stats.uncertainty_j
    assert lo <= served_j <= hi


def test_given_calls_awaiting_their_counter_update_when_snapshot_then_not_waited_for(
    powercap, runtimes, wait_until
):
    # Given: a function measured on a package whose counter has not moved since its calls
    powercap.add_package(0, energy_uj=5_000_000, dram=False)
    rt = runtimes(powercap_root=powercap.root, sources={"rapl"}, interval_ms=1.0)

    @greenml.measure("exporter-test-snapshot", runtime=rt)
    def infer(fail: bool = False) -> None:
        if fail:
            raise ValueError("bad input")

    infer()
    with pytest.raises(ValueError):
        infer(fail=True)

    # When: a snapshot is taken before the counter updates, and again after
    before = infer.energy.snapshot()
    powercap.set_energy("package:0", 6_000_000)
    after = wait_until(lambda: (lambda s: s if s[0] == 2 else None)(infer.energy.snapshot()))

    # Then: the first counts no unresolved call (it did not wait for them), only the error;
    # the second counts both calls and the 1 J between them and the update
    assert before[:2] == (0, 1)
    calls, errors, energy_j, duration_s = after
    assert (calls, errors) == (2, 1)
    assert 0 <= energy_j <= 1.0 and duration_s > 0


# ---------------------------------------------------------------------- robustness


class _FailingPower(GreenmlCollector):
    """A collector whose power part fails, as a bug or a broken history would."""

    def _read_power(self, power, reading):
        raise RuntimeError("history unavailable")


def test_given_a_failing_part_when_scraped_then_served_without_it_counted_and_warned_once(
    powercap, runtimes
):
    # Given: a collector whose power part raises, served by prometheus_client itself
    powercap.add_package(0, energy_uj=5_000_000, dram=False)
    rt = runtimes(powercap_root=powercap.root, sources={"rapl"})
    registry = prometheus_client.CollectorRegistry()
    collector = _FailingPower(rt)
    registry.register(collector)
    server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        # When: scraped twice
        with pytest.warns(RuntimeWarning, match="reading the power failed") as record:
            first = scrape(url)
            second = scrape(url)
    finally:
        server.shutdown()
        server.server_close()
        collector.close()

    # Then: both scrapes succeed with energy, without power, and the failures are counted
    for series in (first, second):
        assert "package:0" in by_label(series, "greenml_energy_joules_total", "domain")
        assert by_label(series, "greenml_power_watts", "domain") == {}
    assert by_label(second, "greenml_scrape_errors_total", "part") == {
        "domains": 0,
        "power": 2,
        "functions": 0,
    }
    assert len([w for w in record if "power failed" in str(w.message)]) == 1


def test_given_an_application_registry_when_started_then_served_beside_it_and_removed_on_stop(
    powercap, runtimes
):
    # Given: an application's own metrics
    powercap.add_package(0, energy_uj=5_000_000, dram=False)
    rt = runtimes(powercap_root=powercap.root, sources={"rapl"})
    registry = prometheus_client.CollectorRegistry()
    requests = prometheus_client.Counter("app_requests", "Requests.", registry=registry)
    requests.inc(3)

    # When: greenml's exporter serves that registry
    with exporter.start(port=0, registry=registry, runtime=rt) as ex:
        series = scrape(ex.url)
        # Then: both are there; a second exporter on the same registry is refused clearly
        assert series[("app_requests_total", ())] == 3
        assert "package:0" in by_label(series, "greenml_energy_joules_total", "domain")
        with pytest.raises(greenml.GreenmlError, match="already serves greenml"):
            exporter.start(port=0, registry=registry, runtime=rt)
    # and stopping removes greenml's metrics from the application's registry
    assert registry.get_sample_value("greenml_scrape_errors_total", {"part": "power"}) is None
    assert registry.get_sample_value("app_requests_total") == 3
    with pytest.raises(urllib.error.URLError):
        scrape(ex.url)


def test_given_a_port_in_use_when_started_then_clear_error(powercap, runtimes, serve):
    powercap.add_package(0, dram=False)
    rt = runtimes(powercap_root=powercap.root, sources={"rapl"})
    ex = serve(runtime=rt)
    with pytest.raises(greenml.GreenmlError, match="choose another"):
        exporter.start(port=ex.port, runtime=rt)


@pytest.mark.parametrize("port", [-5, 99999, 1.5, "9464", True])
def test_given_an_invalid_port_when_started_then_clear_error_and_nothing_served(port):
    with pytest.raises(greenml.GreenmlError, match="0 to 65535"):
        exporter.start(port=port)


def test_given_an_invalid_port_on_the_command_line_then_exit_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "greenml", "export", "--port", "99999"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "0 to 65535" in proc.stderr


def test_given_no_prometheus_client_when_started_then_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(greenml.GreenmlError, match=re.escape('pip install "greenml[prometheus]"')):
        exporter.start(port=0)


# ---------------------------------------------------------------------- greenml export


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_given_greenml_export_when_scraped_then_signal_stops_it_with_exit_code_0(
    rapl_writer, tmp_path, sig
):
    # Given: `greenml export` on a free port, over the fake RAPL tree
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENML_")}
    env.update(
        GREENML_POWERCAP_ROOT=str(rapl_writer.root), GREENML_SOURCES="rapl", GREENML_ESTIMATE="off"
    )
    with subprocess.Popen(
        [sys.executable, "-m", "greenml", "export", "--port", "0", "--interval-ms", "20"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            line = proc.stderr.readline()  # "greenml: serving http://127.0.0.1:PORT/metrics ..."
            found = re.search(r"http://127\.0\.0\.1:\d+/metrics", line)
            assert found, line

            # When: scraped, then signalled
            energy = by_label(scrape(found.group(0)), "greenml_energy_joules_total", "domain")
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    # Then: it served the domains and exited cleanly
    assert set(energy) == {"package:0", "dram:0"}
    assert all(v >= 0 for v in energy.values())
    assert proc.returncode == 0, err
