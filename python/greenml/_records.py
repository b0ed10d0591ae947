"""Records on disk: JSON Lines, one object per finished meter, phase or call.

Each record is one ``os.write`` of a whole line to a file opened with ``O_APPEND``, so a crash or
``kill -9`` of the writer loses nothing already written and leaves no half-written line behind
(short of the disk filling up; readers skip a damaged last line anyway, with a warning).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
import warnings
from typing import Any, Dict, List

from ._errors import LogError


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class RecordLog:
    """Appends JSON records to ``path``, one line each, written through as each finishes."""

    def __init__(self, path: "str | os.PathLike[str]") -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._host = socket.gethostname()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LogError(
                f"cannot open the log {self.path!r} for appending ({exc.strerror}); "
                "pick a writable path with log=..."
            ) from None
        os.close(fd)

    def write(self, record: Dict[str, Any]) -> None:
        rec = {"host": self._host, **record}
        line = (json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(line)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            finally:
                os.close(fd)


def read_records(path: "str | os.PathLike[str]") -> List[Dict[str, Any]]:
    """All complete records in a JSON Lines log; a damaged line is skipped with a warning."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise LogError(f"cannot read the log {p!r} ({exc.strerror}); check the path") from None
    out: List[Dict[str, Any]] = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            warnings.warn(
                f"{p}:{n}: skipped a line that is not a complete JSON record "
                "(a writer was probably killed while writing it)",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_log(path: "str | os.PathLike[str]") -> Any:
    """A pandas DataFrame of a greenml log: one row per record, nested fields flattened
    (``by_domain.gpu:0``, ``carbon.gco2e_per_kwh``, ...)."""
    import pandas as pd

    records = read_records(path)
    if not records:
        return pd.DataFrame()
    return pd.json_normalize(records, max_level=1)
