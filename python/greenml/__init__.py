"""greenml: a low-overhead native energy profiler for machine learning.

``greenml.sensors()`` lists what can be measured here; the native sampler in
``greenml._core`` reads RAPL and NVML counters into a lock-free ring.
"""

from __future__ import annotations

from ._carbon import carbon_regions
from ._errors import ConfigError, GreenmlError, LogError, SensorError
from ._runtime import Sensor
from ._sensors import sensors

__all__ = [
    "ConfigError",
    "GreenmlError",
    "LogError",
    "Sensor",
    "SensorError",
    "carbon_regions",
    "sensors",
]

try:
    from ._core import __version__
except ImportError:  # pragma: no cover - built without a version define
    __version__ = "0.0.0"
