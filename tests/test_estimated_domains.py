"""Estimated domains end to end: a runtime over fake /proc and cgroup files, the model's error as
the uncertainty of every result, and the estimate's uncertainty and assumptions in every output
format (record, table, CSV, JSON, markdown, run summary, sensors)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import greenml
from greenml._config import Settings
from greenml._report import describe_result, format_rows, summary_rows

# EPYC 4th Gen (AMD family 25 model 17): 0.7391 W idle, 2.2822 W full load per vCPU.
MIN_W, MAX_W = 0.7391, 2.2822
MEM_GIB = 4.0
DRAM_W = MEM_GIB * 0.392


def _cpuinfo(cpus: int = 2) -> str:
    return "\n".join(
        f"processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
        f"model name\t: AMD EPYC 9R14\nstepping\t: 1\nphysical id\t: 0\n"
        f"flags\t\t: fpu tsc hypervisor\n"
        for n in range(cpus)
    )


class FakeProc:
    """/proc/cpuinfo, /proc/stat, /proc/meminfo and an unlimited cgroup v2 tree."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "cpuinfo").write_text(_cpuinfo())
        (root / "meminfo").write_text(f"MemTotal:       {int(MEM_GIB * 2**20)} kB\n")
        (root / "cgroup").mkdir()
        (root / "cgroup" / "cgroup.controllers").write_text("cpu memory\n")
        (root / "self_cgroup").write_text("0::/\n")
        self.stat = root / "stat"
        self.set_busy(1_000)

    def set_busy(self, jiffies: int) -> None:
        text = f"cpu  {jiffies} 0 0 50000 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n"
        # In place: the source keeps the file open and re-reads it from offset 0.
        fd = os.open(self.stat, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, text.ljust(120).encode(), 0)
        finally:
            os.close(fd)

    def settings(self, **over) -> Settings:
        kw = dict(
            powercap_root=str(self.root / "no-powercap"),
            nvml_library=str(self.root / "no-libnvidia-ml.so.1"),
            sources=frozenset({"rapl", "model"}),
            proc_stat_path=str(self.stat),
            cpuinfo_path=str(self.root / "cpuinfo"),
            meminfo_path=str(self.root / "meminfo"),
            cgroup_root=str(self.root / "cgroup"),
            proc_self_cgroup_path=str(self.root / "self_cgroup"),
            env={},
        )
        kw.update(over)
        return Settings(**kw)


@pytest.fixture
def proc(tmp_path):
    return FakeProc(tmp_path)


@pytest.fixture
def estimated_run(proc):
    """A meter over an idle stretch and 0.3 busy CPU-seconds added half-way."""
    rt = greenml.Runtime(proc.settings())
    try:
        with greenml.meter("fit", runtime=rt) as m:
            with m.phase("train"):
                time.sleep(0.1)  # the measured workload: idle vCPUs still draw min_w
                proc.set_busy(1_030)  # 30 jiffies = 0.3 CPU-seconds of work
                time.sleep(0.1)
        yield m, rt
    finally:
        rt.stop()


def test_given_no_counter_when_metering_then_energy_is_the_per_vcpu_model(estimated_run):
    meter, rt = estimated_run
    m = meter.result()

    assert [(c.domain, c.measured, c.in_total) for c in rt.channels] == [
        ("cpu:estimated", False, True), ("dram:estimated", False, True)]
    expected_cpu = 2 * MIN_W * m.duration_s + (MAX_W - MIN_W) * 0.3
    assert m.by_domain["cpu:estimated"] == pytest.approx(expected_cpu, rel=0.02)
    assert m.by_domain["dram:estimated"] == pytest.approx(DRAM_W * m.duration_s, rel=0.02)
    assert m.total_kind == "estimated"


