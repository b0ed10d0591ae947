"""A fake Linux powercap tree (``/sys/class/powercap``) for Python tests.

Layout, as the kernel shows it to ``RaplSource``::

    <root>/intel-rapl                      control type (an ``enabled`` file, no counter)
    <root>/intel-rapl:0/                   a top-level zone: name, energy_uj, max_energy_range_uj
    <root>/intel-rapl:0/intel-rapl:0:0/    a subzone, nested in its package
    <root>/intel-rapl:0:0 -> intel-rapl:0/intel-rapl:0:0
                                           sysfs also links every subzone flat in the class
                                           directory; a reader must not count it twice
    <root>/intel-rapl-mmio:0/              the MMIO duplicate of package 0 (recent Intel)

Zones are addressed by their contract domain key (``"package:0"``, ``"dram:1"``,
``"core:0"``, ``"psys"``; the MMIO duplicate of socket ``s`` is ``"mmio:<s>"``),
never by directory index, because the point of several tests is that indices
are arbitrary::

    tree = PowercapTree(tmp_path)
    tree.add_package(0, energy_uj=1000, dram=True, dir_index=1)
    tree.add_package(1, dir_index=0)
    src = greenml._core.RaplSource(str(tree.root))
    tree.set_energy("package:0", 5000)

No pytest import here: a plain helper usable from conftest or scripts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple, Union

__all__ = ["DEFAULT_RANGE_UJ", "PowercapTree"]

#: max_energy_range_uj of a typical Intel package zone (2^32 units of ~61 uJ).
DEFAULT_RANGE_UJ = 262143328850

PathLike = Union[str, "os.PathLike[str]"]


def _write_in_place(path: Path, text: str) -> None:
    """Replace the content of ``path`` without replacing the file.

    The source under test keeps ``energy_uj`` open and preads it at offset 0, so
    a temp-file-and-rename would leave it reading the old inode forever. One
    pwrite of the new text, padded with newlines to the old length, then a
    truncate: a concurrent reader sees either the old number, or the new number
    followed by trailing newlines (which the parser ignores), or the final text.
    A value with more digits than the old one extends the file, and a reader
    racing that write could see a prefix of it: tests that write while a
    sampler thread runs keep the digit count constant.
    """
    data = text.encode("ascii")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        old_len = os.fstat(fd).st_size
        padded = data + b"\n" * max(0, old_len - len(data))
        os.pwrite(fd, padded, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


class PowercapTree:
    """A writable powercap tree under ``<tmp_path>/powercap``."""

    def __init__(self, tmp_path: PathLike) -> None:
        self.root = Path(tmp_path) / "powercap"
        self.root.mkdir(parents=True, exist_ok=True)
        self._zones: Dict[str, Path] = {}  # domain key -> zone directory
        self._top_indices: set = set()
        self._mmio_indices: set = set()

    # ----------------------------------------------------------------- building

    def _control_type(self, name: str) -> None:
        d = self.root / name
        if not d.exists():
            d.mkdir()
            (d / "enabled").write_text("1\n")

    def _next_top_index(self, wanted: Optional[int]) -> int:
        if wanted is None:
            wanted = 0
            while wanted in self._top_indices:
                wanted += 1
        if wanted in self._top_indices:
            raise ValueError(f"intel-rapl:{wanted} already exists in the fake powercap tree")
        self._top_indices.add(wanted)
        return wanted

    def _zone(self, key: str, directory: Path, name: str, energy_uj: int, range_uj: int) -> Path:
        if key in self._zones:
            raise ValueError(f"zone {key!r} already exists in the fake powercap tree")
        directory.mkdir(parents=True)
        (directory / "name").write_text(f"{name}\n")
        (directory / "energy_uj").write_text(f"{int(energy_uj)}\n")
        (directory / "max_energy_range_uj").write_text(f"{int(range_uj)}\n")
        self._zones[key] = directory
        return directory

    def add_package(
        self,
        socket: int,
        energy_uj: int = 0,
        range_uj: int = DEFAULT_RANGE_UJ,
        dram: bool = True,
        core: bool = False,
        uncore: bool = False,
        dir_index: Optional[int] = None,
        sub_order: Iterable[str] = ("dram", "core", "uncore"),
    ) -> Path:
        """Add ``package-<socket>`` at ``intel-rapl:<dir_index>`` with the chosen subzones.

        Subzones start at the same ``energy_uj`` and share ``range_uj``; they
        are numbered ``intel-rapl:<dir_index>:<k>`` in ``sub_order``.
        """
        self._control_type("intel-rapl")
        index = self._next_top_index(dir_index)
        top = f"intel-rapl:{index}"
        pkg_dir = self._zone(f"package:{socket}", self.root / top, f"package-{socket}",
                             energy_uj, range_uj)
        wanted = {"dram": dram, "core": core, "uncore": uncore}
        k = 0
        for sub in sub_order:
            if not wanted.get(sub):
                continue
            sub_name = f"{top}:{k}"
            self._zone(f"{sub}:{socket}", pkg_dir / sub_name, sub, energy_uj, range_uj)
            # The flat link sysfs adds for every subzone.
            os.symlink(os.path.join(top, sub_name), self.root / sub_name)
            k += 1
        return pkg_dir

    def add_psys(self, energy_uj: int = 0, range_uj: int = DEFAULT_RANGE_UJ,
                 dir_index: Optional[int] = None) -> Path:
        """Add the platform zone ``psys`` (covers package and dram) as a top-level zone."""
        self._control_type("intel-rapl")
        index = self._next_top_index(dir_index)
        return self._zone("psys", self.root / f"intel-rapl:{index}", "psys", energy_uj, range_uj)

    def add_mmio_duplicate(self, socket: int, energy_uj: int = 0,
                           range_uj: int = DEFAULT_RANGE_UJ) -> Path:
        """Add ``intel-rapl-mmio:<n>`` named ``package-<socket>``: the same package through MMIO."""
        self._control_type("intel-rapl-mmio")
        index = 0
        while index in self._mmio_indices:
            index += 1
        self._mmio_indices.add(index)
        return self._zone(f"mmio:{socket}", self.root / f"intel-rapl-mmio:{index}",
                          f"package-{socket}", energy_uj, range_uj)

    # ----------------------------------------------------------------- scripting

    def zone_dir(self, domain: str) -> Path:
        try:
            return self._zones[domain]
        except KeyError:
            raise KeyError(f"no zone {domain!r} in the fake powercap tree; "
                           f"it has {sorted(self._zones)}") from None

    def energy_file(self, domain: str) -> Path:
        return self.zone_dir(domain) / "energy_uj"

    @property
    def domains(self) -> list:
        """Domain keys of every zone added (MMIO duplicates as ``mmio:<s>``)."""
        return sorted(self._zones)

    def set_energy(self, domain: str, uj: int) -> None:
        """Rewrite ``energy_uj`` in place, so an already open fd reads the new value."""
        _write_in_place(self.energy_file(domain), f"{int(uj)}\n")

    def set_text(self, domain: str, text: str) -> None:
        """Write arbitrary (e.g. garbage) content into ``energy_uj``, in place."""
        _write_in_place(self.energy_file(domain), text)

    def set_constraints(self, domain: str, *constraints: Tuple[str, int, int, Optional[int]],
                        enabled: bool = True) -> None:
        """Give a zone power-limit constraints, as the kernel shows them: for each
        ``(name, power_limit_uw, time_window_us, max_power_uw)`` in order, files
        ``constraint_<k>_name``, ``_power_limit_uw``, ``_time_window_us`` and, unless
        ``max_power_uw`` is None, ``_max_power_uw``; plus ``enabled``.

        Files are 0644 and owned by whoever runs the test, like sysfs's (writable by root
        only): a test dropping privileges sees them read-only.
        """
        z = self.zone_dir(domain)
        (z / "enabled").write_text(f"{int(enabled)}\n")
        for k, (name, limit_uw, window_us, max_uw) in enumerate(constraints):
            (z / f"constraint_{k}_name").write_text(f"{name}\n")
            (z / f"constraint_{k}_power_limit_uw").write_text(f"{int(limit_uw)}\n")
            (z / f"constraint_{k}_time_window_us").write_text(f"{int(window_us)}\n")
            if max_uw is not None:
                (z / f"constraint_{k}_max_power_uw").write_text(f"{int(max_uw)}\n")

    def limit_uw(self, domain: str, constraint: int = 0) -> int:
        """The zone's ``constraint_<k>_power_limit_uw`` as written now."""
        return int((self.zone_dir(domain) / f"constraint_{constraint}_power_limit_uw").read_text())

    def make_unreadable(self, domain: str) -> None:
        """chmod 000 the zone's ``energy_uj``.

        As root this does not deny reads: tests relying on it must skip when
        ``os.geteuid() == 0``.
        """
        os.chmod(self.energy_file(domain), 0)
