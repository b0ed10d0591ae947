"""Job totals for ``torch.distributed`` runs: every device counted once.

Each rank measures its own window with its own sampler. A host-level domain (CPU package, DRAM,
the modelled ``cpu:estimated``) is the same hardware for every rank on one host, and a GPU is
the same hardware for every rank that sees it; summing the ranks' totals counts them several
times. Here every rank sends what it measured (per domain, with the GPU's UUID and its host's
identity) to every other rank through the job's own process group (``all_gather_object`` on a
gloo group: no networking of greenml's own), and each rank combines the same list the same way:

* a GPU is keyed by its UUID, so ranks that see the same GPU count it once;
* a host-level domain is keyed by the host identity and the domain, so each host counts once;
* of the ranks that report one key, the lowest rank counts it (its own window); the others'
  readings of it are kept in the per-rank breakdown only.

By default a rank reports the GPUs it uses (``gpus="local"``): the device torch has selected
(``torch.cuda.current_device()`` once CUDA is initialised), else its ``LOCAL_RANK`` device, else
the only GPU it sees; ``gpus="all"`` reports every GPU the rank sees (still counted once each).

The host identity is ``GREENML_HOST_ID`` when set (tests, containers), else the kernel's boot id
(shared by every container on one machine, different on every machine), else the machine id,
else the host name.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ._errors import ConfigError, GreenmlError
from ._records import json_number

ENV_HOST_ID = "GREENML_HOST_ID"
#: The kernel's boot id: one per boot of one machine, shared by all its containers.
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
#: Where the host identity comes from when GREENML_HOST_ID is unset, in order.
HOST_ID_FILES = (
    BOOT_ID_FILE,
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
)
GPU_CHOICES = ("local", "all")
#: How long a rank waits for the others to reach the end of a distributed meter (s).
DEFAULT_TIMEOUT_S = 300.0
_MAX_HOST_ID_LEN = 255


def parse_host_id(value: str, name: str = ENV_HOST_ID) -> str:
    v = value.strip()
    if not v or len(v) > _MAX_HOST_ID_LEN or not v.isprintable() or any(c.isspace() for c in v):
        raise ConfigError(
            f"{name}={value!r} is not a usable host identity; give a short name without spaces "
            f"(at most {_MAX_HOST_ID_LEN} characters) that is the same for every process on one "
            "machine and different across machines, e.g. the node name, or unset it"
        )
    return v


@dataclass(frozen=True)
class Identity:
    """Who this process is in a job: ``host`` names its machine (the dedupe key for host-level
    domains); ``rank``/``world_size``/``local_rank`` are None outside a distributed job."""

    host: str
    host_name: str
    rank: Optional[int]
    world_size: Optional[int]
    local_rank: Optional[int]

    def record_fields(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"host": self.host_name}
        if self.host != self.host_name:
            d["host_id"] = self.host
        if self.rank is not None:
            d["rank"] = self.rank
            d["world_size"] = self.world_size
        return d


def host_id(env: Optional[Mapping[str, str]] = None, files: Sequence[str] = HOST_ID_FILES) -> str:
    """This machine's identity (see the module's docstring)."""
    env = os.environ if env is None else env
    if env.get(ENV_HOST_ID) is not None:
        return parse_host_id(env[ENV_HOST_ID])
    for path in files:
        text = read_id(path)
        if text:
            return text
    return socket.gethostname()


def read_id(path: str) -> Optional[str]:
    """The identity a one-line file holds (boot id, machine id); None where unreadable or
    empty."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def boot_id() -> Optional[str]:
    """The kernel's boot id (changes at every boot); None where it cannot be read."""
    return read_id(BOOT_ID_FILE)


def _int_env(env: Mapping[str, str], name: str) -> Optional[int]:
    v = env.get(name)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        return None


