"""Fork and interpreter exit with a running sampler, each in a fresh interpreter.

A hang here would hang the suite, so every child runs under a timeout and
every grandchild is reaped with a deadline by its parent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from fakes.powercap import PowercapTree

TIMEOUT_S = 60  # a hang, not slowness, is what this catches

PRELUDE = textwrap.dedent("""
    import json, os, sys, time
    from greenml import _core

    def wait(pred, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True
""")


@pytest.fixture
def tree(tmp_path) -> PowercapTree:
    t = PowercapTree(tmp_path / "tree")
    t.add_package(0, energy_uj=1_000, dram=True)
    return t


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GREENML_") and k not in ("CUDA_VISIBLE_DEVICES", "FAKE_NVML_DIR")}
    env.update(extra)
    return env


def _run(code: str, *args: str, env=None, cwd=None) -> "tuple[subprocess.CompletedProcess, float]":
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=env if env is not None else _clean_env(), cwd=cwd)
    return proc, time.monotonic() - began


# ----------------------------------------------------------------- fork


FORK_CODE = """
    root = sys.argv[1]
    s = _core.Sampler([_core.RaplSource(root)], 1_000_000, 1 << 14)
    s.start()
    assert wait(lambda: s.head >= 5), "parent sampler never sampled"

    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            # fork() copied no sampler thread: the inherited sampler must know it.
            if s.stats()["running"]:
                code = 10
            own = _core.Sampler([_core.RaplSource(root)], 1_000_000, 1 << 14)
            own.start()
            if not wait(lambda: own.head >= 5):
                code = 11
            own.stop()
            h = s.head
            s.start()  # the inherited one starts a fresh thread
            if not wait(lambda: s.head >= h + 5):
                code = 12
            s.stop()
        except BaseException:
            import traceback; traceback.print_exc()
            code = 13
        os._exit(code)

    # Parent: keeps sampling while the child runs, and after.
    h0 = s.head
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
            break
        time.sleep(0.005)
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    grew = wait(lambda: s.head >= h0 + 20)
    running = s.stats()["running"]
    s.stop()
    print(json.dumps({"child": status, "parent_grew": grew, "parent_running": running}))
"""


def test_given_running_sampler_when_process_forks_then_child_and_parent_both_sample(tree):
    proc, _ = _run(FORK_CODE, str(tree.root))

    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"child": 0, "parent_grew": True, "parent_running": True}, proc.stderr


RUNTIME_FORK_CODE = """
    from greenml import _runtime
    rt = _runtime.default_runtime()
    sampler = rt.ensure_started()
    sampler.add_demand(1)  # full rate throughout (an idle runtime reads once a second)
    assert wait(lambda: sampler.head >= 5), "parent runtime never sampled"
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            again = _runtime.default_runtime().ensure_started()  # restarts in the child
            if again is not sampler or not again.stats()["running"]:
                code = 20
            h = again.head
            if not wait(lambda: again.head >= h + 5):
                code = 21
        except BaseException:
            import traceback; traceback.print_exc()
            code = 22
        os._exit(code)
    h0 = sampler.head
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
            break
        time.sleep(0.005)
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    grew = wait(lambda: sampler.head >= h0 + 20)
    print(json.dumps({"child": status, "parent_grew": grew}))
"""


def test_given_default_runtime_when_process_forks_then_child_runtime_restarts_its_thread(
        tree, tmp_path):
    env = _clean_env(GREENML_POWERCAP_ROOT=str(tree.root), GREENML_SOURCES="rapl",
                     GREENML_INTERVAL_MS="1")
    proc, _ = _run(RUNTIME_FORK_CODE, env=env, cwd=str(tmp_path))

    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"child": 0, "parent_grew": True}, proc.stderr


# ----------------------------------------------------------------- exit


def test_given_module_level_running_sampler_when_interpreter_exits_then_exit_code_0_promptly(
        tree):
    code = """
        sampler = _core.Sampler([_core.RaplSource(sys.argv[1])], 1_000_000, 4096)
        sampler.start()
        assert wait(lambda: sampler.head >= 5)
        print("sampling", flush=True)
    """
    proc, took = _run(code, str(tree.root))

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "sampling"
    assert "terminate" not in proc.stderr and "Abort" not in proc.stderr
    assert took < 20


def test_given_running_sampler_with_long_period_when_sys_exit_then_exit_code_is_kept(tree):
    # The thread sleeps towards a 30 s deadline: exit must not wait for it.
    code = """
        sampler = _core.Sampler([_core.RaplSource(sys.argv[1])], 30_000_000_000, 4096)
        sampler.start()
        assert wait(lambda: sampler.stats()["running"])
        t0 = time.monotonic()
        import atexit
        atexit.register(lambda: print(f"atexit after {time.monotonic() - t0:.3f}", flush=True))
        sys.exit(3)
    """
    proc, took = _run(code, str(tree.root))

    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("atexit after")
    assert took < 15


def test_given_default_runtime_started_when_interpreter_exits_then_exit_code_0_promptly(
        tree, tmp_path):
    code = """
        from greenml import _runtime
        rt = _runtime.default_runtime()
        sampler = rt.ensure_started()
        assert [c.domain for c in rt.channels] == ["package:0", "dram:0"], rt.channels
        assert wait(lambda: sampler.head >= 5)
        print("sampling", flush=True)
    """
    env = _clean_env(GREENML_POWERCAP_ROOT=str(tree.root), GREENML_SOURCES="rapl",
                     GREENML_INTERVAL_MS="1")
    proc, took = _run(code, env=env, cwd=str(tmp_path))

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "sampling"
    assert proc.stderr == ""
    assert took < 20


def test_given_nvml_and_rapl_sampler_running_when_interpreter_exits_then_exit_code_0(
        tree, fake_nvml):
    fake_nvml.add_device(energy_mj=0)
    fake_nvml.set_profile(0, base_w=100.0, update_ms=1.0)
    code = """
        from greenml import _runtime
        rt = _runtime.default_runtime()
        sampler = rt.ensure_started()
        assert [c.domain for c in rt.channels] == ["gpu:0", "package:0", "dram:0"], rt.channels
        assert wait(lambda: sampler.head >= 5)
        print("sampling", flush=True)
    """
    env = _clean_env(GREENML_POWERCAP_ROOT=str(tree.root), GREENML_SOURCES="rapl,nvml",
                     GREENML_NVML_LIBRARY=str(fake_nvml.library_path), GREENML_INTERVAL_MS="1",
                     **fake_nvml.env)
    proc, took = _run(code, env=env)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "sampling"
    assert took < 20
