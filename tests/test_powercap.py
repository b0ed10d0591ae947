"""Power limits: reading, refusing, privileges, the state file, and every exit path restoring.

Hardware: the fake NVML (a GPU with limits 125..300 W, default and current 300 W) and a fake
powercap tree (package 0 with long/short-term constraints). Exit paths run in child processes
that change a limit through greenml and then end in the way under test.
"""

from __future__ import annotations

import json
import time
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import greenml
import greenml.powercap as pc
from fakes.nvml import NO_PERMISSION

GPU_UUID = "GPU-00000000-0000-4000-8000-0000feed0000"


@pytest.fixture
def machine(fake_nvml, powercap, tmp_path, monkeypatch):
    """One fake GPU (limit 300 W in [125, 300]) and one RAPL package (PL1 125 W, max 165 W);
    the GREENML_* variables point at them and at a state file under tmp_path."""
    fake_nvml.add_device(name="Fake H100", uuid=GPU_UUID)
    fake_nvml.set_limits(0, 300, min_w=125, max_w=300, default_w=300)
    powercap.add_package(0, dram=True)
    powercap.set_constraints(
        "package:0",
        ("long_term", 125_000_000, 27_983_872, 165_000_000),
        ("short_term", 200_000_000, 2_440, None),
    )
    env = {
        "GREENML_NVML_LIBRARY": str(fake_nvml.library_path),
        "GREENML_POWERCAP_ROOT": str(powercap.root),
        "GREENML_POWERCAP_STATE": str(tmp_path / "state" / "powercap-state.json"),
        "GREENML_SOURCES": "nvml,rapl",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return {"gpu": fake_nvml, "rapl": powercap, "env": {**env, **fake_nvml.env},
            "state": Path(env["GREENML_POWERCAP_STATE"])}


# ---------------------------------------------------------------------------------- reading


def test_given_gpu_and_rapl_when_reading_limits_then_every_value_is_reported(machine):
    found = {lim.domain: lim for lim in pc.limits()}

    gpu, pkg = found["gpu:0"], found["package:0"]
    assert (gpu.current_w, gpu.default_w, gpu.min_w, gpu.max_w, gpu.enforced_w) == (
        300, 300, 125, 300, 300)
    assert gpu.uuid == GPU_UUID and gpu.source == "nvml"
    assert (pkg.current_w, pkg.max_w, pkg.enforced_w, pkg.default_w) == (125, 165, 125, None)
    assert [(c.name, c.limit_w, c.max_w) for c in pkg.constraints] == [
        ("long_term", 125, 165), ("short_term", 200, None)]
    assert pkg.constraints[0].time_window_s == pytest.approx(27.983872)
    assert "dram:0" not in found  # a zone without constraint files has no limit
    assert machine["gpu"].limit_history(0) == []  # reading wrote nothing


def test_given_limits_when_a_meter_ends_then_its_record_and_dict_carry_them(machine, tmp_path):
    from fakes.truth import make_runtime

    rt = make_runtime(nvml_library=machine["gpu"].library_path,
                      powercap_root=machine["rapl"].root, sources={"nvml", "rapl"})
    try:
        log = tmp_path / "m.jsonl"
        with greenml.meter("capped", runtime=rt, log=str(log)) as m:
            time.sleep(0.02)
        machine["gpu"].set_limits(0, 200, min_w=125, max_w=300, default_w=300)  # changed after
        rec = next(r for r in map(json.loads, log.read_text().splitlines())
                   if r["type"] == "meter")
        # The record holds the limits as they stood when the meter ended; the dict, as now.
        assert rec["power_limits"]["gpu:0"] == {
            "current_w": 300, "default_w": 300, "min_w": 125, "max_w": 300, "enforced_w": 300}
        assert rec["power_limits"]["package:0"]["current_w"] == 125
        assert m.to_dict()["power_limits"]["gpu:0"]["current_w"] == 200
    finally:
        rt.stop()


def test_given_a_limit_when_listing_sensors_then_table_and_json_show_it(machine):
    env = {**os.environ, **machine["env"]}
    table = subprocess.run([sys.executable, "-m", "greenml", "sensors"], env=env,
                           capture_output=True, text=True, timeout=60)
    js = subprocess.run([sys.executable, "-m", "greenml", "sensors", "--json"], env=env,
                        capture_output=True, text=True, timeout=60)

    assert "Power limits" in table.stdout
    row = next(ln.split() for ln in table.stdout.splitlines() if ln.startswith("gpu:0") and
               "300" in ln)
    assert row[:6] == ["gpu:0", "300", "300", "125", "300", "300"]
    by_domain = {s["domain"]: s for s in json.loads(js.stdout)}
    assert by_domain["gpu:0"]["power_limit"]["max_w"] == 300
    assert by_domain["package:0"]["power_limit"]["current_w"] == 125


# ---------------------------------------------------------------------------------- refusing


def test_given_a_limit_outside_constraints_when_setting_then_refused_and_nothing_written(machine):
    for domain, watts in (("gpu:0", 400), ("gpu:0", 100), ("package:0", 170), ("package:0", 0)):
        with pc.LimitGuard() as guard:
            with pytest.raises(pc.LimitOutOfRange, match="nothing was changed"):
                guard.set(domain, watts)

    assert machine["gpu"].limit_w(0) == 300
    assert machine["rapl"].limit_uw("package:0") == 125_000_000
    assert not machine["state"].exists()


def test_given_no_privilege_when_setting_a_gpu_limit_then_error_says_root_and_nothing_changes(
    machine,
):
    machine["gpu"].set_error(0, "set_limit", NO_PERMISSION)

    with pc.LimitGuard() as guard:
        with pytest.raises(pc.NoPrivilege, match="needs root") as info:
            guard.set("gpu:0", 200)

    assert "nvidia-smi" in str(info.value)
    assert machine["gpu"].limit_w(0) == 300
    assert not machine["state"].exists()  # no leftover that would block the next run


@pytest.mark.skipif(os.geteuid() != 0, reason="drops privileges to a non-root user")
def test_given_a_non_root_user_when_sweeping_rapl_then_refused_with_reason_and_unchanged(
    machine, tmp_path
):
    os.chmod(tmp_path, 0o755)  # let the unprivileged user read the fake tree and library
    for p in Path(tmp_path).parents:
        if str(p) in ("/", "/tmp"):
            break
        os.chmod(p, os.stat(p).st_mode | 0o005)
    env = {**os.environ, **machine["env"], "GREENML_SOURCES": "rapl"}
    try:
        subprocess.run([sys.executable, "-c", "import greenml"], env=env, user=65534,
                       group=65534, capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("this interpreter or greenml cannot be run by an unprivileged user here")

    proc = subprocess.run(
        [sys.executable, "-m", "greenml", "powercap", "sweep", "--device", "package:0",
         "--limits", "100", "--", "true"],
        env=env, capture_output=True, text=True, timeout=60, user=65534, group=65534,
    )

    assert proc.returncode == 1, proc.stderr
    assert "needs root" in proc.stderr
    assert machine["rapl"].limit_uw("package:0") == 125_000_000
    assert not machine["state"].exists()


# ---------------------------------------------------------------------------------- state file


def test_given_a_change_when_it_happens_then_the_original_is_in_the_state_file_first(machine):
    with pc.LimitGuard() as guard:
        guard.set("gpu:0", 200)
        guard.set("package:0", 100)
        guard.set("gpu:0", 150)  # a second change keeps the first original

        state = json.loads(machine["state"].read_text())
        assert [(e["domain"], e["original_w"]) for e in state["limits"]] == [
            ("gpu:0", 300), ("package:0", 125)]
        assert state["limits"][0]["uuid"] == GPU_UUID
        assert state["pid"] == os.getpid()
        assert machine["gpu"].limit_w(0) == 150
        assert machine["rapl"].limit_uw("package:0") == 100_000_000

    assert machine["gpu"].limit_w(0) == 300
    assert machine["rapl"].limit_uw("package:0") == 125_000_000
    assert not machine["state"].exists()


def test_given_an_unwritable_state_file_when_setting_then_nothing_changes(machine, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")

    with pc.LimitGuard(state_path=blocker / "state.json") as guard:
        with pytest.raises(pc.PowercapError, match="cannot save the original"):
            guard.set("gpu:0", 200)

    assert machine["gpu"].limit_w(0) == 300
    assert machine["gpu"].limit_history(0) == []


def test_given_a_leftover_state_file_when_setting_then_refused_until_restored(machine):
    with pc.LimitGuard() as first:
        first.set("gpu:0", 200)
        with pc.LimitGuard() as second:
            with pytest.raises(pc.PowercapError, match="greenml powercap restore"):
                second.set("gpu:0", 150)
        assert machine["gpu"].limit_w(0) == 200

    assert machine["gpu"].limit_w(0) == 300


def test_given_an_exception_in_the_block_then_the_original_is_restored(machine):
    with pytest.raises(RuntimeError):
        with pc.LimitGuard() as guard:
            guard.set("gpu:0", 175)
            raise RuntimeError("training failed")

    assert machine["gpu"].limit_w(0) == 300
    assert not machine["state"].exists()


def test_given_no_state_file_when_restoring_then_nothing_to_do(machine):
    proc = subprocess.run([sys.executable, "-m", "greenml", "powercap", "restore"],
                          env={**os.environ, **machine["env"]}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert "nothing to restore" in proc.stdout


# ---------------------------------------------------------------------------------- exit paths

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    import greenml.powercap as pc
    mode = sys.argv[1]
    if mode == "chained":
        def mine(signum, frame):
            open(os.environ["MARKER"], "w").write(str(signum))
            sys.exit(7)
        signal.signal(signal.SIGTERM, mine)
    guard = pc.LimitGuard()
    guard.set("gpu:0", 150)
    guard.set("package:0", 90)
    print("ready", flush=True)
    if mode == "exit":
        sys.exit(0)  # never closed: atexit restores
    while True:
        time.sleep(0.05)
    """
)


def _child(machine, mode: str, **extra: str) -> subprocess.Popen:
    """A child that set gpu:0 to 150 W and package:0 to 90 W; in mode "exit" it exits at once
    (so its restore may race these reads: the limits are checked by the other modes)."""
    env = {**os.environ, **machine["env"], **extra}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.poll() is not None else line
    if mode == "exit":
        return proc
    assert machine["gpu"].limit_w(0) == 150
    assert machine["rapl"].limit_uw("package:0") == 90_000_000
    return proc


def _finish(proc: subprocess.Popen) -> int:
    """Waits for the child and closes its pipes; returns its exit status."""
    proc.communicate(timeout=30)
    return proc.returncode


def _assert_restored(machine) -> None:
    assert machine["gpu"].limit_w(0) == 300
    assert machine["rapl"].limit_uw("package:0") == 125_000_000
    assert not machine["state"].exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_given_a_signal_when_limits_are_changed_then_restored_and_process_dies_of_it(
    machine, sig
):
    proc = _child(machine, "wait")

    proc.send_signal(sig)
    rc = _finish(proc)

    _assert_restored(machine)
    assert rc == -sig  # the signal's usual end: KeyboardInterrupt uncaught, or SIGTERM's default


def test_given_a_prior_sigterm_handler_then_it_still_runs_after_the_restore(machine, tmp_path):
    marker = tmp_path / "marker"
    proc = _child(machine, "chained", MARKER=str(marker))

    proc.send_signal(signal.SIGTERM)
    rc = _finish(proc)

    _assert_restored(machine)
    assert marker.read_text() == str(int(signal.SIGTERM))
    assert rc == 7


def test_given_interpreter_exit_without_close_then_atexit_restores(machine):
    proc = _child(machine, "exit")

    assert _finish(proc) == 0
    _assert_restored(machine)
    assert [mw for _, mw in machine["gpu"].limit_history(0)] == [300, 150, 300]


def test_given_sigkill_then_greenml_powercap_restore_restores_from_the_state_file(machine):
    proc = _child(machine, "wait")
    env = {**os.environ, **machine["env"]}
    cli = [sys.executable, "-m", "greenml", "powercap", "restore"]

    refused = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    proc.kill()
    _finish(proc)
    assert machine["gpu"].limit_w(0) == 150  # nothing ran at the kill
    assert machine["state"].exists()
    restored = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)

    assert refused.returncode == 1 and "still running" in refused.stderr
    assert restored.returncode == 0, restored.stderr
    assert "restored gpu:0 to 300 W" in restored.stdout
    assert "restored package:0 to 125 W" in restored.stdout
    _assert_restored(machine)


# ---------------------------------------------------------------------------------- signals


@pytest.fixture
def own_signal_handlers():
    """Puts back this process's SIGINT/SIGTERM handlers after a test that replaces them."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_given_a_graceful_handler_when_sigterm_lands_inside_set_then_limits_are_restored(
    machine, monkeypatch, own_signal_handlers
):
    from greenml.powercap import _safety

    seen = []

    def graceful(signum, frame):  # only a flag: the training loop stops when it next looks
        seen.append(signum)

    signal.signal(signal.SIGTERM, graceful)
    real = _safety.set_gpu_limit_by_uuid

    def signal_then_write(settings, uuid, watts):
        if watts == 150:
            signal.raise_signal(signal.SIGTERM)  # its handler runs here, before the write
        real(settings, uuid, watts)

    monkeypatch.setattr(_safety, "set_gpu_limit_by_uuid", signal_then_write)
    guard = pc.LimitGuard()
    guard.set("gpu:0", 250)

    guard.set("gpu:0", 150)

    # Handled as if it came right after the set: restored, closed, the previous handler ran.
    assert seen == [signal.SIGTERM]
    assert guard.closed
    assert machine["gpu"].limit_w(0) == 300
    assert [w for _, w in machine["gpu"].limit_history(0)][-2:] == [150, 300]
    assert not machine["state"].exists()
    assert signal.getsignal(signal.SIGTERM) is graceful  # put back with the last guard closed


CHILD_TWO_GUARDS = textwrap.dedent(
    """
    import os, signal, sys
    import greenml.powercap as pc
    d = sys.argv[1]
    a = pc.LimitGuard(state_path=os.path.join(d, "a.json"))
    b = pc.LimitGuard(state_path=os.path.join(d, "b.json"))
    a.set("gpu:0", 200)
    b.set("package:0", 100)
    a.restore()  # out of order
    b.restore()
    print("put back", signal.getsignal(signal.SIGINT) is signal.default_int_handler,
          signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
    a = pc.LimitGuard(state_path=os.path.join(d, "a2.json"))
    b = pc.LimitGuard(state_path=os.path.join(d, "b2.json"))
    a.set("gpu:0", 200)
    b.set("package:0", 100)
    a.restore()
    try:
        signal.raise_signal(signal.SIGINT)
        print("no KeyboardInterrupt", flush=True)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", b.closed, flush=True)
    """
)


def test_given_two_guards_closed_out_of_order_then_handlers_are_put_back_and_ctrl_c_raises(
    machine, tmp_path
):
    proc = subprocess.run([sys.executable, "-c", CHILD_TWO_GUARDS, str(tmp_path)],
                          env={**os.environ, **machine["env"]}, capture_output=True, text=True,
                          timeout=60)

    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout.splitlines() == ["put back True True", "KeyboardInterrupt True"]
    assert machine["gpu"].limit_w(0) == 300
    assert machine["rapl"].limit_uw("package:0") == 125_000_000
    assert not list(tmp_path.glob("*.json"))


# ---------------------------------------------------------------------------------- other hosts


def _state_file(machine, host: str, boot_id: str, pid: int) -> None:
    rapl = pc.limit_of("package:0")
    machine["state"].parent.mkdir(parents=True, exist_ok=True)
    machine["state"].write_text(json.dumps({
        "version": 1, "pid": pid, "host": host, "boot_id": boot_id, "created_unix": 1.7e9,
        "limits": [{"domain": "package:0", "source": "rapl", "path": os.path.abspath(rapl.path),
                    "original_w": 150.0}],
    }))


def test_given_a_state_file_from_another_host_when_restoring_then_refused_unless_forced(
    machine,
):
    _state_file(machine, "other-node", "its-boot", 999_999)

    with pytest.raises(pc.PowercapError, match=r"written on host other-node.*--force") as info:
        pc.restore()

    assert "on other-node" in str(info.value)
    assert machine["rapl"].limit_uw("package:0") == 125_000_000  # not that node's value
    assert machine["state"].exists()
    assert [e["domain"] for e in pc.restore(force=True)] == ["package:0"]
    assert machine["rapl"].limit_uw("package:0") == 150_000_000
    assert not machine["state"].exists()


def test_given_a_state_file_from_before_a_reboot_when_restoring_then_removed_saying_why(
    machine, monkeypatch
):
    import socket

    from greenml.powercap import _safety

    monkeypatch.setattr(_safety, "_boot_id", lambda: "this-boot", raising=False)
    # Its writer's pid now belongs to a live process of this boot.
    _state_file(machine, socket.gethostname(), "an-earlier-boot", os.getppid())

    with pytest.warns(RuntimeWarning, match="before this host's last reboot"):
        assert pc.restore() == []

    assert not machine["state"].exists()
    assert machine["rapl"].limit_uw("package:0") == 125_000_000  # nothing written
    with pc.LimitGuard() as guard:  # a guard records where and in which boot it saved
        guard.set("package:0", 100)
        state = json.loads(machine["state"].read_text())
        assert (state["host"], state["boot_id"]) == (socket.gethostname(), "this-boot")
