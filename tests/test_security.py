"""Security: greenml measures without root or any capability (and says how to grant counter
read access), never writes to the powercap tree or changes GPU settings, opens no network
connection, and loads NVML only from the configured name or path.

Each check runs the real thing in a fresh interpreter over fake hardware and watches what it
does (inotify, Python audit hooks, strace when installed, /proc/<pid>/maps).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fakes.nvml import FakeNvml
from fakes.powercap import PowercapTree

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent

# Sensors, a meter with a log and a trace, `greenml run` with --log/--json/--trace, and
# `greenml report`: everything a user measures with. Prints one JSON line.
WORKLOAD = """
import json, os, sys, time
out = sys.argv[1]
events = []
if os.environ.get("AUDIT") == "1":
    def hook(event, args):
        if event.startswith(("socket.", "urllib.", "http.", "ftplib.", "smtplib.", "ssl.")):
            if event != "socket.gethostname":  # the host name recorded in logs: no I/O
                events.append(event)
    sys.addaudithook(hook)
import greenml
from greenml import cli
found = greenml.sensors()
with greenml.meter("m", log=os.path.join(out, "m.jsonl"), trace=os.path.join(out, "m.csv")) as m:
    time.sleep(0.1)
rc_run = cli.main(["run", "--log", os.path.join(out, "r.jsonl"), "--json",
                   os.path.join(out, "r.json"), "--trace", os.path.join(out, "r.csv"), "--",
                   sys.executable, "-c", "import time; time.sleep(0.1)"])
