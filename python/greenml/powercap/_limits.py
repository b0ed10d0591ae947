"""Reading and writing power limits: NVIDIA GPUs through the C++ core (NVML), RAPL zones through
the powercap tree (``GREENML_POWERCAP_ROOT``). Reading never needs root; writing does.

This module and :mod:`._safety` are the only code in greenml that writes a limit, and only
:mod:`._safety` calls the writers (after saving the original to the state file).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .._config import Settings, settings_from_env
from .._errors import GreenmlError

# nvmlReturn_t values the writer tells apart.
_NVML_INVALID_ARGUMENT = 2
_NVML_NO_PERMISSION = 4


class PowercapError(GreenmlError):
    """A power limit cannot be read, set or restored; the message says what to do."""


class LimitOutOfRange(PowercapError, ValueError):
    """A limit outside the device's constraints was refused; nothing was changed."""


class NoPrivilege(PowercapError, PermissionError):
    """Setting a limit needs privileges this process lacks; nothing was changed."""


@dataclass(frozen=True)
class RaplConstraint:
    """One ``constraint_<k>`` of a RAPL zone (``long_term`` = PL1, ``short_term`` = PL2)."""

    index: int
    name: str
    limit_w: Optional[float]
    time_window_s: Optional[float]
    max_w: Optional[float]


@dataclass(frozen=True)
class PowerLimit:
    """The power limit of one domain, in watts (None where the hardware does not say).

    ``current_w`` is the limit greenml sets and restores (NVML's power management limit; RAPL's
    ``constraint_0``, the long-term limit); ``enforced_w`` the one in force (NVML: the lowest of
    all limits; RAPL: ``current_w`` while the zone is enabled). ``writable`` says whether this
    process could change it, ``reason`` why not (or why values are missing).
    """

    domain: str
    source: str  # "nvml" or "rapl"
    current_w: Optional[float]
    default_w: Optional[float]
    min_w: Optional[float]
    max_w: Optional[float]
    enforced_w: Optional[float]
    writable: bool
    reason: str
    detail: str = ""
    uuid: str = ""  # GPUs: the UUID that names the GPU to restore, whatever the visible order
    path: str = ""  # RAPL: the constraint_0_power_limit_uw file
    constraints: Tuple[RaplConstraint, ...] = field(default_factory=tuple)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def check(self, watts: float) -> None:
        """Raises :class:`LimitOutOfRange` (or :class:`PowercapError`) unless ``watts`` can be
        set here; changes nothing."""
        if not self.writable:
            raise (NoPrivilege if _is_privilege(self.reason) else PowercapError)(
                f"cannot set the power limit of {self.domain}: {self.reason}; nothing was changed"
            )
        too_low = watts < self.min_w if self.min_w is not None else not watts > 0
        too_high = self.max_w is not None and watts > self.max_w
        if too_low or too_high or watts != watts:
            low = f"{self.min_w:g} W" if self.min_w is not None else "above 0 W"
            high = f"{self.max_w:g} W" if self.max_w is not None else "its maximum"
            raise LimitOutOfRange(
                f"{self.domain} accepts power limits from {low} to {high}, not {watts:g} W; "
                "nothing was changed (see `greenml powercap show`)"
            )


_ROOT_NEEDED = "needs root"


def _is_privilege(reason: str) -> bool:
    return _ROOT_NEEDED in reason


# ------------------------------------------------------------------------------------ NVML


def _nvml(settings: Settings, visible: Optional[str] = None) -> Any:
    """An NVML source for this process's gpu:<i> (``visible``: one GPU by UUID instead)."""
    from .. import _core
    from .._runtime import nvml_source

    if visible is None:
        return nvml_source(settings)
    return _core.NvmlSource(settings.nvml_library, visible)


