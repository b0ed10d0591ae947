#!/usr/bin/env python3
"""Sets up the fake NVML library of tests/fakes as a scripted 3-GPU machine, for proving
check.sh / check.py end to end without a GPU.

How to run (``run_fake.sh`` does all of it)::

    python benchmarks/gpu/fake_nvml_setup.py DIR > DIR/env.sh && . DIR/env.sh

Builds ``DIR/lib/libnvidia-ml.so.1`` from ``tests/fakes/fake_nvml.c`` and scripts
``DIR/fake_nvml`` (the fake reads it on every call), then prints the two exports the check
needs (``GREENML_NVML_LIBRARY``, ``FAKE_NVML_DIR``). Devices (profiles start now, on
CLOCK_MONOTONIC; ``P = base + amp sin(2 pi f t)``):

* 0: energy counter updated every 20 ms, 300 +/- 150 W at 1.7 Hz (the device the check loads);
  power limit 450 W, settable from 150 to 450 W (default 450 W), as a real GPU reports;
* 1: energy counter updated every 100 ms, 150 +/- 50 W at 1.3 Hz;
* 2: power only (energy NOT_SUPPORTED), 150 +/- 60 W at 0.3 Hz.

The fake's power reading is the mean over the last second, like recent NVIDIA drivers.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fakes.nvml import NOT_SUPPORTED, FakeNvml, build_fake_nvml  # noqa: E402

DEVICES = [
    # name, (base_w, amp_w, freq_hz), update_ms, energy counter?
    ("Fake NVIDIA H100 (test fake)", (300.0, 150.0, 1.7), 20.0, True),
    ("Fake NVIDIA A100 (test fake)", (150.0, 50.0, 1.3), 100.0, True),
    ("Fake NVIDIA T4 power-only (test fake)", (150.0, 60.0, 0.3), 0.0, False),
]

#: GPU 0's power limit (W): its default and maximum.
GPU0_LIMIT_W = 450.0


def main(argv: list) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[0]).resolve()
    lib = build_fake_nvml(root / "lib")
    fake = FakeNvml(root, library=lib)
    t0 = time.monotonic_ns()
    for name, prof, update_ms, energy in DEVICES:
        i = fake.add_device(name=name, energy_mj=0 if energy else None, power_mw=0)
        if i == 0:  # above the profile's peak: the limit in force never caps it
            fake.set_limits(
                i, GPU0_LIMIT_W, min_w=150.0, max_w=GPU0_LIMIT_W, default_w=GPU0_LIMIT_W
            )
        fake.set_profile(i, *prof, update_ms=update_ms, t0_ns=t0)
        if not energy:
            fake.set_error(i, "energy", NOT_SUPPORTED)
    print(f"export GREENML_NVML_LIBRARY={shlex.quote(str(lib))}")
    print(f"export FAKE_NVML_DIR={shlex.quote(fake.env['FAKE_NVML_DIR'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