def test_given_no_counter_when_metering_then_uncertainty_is_the_models_error(estimated_run):
    meter, _ = estimated_run
    m = meter.result()
    cpu, dram = m.by_domain["cpu:estimated"], m.by_domain["dram:estimated"]
    u = m.uncertainty_by_domain

    # The model's relative error (EPYC 4th Gen +/-70 %, DRAM +/-50 %) dominates; the counter
    # integration adds at most a few percent of a 0.2 s window.
    assert 0.7 * cpu <= u["cpu:estimated"] <= 0.75 * cpu
    assert 0.5 * dram <= u["dram:estimated"] <= 0.55 * dram
    assert m.uncertainty_j == pytest.approx(u["cpu:estimated"] + u["dram:estimated"])
    phase = meter.phases["train"]
    assert phase.uncertainty_by_domain["cpu:estimated"] >= 0.7 * phase.by_domain["cpu:estimated"]


def test_given_estimates_off_when_building_the_runtime_then_no_modelled_channel(proc):
    rt = greenml.Runtime(proc.settings(estimate=False))
    try:
        assert rt.channels == []
        reasons = {s.domain: s.reason for s in rt.sensors() if s.source == "model"}
        assert set(reasons) == {"cpu:estimated", "dram:estimated"}
    finally:
        rt.stop()


def test_given_a_measured_gpu_and_estimated_cpu_when_metering_then_the_total_says_mixed(
        proc, fake_nvml):
    fake_nvml.add_device(uuid="GPU-0a0a0a0a-0000-4000-8000-000000000000", energy_mj=0)
    rt = greenml.Runtime(proc.settings(nvml_library=str(fake_nvml.library_path),
                                       sources=frozenset({"nvml", "rapl", "model"})))
    try:
        with greenml.meter(runtime=rt) as m:
            time.sleep(0.05)
        d = m.result().to_dict()
    finally:
        rt.stop()

    assert d["measured"] == {"gpu:0": True, "cpu:estimated": False, "dram:estimated": False}
    assert d["total_kind"] == "mixed"
    assert "mixes measured and estimated domains" in describe_result(d)
    assert set(d["assumptions"]) == {"cpu:estimated", "dram:estimated"}


def test_given_a_package_counter_without_dram_when_building_then_only_dram_is_estimated(
        proc, powercap):
    powercap.add_package(0, dram=False)
    rt = greenml.Runtime(proc.settings(powercap_root=str(powercap.root)))
    try:
        assert [(c.domain, c.measured) for c in rt.channels] == [
            ("package:0", True), ("dram:estimated", False)]
        assert "cpu:estimated" not in {s.domain for s in rt.sensors()}
        with greenml.meter(runtime=rt) as m:
            time.sleep(0.05)
        d = m.result().to_dict()
    finally:
        rt.stop()
    assert d["total_kind"] == "mixed"
    assert set(d["assumptions"]) == {"dram:estimated"}


def test_given_package_and_dram_counters_when_building_then_nothing_is_estimated(
        proc, powercap):
    powercap.add_package(0, dram=True)
    rt = greenml.Runtime(proc.settings(powercap_root=str(powercap.root)))
    try:
        assert [c.domain for c in rt.channels] == ["package:0", "dram:0"]
        assert not [s for s in rt.sensors() if s.source == "model"]
    finally:
        rt.stop()


# ----------------------------------------------------------------- every output format


def _record(estimated_run) -> dict:
    meter, _ = estimated_run
    d = meter.result().to_dict()
    json.dumps(d, allow_nan=False)
    return d


def test_record_carries_uncertainty_assumptions_and_total_kind(estimated_run):
    d = _record(estimated_run)

    assert d["total_kind"] == "estimated"
    assert d["uncertainty_by_domain"]["cpu:estimated"] > 0
    cpu_line = d["assumptions"]["cpu:estimated"]
    assert cpu_line.startswith("per-vCPU model")
    for part in ("2 vCPUs (VM)", "0.739 W", "EPYC 4th Gen", "AMD family 25 model 17", "+/-70%"):
        assert part in cpu_line, part
    assert d["assumptions"]["dram:estimated"].startswith("4 GiB (MemTotal) x 0.392 W/GiB")