rc_report = cli.main(["report", os.path.join(out, "m.jsonl")])
maps = open("/proc/self/maps").read()
nvml = sorted({line.split()[-1] for line in maps.splitlines() if "nvidia-ml" in line})
print(json.dumps({
    "uid": os.getuid(),
    "cap_eff": open("/proc/self/status").read().split("CapEff:")[1].split()[0],
    "sensors": {s.domain: [s.available, s.reason] for s in found},
    "energy_j": m.energy_j, "by_domain": m.by_domain, "rc_run": rc_run,
    "rc_report": rc_report, "network_events": events, "nvml_mapped": nvml,
}))
"""


@pytest.fixture
def shared_dir():
    """A directory every user can read (pytest's tmp_path is private to its owner)."""
    d = Path(tempfile.mkdtemp(prefix="greenml-security-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _make_tree(base: Path, unreadable_dram: bool = False) -> PowercapTree:
    """A static fake powercap tree owned by someone else, read-only for everybody."""
    tree = PowercapTree(base)
    tree.add_package(0, energy_uj=5_000_000, dram=True)
    dram = tree.energy_file("dram:0")
    for p in [tree.root, *tree.root.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    if unreadable_dram:
        dram.chmod(0o400)
    if os.getuid() == 0:  # not root's: root without capabilities is then just another user
        for p in [tree.root, *tree.root.rglob("*")]:
            os.chown(p, 65534, 65534)
    return tree


def _env(tree: PowercapTree, nvml_library: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GREENML_") and k not in ("CUDA_VISIBLE_DEVICES", "FAKE_NVML_DIR")}
    env.update(GREENML_POWERCAP_ROOT=str(tree.root), GREENML_NVML_LIBRARY=nvml_library,
               GREENML_SOURCES="nvml,rapl", GREENML_INTERVAL_MS="2")
    env.update(extra)
    return env


def _unprivileged(argv: list) -> list:
    """argv run without root's powers: as root, with every capability dropped for good."""
    if os.getuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing to drop capabilities")
    return [setpriv, "--bounding-set", "-all", "--inh-caps", "-all", "--no-new-privs", "--", *argv]


def _workload(out: Path, env: dict, prefix: tuple = ()) -> dict:
    out.mkdir(exist_ok=True)
    out.chmod(0o777)
    proc = subprocess.run([*prefix, *_unprivileged([sys.executable, "-c", WORKLOAD, str(out)])],
                          env=env, capture_output=True, text=True, timeout=120, cwd=out)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fake_gpu(base: Path) -> FakeNvml:
    try:
        gpu = FakeNvml(base / "nvml")
    except FileNotFoundError as exc:
        pytest.skip(f"cannot build the fake libnvidia-ml: {exc}")
    gpu.add_device()
    gpu.set_profile(0, 150.0, update_ms=10.0)
    for p in [base / "nvml", *(base / "nvml").rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o666)
    return gpu


# ----------------------------------------------------------------- no root needed


def test_given_no_capabilities_when_measuring_then_counters_readable_by_others_are_measured(
    shared_dir,
):
    tree = _make_tree(shared_dir)
    gpu = _fake_gpu(shared_dir)

    r = _workload(shared_dir / "out", _env(tree, str(gpu.library_path), **gpu.env))

    assert r["cap_eff"] == "0000000000000000"  # not a single capability
    assert {d for d, (ok, _) in r["sensors"].items() if ok} == {"gpu:0", "package:0", "dram:0"}
    assert set(r["by_domain"]) == {"gpu:0", "package:0", "dram:0"} and r["energy_j"] > 0
    assert r["rc_run"] == 0 and r["rc_report"] == 0


def test_given_a_counter_only_root_may_read_when_listing_sensors_then_reason_says_how_to_grant(
    shared_dir,
):
    tree = _make_tree(shared_dir, unreadable_dram=True)

    r = _workload(shared_dir / "out", _env(tree, str(shared_dir / "none" / "libnvidia-ml.so.1")))

    available, reason = r["sensors"]["dram:0"]
    assert not available
    assert "chmod -R a+r /sys/class/powercap" in reason and "udev rule" in reason
    assert r["sensors"]["package:0"][0]  # the other counters are still measured
    assert r["rc_run"] == 0


# ----------------------------------------------------------------- no writes to sysfs or GPU

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_WRITES = (_IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO
           | _IN_CREATE | _IN_DELETE)


class _Inotify:
    """Every change (or open for writing) under a directory tree, through inotify."""

    def __init__(self, root: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            pytest.skip(f"inotify is not available: {os.strerror(ctypes.get_errno())}")
        self.paths = {}
        for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            wd = self._libc.inotify_add_watch(self.fd, str(d).encode(), _WRITES)
            assert wd >= 0, os.strerror(ctypes.get_errno())
            self.paths[wd] = d

    def changes(self) -> list:
        out = []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return out
        i = 0
        while i < len(data):
            wd, mask, _, n = struct.unpack_from("iIII", data, i)
            name = data[i + 16:i + 16 + n].rstrip(b"\0").decode()
            out.append((str(self.paths.get(wd, "?")), name, hex(mask)))
            i += 16 + n
        return out

    def close(self) -> None:
        os.close(self.fd)


def test_given_a_powercap_tree_when_measuring_everything_then_nothing_in_it_is_written(
    shared_dir,
):
    tree = _make_tree(shared_dir)
    for p in [tree.root, *tree.root.rglob("*")]:  # writable, so a write would succeed
        p.chmod(0o777 if p.is_dir() else 0o666)
    watch = _Inotify(tree.root)
    try:
        r = _workload(shared_dir / "out",
                      _env(tree, str(shared_dir / "none" / "libnvidia-ml.so.1")))
        changes = watch.changes()
    finally:
        watch.close()

    assert "package:0" in r["by_domain"]  # measured (0 J: the static counters do not move)
    assert changes == [], f"greenml wrote to the powercap tree: {changes}"


def test_given_the_built_extension_when_listing_its_nvml_calls_then_only_powercap_changes_one():
    # The extension resolves NVML functions by name (dlsym): every name it carries is a query,
    # except the power limit, which only greenml.powercap sets (and always restores).
    from greenml import _core

    binary = Path(_core.__file__).read_bytes()
    names = sorted(set(re.findall(rb"nvml[A-Z][A-Za-z0-9_]+", binary)))
    assert names, "no NVML function names found in the extension"
    changing = [n.decode() for n in names
                if re.search(rb"Set|Reset|Clear|Register|Flush|Modify", n)]
    assert changing == ["nvmlDeviceSetPowerManagementLimit"], (
        f"the extension can call NVML functions that change state: {changing}")
    source = (ROOT / "csrc" / "src" / "nvml_source.cpp").read_text()
    assert set(re.findall(r"nvml\w*(?:Set|Reset|Clear)\w*", source)) == {
        "nvmlDeviceSetPowerManagementLimit"}
    # In the package, only the power-capping guard reaches the functions that write a limit.
    writers = re.compile(r"\.set_power_limit\(|set_gpu_limit_by_uuid\(|set_rapl_limit\(")
    callers = sorted(
        str(p.relative_to(ROOT / "python" / "greenml"))
        for p in (ROOT / "python" / "greenml").rglob("*.py")
        if any(writers.search(line) and not line.lstrip().startswith("def ")
               for line in p.read_text().splitlines())
    )
    assert callers == ["powercap/_limits.py", "powercap/_safety.py"], callers


# ----------------------------------------------------------------- no network


def test_given_every_measurement_path_when_run_then_no_network_api_is_used(shared_dir):
    tree = _make_tree(shared_dir)
    gpu = _fake_gpu(shared_dir)

    r = _workload(shared_dir / "out", _env(tree, str(gpu.library_path), AUDIT="1", **gpu.env))

    assert r["energy_j"] > 0
    assert r["network_events"] == []  # Python level: no socket, no URL, no HTTP


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_given_every_measurement_path_when_traced_then_no_internet_socket_is_opened(shared_dir):
    tree = _make_tree(shared_dir)
    gpu = _fake_gpu(shared_dir)
    trace = shared_dir / "strace.txt"

    r = _workload(shared_dir / "out", _env(tree, str(gpu.library_path), **gpu.env),
                  prefix=(shutil.which("strace"), "-f", "-qq", "-e", "trace=socket,connect",
                          "-o", str(trace)))

    assert r["energy_j"] > 0
    calls = trace.read_text()
    assert not re.search(r"AF_INET6?|AF_PACKET|connect\(", calls), calls  # native side too


def test_given_the_sources_when_searched_then_no_network_code_is_there():
    native = "\n".join(p.read_text() for p in (ROOT / "csrc").rglob("*.[ch]pp"))
    assert not re.search(r"\b(socket|connect|getaddrinfo|gethostbyname|curl_\w+)\s*\(", native)
    python = "\n".join(p.read_text() for p in (ROOT / "python" / "greenml").rglob("*.py")
                       if p.name not in ("_export.py",))  # the Prometheus exporter, on request
    for api in ("urllib.request", "http.client", "requests", "socket.socket", "create_connection"):
        assert api not in python, f"{api} used outside the exporter"


# ----------------------------------------------------------------- where NVML comes from


def _decoy_on_library_path(shared_dir: Path, gpu: FakeNvml) -> dict:
    """A second libnvidia-ml.so.1 on LD_LIBRARY_PATH that a fallback to the default name would
    find."""
    decoy = shared_dir / "decoy"
    decoy.mkdir()
    shutil.copy(gpu.library_path, decoy / "libnvidia-ml.so.1")
    (decoy / "libnvidia-ml.so.1").chmod(0o755)
    decoy.chmod(0o755)
    return {"LD_LIBRARY_PATH": str(decoy)}


def test_given_a_configured_nvml_path_when_measuring_then_only_that_file_is_loaded(shared_dir):
    tree = _make_tree(shared_dir)
    gpu = _fake_gpu(shared_dir)
    env = _env(tree, str(gpu.library_path), **gpu.env, **_decoy_on_library_path(shared_dir, gpu))

    r = _workload(shared_dir / "out", env)

    assert r["nvml_mapped"] == [str(gpu.library_path)]
    assert r["sensors"]["gpu:0"][0]


def test_given_a_missing_nvml_path_when_measuring_then_no_other_nvml_is_loaded(shared_dir):
    tree = _make_tree(shared_dir)
    gpu = _fake_gpu(shared_dir)
    missing = shared_dir / "nowhere" / "libnvidia-ml.so.1"
    env = _env(tree, str(missing), **gpu.env, **_decoy_on_library_path(shared_dir, gpu))

    r = _workload(shared_dir / "out", env)

    assert r["nvml_mapped"] == []  # no fallback to the default name on the library path
    gpus = {d: v for d, v in r["sensors"].items() if d.startswith("gpu")}
    assert gpus and not any(ok for ok, _ in gpus.values())
    assert any("GREENML_NVML_LIBRARY" in reason for _, reason in gpus.values())


def test_given_nvml_not_among_the_sources_when_measuring_then_no_nvml_is_loaded(shared_dir):
    tree = _make_tree(shared_dir)
    gpu = _fake_gpu(shared_dir)
    env = _env(tree, str(gpu.library_path), **gpu.env, GREENML_SOURCES="rapl")

    r = _workload(shared_dir / "out", env)

    assert r["nvml_mapped"] == []
    assert set(r["by_domain"]) == {"package:0", "dram:0"}
