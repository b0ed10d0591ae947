"""The ``greenml`` command line, driven as a user drives it: ``python -m greenml ...`` in a
subprocess, on fake hardware named through the environment (never the real /sys or driver).

Expensive runs (``greenml run`` on a moving fake, the demo) happen once per module in fixtures;
each test then checks one promise about their result.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, NamedTuple, Optional

import pytest

import greenml

from fakes.nvml import FakeNvml

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_SIZE = (1000, 650)  # figsize (10, 6.5) at 100 dpi

GPU_W = 200.0  # the fake GPU's constant power
PKG_W, DRAM_W = 40.0, 5.0  # the fake RAPL zones' constant power, when the truth writer runs


# ----------------------------------------------------------------- helpers


def _clean_env(**extra: str) -> Dict[str, str]:
    """The test process's environment without anything that could point greenml at real
    hardware or another test's fakes, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GREENML_") and k not in ("FAKE_NVML_DIR", "CUDA_VISIBLE_DEVICES")
    }
    env.update(extra)
    return env


def _nothing_env(tmp: Path) -> Dict[str, str]:
    """Nothing measurable: an empty powercap tree, no NVML, no CPU model."""
    empty = tmp / "empty-powercap"
    empty.mkdir(parents=True, exist_ok=True)
    return _clean_env(
        GREENML_POWERCAP_ROOT=str(empty),
        GREENML_NVML_LIBRARY=str(tmp / "missing" / "libnvidia-ml.so.1"),
        GREENML_SOURCES="nvml,rapl",
    )


def greenml_cli(*args: str, env: Dict[str, str], timeout: float = 30.0,
                cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "greenml", *args],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )


def _png_size(path: Path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path} has no IHDR chunk first"
    return struct.unpack(">II", data[16:24])


def _records(path: Path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _words(text: str) -> str:
    """Whitespace-normalised text (the sensors table wraps its reasons)."""
    return " ".join(text.split())


def _new_fake_nvml(root: Path) -> FakeNvml:
    try:
        return FakeNvml(root)
    except FileNotFoundError as exc:  # no C compiler
        pytest.skip(f"cannot build the fake libnvidia-ml: {exc}")


class Machine(NamedTuple):
    env: Dict[str, str]
    power_w: Dict[str, float]  # true constant power per domain
    root: Path


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    """A fake GPU drawing GPU_W, and, when the ground-truth RAPL writer works here, a package
    and dram zone drawing PKG_W and DRAM_W (else an empty powercap tree)."""
    root = tmp_path_factory.mktemp("machine")
    gpu = _new_fake_nvml(root)
    gpu.add_device()
    gpu.set_profile(0, GPU_W, update_ms=20.0)
    power = {"gpu:0": GPU_W}
    writer = None
    powercap = root / "empty-powercap"
    try:  # the truth writer is optional: another engineer may still be writing it
        from fakes.truth import RaplWriter, rapl_tree

        tree = rapl_tree(root / "rapl")
        writer = RaplWriter(tree, {"intel-rapl:0": (PKG_W, 0.0, 0.0),
                                   "intel-rapl:0:0": (DRAM_W, 0.0, 0.0)}).start()
        powercap = tree
        power.update({"package:0": PKG_W, "dram:0": DRAM_W})
    except (ImportError, OSError, RuntimeError, TimeoutError, ValueError):
        writer = None
        powercap.mkdir(exist_ok=True)
    env = _clean_env(
        GREENML_POWERCAP_ROOT=str(powercap),
        GREENML_NVML_LIBRARY=str(gpu.library_path),
        GREENML_SOURCES="nvml,rapl",  # no CPU model, whatever CPU runs the tests
        **gpu.env,
    )
    yield Machine(env, power, root)
    if writer is not None:
        writer.stop()


# ----------------------------------------------------------------- no command


def test_given_no_command_when_running_greenml_then_help_on_stderr_and_exit_2(tmp_path):
    proc = greenml_cli(env=_nothing_env(tmp_path))

    assert proc.returncode == 2
    assert "usage: greenml" in proc.stderr
    for command in ("sensors", "run", "report", "demo"):
        assert command in proc.stderr
    assert proc.stdout == ""


# ----------------------------------------------------------------- sensors


@pytest.fixture
def fake_machine_env(powercap, fake_nvml):
    """One GPU and one socket (package + dram) on static fakes; FAKE_NVML_DIR is also set in
    this process (by the fixture) so greenml.sensors() can be compared in-process."""
    powercap.add_package(0, dram=True)
    fake_nvml.add_device(energy_mj=0)
    return _clean_env(
        GREENML_POWERCAP_ROOT=str(powercap.root),
        GREENML_NVML_LIBRARY=str(fake_nvml.library_path),
        **fake_nvml.env,
    )


def test_given_fake_machine_when_listing_sensors_then_table_lists_every_domain(fake_machine_env):
    expected = greenml.sensors(env=fake_machine_env)

    proc = greenml_cli("sensors", env=fake_machine_env)

    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[2:] if line.strip()}
    assert set(rows) == {s.domain for s in expected} == {"gpu:0", "package:0", "dram:0"}
    for s in expected:
        assert rows[s.domain][1] == s.source
        assert rows[s.domain][-1] == ("yes" if s.available else "no")
    assert "Why not" not in proc.stdout  # everything is available


