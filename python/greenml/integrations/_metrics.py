"""Metric keys of every greenml integration (the trainer callbacks and MLflow), in one scheme::

    <prefix>/energy_j, /duration_s, /power_w, /co2e_g, ...     the run (or result)
    <prefix>/domain/<domain>/energy_j                          per domain (gpu:0 -> gpu_0)
    <prefix>/phase/<phase>/energy_j, /duration_s, ...          per phase
    <prefix>/steps, /energy_per_step_j, ...                    steps
    <prefix>/forecast/energy_j, ...  <prefix>/epoch/...  <prefix>/powercap/...

No key is a ``/``-prefix of another: MLflow's file store keeps ``a/b`` as a file in a directory
``a``, so ``greenml/energy_j`` and ``greenml/energy_j/gpu_0`` cannot both be logged to one run
(``log_batch`` fails with NotADirectoryError). Names of domains and phases therefore sit under
``domain/`` and ``phase/``, never beside the summary metrics. Energies in joules, durations in
seconds, power in watts, carbon in grams CO2e.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Mapping, Optional, Tuple

#: MLflow's longest metric key.
MAX_KEY_LEN = 250
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")

#: (field of a result or of its ``to_dict()``, metric name) of a run's summary.
SUMMARY: Tuple[Tuple[str, str], ...] = (
    ("energy_j", "energy_j"),
    ("duration_s", "duration_s"),
    ("mean_power_w", "power_w"),
    ("co2e_g", "co2e_g"),
    ("uncertainty_j", "uncertainty_j"),
    ("energy_per_item_j", "energy_per_item_j"),
    ("items", "items"),
    ("net_energy_j", "net_energy_j"),
)


def metric_key(prefix: str, *parts: str) -> str:
    """A metric key valid for every MLflow backend and for the trainers' loggers: ``prefix``
    (which may hold ``/``) and ``parts`` joined by ``/``. Characters MLflow refuses somewhere
    (``gpu:0``'s colon among them) become ``_``, and so does ``/`` inside a part; no ``..``."""
    head = "/".join(_UNSAFE_KEY.sub("_", p) for p in prefix.split("/") if p)
    tail = [_UNSAFE_KEY.sub("_", p.replace("/", "_")) for p in parts if p]
    key = "/".join([head, *tail] if head else tail)
    while ".." in key:
        key = key.replace("..", "_.")
    return key[:MAX_KEY_LEN]


def domain_key(prefix: str, domain: str) -> str:
    """``<prefix>/domain/<domain>/energy_j``."""
    return metric_key(prefix, "domain", domain, "energy_j")


def phase_prefix(prefix: str, phase: str) -> str:
    """``<prefix>/phase/<phase>``: the prefix of a phase's metrics."""
    return metric_key(prefix, "phase", phase)


def number(v: Any) -> Optional[float]:
    """``v`` as a finite float, else None (booleans and NaN included)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def finite(metrics: Mapping[str, Any]) -> Dict[str, float]:
    """The finite numbers of ``metrics``, as floats."""
    out = {}
    for k, v in metrics.items():
        f = number(v) if not isinstance(v, bool) else float(v)
        if f is not None:
            out[k] = f
    return out


def fields(
    source: Any, table: Tuple[Tuple[str, str], ...], prefix: str, *parts: str
) -> Dict[str, float]:
    """``<prefix>/<parts>/<name>`` for each ``(field, name)`` of ``table`` that ``source`` (a
    dict, or an object with those attributes) holds as a finite number."""
    get = source.get if isinstance(source, Mapping) else lambda f: getattr(source, f, None)
    out = {}
    for field, name in table:
        v = number(get(field))
        if v is not None:
            out[metric_key(prefix, *parts, name)] = v
    return out


def domain_metrics(by_domain: Mapping[str, Any], prefix: str) -> Dict[str, float]:
    """``<prefix>/domain/<domain>/energy_j`` of each finite energy in ``by_domain``."""
    out = {}
    for domain, joules in by_domain.items():
        v = number(joules)
        if v is not None:
            out[domain_key(prefix, str(domain))] = v
    return out
