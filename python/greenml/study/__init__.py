"""``greenml.study``: the sweep of "Computing Within Limits" (Mavromatis et al., 2024) on your
own models and hardware, and its analysis.

``run(models=..., batch_sizes=..., steps=..., out_dir=...)`` measures every cell of
models x batch sizes x phases (``train``, ``inference``) x repetitions with a meter and writes
``results.csv`` and ``results.parquet``; ``analyze(results, out_dir=...)`` writes correlations,
plots and ``guidelines.md``. ``greenml study`` on the command line does both.

Results table (``results.csv`` / ``results.parquet``): one row per cell and repetition. Column
names are a contract for readers of the file (the forecast and the Estimator train on it):

============================  =====================================================================
column                        meaning
============================  =====================================================================
``model``                     zoo name (``resnet18``) or the name given for a user model
``width``                     width multiplier the model was built with (1.0 = the paper's size)
``params``                    trainable + frozen parameters (count)
``macs``                      multiply-accumulates of one forward pass, per sample
``macs_per_param``            ``macs / params``
``train_macs``                MACs of one training step (forward + backward), per sample
``size_bytes``                parameters + buffers, bytes
``batch_size``                samples per step
``phase``                     ``train`` or ``inference``
``steps``                     measured steps (warm-up steps excluded)
``samples``                   measured samples (``steps x batch_size``, last batch may be short)
``duration_s``                wall time of the measured steps, seconds (CUDA synchronised)
``energy_j``                  energy over the counted domains, joules (no overlapping zones)
``energy_j_<domain>``         energy of one domain, joules; ``:`` in the key becomes ``_``
                              (``energy_j_package_0``, ``energy_j_gpu_0``, ``energy_j_cpu_estimated``)
``uncertainty_j``             uncertainty of ``energy_j`` (joules, the meter's bound)
``energy_per_sample_j``       ``energy_j / samples``
``mean_power_w``              ``energy_j / duration_s``, watts
``co2e_g``                    grams CO2e for ``energy_j`` (grid intensity of the region, PUE)
``accuracy``                  top-1 accuracy in [0, 1] on held-out data after this cell's training
                              (same value on the ``train`` and ``inference`` rows of one cell; an
                              inference-only study measures an untrained model)
``repetition``                0-based repetition index
``device``                    ``cpu`` or ``cuda:<i>``
``hardware``                  fingerprint: CPU model x logical CPUs, GPU name(s)
``estimated_domains``         comma list of domains modelled rather than measured, ``none`` if none
``dataset``                   ``synthetic-cifar``, ``cifar10`` or ``user``
``threads``                   torch intra-op threads
``t_start_unix``              when the cell's measured steps began (Unix seconds)
``idle_power_w``              (only with an idle baseline) idle power over counted domains, watts
``net_energy_j``              (only with an idle baseline) ``energy_j`` minus idle power x duration
============================  =====================================================================
"""

from __future__ import annotations

COLUMNS = (
    "model",
    "width",
    "params",
    "macs",
    "macs_per_param",
    "train_macs",
    "size_bytes",
    "batch_size",
    "phase",
    "steps",
    "samples",
    "duration_s",
    "energy_j",
    "uncertainty_j",
    "energy_per_sample_j",
    "mean_power_w",
    "co2e_g",
    "accuracy",
    "repetition",
    "device",
    "hardware",
    "estimated_domains",
    "dataset",
    "threads",
    "t_start_unix",
)
"""Columns every results table has, in order; ``energy_j_<domain>`` columns follow
``energy_j`` and the baseline columns come last when present."""

DOMAIN_PREFIX = "energy_j_"
PHASES = ("train", "inference")

__all__ = ["COLUMNS", "DOMAIN_PREFIX", "PHASES", "analyze", "domain_column", "run"]


def domain_column(domain: str) -> str:
    """The results column of one domain key: ``package:0`` -> ``energy_j_package_0``."""
    return DOMAIN_PREFIX + domain.replace(":", "_")


def run(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Runs the sweep; see :func:`greenml.study._run.run` (imported on first call)."""
    from ._run import run as _run

    return _run(*args, **kwargs)


def analyze(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Analyses results; see :func:`greenml.study._analyze.analyze` (imported on first call)."""
    from ._analyze import analyze as _analyze

    return _analyze(*args, **kwargs)