def test_given_fake_machine_when_listing_sensors_as_json_then_it_matches_the_api(fake_machine_env):
    expected = [asdict(s) for s in greenml.sensors(env=fake_machine_env)]

    proc = greenml_cli("sensors", "--json", env=fake_machine_env)

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected


def test_given_only_a_cpu_estimate_when_listing_sensors_then_exit_0_and_estimated(tmp_path):
    env = {**_nothing_env(tmp_path), "GREENML_CPU_TDP_W": "100"}
    del env["GREENML_SOURCES"]

    proc = greenml_cli("sensors", env=env)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = next(line.split() for line in proc.stdout.splitlines()
               if line.startswith("cpu:estimated"))
    assert row[1:] == ["model", "estimated", "yes"]


def test_given_nothing_measurable_when_listing_sensors_then_nonzero_and_reasons_say_how_to_fix(
    tmp_path,
):
    env = _nothing_env(tmp_path)

    table = greenml_cli("sensors", env=env)
    as_json = greenml_cli("sensors", "--json", env=env)

    assert table.returncode != 0
    assert as_json.returncode != 0
    assert "Nothing can be measured" in table.stderr
    sensors = json.loads(as_json.stdout)
    assert sensors and not any(s["available"] for s in sensors)
    rapl = next(s for s in sensors if s["source"] == "rapl")
    assert "GREENML_POWERCAP_ROOT" in rapl["reason"] and "modprobe" in rapl["reason"]
    text = _words(table.stdout)
    assert "Why not:" in text
    assert "GREENML_POWERCAP_ROOT" in text and "GREENML_NVML_LIBRARY" in text


# ----------------------------------------------------------------- run


class RunResult(NamedTuple):
    proc: subprocess.CompletedProcess
    json_path: Path
    log_path: Path
    trace_path: Path


@pytest.fixture(scope="module")
def measured_run(machine):
    """One ``greenml run --json --log --trace`` of a 0.5 s child that prints "hi"."""
    out = machine.root / "run"
    out.mkdir()
    paths = RunResult(None, out / "run.json", out / "run.jsonl", out / "trace.csv")
    proc = greenml_cli(
        "run", "--json", str(paths.json_path), "--log", str(paths.log_path),
        "--trace", str(paths.trace_path), "--",
        sys.executable, "-c", "import time; time.sleep(0.5); print('hi')",
        env=machine.env,
    )
    return paths._replace(proc=proc)


def test_given_a_command_when_run_then_its_stdout_is_untouched_and_summary_on_stderr(
    measured_run,
):
    proc = measured_run.proc

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n"
    assert "greenml run (exit 0)" in proc.stderr
    assert "energy:" in proc.stderr and " J" in proc.stderr


def test_given_a_moving_fake_when_run_with_json_then_energy_matches_power_times_duration(
    measured_run, machine,
):
    r = json.loads(measured_run.json_path.read_text())

    assert r["type"] == "run" and r["exit_code"] == 0
    assert r["command"][0] == sys.executable
    d = r["duration_s"]
    assert 0.5 <= d < 10
    assert set(r["by_domain"]) == set(machine.power_w)
    assert r["energy_j"] == pytest.approx(
        sum(e for dom, e in r["by_domain"].items() if r["in_total"][dom]))
    truth = sum(machine.power_w.values()) * d
    assert r["uncertainty_j"] < 0.2 * truth  # the bound below is not vacuous
    assert abs(r["energy_j"] - truth) <= max(r["uncertainty_j"], 0.05 * truth)
    for dom, watts in machine.power_w.items():
        err = abs(r["by_domain"][dom] - watts * d)
        assert err <= max(r["uncertainty_by_domain"][dom], 0.05 * watts * d), dom
    assert r["mean_power_w"] == pytest.approx(r["energy_j"] / d)
    assert all(r["measured"].values()) and r["estimated_domains"] == []


