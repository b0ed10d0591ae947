"""Settings from the environment (the contract in DESIGN.md), validated once.

Every invalid value fails with a :class:`ConfigError` that names the variable,
the value, and what would be valid.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping, Optional

from ._errors import ConfigError

KNOWN_SOURCES = ("nvml", "rapl", "model")

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"
DEFAULT_NVML_LIBRARY = "libnvidia-ml.so.1"
DEFAULT_INTERVAL_MS = 10.0


@dataclass(frozen=True)
class Settings:
    powercap_root: str = DEFAULT_POWERCAP_ROOT
    nvml_library: str = DEFAULT_NVML_LIBRARY
    interval_ms: float = DEFAULT_INTERVAL_MS
    sources: frozenset = frozenset(KNOWN_SOURCES)
    cuda_visible_devices: Optional[str] = None
    cuda_device_order: Optional[str] = None  # CUDA_DEVICE_ORDER: PCI_BUS_ID or FASTEST_FIRST
    # Not environment variables: injection points for tests and embedders.
    proc_stat_path: str = "/proc/stat"
    cpuinfo_path: str = "/proc/cpuinfo"
    meminfo_path: str = "/proc/meminfo"
    cgroup_root: str = "/sys/fs/cgroup"
    proc_self_cgroup_path: str = "/proc/self/cgroup"
    estimate: bool = True  # GREENML_ESTIMATE: modelled domains where no counter exists
    env: Optional[Mapping[str, str]] = None  # where GREENML_CPU_TDP_W etc. were read from

    @property
    def interval_ns(self) -> int:
        return max(1, int(round(self.interval_ms * 1e6)))


def parse_interval_ms(value: str, name: str = "GREENML_INTERVAL_MS") -> float:
    """A sampling period in milliseconds: a finite float in (0, 60000]."""
    try:
        ms = float(value)
    except ValueError:
        raise ConfigError(
            f"{name}={value!r} is not a number; give the sampling period in milliseconds, "
            "e.g. 10 (100 Hz) or 1 (1 kHz)"
        ) from None
    if not math.isfinite(ms) or ms <= 0 or ms > 60_000:
        raise ConfigError(
            f"{name}={value!r} is out of range; give a period in milliseconds between "
            "0.05 and 60000, e.g. 10"
        )
    if ms < 0.05:
        raise ConfigError(
            f"{name}={value!r} asks for more than 20 kHz, which no energy counter updates at; "
            "use 1 (1 kHz) or more"
        )
    return ms


def parse_sources(value: str, name: str = "GREENML_SOURCES") -> frozenset:
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    unknown = [n for n in names if n not in KNOWN_SOURCES]
    if unknown or not names:
        raise ConfigError(
            f"{name}={value!r} names unknown sources {unknown or '(none given)'}; "
            f"use a comma list of {', '.join(KNOWN_SOURCES)}, e.g. 'nvml,rapl'"
        )
    return frozenset(names)


_ON = ("on", "1", "true", "yes")
_OFF = ("off", "0", "false", "no")


def parse_estimate(value: str, name: str = "GREENML_ESTIMATE") -> bool:
    """Whether modelled domains (``cpu:estimated``, ``dram:estimated``) are allowed."""
    v = value.strip().lower()
    if v in _ON:
        return True
    if v in _OFF:
        return False
    raise ConfigError(
        f"{name}={value!r} is not on or off; use {name}=off for measured numbers only, "
        f"or on (the default) for labelled estimates where no counter exists "
        f"(accepted: {', '.join(_ON + _OFF)})"
    )


def parse_log_fsync(value: str, name: str = "GREENML_LOG_FSYNC") -> bool:
    """Whether every log record is fsynced (survives power loss, costs a disk flush each)."""
    v = value.strip().lower()
    if v in _ON:
        return True
    if v in _OFF or not v:
        return False
    raise ConfigError(
        f"{name}={value!r} is not on or off; use {name}=1 to fsync every log record (for "
        f"records that must survive a power loss) or 0 (the default) "
        f"(accepted: {', '.join(_ON + _OFF)})"
    )


CUDA_DEVICE_ORDERS = ("FASTEST_FIRST", "PCI_BUS_ID")


def parse_cuda_device_order(value: str, name: str = "CUDA_DEVICE_ORDER") -> Optional[str]:
    """CUDA's device numbering: ``PCI_BUS_ID``, ``FASTEST_FIRST``, or None when empty (unset)."""
    v = value.strip()
    if not v:
        return None
    if v not in CUDA_DEVICE_ORDERS:
        raise ConfigError(
            f"{name}={value!r} is not a CUDA device order; use {name}=PCI_BUS_ID (the order "
            "nvidia-smi shows) or FASTEST_FIRST (CUDA's default), or unset it"
        )
    return v


def settings_from_env(env: Optional[Mapping[str, str]] = None) -> Settings:
    """Reads the GREENML_* variables (and CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER) from ``env``."""
    env = os.environ if env is None else env
    kwargs: dict = {}
    if env.get("GREENML_POWERCAP_ROOT"):
        kwargs["powercap_root"] = env["GREENML_POWERCAP_ROOT"]
    if env.get("GREENML_NVML_LIBRARY"):
        kwargs["nvml_library"] = env["GREENML_NVML_LIBRARY"]
    if env.get("GREENML_INTERVAL_MS") is not None:
        kwargs["interval_ms"] = parse_interval_ms(env["GREENML_INTERVAL_MS"])
    if env.get("GREENML_SOURCES") is not None:
        kwargs["sources"] = parse_sources(env["GREENML_SOURCES"])
    if env.get("GREENML_ESTIMATE") is not None:
        kwargs["estimate"] = parse_estimate(env["GREENML_ESTIMATE"])
    if env.get("GREENML_HOST_ID") is not None:
        from ._distributed import parse_host_id

        parse_host_id(env["GREENML_HOST_ID"])  # validated here; read where records are made
    if "CUDA_VISIBLE_DEVICES" in env:
        kwargs["cuda_visible_devices"] = env["CUDA_VISIBLE_DEVICES"]
    if "CUDA_DEVICE_ORDER" in env:
        kwargs["cuda_device_order"] = parse_cuda_device_order(env["CUDA_DEVICE_ORDER"])
    return Settings(env=dict(env), **kwargs)
