"""MLflow: a greenml result as metrics, tags and a JSON artifact of an MLflow run.

    import greenml.integrations.mlflow as gm_mlflow

    with mlflow.start_run():
        with gm_mlflow.meter("finetune") as m:       # a greenml meter, logged when it ends
            with m.phase("train"):
                ...
                m.step()

    gm_mlflow.log_result(m)                         # or log any result yourself

Metric keys (``prefix`` = ``greenml``; the trainer callbacks use the same scheme):
``greenml/energy_j``, ``/duration_s``, ``/power_w`` (mean), ``/co2e_g``, ``/uncertainty_j``, per domain ``greenml/domain/<domain>/energy_j`` (``gpu:0`` -> ``gpu_0``:
a colon is not a valid metric key on every MLflow backend), per phase
``greenml/phase/<phase>/energy_j`` (``duration_s``, ``power_w``, ``co2e_g``,
``energy_per_item_j``), per step ``greenml/steps``,
``greenml/energy_per_step_j`` and the series ``greenml/step_energy_j`` (one point per step, or
per block of steps in long runs). Tags ``greenml.total_kind`` (measured, estimated or mixed),
``greenml.estimated_domains``, ``greenml.carbon_region``. The whole result (``to_dict()``) is
the artifact ``greenml/<name>.json``.

Logging never raises into the caller: a failure (no tracking server, a bad run id) is warned
about once per process and the call returns None. ``import greenml.integrations.mlflow`` needs
mlflow (``pip install "greenml[mlflow]"``).
"""

from __future__ import annotations

import re
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

try:
    import mlflow
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'greenml.integrations.mlflow needs mlflow, which is not installed: pip install "greenml[mlflow]"'
    ) from _exc

import greenml

from ._metrics import SUMMARY, domain_metrics, fields, metric_key, phase_prefix

__all__ = ["MlflowLoggingWarning", "log_result", "meter", "metric_key"]

#: MLflow accepts at most this many metrics, and this many tags, in one batch.
_MAX_METRICS_PER_BATCH = 1000
_MAX_TAGS_PER_BATCH = 100
_UNSAFE_FILE = re.compile(r"[^A-Za-z0-9_\-.]")


class MlflowLoggingWarning(RuntimeWarning):
    """greenml could not log to MLflow; the measurement and the user's code went on."""


_warned: set = set()


def _warn_once(what: str, exc: BaseException) -> None:
    if what in _warned:
        return
    _warned.add(what)
    warnings.warn(
        f"greenml could not {what} to MLflow ({exc!r}); nothing was raised into your code, and "
        "the result is still on the meter (warned once)",
        MlflowLoggingWarning,
        stacklevel=3,
    )


# A decorated function's CallStats.to_dict().
_CALLS = (
    ("calls", "calls"),
    ("errors", "errors"),
    ("total_j", "energy_j"),
    ("total_s", "duration_s"),
    ("mean_j", "energy_per_call_j"),
    ("p50_j", "p50_j"),
    ("p90_j", "p90_j"),
    ("p99_j", "p99_j"),
    ("uncertainty_j", "uncertainty_j"),
    ("co2e_g", "co2e_g"),
)
_STEPS = (
    ("count", "steps"),
    ("mean_j", "energy_per_step_j"),
    ("p50_j", "step_p50_j"),
    ("p90_j", "step_p90_j"),
    ("mean_duration_s", "step_duration_s"),
)


def result_metrics(d: Dict[str, Any], prefix: str = "greenml") -> Dict[str, float]:
    """The summary metrics of a result dict (a meter's, a measurement's or a CallStats'
    ``to_dict()``): finite values only, keys made valid for MLflow."""
    if d.get("type") is None and "calls" in d:  # CallStats
        return fields(d, _CALLS, prefix)
    out = fields(d, SUMMARY, prefix)
    out.update(domain_metrics(d.get("by_domain") or {}, prefix))
    for name, phase in (d.get("phases") or {}).items():
        out.update(fields(phase, SUMMARY[:6], phase_prefix(prefix, str(name))))
    steps = d.get("steps") or {}
    if steps.get("count"):
        out.update(fields(steps, _STEPS, prefix))
    return out


def _step_series(result: Any) -> List[Tuple[int, float]]:
    """(step index, energy per step in J) along the run of a stopped meter with steps: one point
    per step, or per block of steps once the run is long (at most 2048 points)."""
    if not isinstance(result, greenml.Meter):
        return []
    from .._forecast import steps_profile

    profile = steps_profile(result)
    if profile is None:
        return []
    k, last = profile["block_steps"], profile["last_block_steps"]
    energies = profile["energy_j"]
    points = []
    done = 0
    for j, e in enumerate(energies):
        n = last if j == len(energies) - 1 else k
        done += n
        if e is not None and n:
            points.append((done, e / n))
    return points


def _tags(d: Dict[str, Any]) -> Dict[str, str]:
    tags = {"greenml.version": greenml.__version__}
    if "total_kind" in d:
        tags["greenml.total_kind"] = str(d["total_kind"])
        tags["greenml.estimated_domains"] = ",".join(d.get("estimated_domains") or []) or "none"
    carbon = d.get("carbon") or {}
    if carbon.get("region"):
        tags["greenml.carbon_region"] = str(carbon["region"])
    if carbon.get("gco2e_per_kwh") is not None:
        tags["greenml.gco2e_per_kwh"] = f"{carbon['gco2e_per_kwh']:g}"
    return tags


