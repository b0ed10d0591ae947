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
