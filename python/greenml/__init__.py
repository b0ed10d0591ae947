"""greenml: a low-overhead native energy profiler for machine learning.

``with greenml.meter("train") as m: ...`` measures a block (``m.energy_j``, ``m.by_domain``,
``m.phases``, ``m.steps``, ``m.co2e_g``); ``@greenml.measure`` measures every call of a
function; ``greenml.sensors()`` lists what can be measured here and why not the rest.
"""

from __future__ import annotations

from ._carbon import carbon_regions
from ._errors import ConfigError, GreenmlError, LogError, SensorError
from ._measure import CallStats, measure
from ._meter import Baseline, Measurement, Meter, NothingMeasuredWarning, idle_baseline, meter
from ._records import read_log
from ._runtime import Runtime, Sensor
from ._sensors import sensors
from ._windows import ShortWindowWarning

__all__ = [
    "Baseline",
    "CallStats",
    "ConfigError",
    "GreenmlError",
    "LogError",
    "Measurement",
    "Meter",
    "NothingMeasuredWarning",
    "Runtime",
    "Sensor",
    "SensorError",
    "ShortWindowWarning",
    "carbon_regions",
    "idle_baseline",
    "measure",
    "meter",
    "read_log",
    "sensors",
]

try:
    from ._core import __version__
except ImportError:  # pragma: no cover - built without a version define
    __version__ = "0.0.0"