def test_given_trace_option_when_run_then_csv_has_time_and_power_per_domain(measured_run, machine):
    r = json.loads(measured_run.json_path.read_text())
    rows = list(csv.DictReader(io.StringIO(measured_run.trace_path.read_text())))

    assert r["trace"] == str(measured_run.trace_path)
    assert list(rows[0]) == ["t_s"] + [f"{dom}_w" for dom in r["by_domain"]]
    t = [float(row["t_s"]) for row in rows]
    assert len(t) >= 20  # 10 ms sampling over 0.5 s
    assert all(b > a for a, b in zip(t, t[1:]))
    assert 0 <= t[0] and t[-1] <= r["duration_s"] + 1e-3
    for dom, watts in machine.power_w.items():
        values = [float(row[f"{dom}_w"]) for row in rows if row[f"{dom}_w"] not in ("", "nan")]
        assert sum(values) / len(values) == pytest.approx(watts, rel=0.10), dom


def test_given_log_option_when_run_then_report_summarises_the_same_run(measured_run):
    r = json.loads(measured_run.json_path.read_text())
    records = _records(measured_run.log_path)

    table = greenml_cli("report", str(measured_run.log_path), env=_clean_env())
    as_json = greenml_cli("report", str(measured_run.log_path), "--format", "json",
                          env=_clean_env())

    assert [rec["type"] for rec in records] == ["run"]
    assert records[0]["energy_j"] == r["energy_j"]
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[2].startswith("run ")
    assert as_json.returncode == 0, as_json.stderr
    (row,) = json.loads(as_json.stdout)
    assert row["type"] == "run" and row["name"] == r["name"]
    assert row["energy_j"] == pytest.approx(r["energy_j"])
    assert row["duration_s"] == pytest.approx(r["duration_s"])


def test_given_child_exits_3_when_run_then_greenml_exits_3(machine):
    proc = greenml_cli("run", "--", sys.executable, "-c", "import sys; sys.exit(3)",
                       env=machine.env)

    assert proc.returncode == 3, proc.stderr
    assert "greenml run (exit 3)" in proc.stderr


def test_given_options_after_the_separator_when_run_then_they_go_to_the_child(machine):
    proc = greenml_cli("run", "--", sys.executable, "-c",
                       "import sys; print(sys.argv[1:])", "--json", "x",
                       env=machine.env)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "['--json', 'x']\n"


def test_given_unknown_command_when_run_then_exit_127_and_clear_message(tmp_path):
    proc = greenml_cli("run", "--", "greenml-no-such-command-xyz", env=_nothing_env(tmp_path))

    assert proc.returncode == 127
    assert "greenml-no-such-command-xyz" in proc.stderr
    assert "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_given_non_executable_file_when_run_then_exit_126(tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)

    proc = greenml_cli("run", "--", str(script), env=_nothing_env(tmp_path))

    assert "Traceback" not in proc.stderr
    assert "Permission denied" in proc.stderr
    assert proc.returncode == 126


def test_given_unknown_option_when_run_then_nonzero_with_usage_on_stderr(tmp_path):
    proc = greenml_cli("run", "--no-such-option", "--", sys.executable, "-c", "print('hi')",
                       env=_nothing_env(tmp_path))

    assert proc.returncode != 0
    assert "usage:" in proc.stderr
    assert "--no-such-option" in proc.stderr
    assert proc.stdout == ""  # the command did not run


def test_given_no_command_after_separator_when_run_then_exit_2_with_example(tmp_path):
    proc = greenml_cli("run", "--", env=_nothing_env(tmp_path))

    assert proc.returncode == 2
    assert "greenml run -- " in proc.stderr