def _gpu_limit(d: Mapping[str, Any], euid: int) -> PowerLimit:
    fixed = str(d["fixed_reason"])
    writable = not fixed and euid == 0
    if fixed:
        reason = fixed
    elif not writable:
        reason = (
            f"changing a GPU power limit {_ROOT_NEEDED}: run as root (e.g. sudo), or have an "
            f"administrator set it (nvidia-smi -i {d['uuid']} -pl WATTS)"
        )
    else:
        reason = str(d["reason"])
    return PowerLimit(
        domain=str(d["domain"]),
        source="nvml",
        current_w=d["current_w"],
        default_w=d["default_w"],
        min_w=d["min_w"],
        max_w=d["max_w"],
        enforced_w=d["enforced_w"],
        writable=writable,
        reason=reason,
        detail=str(d["detail"]),
        uuid=str(d["uuid"]),
    )


def gpu_limits(settings: Optional[Settings] = None, source: Any = None) -> List[PowerLimit]:
    """Power limits of this process's GPUs (gpu:<i> as CUDA numbers them); a GPU whose NVML
    reports none of them is left out. ``source``: an NVML source already open (a runtime's),
    read instead of opening NVML again."""
    settings = settings or settings_from_env()
    src = source if source is not None else _nvml(settings)
    found = [_gpu_limit(d, os.geteuid()) for d in src.power_limits()]
    known = ("current_w", "default_w", "min_w", "max_w", "enforced_w")
    return [lim for lim in found if any(getattr(lim, k) is not None for k in known)]


def set_gpu_limit_by_uuid(settings: Settings, uuid: str, watts: float) -> None:
    """Sets the GPU with this UUID to ``watts``. Raises NoPrivilege / LimitOutOfRange /
    PowercapError with NVML's reason; nothing changes on failure."""
    src = _nvml(settings, visible=uuid)
    lims = src.power_limits()
    if not lims or lims[0]["uuid"] != uuid:
        why = src.status()[0].reason if src.status() else "NVML sees no GPU"
        raise PowercapError(f"cannot find the GPU {uuid}: {why}")
    code, message = src.set_power_limit("gpu:0", float(watts))
    if code == 0:
        return
    if code == _NVML_NO_PERMISSION:
        raise NoPrivilege(message)
    if code == _NVML_INVALID_ARGUMENT:
        raise LimitOutOfRange(message)
    raise PowercapError(message)


# ------------------------------------------------------------------------------------ RAPL

_TOP = re.compile(r"^intel-rapl:(\d+)$")
_SUB = re.compile(r"^intel-rapl:(\d+):(\d+)$")


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> Optional[int]:
    text = _read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _w(uw: Optional[int]) -> Optional[float]:
    return uw / 1e6 if uw is not None else None


def rapl_zones(root: str) -> List[Tuple[str, Path]]:
    """(domain key, zone directory) of every RAPL zone under ``root``, each once.

    Zones are the class directory's ``intel-rapl:N`` (packages, psys) and ``intel-rapl:N:K``
    (their dram/core/uncore subzones); the MMIO duplicates (``intel-rapl-mmio``) are left out,
    as the energy reader leaves them out.
    """
    base = Path(root)
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    out: List[Tuple[str, Path]] = []
    seen: set = set()
    sockets: Dict[str, str] = {}  # intel-rapl:N -> socket
    for name in names:
        if not _TOP.match(name):
            continue
        zone = _read_text(base / name / "name") or ""
        if zone.startswith("package-"):
            sockets[name] = zone[len("package-") :]
            out.append((f"package:{sockets[name]}", base / name))
        elif zone == "psys":
            out.append(("psys", base / name))
        seen.add(os.path.realpath(base / name))
    for name in names:
        m = _SUB.match(name)
        if not m or os.path.realpath(base / name) in seen:
            continue
        socket = sockets.get(f"intel-rapl:{m.group(1)}")
        zone = _read_text(base / name / "name") or ""
        if socket is not None and zone in ("dram", "core", "uncore"):
            out.append((f"{zone}:{socket}", base / name))
            seen.add(os.path.realpath(base / name))
    return out


