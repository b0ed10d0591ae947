"""greenml: a low-overhead native energy profiler for machine learning.

``with greenml.meter("train") as m: ...`` measures a block (``m.energy_j``, ``m.by_domain``,
``m.phases``, ``m.steps``, ``m.co2e_g``); ``@greenml.measure`` measures every call of a
function; ``greenml.sensors()`` lists what can be measured here and why not the rest.
"""

from __future__ import annotations

from ._carbon import carbon_regions
from ._errors import ConfigError, GreenmlError, LogError, SensorError
from ._estimate import Estimate, EstimateError, Estimator, HardwareMismatchError
from ._features import features
from ._forecast import Forecast, ForecastError, forecast
from ._measure import CallStats, measure
from ._baseline import Baseline, idle_baseline
from ._meter import Meter, meter
from ._result import Measurement, NothingMeasuredWarning
from ._records import read_log
from ._runtime import Runtime, Sensor
from ._sensors import sensors
from ._windows import ShortWindowWarning

__all__ = [
    "Baseline",
    "CallStats",
    "ConfigError",
    "Estimate",
    "EstimateError",
    "Estimator",
    "Forecast",
    "ForecastError",
    "GreenmlError",
    "HardwareMismatchError",
    "LogError",
    "Measurement",
    "Meter",
    "NothingMeasuredWarning",
    "Runtime",
    "Sensor",
    "SensorError",
    "ShortWindowWarning",
    "carbon_regions",
    "features",
    "forecast",
    "idle_baseline",
    "measure",
    "meter",
    "read_log",
    "sensors",
]


def __getattr__(name: str) -> object:
    """``greenml.zoo``, ``greenml.study``, ``greenml.powercap``, ``greenml.exporter`` and
    ``greenml.integrations`` load on first use (they need optional libraries such as torch or
    prometheus_client: ``import greenml`` never imports them)."""
    if name in ("zoo", "study", "powercap", "exporter", "integrations"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:
    from ._core import __version__
except ImportError:  # pragma: no cover - built without a version define
    __version__ = "0.0.0"