def test_given_sigterm_while_child_sleeps_when_run_then_child_ends_and_summary_and_json_remain(
    machine, tmp_path,
):
    started = tmp_path / "child-started"
    out_json = tmp_path / "run.json"
    child = ("import os, pathlib, time; "
             f"pathlib.Path({str(started)!r}).write_text(str(os.getpid())); time.sleep(60)")
    gm = subprocess.Popen(
        [sys.executable, "-m", "greenml", "run", "--json", str(out_json), "--",
         sys.executable, "-c", child],
        env=machine.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    child_pid = None
    try:
        deadline = time.monotonic() + 30
        while not (started.exists() and started.read_text()):
            assert gm.poll() is None, gm.communicate()
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.01)
        child_pid = int(started.read_text())
        time.sleep(0.2)  # margin: greenml installs its handler right after starting the child

        gm.send_signal(signal.SIGTERM)
        out, err = gm.communicate(timeout=20)
    finally:
        if gm.poll() is None:
            gm.kill()
            gm.wait()
        if child_pid is not None:
            try:
                os.kill(child_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    assert gm.returncode == 128 + signal.SIGTERM, err
    assert f"greenml run (exit {128 + signal.SIGTERM})" in err
    assert "energy:" in err
    r = json.loads(out_json.read_text())
    assert r["exit_code"] == 128 + signal.SIGTERM
    assert r["duration_s"] < 20 and r["energy_j"] > 0
    with pytest.raises(ProcessLookupError):  # terminated and reaped by greenml
        os.kill(child_pid, 0)


def test_given_idle_option_when_run_then_summary_reports_energy_above_idle(machine, tmp_path):
    out_json = tmp_path / "idle.json"

    proc = greenml_cli("run", "--idle", "0.3", "--json", str(out_json), "--",
                       sys.executable, "-c", "import time; time.sleep(0.3)", env=machine.env)

    assert proc.returncode == 0, proc.stderr
    assert "above idle" in proc.stderr
    r = json.loads(out_json.read_text())
    # constant power: the work draws nothing above the idle power
    assert abs(r["net_energy_j"]) <= 0.15 * r["energy_j"]
    assert set(r["idle_power_w"]) == set(machine.power_w)
    for dom, watts in machine.power_w.items():
        assert r["idle_power_w"][dom] == pytest.approx(watts, rel=0.15), dom


def test_given_nothing_measurable_when_run_then_exit_code_kept_and_summary_is_honest(tmp_path):
    out_json = tmp_path / "r.json"

    proc = greenml_cli("run", "--json", str(out_json), "--", sys.executable, "-c", "print('hi')",
                       env=_nothing_env(tmp_path))

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n"
    assert "not measured" in proc.stderr and "greenml sensors" in proc.stderr
    r = json.loads(out_json.read_text())
    assert r["energy_j"] is None and r["by_domain"] == {}


def test_given_unwritable_log_when_run_then_refused_before_the_command(tmp_path):
    marker = tmp_path / "ran"
    bad_log = tmp_path / "no-such-dir" / "run.jsonl"

    proc = greenml_cli("run", "--log", str(bad_log), "--", sys.executable, "-c",
                       f"import pathlib, sys; pathlib.Path({str(marker)!r}).touch(); sys.exit(4)",
                       env=_nothing_env(tmp_path))

    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert str(bad_log) in proc.stderr and "writable path" in proc.stderr
    assert not marker.exists()  # a measurement that cannot be kept is not started


def test_given_unwritable_json_when_run_then_refused_before_the_command(tmp_path):
    marker = tmp_path / "ran"
    bad_json = tmp_path / "no-such-dir" / "run.json"

    proc = greenml_cli("run", "--json", str(bad_json), "--", sys.executable, "-c",
                       f"import pathlib, sys; pathlib.Path({str(marker)!r}).touch(); sys.exit(4)",
                       env=_nothing_env(tmp_path))

    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert str(bad_json) in proc.stderr and "--json" in proc.stderr
    assert not marker.exists()


def _has_parquet_engine() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) for m in ("pyarrow", "fastparquet"))


@pytest.mark.skipif(_has_parquet_engine(), reason="a Parquet engine is installed here")
def test_given_parquet_trace_without_pyarrow_when_run_then_refused_before_the_command(tmp_path):
    marker = tmp_path / "ran"

    proc = greenml_cli("run", "--trace", str(tmp_path / "t.parquet"), "--", sys.executable, "-c",
                       f"import pathlib; pathlib.Path({str(marker)!r}).touch()",
                       env=_nothing_env(tmp_path))

    assert "Traceback" not in proc.stderr
    assert proc.returncode != 0
    assert "pyarrow" in proc.stderr
    assert not marker.exists()


# ----------------------------------------------------------------- run: signals

# A command that writes every signal it gets, one line each: the signal's name and who sent it
# ("terminal" for the kernel's tty driver, "greenml" for its parent). It takes signals with
# sigwaitinfo, so two copies of one signal are two lines unless the second was sent before the
# first was even taken, and it dies by SIGTERM (status "killed by SIGTERM").
_RECORDER = """
import os, pathlib, signal, sys
seen, ready = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
names = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
sigs = {getattr(signal, n) for n in names}
signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
parent = os.getppid()
ready.write_text(str(os.getpid()))
while True:
    info = signal.sigwaitinfo(sigs)
    sender = {0: "terminal", parent: "greenml"}.get(info.si_pid, f"pid-{info.si_pid}")
    with open(seen, "a") as f:
        f.write(f"{signal.Signals(info.si_signo).name}:{sender}\\n")
    if info.si_signo == signal.SIGTERM:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.kill(os.getpid(), signal.SIGTERM)
"""