def test_human_summary_shows_each_estimate_with_uncertainty_and_assumptions(estimated_run):
    d = _record(estimated_run)
    text = describe_result(d, title="greenml run (exit 0)")
    lines = text.splitlines()

    energy_line = next(line for line in lines if line.startswith("  energy:"))
    assert "+/-" in energy_line and "ESTIMATED" in energy_line
    cpu = next(line for line in lines if line.strip().startswith("cpu:estimated "))
    assert "+/-" in cpu and "(ESTIMATED)" in cpu
    assert any(line.startswith("  cpu:estimated is a model, not a counter: per-vCPU model")
               for line in lines)
    assert any(line.startswith("  dram:estimated is a model, not a counter: 4 GiB")
               for line in lines)


def test_mixed_total_says_so():
    d = {
        "duration_s": 2.0, "energy_j": 300.0, "uncertainty_j": 60.0, "mean_power_w": 150.0,
        "by_domain": {"gpu:0": 200.0, "cpu:estimated": 100.0},
        "uncertainty_by_domain": {"gpu:0": 1.0, "cpu:estimated": 59.0},
        "measured": {"gpu:0": True, "cpu:estimated": False},
        "in_total": {"gpu:0": True, "cpu:estimated": True},
        "estimated_domains": ["cpu:estimated"], "total_kind": "mixed",
        "assumptions": {"cpu:estimated": "per-vCPU model: 2 vCPUs"},
    }
    text = describe_result(d)
    assert "  energy: 300 J (+/- 60 J, mixes measured and estimated domains)" in text


def test_report_formats_all_show_uncertainty_and_assumptions(estimated_run):
    d = _record(estimated_run)
    phase = {**d, "type": "phase", "name": "train", "meter": "fit"}
    rows = summary_rows([phase, d])
    cpu_line = d["assumptions"]["cpu:estimated"]
    unc = d["uncertainty_j"]

    table = format_rows(rows, "table")
    assert f"{unc:.4g}" in table and cpu_line in table

    markdown = format_rows(rows, "markdown")
    assert f"{unc:.4g}" in markdown and f"- cpu:estimated: {cpu_line}" in markdown

    parsed = list(csv.DictReader(io.StringIO(format_rows(rows, "csv"))))
    assert float(parsed[1]["uncertainty_j"]) == pytest.approx(unc)
    assert cpu_line in parsed[1]["assumptions"]

    as_json = json.loads(format_rows(rows, "json"))
    assert as_json[1]["uncertainty_j"] == pytest.approx(unc)
    assert cpu_line in as_json[1]["assumptions"]


def test_decorated_call_records_carry_the_assumptions_into_the_report(proc, tmp_path):
    log = tmp_path / "calls.jsonl"
    rt = greenml.Runtime(proc.settings())
    try:
        @greenml.measure("predict", log=str(log), runtime=rt)
        def predict() -> None:
            time.sleep(0.02)

        for _ in range(3):
            predict()
        predict.energy.flush(final=True)
    finally:
        rt.stop()

    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 3
    assert all(r["assumptions"]["cpu:estimated"].startswith("per-vCPU model") for r in records)
    (row,) = summary_rows(records)
    assert row["type"] == "function" and row["uncertainty_j"] > 0
    assert row["assumptions"].startswith("cpu:estimated: per-vCPU model")


