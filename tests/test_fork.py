"""Fork, spawn and forkserver with open meters: no deadlock, no lock inherited held, no double
count in the parent, and meters in the children work.

Each scenario runs in a fresh interpreter under a timeout, so a deadlock fails the test instead
of hanging the suite; a forked grandchild that does not finish within its deadline is killed
and reported as a hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fakes.truth import RaplWriter, rapl_tree

TESTS_DIR = Path(__file__).resolve().parent
TIMEOUT_S = 120  # a hang, not slowness, is what this catches


@pytest.fixture
def machine_env(tmp_path):
    """A fake RAPL package (30 W) and dram zone (3 W), named through the environment so that
    spawned and forkserver children build the same runtime as the parent."""
    root = rapl_tree(tmp_path / "rapl")
    with RaplWriter(root, {"intel-rapl:0": (30.0, 0.0, 0.0), "intel-rapl:0:0": (3.0, 0.0, 0.0)}):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("GREENML_") and k != "CUDA_VISIBLE_DEVICES"}
        env.update(GREENML_POWERCAP_ROOT=str(root), GREENML_SOURCES="rapl",
                   GREENML_INTERVAL_MS="1", PYTHONPATH=os.pathsep.join(
                       [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        yield env


def _run(script: str, env, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _records(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------- os.fork with locks held

_HELD_AT_FORK = """
import json, os, sys, threading, time
import greenml
from greenml import _runtime

which, log, out = sys.argv[1], sys.argv[2], sys.argv[3]
rt = _runtime.default_runtime()

@greenml.measure("f", log=log)
def f():
    time.sleep(0.02)

with greenml.meter("outer", log=log) as m:
    for _ in range(3):
        f()
        time.sleep(0.02)
        m.step()
    parent_calls = f.energy.calls
    lock = {
        "record log": m._log._lock,
        "runtime": rt._lock,
        "runtime events": rt._events_lock,
        "pending steps": m.steps._pending._lock,
        "step record": m.steps.ordered._lock,
        "decorated calls": f.energy._lock,
    }[which]
    held, release = threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    pid = os.fork()  # another thread holds `lock` right now
    if pid == 0:
        try:
            m.step()                 # the parent's meter: not counted in the child
            m.steps.ordered.blocks()
            f()
            f()
            child_calls = f.energy.calls
            rt.events()
            with greenml.meter("child", log=log) as c:
                time.sleep(0.05)
            with open(out, "w") as fh:
                json.dump({"calls": child_calls, "energy_j": c.energy_j, "pid": os.getpid()}, fh)
            os._exit(0)
        except BaseException as exc:
            with open(out, "w") as fh:
                json.dump({"error": repr(exc)}, fh)
            os._exit(1)
    release.set()
    holder.join()
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            status = "hang"
            break
        time.sleep(0.01)
    time.sleep(0.02)
    m.step()
print(json.dumps({"status": status, "parent_pid": os.getpid(), "parent_calls": parent_calls,
                  "calls_after": f.energy.calls, "steps": m.steps.count}))
"""


@pytest.mark.parametrize("which", ["record log", "runtime", "runtime events", "pending steps",
                                   "step record", "decorated calls"])
def test_given_a_lock_held_by_another_thread_at_fork_when_the_child_measures_then_no_deadlock(
    machine_env, tmp_path, which,
):
    log, out = tmp_path / "log.jsonl", tmp_path / "child.json"

    r = _run(_HELD_AT_FORK, machine_env, which, str(log), str(out))

    # Then: the child finished (no deadlock on the inherited lock) and its own meter measured
    assert r["status"] != "hang", f"the child deadlocked on the {which} lock held at fork"
    child = json.loads(out.read_text())
    assert r["status"] == 0, child
    assert child["calls"] == 2  # its own calls only: the parent's 3 are the parent's
    assert child["energy_j"] > 0
    # ... and the parent counts only its own: 3 calls, 4 steps (the child's step is not there)
    assert r["parent_calls"] == r["calls_after"] == 3
    assert r["steps"] == 4
    recs = _records(log)
    outer = [x for x in recs if x["type"] == "meter" and x["name"] == "outer"]
    assert [x["pid"] for x in outer] == [r["parent_pid"]]
    assert [x["pid"] for x in recs if x["type"] == "meter" and x["name"] == "child"] == [
        child["pid"]]
    calls = [x for x in recs if x["type"] == "call"]
    assert sum(x["pid"] == r["parent_pid"] for x in calls) == 3
    assert sum(x["pid"] == child["pid"] for x in calls) == 2


# ----------------------------------------------------------------- DataLoader and Pool workers

_WORKERS = """
import json, os, sys, time
import multiprocessing

