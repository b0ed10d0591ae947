"""``greenml.sensors()``: every domain, whether it can be read here, and why not."""

from __future__ import annotations

from typing import List, Mapping, Optional

from ._config import Settings, settings_from_env
from ._runtime import Sensor, build_sources, sensors_of


def sensors(env: Optional[Mapping[str, str]] = None) -> List[Sensor]:
    """One :class:`Sensor` per domain, readable or not, with the reason when not.

    Reads the ``GREENML_*`` variables from ``env`` (default: the process
    environment). Never raises for missing hardware: a missing sensor is a
    reason, not an error.
    """
    settings: Settings = settings_from_env(env)
    return sensors_of(*build_sources(settings))