def _as_dict(result: Any) -> Dict[str, Any]:
    if isinstance(result, greenml.Meter):
        result.result(wait=True)  # the settled, final numbers (a stopped meter waits <= 250 ms)
    if isinstance(result, dict):
        return result
    to_dict = getattr(result, "to_dict", None)
    if to_dict is None:
        raise TypeError(
            f"cannot log a {type(result).__name__}: give a greenml meter, a Measurement, a "
            "CallStats (a decorated function's .energy) or their to_dict()"
        )
    return dict(to_dict())


def _run_id(run: Any) -> str:
    if run is None:
        active = mlflow.active_run()
        # As mlflow.log_metric does: no active run starts one, left active for the caller.
        return (active or mlflow.start_run()).info.run_id
    if isinstance(run, str):
        return run
    return str(run.info.run_id)  # an mlflow Run or ActiveRun


def _artifact_name(d: Dict[str, Any]) -> str:
    name = d.get("name") or "result"
    return _UNSAFE_FILE.sub("_", str(name)).strip(".") or "result"


def log_result(
    result_or_meter: Any,
    run: Any = None,
    prefix: str = "greenml",
    artifact: bool = True,
    step: int = 0,
) -> Optional[str]:
    """Logs a greenml result to MLflow; returns the run id, or None when logging failed (warned
    once, never raised).

    ``result_or_meter``: a :class:`greenml.Meter` (stopped: its final result, phases and steps;
    running: the result so far), a :class:`greenml.Measurement`, a :class:`greenml.CallStats`
    or one of their ``to_dict()``. ``run``: a run id, or an mlflow ``Run``/``ActiveRun``;
    None logs to the active run (and, as ``mlflow.log_metric`` does, starts one when none is
    active). ``prefix`` starts every metric key (give each result its own prefix when several
    go to one run). ``artifact``: also store ``to_dict()`` as ``<prefix>/<name>.json``. ``step``:
    the MLflow step of the summary metrics.
    """
    try:
        d = _as_dict(result_or_meter)
        run_id = _run_id(run)
        now_ms = int(time.time() * 1000)
        metrics = [Metric(k, v, now_ms, int(step)) for k, v in result_metrics(d, prefix).items()]
        series_key = metric_key(prefix, "step_energy_j")
        metrics += [Metric(series_key, e, now_ms, i) for i, e in _step_series(result_or_meter)]
        tags = [RunTag(k, v) for k, v in _tags(d).items()]
        client = MlflowClient()
        for i in range(0, max(len(metrics), len(tags)), _MAX_METRICS_PER_BATCH):
            client.log_batch(
                run_id,
                metrics=metrics[i : i + _MAX_METRICS_PER_BATCH],
                tags=tags[i : i + _MAX_TAGS_PER_BATCH] if i == 0 else [],
            )
        if artifact:
            client.log_dict(run_id, d, f"{metric_key(prefix)}/{_artifact_name(d)}.json")
        return run_id
    except Exception as exc:  # noqa: BLE001 - logging must never break the user's run
        _warn_once("log a result", exc)
        return None


class _MlflowMeter:
    """``with meter(...) as m:``: a greenml meter whose result is logged when the block ends."""

    def __init__(
        self,
        name: Optional[str],
        run: Any,
        prefix: str,
        artifact: bool,
        meter_options: Dict[str, Any],
    ) -> None:
        self._meter = greenml.meter(name, **meter_options)  # bad options fail here, at once
        self._run = run
        self._prefix = prefix
        self._artifact = artifact
        self._started_run: Optional[str] = None

    def __enter__(self) -> greenml.Meter:
        if self._run is None:
            try:
                if mlflow.active_run() is None:
                    self._started_run = mlflow.start_run(run_name=self._meter.name).info.run_id
            except Exception as exc:  # noqa: BLE001 - measuring goes on without MLflow
                _warn_once("start a run", exc)
        return self._meter.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # The meter stops whatever happened; what it measured is logged, then the user's
        # exception (if any) propagates.
        self._meter.stop()
        run = self._run if self._run is not None else self._started_run
        log_result(self._meter, run=run, prefix=self._prefix, artifact=self._artifact)
        if self._started_run is not None:
            status = "FINISHED"
            if exc_type is not None:
                status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            try:
                active = mlflow.active_run()
                if active is not None and active.info.run_id == self._started_run:
                    mlflow.end_run(status=status)
                else:  # the block ended or replaced it: end ours by id
                    MlflowClient().set_terminated(self._started_run, status=status)
            except Exception as exc:  # noqa: BLE001 - see log_result
                _warn_once("end the run", exc)


def meter(
    name: Optional[str] = None,
    *,
    run: Any = None,
    prefix: str = "greenml",
    artifact: bool = True,
    **meter_options: Any,
) -> _MlflowMeter:
    """A :func:`greenml.meter` logged to MLflow when its block ends, also when the block raised
    (what was measured is logged, then the exception propagates).

    Logs to ``run`` (a run id or Run), else to the active run; with neither, it starts a run
    named after the meter and ends it with the block (FINISHED, FAILED, or KILLED on Ctrl-C).
    ``meter_options`` go to :func:`greenml.meter` (``log=``, ``region=``, ``pue=``, ...).
    """
    return _MlflowMeter(name, run, prefix, artifact, meter_options)
