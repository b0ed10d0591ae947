"""One rank of a simulated multi-host torch.distributed job (run by torchrun in
tests/test_distributed.py).

Ranks are grouped into hosts of GM_RANKS_PER_HOST; each host has its own fake powercap tree
(GM_ROOT_<h>) and fake NVML directory (GM_NVML_<h>) and its own GREENML_HOST_ID, and each rank
uses the GPU of its local rank. The rank writes its meter window (CLOCK_MONOTONIC, which every
process on the machine shares) and its local and job results to GM_OUT/rank<r>.json.
"""

import json
import os
import sys
import time

rank = int(os.environ["RANK"])
per_host = int(os.environ["GM_RANKS_PER_HOST"])
host = rank // per_host
os.environ["GREENML_HOST_ID"] = f"node{host}"
os.environ["GREENML_POWERCAP_ROOT"] = os.environ[f"GM_ROOT_{host}"]
os.environ["FAKE_NVML_DIR"] = os.environ[f"GM_NVML_{host}"]
os.environ["LOCAL_RANK"] = str(rank % per_host)

import torch.distributed as dist  # noqa: E402

import greenml  # noqa: E402

dist.init_process_group("gloo")
gpus = os.environ.get("GM_GPUS", "local")
with greenml.meter("job", distributed=True, gpus=gpus, log=os.environ["GM_LOG"]) as m:
    with m.phase("train"):
        time.sleep(0.5 + 0.1 * rank)  # ranks end at different times
    time.sleep(0.2)
# A block that raises on one rank only: that rank still takes part, so the ranks stay paired
# and the next meter is combined with the same meter everywhere.
try:
    with greenml.meter("flaky", distributed=True, gpus=gpus) as m_flaky:
        time.sleep(0.1)
        if rank == 1:
            raise RuntimeError("a caught failure on rank 1")
except RuntimeError:
    pass
with greenml.meter("next", distributed=True, gpus=gpus) as m_next:
    time.sleep(0.1)

# The helper for a meter that was not distributed: a collective call after the block.
with greenml.meter("after") as m2:
    time.sleep(0.2)
after = m2.combine_ranks(gpus="all")
w = m._window
out = {
    "flaky": m_flaky.result().to_dict(),
    "next": m_next.result().to_dict(),
    "next_note": m_next.distributed_note,
    "after": after.to_dict(),
    "after_local": m2.local_result().to_dict(),
    "rank": rank,
    "window_ns": [w.t0_ns, w.t1_ns],
    "phase_ns": [list(s) for s in m._phase_totals["train"].spans],
    "local": m.local_result().to_dict(),
    "job": m.result().to_dict(),
    "job_phases": {n: p.to_dict() for n, p in m.phases.items()},
    "note": m.distributed_note,
}
with open(os.path.join(os.environ["GM_OUT"], f"rank{rank}.json"), "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
sys.exit(0)