class Recorder(NamedTuple):
    seen: Path
    ready: Path
    log: Path
    json: Path

    def argv(self) -> list:
        return ["run", "--log", str(self.log), "--json", str(self.json), "--",
                sys.executable, "-c", _RECORDER, str(self.seen), str(self.ready)]

    def lines(self) -> list:
        return self.seen.read_text().split() if self.seen.exists() else []


def _recorder(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path / "seen", tmp_path / "ready", tmp_path / "run.jsonl",
                    tmp_path / "run.json")


def _kill_quietly(pid: Optional[int]) -> None:
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _assert_run_recorded(rec: Recorder, code: int, stderr: str) -> None:
    """The summary, the --json result and the --log record all carry the exit status."""
    assert f"greenml run (exit {code})" in stderr, stderr
    assert json.loads(rec.json.read_text())["exit_code"] == code
    runs = [r for r in _records(rec.log) if r["type"] == "run"]
    assert [r["exit_code"] for r in runs] == [code]


def test_given_signals_sent_to_greenml_alone_when_run_then_each_reaches_the_command_once(
    tmp_path, wait_until,
):
    # Given: greenml in a session of its own, without a terminal, running the recorder
    rec = _recorder(tmp_path)
    gm = subprocess.Popen([sys.executable, "-m", "greenml", *rec.argv()], env=_nothing_env(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
    child_pid = None
    try:
        child_pid = int(wait_until(lambda: rec.ready.exists() and rec.ready.read_text(),
                                   timeout=30, message="the command never started"))
        sent = [signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2]
        # When: each signal is sent to greenml's pid alone, one after the other
        for k, signum in enumerate(sent, 1):
            gm.send_signal(signum)
            wait_until(lambda: len(rec.lines()) >= k, timeout=10,
                       message=f"{signum.name} never reached the command: {rec.lines()}")
            assert gm.poll() is None, f"greenml died of {signum.name}"
        gm.send_signal(signal.SIGTERM)
        out, err = gm.communicate(timeout=30)
    finally:
        if gm.poll() is None:
            gm.kill()
            gm.wait()
        _kill_quietly(child_pid)

    # Then: the command saw each exactly once, in order, and died of the SIGTERM; greenml
    # exits 128 + SIGTERM and wrote the summary, the JSON and the log
    assert rec.lines() == [f"{s.name}:greenml" for s in sent] + ["SIGTERM:greenml"]
    assert gm.returncode == 128 + signal.SIGTERM, err
    _assert_run_recorded(rec, 128 + signal.SIGTERM, err)


_PTY_LAUNCHER = """
import os, sys
os.setsid()
fd = os.open(sys.argv[1], os.O_RDWR)  # a session leader's first terminal becomes its own
for std in (0, 1, 2):
    os.dup2(fd, std)
os.execv(sys.executable, [sys.executable, "-m", "greenml", *sys.argv[2:]])
"""


def test_given_a_terminal_when_keys_send_signals_then_the_command_gets_each_once(
    tmp_path, wait_until,
):
    # Given: greenml in the foreground of a terminal of its own (a pty), running the recorder
    import pty
    import termios

    rec = _recorder(tmp_path)
    master, slave = pty.openpty()
    keys = termios.tcgetattr(slave)[6]
    slave_name = os.ttyname(slave)  # kept open here until greenml ends, so reads never fail
    gm = subprocess.Popen([sys.executable, "-c", _PTY_LAUNCHER, slave_name, *rec.argv()],
                          env=_nothing_env(tmp_path), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    output = bytearray()

    def drain() -> None:  # what greenml writes to its terminal, read as it comes
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: nothing holds the terminal open any more
                return
            if not chunk:
                return
            output.extend(chunk)

    import threading

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    child_pid = None
    try:
        child_pid = int(wait_until(lambda: rec.ready.exists() and rec.ready.read_text(),
                                   timeout=30, message="the command never started"))
        # When: ^C then ^\ are typed (the terminal signals greenml and the command alike),
        # then greenml alone is terminated
        for k, key in enumerate((keys[termios.VINTR], keys[termios.VQUIT]), 1):
            os.write(master, key)
            wait_until(lambda: len(rec.lines()) >= k, timeout=10,
                       message=f"key {key!r} never reached the command: {rec.lines()}")
            assert gm.poll() is None, "greenml died of a terminal key"
        gm.send_signal(signal.SIGTERM)
        gm.wait(timeout=30)
        os.close(slave)
        slave = -1
        reader.join(timeout=10)
    finally:
        if gm.poll() is None:
            gm.kill()
            gm.wait()
        _kill_quietly(child_pid)
        if slave >= 0:
            os.close(slave)
        reader.join(timeout=10)
        os.close(master)

    # Then: one SIGINT and one SIGQUIT, from the terminal (greenml sent no second copy), then
    # the SIGTERM relayed by greenml
    assert rec.lines() == ["SIGINT:terminal", "SIGQUIT:terminal", "SIGTERM:greenml"]
    assert gm.returncode == 128 + signal.SIGTERM
    _assert_run_recorded(rec, 128 + signal.SIGTERM, bytes(output).decode(errors="replace"))


_INTERRUPTED_REPORT = """
import os, signal, sys
from greenml import cli

report = cli._report_run

def interrupted_report(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # as a ^C typed while greenml reports
    os.kill(os.getpid(), signal.SIGTERM)
    return report(*args, **kwargs)

cli._report_run = interrupted_report
sys.exit(cli.main(sys.argv[1:]))
"""


def test_given_signals_while_reporting_when_run_then_exit_status_and_records_are_the_commands(
    tmp_path,
):
    log, out_json = tmp_path / "run.jsonl", tmp_path / "run.json"

    proc = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_REPORT, "run", "--log", str(log), "--json",
         str(out_json), "--", sys.executable, "-c", "import sys; sys.exit(5)"],
        env=_nothing_env(tmp_path), capture_output=True, text=True, timeout=60,
        start_new_session=True,
    )

    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 5, proc.stderr
    rec = Recorder(tmp_path / "unused", tmp_path / "unused", log, out_json)
    _assert_run_recorded(rec, 5, proc.stderr)


# ----------------------------------------------------------------- report


class Recorded(NamedTuple):
    meter_log: Path
    meter_trace: Path
    calls_log: Path


_RECORDING_SCRIPT = """
import sys, time
import greenml

meter_log, trace, calls_log = sys.argv[1:4]
with greenml.meter("job", log=meter_log, trace=trace) as m:
    with m.phase("train"):
        for _ in range(4):
            time.sleep(0.05)
            m.step()
    with m.phase("infer", items=10):
        time.sleep(0.1)

@greenml.measure("f", log=calls_log)
def f():
    time.sleep(0.05)

for _ in range(3):
    f()
"""


@pytest.fixture(scope="module")
def recorded(machine):
    """Logs written by a meter (phases, steps, trace) and by the decorator, in a subprocess."""
    out = machine.root / "recorded"
    out.mkdir()
    rec = Recorded(out / "meter.jsonl", out / "meter-trace.csv", out / "calls.jsonl")
    proc = subprocess.run(
        [sys.executable, "-c", _RECORDING_SCRIPT, str(rec.meter_log), str(rec.meter_trace),
         str(rec.calls_log)],
        env=machine.env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return rec


def _report_json(path: Path, env: Dict[str, str]):
    proc = greenml_cli("report", str(path), "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_given_meter_log_when_reported_then_one_row_per_phase_and_meter(recorded, machine):
    records = {(r["type"], r["name"]): r for r in _records(recorded.meter_log)}

    table = greenml_cli("report", str(recorded.meter_log), env=machine.env)
    rows = {row["name"]: row for row in _report_json(recorded.meter_log, machine.env)}

    assert table.returncode == 0, table.stderr
    body = table.stdout.splitlines()
    assert body[0].split()[:3] == ["type", "name", "count"]
    assert {line.split()[1] for line in body[2:]} == {"job", "job/train", "job/infer"}
    assert set(rows) == {"job", "job/train", "job/infer"}
    meter = records[("meter", "job")]
    assert rows["job"]["type"] == "meter"
    assert rows["job"]["energy_j"] == pytest.approx(meter["energy_j"])
    assert rows["job"]["j_per_step"] == pytest.approx(meter["steps"]["mean_j"])
    assert meter["steps"]["count"] == 4
    infer = records[("phase", "infer")]
    assert rows["job/infer"]["j_per_item"] == pytest.approx(infer["energy_j"] / 10)
    assert rows["job/train"]["energy_j"] == pytest.approx(records[("phase", "train")]["energy_j"])
    watts = sum(machine.power_w.values())
    assert rows["job"]["energy_j"] == pytest.approx(watts * meter["duration_s"], rel=0.15)


def test_given_decorator_log_when_reported_then_calls_are_aggregated_by_name(recorded, machine):
    calls = _records(recorded.calls_log)

    (row,) = _report_json(recorded.calls_log, machine.env)

    assert [c["type"] for c in calls] == ["call"] * 3
    assert row["type"] == "function" and row["name"] == "f" and row["count"] == 3
    assert row["energy_j"] == pytest.approx(sum(c["energy_j"] for c in calls))
    assert row["j_per_item"] == pytest.approx(row["energy_j"] / 3)
    assert row["duration_s"] == pytest.approx(sum(c["duration_s"] for c in calls))


@pytest.mark.parametrize("fmt", ["csv", "json", "markdown"])
def test_given_meter_log_when_reported_in_a_format_then_output_parses_in_it(recorded, machine,
                                                                            fmt):
    proc = greenml_cli("report", str(recorded.meter_log), "--format", fmt, env=machine.env)

    assert proc.returncode == 0, proc.stderr
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(proc.stdout)))
        assert sorted(r["name"] for r in rows) == ["job", "job/infer", "job/train"]
        assert all(float(r["energy_j"]) > 0 for r in rows)
    elif fmt == "json":
        assert sorted(r["name"] for r in json.loads(proc.stdout)) == ["job", "job/infer",
                                                                      "job/train"]
    else:
        lines = proc.stdout.strip().splitlines()
        assert lines[0].startswith("| type | name |")
        assert set(lines[1]) == {"|", "-"}
        assert len(lines) == 2 + 3
        assert all(line.startswith("| ") and line.endswith("|") for line in lines[2:])


def test_given_unknown_format_when_reported_then_usage_error(recorded, machine):
    proc = greenml_cli("report", str(recorded.meter_log), "--format", "xml", env=machine.env)

    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "xml" in proc.stderr


def test_given_missing_file_when_reported_then_clear_error_and_nonzero(tmp_path):
    missing = tmp_path / "nope.jsonl"

    proc = greenml_cli("report", str(missing), env=_clean_env())

    assert proc.returncode != 0
    assert str(missing) in proc.stderr and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_given_file_without_records_when_reported_then_clear_error_and_nonzero(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")

    proc = greenml_cli("report", str(empty), env=_clean_env())

    assert proc.returncode != 0
    assert "no greenml records" in proc.stderr


def test_given_meter_log_with_trace_when_plotting_then_a_real_png(recorded, machine, tmp_path):
    png = tmp_path / "plot.png"

    proc = greenml_cli("report", str(recorded.meter_log), "--plot", str(png), env=machine.env)

    assert proc.returncode == 0, proc.stderr
    assert _png_size(png) == PLOT_SIZE
    assert str(png) in proc.stderr


def test_given_log_without_trace_when_plotting_then_it_explains_how_to_get_one(recorded, machine,
                                                                                tmp_path):
    png = tmp_path / "plot.png"

    proc = greenml_cli("report", str(recorded.calls_log), "--plot", str(png), env=machine.env)

    assert proc.returncode != 0
    assert "trace" in proc.stderr
    assert "meter(trace=" in proc.stderr and "greenml run --trace" in proc.stderr
    assert not png.exists()


def test_given_a_trace_csv_when_reported_then_energy_per_domain(recorded, machine):
    rows = {r["name"]: r for r in _report_json(recorded.meter_trace, machine.env)}

    assert set(rows) == set(machine.power_w)
    for dom, watts in machine.power_w.items():
        r = rows[dom]
        assert r["type"] == "trace"
        assert r["energy_j"] == pytest.approx(watts * r["duration_s"], rel=0.25), dom


@pytest.fixture(scope="module")
def nothing_meter_log(tmp_path_factory):
    """A meter with steps, logged where nothing can be measured."""
    tmp = tmp_path_factory.mktemp("nothing")
    log = tmp / "m.jsonl"
    script = textwrap.dedent("""
        import sys, warnings, greenml
        warnings.simplefilter("ignore", greenml.NothingMeasuredWarning)
        with greenml.meter("blind", log=sys.argv[1]) as m:
            for _ in range(3):
                m.step()
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(log)], env=_nothing_env(tmp),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return log


def test_given_log_with_null_energies_when_reported_then_dashes_not_numbers(nothing_meter_log):
    proc = greenml_cli("report", str(nothing_meter_log), env=_clean_env())

    assert proc.returncode == 0, proc.stderr
    cells = proc.stdout.splitlines()[2].split()
    assert cells[:3] == ["meter", "blind", "1"]
    assert cells[4:7] == ["-", "-", "-"]  # energy, uncertainty, mean power


def test_given_nothing_measured_when_reported_then_energy_per_step_is_unknown(nothing_meter_log):
    (meter,) = _records(nothing_meter_log)

    (row,) = _report_json(nothing_meter_log, _clean_env())

    assert meter["energy_j"] is None
    assert meter["steps"].get("mean_j") is None
    assert row["j_per_step"] is None


# ----------------------------------------------------------------- demo

DEMO_TIMEOUT_S = 60


class DemoRun(NamedTuple):
    proc: Optional[subprocess.CompletedProcess]
    out: Path
    elapsed_s: float


def _run_demo(tmp: Path, env: Dict[str, str]) -> DemoRun:
    out = tmp / "demo-out"
    t0 = time.monotonic()
    try:
        proc = greenml_cli("demo", "--quick", "--out", str(out), env=env, timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc = None
    return DemoRun(proc, out, time.monotonic() - t0)


@pytest.fixture(scope="module")
def estimated_demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo-estimated")
    env = _nothing_env(tmp)
    del env["GREENML_SOURCES"]  # the default: estimates where no counter exists
    return _run_demo(tmp, env)


@pytest.fixture(scope="module")
def blind_demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo-blind")
    return _run_demo(tmp, _nothing_env(tmp))


def test_given_no_counter_when_demo_quick_then_it_writes_log_plot_and_trace(estimated_demo):
    proc, out = estimated_demo.proc, estimated_demo.out

    assert proc is not None, f"the demo did not finish within {DEMO_TIMEOUT_S} s"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "estimated" in proc.stdout.lower()
    assert _png_size(out / "greenml-demo.png") == PLOT_SIZE
    trace = list(csv.DictReader(io.StringIO((out / "greenml-demo-trace.csv").read_text())))
    assert trace and list(trace[0]) == ["t_s", "cpu:estimated_w", "dram:estimated_w"]
    records = _records(out / "greenml-demo.jsonl")
    assert {(r["type"], r["name"]) for r in records} == {
        ("phase", "train"), ("phase", "inference"), ("meter", "demo")}
    meter = next(r for r in records if r["type"] == "meter")
    assert meter["estimated_domains"] == ["cpu:estimated", "dram:estimated"]
    assert meter["total_kind"] == "estimated"
    cpu_w = meter["by_domain"]["cpu:estimated"] / meter["duration_s"]
    # Per-vCPU model: at most the table's largest full-load figure (8.96 W) per CPU, never a
    # whole package's TDP; its uncertainty is the model's (at least +/-70 %), not the sampler's.
    # The quick demo's meter lasts about 0.2 s, so its edges (placed between counter readings)
    # may add a few percent: allowed, 10 %; a TDP figure would be several times over.
    assert 0 < cpu_w <= 1.1 * 8.97 * (os.cpu_count() or 1)
    assert meter["uncertainty_by_domain"]["cpu:estimated"] >= 0.7 * meter["by_domain"][
        "cpu:estimated"]
    assert "per-vCPU model" in meter["assumptions"]["cpu:estimated"]
    # The human summary shows the estimate, its uncertainty and its assumptions line.
    assert "ESTIMATED" in proc.stdout and "+/-" in proc.stdout
    assert "cpu:estimated is a model, not a counter: per-vCPU model" in proc.stdout


def test_given_nothing_measurable_when_demo_quick_then_exit_0_and_it_says_no_numbers(blind_demo):
    proc, out = blind_demo.proc, blind_demo.out

    assert proc is not None, f"the demo did not finish within {DEMO_TIMEOUT_S} s"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "No energy numbers" in proc.stdout
    assert "energy per training step" not in proc.stdout
    assert "greenml sensors" in proc.stdout
    assert (out / "greenml-demo.jsonl").exists()


def test_given_nothing_measurable_when_demo_quick_then_table_has_no_made_up_zero(blind_demo):
    proc = blind_demo.proc
    assert proc is not None and proc.returncode == 0

    meter_row = next(line.split() for line in proc.stdout.splitlines()
                     if line.startswith("meter "))

    assert meter_row[1] == "demo"
    assert "0" not in meter_row[3:]  # every energy column unknown, none 0
