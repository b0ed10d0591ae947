"""Records on disk: one JSON line per finished phase and meter, read back with
``greenml.read_log``; a writer killed with SIGKILL loses nothing it had finished."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import greenml
import greenml._records

from fakes.truth import RaplWriter, rapl_tree, warm_up

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture
def writer(tmp_path):
    root = rapl_tree(tmp_path)
    with RaplWriter(root, {"intel-rapl:0": (30.0, 10.0, 2.0), "intel-rapl:0:0": (3.0, 0.0, 0.0)}
                    ) as w:
        yield w


def test_given_meter_with_log_when_stopped_then_one_line_per_phase_and_one_per_meter(
    writer, runtimes, tmp_path
):
    rt = runtimes(powercap_root=writer.root, sources={"rapl"}, interval_ms=1.0)
    warm_up(rt, seconds=0.02)
    log = tmp_path / "run.jsonl"

    # Given/When: two meters logging to one file; the first has a repeated and a second phase
    with greenml.meter("first", log=str(log), runtime=rt) as m1:
        for _ in range(2):
            with m1.phase("train"):
                time.sleep(0.01)
        with m1.phase("eval", items=10):
            time.sleep(0.01)
        for _ in range(3):
            time.sleep(0.002)
            m1.step()
        assert not log.exists() or log.read_text() == ""  # nothing before it finishes
    with greenml.meter("second", log=str(log), runtime=rt):
        time.sleep(0.01)

    # Then: 2 phase lines + 1 meter line, then 1 meter line; each a complete JSON object
    lines = log.read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [r["type"] for r in recs] == ["phase", "phase", "meter", "meter"]
    assert sorted(r["name"] for r in recs[:2]) == ["eval", "train"]  # phases: any order
    assert [r["name"] for r in recs[2:]] == ["first", "second"]
    assert {r["run_id"] for r in recs[:3]} == {m1.to_dict()["run_id"]}
    assert recs[3]["run_id"] != recs[0]["run_id"]
    assert all(r["meter"] == "first" for r in recs[:3])
    phase = {r["name"]: r for r in recs[:2]}
    assert phase["train"]["count"] == 2 and phase["eval"]["items"] == 10
    assert recs[2]["energy_j"] == pytest.approx(m1.energy_j)
    assert recs[2]["steps"]["count"] == 3
    assert recs[2]["pid"] == os.getpid()

    df = greenml.read_log(log)
    assert list(df["type"]) == ["phase", "phase", "meter", "meter"]
    assert list(df["name"])[2:] == ["first", "second"]
    assert {"energy_j", "duration_s", "co2e_g", "by_domain.package:0", "by_domain.dram:0",
            "carbon.gco2e_per_kwh"} <= set(df.columns)
    assert (df["energy_j"] > 0).all()
    assert df.loc[2, "by_domain.package:0"] == pytest.approx(m1.by_domain["package:0"])


_CHILD = textwrap.dedent("""
    import sys
    import greenml
    from fakes.truth import make_runtime

    root, log = sys.argv[1], sys.argv[2]
    rt = make_runtime(powercap_root=root, sources={"rapl"}, interval_ms=1.0)
    i = 0
    while True:
        with greenml.meter(f"m{i}", log=log, runtime=rt) as m:
            with m.phase("p"):
                pass
        print(i, flush=True)  # meter i (and its phase) finished and logged
        i += 1