def _rapl_limit(domain: str, zone: Path) -> Optional[PowerLimit]:
    constraints = []
    k = 0
    while (zone / f"constraint_{k}_power_limit_uw").exists():
        constraints.append(
            RaplConstraint(
                index=k,
                name=_read_text(zone / f"constraint_{k}_name") or f"constraint_{k}",
                limit_w=_w(_read_int(zone / f"constraint_{k}_power_limit_uw")),
                time_window_s=(
                    t / 1e6
                    if (t := _read_int(zone / f"constraint_{k}_time_window_us")) is not None
                    else None
                ),
                max_w=_w(_read_int(zone / f"constraint_{k}_max_power_uw")),
            )
        )
        k += 1
    if not constraints:
        return None
    first = constraints[0]
    path = zone / "constraint_0_power_limit_uw"
    enabled = _read_text(zone / "enabled") != "0"
    reason = ""
    if first.limit_w is None:
        reason = f"{path} cannot be read"
    elif first.max_w is None:
        reason = (
            f"{zone.name} reports no constraint_0_max_power_uw, so greenml cannot check a value "
            "against its range and will not change it"
        )
    elif not os.access(path, os.W_OK):
        reason = (
            f"{path} is writable by root only: changing a RAPL limit {_ROOT_NEEDED} "
            "(run as root, e.g. sudo)"
        )
    elif not enabled:
        reason = f"{zone.name} has power limiting disabled (enabled = 0): limits are not enforced"
    return PowerLimit(
        domain=domain,
        source="rapl",
        current_w=first.limit_w,
        default_w=None,  # RAPL keeps no default; the firmware's is lost once changed
        min_w=None,
        max_w=first.max_w,
        enforced_w=first.limit_w if enabled else None,
        writable=not reason or reason.startswith(f"{zone.name} has power limiting disabled"),
        reason=reason,
        detail=str(zone),
        path=str(path),
        constraints=tuple(constraints),
    )


def rapl_limits(root: str) -> List[PowerLimit]:
    """Power limits of every RAPL zone with constraints under ``root``."""
    out = []
    for domain, zone in rapl_zones(root):
        lim = _rapl_limit(domain, zone)
        if lim is not None:
            out.append(lim)
    return out


def set_rapl_limit(path: str, watts: float) -> None:
    """Writes ``watts`` to a ``constraint_0_power_limit_uw`` file. Raises NoPrivilege when the
    file is not writable by this process (nothing changed)."""
    uw = int(round(watts * 1e6))
    try:
        with open(path, "w") as f:
            f.write(f"{uw}\n")
    except PermissionError:
        raise NoPrivilege(
            f"cannot write {path}: changing a RAPL limit {_ROOT_NEEDED} (run as root, e.g. sudo); "
            "nothing was changed"
        ) from None
    except OSError as exc:
        raise PowercapError(f"cannot write {path}: {exc}; nothing was changed") from None


# ------------------------------------------------------------------------------------ all


def limits(
    env: Optional[Mapping[str, str]] = None,
    settings: Optional[Settings] = None,
    nvml_source: Any = None,
) -> List[PowerLimit]:
    """Every power limit greenml can see: GPUs first (gpu:<i>), then RAPL zones. Reads only;
    never needs root. Honours ``GREENML_SOURCES``, ``GREENML_NVML_LIBRARY`` and
    ``GREENML_POWERCAP_ROOT``; a domain without limits is left out. ``nvml_source``: an NVML
    source already open (a runtime's), so NVML is not initialised again."""
    settings = settings or settings_from_env(env)
    out: List[PowerLimit] = []
    if "nvml" in settings.sources:
        out += gpu_limits(settings, nvml_source)
    if "rapl" in settings.sources:
        out += rapl_limits(settings.powercap_root)
    return out


def limit_of(domain: str, settings: Optional[Settings] = None) -> PowerLimit:
    """The :class:`PowerLimit` of one domain; PowercapError naming the known ones if absent."""
    found = limits(settings=settings)
    for lim in found:
        if lim.domain == domain:
            return lim
    known = ", ".join(lim.domain for lim in found) or "none"
    raise PowercapError(
        f"no power limit for {domain!r} here (domains with limits: {known}); see "
        "`greenml powercap show`"
    )