def test_run_peak_of_an_estimate_is_not_the_jiffy_aliasing():
    import pandas as pd
    from types import SimpleNamespace

    from greenml.cli import _peak_power_w

    # 10 ms samples of a model at a steady 10 W whose busy counter moves in whole jiffies:
    # single samples alternate between 0 and 20 W (aliasing), the mean is 10 W.
    t = [i * 0.01 for i in range(200)]
    df = pd.DataFrame({"t_s": t, "cpu:estimated_w": [20.0 * (i % 2) for i in range(200)],
                       "gpu:0_w": [50.0] * 200})
    chans = [SimpleNamespace(domain="cpu:estimated", measured=False, in_total=True),
             SimpleNamespace(domain="gpu:0", measured=True, in_total=True)]

    assert _peak_power_w(df, chans) == pytest.approx(60.0, abs=0.5)
    chans[0].measured = True  # a measured channel keeps its real peaks
    assert _peak_power_w(df, chans) == pytest.approx(70.0)


# ----------------------------------------------------------------- command line


def _env(tmp_path: Path, **extra: str) -> dict:
    empty = tmp_path / "empty-powercap"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GREENML_") and k not in ("FAKE_NVML_DIR", "CUDA_VISIBLE_DEVICES")}
    env.update(GREENML_POWERCAP_ROOT=str(empty),
               GREENML_NVML_LIBRARY=str(tmp_path / "missing" / "libnvidia-ml.so.1"), **extra)
    return env


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "greenml", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_run_reports_a_labelled_estimate_and_report_keeps_it(tmp_path):
    log = tmp_path / "run.jsonl"
    proc = _cli("run", "--log", str(log), "--", sys.executable, "-c", "pass",
                env=_env(tmp_path))

    assert proc.returncode == 0, proc.stderr
    assert "ESTIMATED" in proc.stderr and "+/-" in proc.stderr
    assert "cpu:estimated is a model, not a counter: per-vCPU model" in proc.stderr
    (rec,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert rec["total_kind"] == "estimated" and rec["uncertainty_j"] > 0
    report = _cli("report", str(log), "--format", "csv", env=_env(tmp_path))
    (row,) = list(csv.DictReader(io.StringIO(report.stdout)))
    assert "per-vCPU model" in row["assumptions"] and float(row["uncertainty_j"]) > 0


def test_cli_run_without_estimates_reports_no_energy(tmp_path):
    for args, extra in ((["run", "--no-estimate"], {}), (["run"], {"GREENML_ESTIMATE": "off"})):
        proc = _cli(*args, "--json", str(tmp_path / "r.json"), "--", sys.executable, "-c",
                    "pass", env=_env(tmp_path, **extra))
        assert proc.returncode == 0, proc.stderr
        rec = json.loads((tmp_path / "r.json").read_text())
        assert rec["energy_j"] is None and rec["estimated_domains"] == []
        assert "GREENML_ESTIMATE=off" in rec["unavailable"]["cpu:estimated"]


def test_cli_demo_without_estimates_lists_and_reports_no_estimate(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "greenml", "demo", "--quick", "--no-estimate",
                           "--out", str(tmp_path / "out")], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)

    assert proc.returncode == 0, proc.stderr[-3000:]
    header = proc.stderr.split("data:")[0]
    assert "cpu:estimated  model  unavailable" in header
    assert "ESTIMATED" not in header and "ESTIMATED" not in proc.stdout
    assert "No energy numbers" in proc.stdout


def test_cli_sensors_explains_the_estimate_and_how_to_measure_instead(tmp_path):
    proc = _cli("sensors", env=_env(tmp_path))
    as_json = json.loads(_cli("sensors", "--json", env=_env(tmp_path)).stdout)

    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "Estimated, not measured" in text and "per-vCPU model" in text
    assert "For measured numbers instead" in text and "GREENML_ESTIMATE=off" in text
    cpu = next(s for s in as_json if s["domain"] == "cpu:estimated")
    assert cpu["available"] and cpu["assumptions"].startswith("per-vCPU model")


def test_cli_bad_estimate_setting_is_a_clear_error(tmp_path):
    proc = _cli("sensors", env=_env(tmp_path, GREENML_ESTIMATE="maybe"))

    assert proc.returncode != 0
    assert "GREENML_ESTIMATE='maybe'" in proc.stderr and "off" in proc.stderr