import torch
from torch.utils.data import DataLoader, Dataset

import greenml


def measured_item(log, i):
    with greenml.meter("item", log=log) as m:
        time.sleep(0.03)
    return [float(i), m.energy_j, float(os.getpid())]


class Items(Dataset):
    def __init__(self, log, n):
        self.log, self.n = log, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor(measured_item(self.log, i), dtype=torch.float64)


def pool_item(args):
    return measured_item(*args)


def main(kind, method, log):
    n = 8
    with greenml.meter("epoch", log=log) as m:
        rows = []
        if kind == "dataloader":
            loader = DataLoader(Items(log, n), batch_size=2, num_workers=2,
                                multiprocessing_context=method)
            for batch in loader:
                rows += batch.tolist()
                m.step()
        else:
            with multiprocessing.get_context(method).Pool(2) as pool:
                for row in pool.imap(pool_item, [(log, i) for i in range(n)]):
                    rows.append(row)
                    m.step()
    print(json.dumps({"rows": rows, "steps": m.steps.count, "pid": os.getpid(),
                      "energy_j": m.energy_j}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
"""


@pytest.mark.parametrize("kind", ["dataloader", "pool"])
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_given_workers_started_inside_an_open_meter_when_they_measure_then_each_counts_once(
    machine_env, tmp_path, kind, method,
):
    # Given: a parent meter around a DataLoader (2 workers) or a Pool (2 processes) started
    # with `method`; each worker measures every item it makes with a meter of its own
    script, log = tmp_path / "workers.py", tmp_path / "log.jsonl"
    script.write_text(textwrap.dedent(_WORKERS))

    proc = subprocess.run([sys.executable, str(script), kind, method, str(log)], env=machine_env,
                          capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)

    # Then: no hang, no error; every item was measured in a worker, with energy
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = sorted(r["rows"])
    assert [int(x[0]) for x in rows] == list(range(8))
    assert all(x[1] > 0 for x in rows), rows
    workers = {int(x[2]) for x in rows}
    assert r["pid"] not in workers and 1 <= len(workers) <= 2
    assert r["energy_j"] > 0
    assert r["steps"] == (4 if kind == "dataloader" else 8)
    # ... and the log holds the parent's meter once and each item once, from its worker
    recs = _records(log)
    assert [x["pid"] for x in recs if x["name"] == "epoch"] == [r["pid"]]
    items = [x for x in recs if x["name"] == "item"]
    assert len(items) == 8
    assert {x["pid"] for x in items} == workers
    assert all(x["energy_j"] > 0 for x in items)


_FORK_IN_METER = """
import json, os, sys, time
import greenml
log = sys.argv[1]
with greenml.meter("outer", log=log, sync_cuda=False) as m:
    time.sleep(0.02)
    pid = os.fork()
    if pid == 0:
        time.sleep(0.02)
# both processes leave the block; only the parent may record the window
if pid == 0:
    try:
        m.result()
        os._exit(3)  # the child must not get a result of the parent's window
    except greenml.GreenmlError:
        os._exit(0)
_, status = os.waitpid(pid, 0)
print(json.dumps({"child": os.waitstatus_to_exitcode(status), "pid": os.getpid()}))
"""


def test_given_fork_inside_an_open_meter_when_both_leave_it_then_the_window_is_logged_once(
        machine_env, tmp_path):
    log = tmp_path / "log.jsonl"
    r = _run(_FORK_IN_METER, machine_env, str(log))
    assert r["child"] == 0
    assert [x["pid"] for x in _records(log) if x["name"] == "outer"] == [r["pid"]]
