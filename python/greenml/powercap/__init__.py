"""Power limits: read them, sweep them, tune them during training, always restore them.

::

    import greenml.powercap as pc

    pc.limits()                        # every GPU's and RAPL zone's limits (no root needed)
    result = pc.sweep(train_step, limits="auto", device="gpu:0")
    result.table, result.pareto, result.chosen, result.plot("sweep.png")

    with pc.Tuner(device="gpu:0", max_slowdown=0.05) as tuner:
        for batch in loader:
            train_step(batch)
            tuner.step()

    pc.restore()                       # after a crash: what `greenml powercap restore` does

Every change saves the original limit to a state file first (``GREENML_POWERCAP_STATE``, default
``$XDG_STATE_HOME/greenml/powercap-state.json``) and is undone at the end, on exceptions, on
SIGINT/SIGTERM and at interpreter exit. Nothing else in greenml writes a limit.
"""

from __future__ import annotations

from ._limits import (
    LimitOutOfRange,
    NoPrivilege,
    PowercapError,
    PowerLimit,
    RaplConstraint,
    limit_of,
    limits,
)
from ._safety import STATE_ENV, LimitGuard, default_state_path, restore_from_state
from ._sweep import Choice, LimitPoint, SweepResult, choose, pareto, sweep
from ._tuner import Saving, Tuner

restore = restore_from_state

__all__ = [
    "STATE_ENV",
    "Choice",
    "LimitGuard",
    "LimitOutOfRange",
    "LimitPoint",
    "NoPrivilege",
    "PowerLimit",
    "PowercapError",
    "RaplConstraint",
    "Saving",
    "SweepResult",
    "Tuner",
    "choose",
    "default_state_path",
    "limit_of",
    "limits",
    "pareto",
    "restore",
    "sweep",
]