def _dist() -> Any:
    """``torch.distributed`` when torch is already imported and a process group is up."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist
    except Exception:  # a broken or partial torch install: no process group
        return None
    return None


_identity_cache: Dict[Tuple[int, Optional[str]], Identity] = {}
_identity_lock = threading.Lock()


def identity(env: Optional[Mapping[str, str]] = None) -> Identity:
    """This process's identity: rank and world size from the process group when one is up,
    else from ``RANK``/``WORLD_SIZE`` (torchrun, SLURM launchers set them)."""
    env = os.environ if env is None else env
    dist = _dist()
    if dist is not None:
        rank: Optional[int] = int(dist.get_rank())
        world: Optional[int] = int(dist.get_world_size())
    else:
        rank, world = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE")
        if rank is None or world is None:
            rank = world = None
    key = (os.getpid(), env.get(ENV_HOST_ID))
    with _identity_lock:
        base = _identity_cache.get(key)
        if base is None:
            hid = host_id(env)
            name = hid if env.get(ENV_HOST_ID) is not None else socket.gethostname()
            base = _identity_cache[key] = Identity(hid, name, None, None, None)
    return Identity(base.host, base.host_name, rank, world, _int_env(env, "LOCAL_RANK"))


def check_gpus(gpus: str) -> None:
    if gpus not in GPU_CHOICES:
        raise GreenmlError(f"gpus={gpus!r}: use 'local' (the GPU this rank uses) or 'all'")


def local_gpus(
    gpu_domains: Sequence[str], gpus: str = "local", env: Optional[Mapping[str, str]] = None
) -> List[str]:
    """The GPU domains this rank reports (see the module's docstring)."""
    check_gpus(gpus)
    if gpus == "all" or len(gpu_domains) <= 1:
        return list(gpu_domains)
    env = os.environ if env is None else env
    torch = sys.modules.get("torch")
    chosen: Optional[int] = None
    try:
        if torch is not None and torch.cuda.is_initialized():
            chosen = int(torch.cuda.current_device())
    except Exception:  # no usable CUDA runtime: fall back to LOCAL_RANK
        chosen = None
    if chosen is None:
        chosen = _int_env(env, "LOCAL_RANK")
    if chosen is not None and f"gpu:{chosen}" in gpu_domains:
        return [f"gpu:{chosen}"]
    return list(gpu_domains)  # cannot tell: every GPU, still counted once each by UUID


# -- what a rank sends, and how every rank combines the same list -------------------------------


def window_payload(result: Any, uuids: Mapping[str, str], gpu_domains: Sequence[str]) -> Dict:
    """One window (a meter or a phase) as this rank reports it: per domain its energy,
    uncertainty, whether it counts in totals, is measured, and its GPU UUID (GPUs only); GPUs
    not in ``gpu_domains`` are left out."""
    domains = {}
    in_total = result.in_total
    for d, e in result.by_domain.items():
        is_gpu = d.startswith("gpu:")
        if is_gpu and d not in gpu_domains:
            continue
        domains[d] = {
            "energy_j": json_number(float(e)),
            "uncertainty_j": json_number(float(result.uncertainty_by_domain.get(d, 0.0))),
            "in_total": bool(in_total.get(d, False)),
            "measured": bool(result.measured.get(d, True)),
            "uuid": uuids.get(d, "") if is_gpu else "",
        }
    return {
        "t_start_unix": result.t_start_unix,
        "duration_s": result.duration_s,
        "energy_j": json_number(float(result.energy_j)),
        "settled": bool(result.settled),
        "domains": domains,
        "partial": {d: ev for d, ev in result.partial_domains.items() if d in domains},
    }


def _key(host: str, domain: str, uuid: str) -> Tuple[str, str]:
    """The hardware a domain reading is of: a GPU by UUID, anything else by host and domain."""
    return ("gpu", uuid) if uuid else ("host", f"{host}\0{domain}")


def job_key(host_name: str, domain: str, uuid: str) -> str:
    """The job-level domain key: ``<host>/<domain>``, GPUs as ``<host>/gpu:<UUID>``."""
    return f"{host_name}/gpu:{uuid}" if uuid else f"{host_name}/{domain}"


def host_labels(ranks: Sequence[Dict[str, Any]]) -> Dict[str, str]:
    """Host identity -> the name shown in job keys: the host name, unless two machines share
    it (containers started with one fixed --hostname), then ``name#<identity prefix>``."""
    names: Dict[str, set] = {}
    for r in ranks:
        names.setdefault(r["host_name"], set()).add(r["host"])
    return {
        r["host"]: f"{r['host_name']}#{r['host'][:8]}"
        if len(names[r["host_name"]]) > 1
        else r["host_name"]
        for r in ranks
    }


@dataclass
class JobWindow:
    """One window combined over the job: job-level domain keys (see :func:`job_key`)."""

    by_domain: Dict[str, float]
    uncertainty_by_domain: Dict[str, float]
    in_total: Dict[str, bool]
    measured: Dict[str, bool]
    duration_s: float
    t_start_unix: Optional[float]
    settled: bool
    partial_domains: Dict[str, List[Dict[str, Any]]]
    info: Dict[str, Any]


def combine(ranks: Sequence[Dict[str, Any]], window: Optional[str] = None) -> Optional[JobWindow]:
    """Combines what every rank reported (``ranks``: one dict per rank with ``rank``, ``host``,
    ``host_name`` and a window payload under ``"meter"``, and one per phase under
    ``"phases"``; ``window``: None for the meter, else a phase name). Pure: every rank gets the same answer from the same list. None when no
    rank has that window."""
    entries = []
    for r in ranks:
        w = r.get("meter") if window is None else (r.get("phases") or {}).get(window)
        if w is not None:
            entries.append((int(r["rank"]), r, w))
    if not entries:
        return None
    entries.sort(key=lambda e: e[0])
    labels = host_labels(ranks)
    # Each piece of hardware is counted by the lowest rank with a known (finite) reading of it,
    # else by the lowest rank that reported it (kept as -1 - rank until a known one comes).
    owner: Dict[Tuple[str, str], int] = {}
    for rank, r, w in entries:
        for d, v in w["domains"].items():
            k = _key(r["host"], d, v["uuid"])
            if k not in owner or (owner[k] < 0 and v["energy_j"] is not None):
                owner[k] = rank if v["energy_j"] is not None else -1 - rank
    by_domain: Dict[str, float] = {}
    unc: Dict[str, float] = {}
    in_total: Dict[str, bool] = {}
    measured: Dict[str, bool] = {}
    by_rank: Dict[str, Dict[str, Any]] = {}
    by_host: Dict[str, float] = {}
    gpus: Dict[str, Dict[str, Any]] = {}
    seen: Dict[str, List[int]] = {}  # GPU UUID -> every rank that reported it
    partial: Dict[str, List[Dict[str, Any]]] = {}
    naive = 0.0
    for rank, r, w in entries:
        counted = 0.0
        reported = 0.0
        host = labels[r["host"]]
        for d, v in w["domains"].items():
            e = v["energy_j"]
            k = _key(r["host"], d, v["uuid"])
            if v["in_total"] and e is not None:
                reported += e
            if v["uuid"]:
                seen.setdefault(v["uuid"], []).append(rank)
            if owner[k] not in (rank, -1 - rank):
                continue
            jk = job_key(host, d, v["uuid"])
            by_domain[jk] = math.nan if e is None else e
            unc[jk] = math.nan if v["uncertainty_j"] is None else v["uncertainty_j"]
            in_total[jk] = v["in_total"]
            measured[jk] = v["measured"]
            if d in w.get("partial", {}):
                partial[jk] = w["partial"][d]
            if v["uuid"]:
                gpus[v["uuid"]] = {"host": host, "rank": rank, "domain": d, "energy_j": e}
            if v["in_total"] and e is not None:
                counted += e
                by_host[host] = by_host.get(host, 0.0) + e
        naive += reported
        by_rank[str(rank)] = {
            "host": host,
            "energy_j": w["energy_j"],
            "counted_j": counted,
            "duration_s": w["duration_s"],
        }
    for uuid, g in gpus.items():
        g["ranks"] = seen[uuid]
    starts = [w["t_start_unix"] for _, _, w in entries if w["t_start_unix"] is not None]
    ends = [
        w["t_start_unix"] + w["duration_s"] for _, _, w in entries if w["t_start_unix"] is not None
    ]
    if starts:
        duration = max(ends) - min(starts)
    else:
        duration = max(w["duration_s"] for _, _, w in entries)
    world = max(int(r.get("world_size") or 0) for r in ranks) or len(ranks)
    info = {
        "world_size": world,
        "ranks_reporting": len(entries),
        "hosts": sorted({labels[r["host"]] for _, r, _ in entries}),
        "by_host_j": by_host,
        "by_rank": by_rank,
        "gpus": gpus,
        # Ranks whose measured block raised (their measurement up to the raise is counted).
        "raised_on_ranks": [rank for rank, r, _ in entries if r.get("raised")],
        # What summing every rank's own total would give: the double count avoided here.
        "sum_of_rank_totals_j": naive,
    }
    return JobWindow(
        by_domain,
        unc,
        in_total,
        measured,
        duration,
        min(starts) if starts else None,
        all(w["settled"] for _, _, w in entries),
        partial,
        info,
    )


# -- the exchange -------------------------------------------------------------------------------

_seq_lock = threading.Lock()
_seq = [0]


def next_seq() -> int:
    """The number of this process's next distributed combination (one per distributed meter
    end, even one skipped because its block raised): ranks that pair up compare it, so a rank
    that skipped one is never combined with another rank's different meter."""
    with _seq_lock:
        _seq[0] += 1
        return _seq[0]


def check_aligned(ranks: Sequence[Dict[str, Any]]) -> None:
    """Raises GreenmlError unless every rank reported the same meter (name and sequence)."""
    marks = {(r.get("seq"), r.get("meter_name")) for r in ranks}
    if len(marks) > 1:
        seen = ", ".join(
            f"rank {r.get('rank')}: {r.get('meter_name')!r} #{r.get('seq')}" for r in ranks
        )
        raise GreenmlError(
            "the ranks did not reach the same meter (" + seen + "): a rank's measured block "
            "raised, or the ranks ran different meters; not combined"
        )


_groups: Dict[Tuple[int, int], Any] = {}
_groups_lock = threading.Lock()


def _gloo_group(dist: Any, timeout_s: float) -> Any:
    """A gloo group over the whole job for greenml's exchange: CPU objects whatever the job's
    backend (NCCL), and greenml's own timeout so a rank that never arrives costs a warning,
    not a hang. Created once per process (a collective call: every rank creates it at the same
    point, the first distributed meter's end)."""
    key = (os.getpid(), int(timeout_s * 1000))
    with _groups_lock:
        g = _groups.get(key)
        if g is None:
            g = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
            _groups[key] = g
    return g


def exchange(
    payload: Dict[str, Any], group: Any = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> List[Dict[str, Any]]:
    """Every rank's payload, in rank order, on every rank (a collective: all ranks call it)."""
    dist = _dist()
    if dist is None:
        raise GreenmlError(
            "distributed=True needs an initialised torch.distributed process group at the end "
            "of the meter: call torch.distributed.init_process_group(...) first (torchrun sets "
            "the environment for it), or measure this process alone with distributed=False"
        )
    if group is None:
        group = _gloo_group(dist, timeout_s)
    out: List[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, payload, group=group)
    ranks = [o for o in out if isinstance(o, dict)]
    return sorted(ranks, key=lambda r: int(r["rank"]))
