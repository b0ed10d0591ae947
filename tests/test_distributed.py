"""Job totals of torch.distributed runs: every GPU once (by UUID), every host's CPU package and
DRAM once (by host identity), against fake hardware with a known truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenml import _distributed
from greenml._errors import ConfigError, GreenmlError

from fakes.nvml import FakeNvml
from fakes.truth import RaplWriter, nvml_true_energy_j, rapl_tree

JOB = Path(__file__).resolve().parent / "jobs" / "distributed_rank.py"


# -- host identity and the GPU a rank reports ---------------------------------------------------


def test_given_host_id_variable_when_reading_identity_then_it_names_the_host(tmp_path):
    assert _distributed.host_id({"GREENML_HOST_ID": "node7"}) == "node7"
    boot = tmp_path / "boot_id"
    boot.write_text("d63bd9d1-de3a\n")
    assert _distributed.host_id({}, files=[str(tmp_path / "missing"), str(boot)]) == "d63bd9d1-de3a"


@pytest.mark.parametrize("bad", ["", "  ", "node 1", "a\tb", "x" * 256])
def test_given_unusable_host_id_when_reading_settings_then_error_names_variable(bad):
    from greenml._config import settings_from_env

    with pytest.raises(ConfigError, match="GREENML_HOST_ID"):
        settings_from_env({"GREENML_HOST_ID": bad})


@pytest.mark.parametrize("options", [
    {"distributed": "yes"}, {"distributed": 1}, {"distributed": True, "gpus": "some"},
    {"distributed": True, "distributed_timeout_s": 0},
])
def test_given_bad_distributed_options_when_making_a_meter_then_clear_error(options):
    import greenml

    with pytest.raises(GreenmlError, match="distributed|gpus"):
        greenml.meter(**options)


def test_given_local_rank_when_choosing_gpus_then_only_that_gpu_unless_all():
    gpus = ["gpu:0", "gpu:1", "gpu:2"]
    assert _distributed.local_gpus(gpus, "local", {"LOCAL_RANK": "1"}) == ["gpu:1"]
    assert _distributed.local_gpus(gpus, "all", {"LOCAL_RANK": "1"}) == gpus
    # A LOCAL_RANK that names no visible GPU (one GPU per rank via CUDA_VISIBLE_DEVICES is
    # covered by the single-GPU case): every GPU, counted once each by UUID.
    assert _distributed.local_gpus(gpus, "local", {"LOCAL_RANK": "5"}) == gpus
    assert _distributed.local_gpus(["gpu:0"], "local", {"LOCAL_RANK": "3"}) == ["gpu:0"]
    with pytest.raises(GreenmlError, match="gpus="):
        _distributed.local_gpus(gpus, "some")


# -- combining what the ranks report (pure) -----------------------------------------------------


def _rank(rank, host, domains, t0=1000.0, dur=2.0):
    return {
        "run_id": f"r{rank}",
        "rank": rank,
        "world_size": 4,
        "host": f"id-{host}",
        "host_name": host,
        "meter": {
            "t_start_unix": t0,
            "duration_s": dur,
            "energy_j": sum(v[0] for v in domains.values()),
            "settled": True,
            "domains": {
                d: {"energy_j": e, "uncertainty_j": 0.1, "in_total": True, "measured": True,
                    "uuid": uuid}
                for d, (e, uuid) in domains.items()
            },
            "partial": {},
        },
        "phases": {},
    }


def test_given_ranks_sharing_hosts_and_gpus_when_combining_then_each_counted_once_by_lowest_rank():
    ranks = [
        _rank(1, "a", {"package:0": (101.0, ""), "gpu:1": (20.0, "GPU-B")}, t0=1000.5),
        _rank(0, "a", {"package:0": (100.0, ""), "gpu:0": (10.0, "GPU-A")}),
        # rank 2 sees GPU-B too (gpus="all"): counted by rank 1 already
        _rank(2, "b", {"package:0": (50.0, ""), "gpu:0": (30.0, "GPU-C"),
                       "gpu:1": (21.0, "GPU-B")}),
        _rank(3, "b", {"package:0": (51.0, ""), "gpu:1": (40.0, "GPU-D")}, dur=3.0),
    ]
    jw = _distributed.combine(ranks)
    assert jw is not None
    assert jw.by_domain == {
        "a/package:0": 100.0,
        "a/gpu:GPU-A": 10.0,
        "a/gpu:GPU-B": 20.0,
        "b/package:0": 50.0,
        "b/gpu:GPU-C": 30.0,
        "b/gpu:GPU-D": 40.0,
    }
    assert jw.info["gpus"]["GPU-B"]["rank"] == 1 and jw.info["gpus"]["GPU-B"]["ranks"] == [1, 2]
    assert jw.info["by_host_j"] == {"a": 130.0, "b": 120.0}
    assert jw.info["by_rank"]["2"]["counted_j"] == 80.0
    assert jw.info["sum_of_rank_totals_j"] == pytest.approx(423.0)
    assert jw.duration_s == pytest.approx(3.0)  # rank 3 ends last: 1000 + 3
    assert jw.t_start_unix == 1000.0
    # Every rank combines the same list the same way, whatever order it arrived in.
    assert _distributed.combine(list(reversed(ranks))).by_domain == jw.by_domain


def test_given_a_phase_only_some_ranks_ran_when_combining_then_those_ranks_count():
    r0 = _rank(0, "a", {"package:0": (1.0, "")})
    r1 = _rank(1, "a", {"package:0": (1.0, "")})
    r1["phases"]["validate"] = dict(r1["meter"])
    jw = _distributed.combine([r0, r1], "validate")
    assert jw is not None and jw.info["ranks_reporting"] == 1
    assert _distributed.combine([r0, r1], "missing") is None


def test_given_no_process_group_when_meter_is_distributed_then_warns_and_keeps_own_result(
    tmp_path,
):
    root = rapl_tree(tmp_path)
    with RaplWriter(root, {"intel-rapl:0": (40.0, 0.0, 0.0)}):
        from fakes.truth import make_runtime

        rt = make_runtime(powercap_root=root, sources={"rapl"}, interval_ms=5)
        try:
            import greenml

            with pytest.warns(RuntimeWarning, match="init_process_group"):
                with greenml.meter("solo", distributed=True, runtime=rt) as m:
                    time.sleep(0.1)
            assert m.result().distributed is None
            assert m.energy_j == m.local_result().energy_j
            assert "init_process_group" in m.distributed_note
        finally:
            rt.stop()


# -- a real torchrun job on gloo ----------------------------------------------------------------

HOSTS = 2
PER_HOST = 2
PKG_W = [40.0, 60.0]  # package power per host
DRAM_W = [5.0, 7.0]
GPU_W = [[100.0, 150.0], [200.0, 250.0]]  # per host, per GPU
GPU_UPDATE_MS = 20.0


def _uuid(h, g):
    return f"GPU-{h}{g}000000-0000-4000-8000-000000000000"


def _run_job(tmp_path, gpus="local"):
    env = dict(os.environ)
    writers = []
    fakes = []
    for h in range(HOSTS):
        root = rapl_tree(tmp_path / f"host{h}")
        w = RaplWriter(root, {"intel-rapl:0": (PKG_W[h], 0.0, 0.0),
                              "intel-rapl:0:0": (DRAM_W[h], 0.0, 0.0)}).start()
        writers.append(w)
        fake = FakeNvml(tmp_path / f"host{h}")
        t0s = []
        for g in range(PER_HOST):
            fake.add_device(uuid=_uuid(h, g), name="NVIDIA Fake H100", energy_mj=0)
            t0s.append(fake.set_profile(g, GPU_W[h][g], update_ms=GPU_UPDATE_MS))
        fakes.append((fake, t0s))
        env[f"GM_ROOT_{h}"] = str(root)
        env[f"GM_NVML_{h}"] = str(fake.dir)
    out = tmp_path / "out"
    out.mkdir()
    env.update(
        GM_RANKS_PER_HOST=str(PER_HOST),
        GM_OUT=str(out),
        GM_LOG=str(tmp_path / "job.jsonl"),
        GM_GPUS=gpus,
        GREENML_NVML_LIBRARY=str(fakes[0][0].library_path),
        GREENML_SOURCES="rapl,nvml",
        GREENML_INTERVAL_MS="5",
        OMP_NUM_THREADS="1",
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             f"--nproc-per-node={HOSTS * PER_HOST}", str(JOB)],
            env=env, capture_output=True, text=True, timeout=240,
        )
    finally:
        for w in writers:
            w.stop()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(HOSTS * PER_HOST)]
    return ranks, writers, fakes


def _truth(ranks, writers, fakes, gpu_owner, phase=False):
    """Known energy of the job: each host's package and DRAM over its lowest rank's window,
    each GPU over the window of the rank that counts it."""
    total = 0.0
    for h in range(HOSTS):
        r = ranks[h * PER_HOST]
        spans = r["phase_ns"] if phase else [r["window_ns"]]
        for zone in ("intel-rapl:0", "intel-rapl:0:0"):
            total += sum(writers[h].true_energy_j(zone, a, b) for a, b in spans)
        for g in range(PER_HOST):
            o = ranks[gpu_owner(h, g)]
            fake, t0s = fakes[h]
            spans = o["phase_ns"] if phase else [o["window_ns"]]
            total += sum(
                nvml_true_energy_j((GPU_W[h][g], 0.0, 0.0), t0s[g], a, b) for a, b in spans
            )
    return total


@pytest.fixture(scope="module")
def torchrun_job(tmp_path_factory):
    pytest.importorskip("torch.distributed")
    tmp = tmp_path_factory.mktemp("job")
    return tmp, _run_job(tmp)


def test_given_torchrun_on_two_hosts_when_metering_then_job_total_is_exact_and_not_multiplied(
    torchrun_job,
):
    tmp, (ranks, writers, fakes) = torchrun_job
    job = ranks[0]["job"]
    # Every rank holds the same job total.
    for r in ranks[1:]:
        assert r["job"]["by_domain"] == job["by_domain"]
        assert r["job"]["energy_j"] == job["energy_j"]
    truth = _truth(ranks, writers, fakes, gpu_owner=lambda h, g: h * PER_HOST + g)
    assert abs(job["energy_j"] - truth) <= job["uncertainty_j"] + 1e-6 * truth, (
        job["energy_j"], truth, job["uncertainty_j"])
    assert abs(job["energy_j"] - truth) < 0.01 * truth
    # Each host's package once, each GPU once, by UUID.
    keys = set(job["by_domain"])
    assert {f"node{h}/package:0" for h in range(HOSTS)} <= keys
    assert {f"node{h}/gpu:{_uuid(h, g)}" for h in range(HOSTS) for g in range(PER_HOST)} <= keys
    info = job["distributed"]
    assert info["world_size"] == 4 and info["hosts"] == ["node0", "node1"]
    assert {u: v["rank"] for u, v in info["gpus"].items()} == {
        _uuid(h, g): h * PER_HOST + g for h in range(HOSTS) for g in range(PER_HOST)
    }
    # The naive sum of every rank's own whole-node measurement counts each host's CPU twice
    # and each GPU twice (every rank sees both GPUs of its host).
    naive = sum(r["local"]["energy_j"] for r in ranks)
    assert naive > 1.9 * job["energy_j"]
    cpu_naive = sum(
        r["local"]["by_domain"][d] for r in ranks for d in ("package:0", "dram:0")
    )
    cpu_job = sum(v for k, v in job["by_domain"].items() if "/package:" in k or "/dram:" in k)
    assert cpu_naive > 1.9 * cpu_job


def test_given_torchrun_job_when_reading_phases_then_phase_job_totals_are_exact(torchrun_job):
    tmp, (ranks, writers, fakes) = torchrun_job
    ph = ranks[2]["job_phases"]["train"]
    truth = _truth(ranks, writers, fakes, lambda h, g: h * PER_HOST + g, phase=True)
    assert abs(ph["energy_j"] - truth) <= ph["uncertainty_j"] + 1e-6 * truth


def test_given_torchrun_job_with_log_then_records_carry_rank_and_host_and_one_job_record(
    torchrun_job,
):
    tmp, (ranks, _, _) = torchrun_job
    recs = [json.loads(line) for line in (tmp / "job.jsonl").read_text().splitlines()]
    meters = [r for r in recs if r["type"] == "meter"]
    assert sorted(r["rank"] for r in meters) == [0, 1, 2, 3]
    assert all(r["world_size"] == 4 for r in meters)
    assert {r["rank"]: r["host"] for r in meters} == {0: "node0", 1: "node0", 2: "node1",
                                                     3: "node1"}
    jobs = [r for r in recs if r["type"] == "job"]
    assert len(jobs) == 1 and jobs[0]["rank"] == 0
    assert jobs[0]["energy_j"] == ranks[0]["job"]["energy_j"]
    assert {r["job_run_id"] for r in meters} == {jobs[0]["run_id"]}
    # A report labels each rank's own rows, so they are not read as the job's.
    from greenml._report import summary_rows

    rows = summary_rows(recs)
    assert sorted(r["name"] for r in rows if r["type"] == "meter") == [
        f"job [rank {k} on node{k // 2}]" for k in range(4)]
    assert [r["name"] for r in rows if r["type"] == "job"] == ["job"]


def test_given_a_stopped_meter_when_combining_ranks_then_every_rank_gets_the_same_job_total(
    torchrun_job,
):
    _, (ranks, _, _) = torchrun_job
    totals = {r["after"]["energy_j"] for r in ranks}
    assert len(totals) == 1
    after = ranks[0]["after"]
    assert set(after["distributed"]["by_rank"]) == {"0", "1", "2", "3"}
    own = sum(r["after_local"]["energy_j"] for r in ranks)
    assert own > 1.9 * after["energy_j"]  # each rank's own sees its whole host


def test_given_a_block_that_raised_on_one_rank_then_the_ranks_stay_paired(torchrun_job):
    _, (ranks, _, _) = torchrun_job
    # The raising rank took part: every rank has the same job total of "flaky", marked ...
    assert len({r["flaky"]["energy_j"] for r in ranks}) == 1
    assert ranks[0]["flaky"]["distributed"]["raised_on_ranks"] == [1]
    # ... and the next meter was combined with the next meter everywhere.
    assert all(r["next_note"] is None for r in ranks)
    assert len({r["next"]["energy_j"] for r in ranks}) == 1
    assert ranks[0]["next"]["distributed"]["raised_on_ranks"] == []
    assert ranks[0]["next"]["duration_s"] < 0.5


def test_given_ranks_at_different_meters_when_combining_then_refused():
    ranks = [_rank(0, "a", {"package:0": (1.0, "")}), _rank(1, "a", {"package:0": (1.0, "")})]
    ranks[0].update(seq=3, meter_name="epoch")
    ranks[1].update(seq=4, meter_name="epoch")
    with pytest.raises(GreenmlError, match="did not reach the same meter"):
        _distributed.check_aligned(ranks)
    ranks[1]["seq"] = 3
    _distributed.check_aligned(ranks)  # aligned: no error


def test_given_two_machines_with_one_hostname_then_both_are_counted_apart():
    ranks = [_rank(0, "trainer", {"package:0": (100.0, "")}),
             _rank(1, "trainer", {"package:0": (50.0, "")})]
    ranks[1]["host"] = "id-other-machine"
    jw = _distributed.combine(ranks)
    assert sorted(jw.by_domain.values()) == [50.0, 100.0]
    assert len(jw.info["hosts"]) == 2 and sum(jw.info["by_host_j"].values()) == 150.0


def test_given_an_unknown_reading_on_the_lowest_rank_then_a_known_one_counts():
    ranks = [_rank(0, "a", {"package:0": (0.0, "")}), _rank(1, "a", {"package:0": (42.0, "")})]
    ranks[0]["meter"]["domains"]["package:0"]["energy_j"] = None
    jw = _distributed.combine(ranks)
    assert jw.by_domain == {"a/package:0": 42.0}


def test_given_gpus_all_when_every_rank_reports_every_gpu_then_each_gpu_still_counted_once(
    tmp_path,
):
    ranks, writers, fakes = _run_job(tmp_path, gpus="all")
    job = ranks[3]["job"]
    # The lowest rank of each host now counts both of its host's GPUs.
    truth = _truth(ranks, writers, fakes, gpu_owner=lambda h, g: h * PER_HOST)
    assert abs(job["energy_j"] - truth) <= job["uncertainty_j"] + 1e-6 * truth
    gpus = job["distributed"]["gpus"]
    assert len(gpus) == 4 and all(len(v["ranks"]) == 2 for v in gpus.values())