""")


def test_given_writer_killed_with_sigkill_when_reading_log_then_every_finished_record_is_there(
    writer, tmp_path
):
    log = tmp_path / "killed.jsonl"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for name in ("GREENML_REGION", "GREENML_CARBON_INTENSITY"):
        env.pop(name, None)
    child = subprocess.Popen([sys.executable, str(script), str(writer.root), str(log)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    reported = []
    try:
        # Given: the child has reported at least 40 finished meters (bounded wait)
        buf = b""
        deadline = time.monotonic() + 30.0
        while len(reported) < 40:
            left = deadline - time.monotonic()
            assert left > 0, f"child reported only {reported[-1:]} in 30 s"
            ready, _, _ = select.select([child.stdout], [], [], left)
            if not ready:
                continue
            chunk = os.read(child.stdout.fileno(), 4096)
            if not chunk:
                pytest.fail(f"child exited early: {child.stderr.read().decode()}")
            buf += chunk
            *done, buf = buf.split(b"\n")
            reported += [int(x) for x in done if x.strip()]
        # When: it is killed while still writing
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        out, _ = child.communicate(timeout=10)
    reported += [int(x) for x in (buf + out).split(b"\n") if x.strip()]
    assert child.returncode == -signal.SIGKILL

    # Then: every line of the log is a complete record; nothing reported finished is missing
    raw = log.read_bytes()
    assert raw.endswith(b"\n") or raw.count(b"\n") == 0
    for line in raw.splitlines():
        json.loads(line)
    df = greenml.read_log(log)  # filterwarnings=error: a skipped line would fail here
    meters = set(df.loc[df["type"] == "meter", "name"])
    phases_of = set(df.loc[df["type"] == "phase", "meter"])
    last = max(reported)
    assert reported == list(range(last + 1))
    assert {f"m{i}" for i in range(last + 1)} <= meters
    assert {f"m{i}" for i in range(last + 1)} <= phases_of
    assert len(meters) <= last + 2  # at most the one being finished when killed


def test_given_damaged_last_line_when_reading_then_skipped_with_a_warning(tmp_path):
    # The reader's side of the guarantee: a torn line (from a disk-full or foreign writer)
    # is skipped with a warning rather than failing the whole log
    log = tmp_path / "torn.jsonl"
    log.write_text('{"type":"meter","name":"a","energy_j":1.0}\n{"type":"met')
    with pytest.warns(RuntimeWarning, match="torn.jsonl:2"):
        df = greenml.read_log(log)
    assert list(df["name"]) == ["a"]


def test_given_missing_log_when_reading_then_log_error(tmp_path):
    with pytest.raises(greenml.LogError, match="nope.jsonl"):
        greenml.read_log(tmp_path / "nope.jsonl")


# ----------------------------------------------------------------- damaged logs


def _line(**rec) -> str:
    return json.dumps(rec, separators=(",", ":")) + "\n"


def test_given_torn_line_followed_by_appended_record_when_reading_then_both_neighbours_kept(
    tmp_path,
):
    # Given: a writer killed mid-record (no newline), then another writer appended a record;
    # the append lands on the torn line
    log = tmp_path / "torn.jsonl"
    torn = _line(type="meter", name="killed", by_domain={"gpu:0": 1.0})[:30]
    log.write_text(_line(type="meter", name="a") + torn + _line(type="meter", name="b")
                   + _line(type="meter", name="c"))

    # When/Then: the torn line is reported by number; a, b (recovered) and c are kept
    with pytest.warns(RuntimeWarning, match=r"torn\.jsonl:2: .*record appended after it"):
        records = greenml._records.read_records(log)
    assert [r["name"] for r in records] == ["a", "b", "c"]


def test_given_torn_line_in_the_middle_when_reading_then_every_other_record_kept(tmp_path):
    log = tmp_path / "mid.jsonl"
    log.write_text(_line(name="a") + '{"name":"x","by_dom\n' + _line(name="b"))

    with pytest.warns(RuntimeWarning, match=r"mid\.jsonl:2: skipped a damaged line"):
        df = greenml.read_log(log)

    assert list(df["name"]) == ["a", "b"]


@pytest.mark.parametrize("value", ["[1, 2]", "42", '"text"', "null", "true"])
def test_given_json_line_that_is_not_an_object_when_reading_then_reported_and_skipped(
    tmp_path, value,
):
    log = tmp_path / "odd.jsonl"
    log.write_text(_line(name="a") + value + "\n" + _line(name="b"))

    with pytest.warns(RuntimeWarning, match=r"odd\.jsonl:2: .*not a record object"):
        records = greenml._records.read_records(log)

    assert [r["name"] for r in records] == ["a", "b"]


# ----------------------------------------------------------------- fsync


@pytest.fixture
def fsyncs(monkeypatch):
    """Counts os.fsync calls (each still runs)."""
    calls = []
    real = os.fsync

    def counting(fd):
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_given_fsync_option_when_writing_records_then_each_is_fsynced(tmp_path, fsyncs):
    log = greenml._records.RecordLog(tmp_path / "sync.jsonl", fsync=True)
    created = len(fsyncs)  # the new file and its directory entry
    assert created == 2

    for i in range(3):
        log.write({"type": "call", "i": i})

    assert len(fsyncs) == created + 3
    assert [r["i"] for r in greenml._records.read_records(log.path)] == [0, 1, 2]


def test_given_no_fsync_request_when_writing_records_then_none_is_fsynced(
    tmp_path, fsyncs, monkeypatch,
):
    monkeypatch.delenv("GREENML_LOG_FSYNC", raising=False)
    log = greenml._records.RecordLog(tmp_path / "plain.jsonl")
    log.write({"type": "call"})
    assert fsyncs == []


def test_given_log_fsync_env_when_a_meter_logs_then_its_records_are_fsynced(
    writer, runtimes, tmp_path, fsyncs, monkeypatch,
):
    monkeypatch.setenv("GREENML_LOG_FSYNC", "1")
    rt = runtimes(powercap_root=writer.root, sources={"rapl"}, interval_ms=1.0)
    log = tmp_path / "env.jsonl"

    with greenml.meter("m", log=str(log), runtime=rt) as m:
        with m.phase("p"):
            time.sleep(0.02)  # work long enough for a counter update

    assert len(greenml._records.read_records(log)) == 2  # the phase and the meter
    assert len(fsyncs) >= 2 + 2  # creation (file, directory) + one per record


@pytest.mark.parametrize("value", ["2", "maybe", "-1"])
def test_given_invalid_log_fsync_env_when_opening_a_log_then_error_names_it(
    tmp_path, monkeypatch, value,
):
    monkeypatch.setenv("GREENML_LOG_FSYNC", value)
    with pytest.raises(greenml.ConfigError, match=rf"GREENML_LOG_FSYNC='{value}'.*accepted: on"):
        greenml._records.RecordLog(tmp_path / "x.jsonl")


# ----------------------------------------------------------------- concurrent writers

_APPENDER = textwrap.dedent("""
    import sys
    from greenml._records import RecordLog

    path, who, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    log = RecordLog(path)
    for i in range(n):
        log.write({"who": who, "i": i, "payload": (who * size)[:size]})
""")


def test_given_writers_in_several_processes_when_appending_then_no_record_interleaves(tmp_path):
    # Given: 4 processes appending 50 records of 256 KiB each (far above PIPE_BUF and a page)
    # to one log at once
    log = tmp_path / "shared.jsonl"
    n, size, who = 50, 256 * 1024, "ABCD"
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(log), w, str(n), str(size)])
             for w in who]
    for p in procs:
        assert p.wait(timeout=120) == 0

    # Then: every line is one whole record, none lost, none mixed with another's bytes
    lines = log.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]
    assert len(records) == n * len(who)
    for w in who:
        mine = [r for r in records if r["who"] == w]
        assert [r["i"] for r in mine] == list(range(n))
        assert all(r["payload"] == w * size for r in mine)
