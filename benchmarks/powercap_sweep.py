#!/usr/bin/env python3
"""Power-limit sweep and tuner, measured: on the fake GPU here, on a real GPU from gpu/check.py.

How to run (fake hardware, no GPU needed, about 30 s; what benchmarks/results/powercap/ holds)::

    python benchmarks/powercap_sweep.py benchmarks/results/powercap

The fake GPU (tests/fakes/fake_nvml.c) draws min(L, 300 W) under a limit L in [125, 300] W and
the step is ``tests/fakes/nvml.py:CappedWorkload``: a cube-law GPU (100 W static) whose step of
fixed work takes t(L) = 20 ms / f(L), so energy per step is convex in L with its minimum at
150 W. The script sweeps the auto grid (8 limits), then runs the tuner with budgets of 5% and
15%, and writes ``sweep.csv``, ``sweep.json``, ``sweep.png``, ``tuner.json`` and ``README.md``
(the figures, next to the model's truth) into OUTDIR.

On a real GPU, ``gpu_sweep()`` is called by ``benchmarks/gpu/check.py`` (section
``powercap_sweep``) with a matmul-heavy step; it needs root to change the limit and restores it.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

REPO = Path(__file__).resolve().parent.parent

#: The paper's FROST result, the reference a real-GPU sweep is compared with (not measured here).
FROST = "FROST (paper): 26.4% / 17.7% energy saved for +6.9% / +5.5% time"


def gpu_sweep(
    step_fn: Callable[[], Any],
    domain: str,
    out: Path,
    budget_s: float = 110.0,
    warmup_steps: int = 5,
    settle_s: float = 2.0,
    step_s: Optional[float] = None,
) -> Dict[str, Any]:
    """Sweeps ``domain``'s auto grid in about ``budget_s`` seconds with ``step_fn`` (its steps
    take ``step_s`` at the highest limit; measured when None) and saves the result under
    ``out``. Returns a summary dict."""
    import greenml.powercap as pc

    lim = pc.limit_of(domain)
    if not lim.writable:
        raise PermissionError(lim.reason)
    grid = pc._sweep.auto_grid(lim)
    if step_s is None:
        step_fn()
        t0 = time.perf_counter()
        for _ in range(3):
            step_fn()
        step_s = (time.perf_counter() - t0) / 3
    # Lower limits are slower: budget each limit for 1.5x the top limit's step time.
    per_limit_s = budget_s / len(grid) - settle_s - 0.3
    steps = max(5, int(per_limit_s / (1.5 * step_s)) - warmup_steps)
    t0 = time.monotonic()
    result = pc.sweep(
        step_fn,
        limits=grid,
        steps_per_limit=steps,
        warmup_steps=warmup_steps,
        device=domain,
        settle_s=settle_s,
    )
    out.mkdir(parents=True, exist_ok=True)
    result.save(out)
    choices = {f"{b:g}": result.choose(b) for b in (0.05, 0.10)}
    return {
        "domain": domain,
        "limits_w": grid,
        "steps_per_limit": steps,
        "step_s_at_top": step_s,
        "seconds": time.monotonic() - t0,
        "best_energy_w": result.best_energy_w,
        "choices": {k: c.__dict__ for k, c in choices.items()},
        "summary": [f"max slowdown {k}: {c}" for k, c in choices.items()] + [FROST],
        "table": result.table.to_dict(orient="records"),
        "limit": lim.to_dict(),
    }


def fake_run(out: Path) -> int:
    sys.path.insert(0, str(REPO / "tests"))
    from fakes.nvml import CappedWorkload, FakeNvml

    tmp = Path(tempfile.mkdtemp(prefix="greenml-powercap-bench-"))
    fake = FakeNvml(tmp)
    fake.add_device(name="Fake GPU (test fake, cube-law power response)")
    work = CappedWorkload(fake)
    work.start(min_w=125.0, update_ms=1.0)
    os.environ.update(fake.env)
    os.environ.update(
        GREENML_NVML_LIBRARY=str(fake.library_path),
        GREENML_SOURCES="nvml",
        GREENML_POWERCAP_STATE=str(tmp / "state.json"),
    )
    import greenml.powercap as pc

    t0 = time.monotonic()
    result = pc.sweep(
        work.step, limits="auto", steps_per_limit=20, warmup_steps=3, device="gpu:0", settle_s=0.05
    )
    sweep_s = time.monotonic() - t0
    out.mkdir(parents=True, exist_ok=True)
    result.save(out)
    tuners = {}
    for budget in (0.05, 0.15):
        with pc.Tuner(
            device="gpu:0", max_slowdown=budget, steps_per_limit=20, warmup_steps=3
        ) as tuner:
            while tuner.state != "applied":
                work.step()
                tuner.step()
        r = tuner.report()
        r["true_slowdown"] = work.time_s(tuner.chosen_w) / work.time_s(300.0) - 1.0
        r["true_saving"] = 1.0 - work.energy_j(tuner.chosen_w) / work.energy_j(300.0)
        tuners[f"{budget:g}"] = r
    (out / "tuner.json").write_text(json.dumps(tuners, indent=1) + "\n")

    t = result.table
    lines = [
        "# Power-limit sweep on the fake GPU",
        "",
        "FAKE HARDWARE: tests/fakes/fake_nvml.c with `CappedWorkload` (tests/fakes/nvml.py); these",
        "figures check greenml's sweep and tuner against a known model, not a GPU.",
        "",
        f"Command: `python benchmarks/powercap_sweep.py {shlex.quote(str(out))}` "
        f"({time.strftime('%Y-%m-%d')}, sweep {sweep_s:.1f} s, 20 measured + 3 warm-up steps "
        "per limit).",
        "",
        "| limit W | energy/step J (± se) | model J | time/step ms (± se) | model ms | Pareto |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in t.iterrows():
        lines.append(
            f"| {r.limit_w:g} | {r.energy_j:.3f} ± {r.energy_se_j:.3f} | "
            f"{work.energy_j(r.limit_w):.3f} | {1e3 * r.time_s:.2f} ± {1e3 * r.time_se_s:.2f} | "
            f"{1e3 * work.time_s(r.limit_w):.2f} | {'yes' if r.pareto else ''} |"
        )
    lines += [
        "",
        f"Least energy per step: {result.best_energy_w:g} W (model optimum "
        f"{work.optimum_w:g} W, grid step 25 W).",
        f"Chosen for max slowdown 5%: {result.choose(0.05)}.",
        f"Chosen for max slowdown 15%: {result.choose(0.15)}.",
        "",
        "Tuner (same workload, `tuner.step()` after each step):",
        "",
    ]
    for k, r in tuners.items():
        lines.append(
            f"- max_slowdown {k}: chose {r['chosen_w']:g} W after {r['steps']} steps; expected "
            f"saving {100 * r['expected_saving']:.1f}% ± {100 * r['expected_saving_se']:.1f}% "
            f"(model {100 * r['true_saving']:.1f}%), slowdown "
            f"{100 * r['expected_slowdown']:+.1f}% (model {100 * r['true_slowdown']:+.1f}%)"
        )
    lines += ["", f"Reference for the real-GPU sweep (benchmarks/gpu/check.py): {FROST}.", ""]
    (out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def main(argv: list) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return fake_run(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
