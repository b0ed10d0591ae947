"""Records on disk: JSON Lines, one object per finished meter, phase or call.

Each record is one ``os.write`` of a whole line to a file opened with ``O_APPEND``, so a crash or
``kill -9`` of the writer loses nothing already written, and writers in several processes never
interleave within a record (short of the disk filling up). With ``fsync=True`` (or
``GREENML_LOG_FSYNC=1``) each record is also flushed to the disk before ``write`` returns, so it
survives a power loss too.

Readers keep every intact record: a line torn by a killed writer is skipped with a warning
naming its line number, and a record appended right after a torn line (on the same line, since
the torn one has no newline) is recovered. Lines that are JSON but not an object are skipped
with a warning.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import uuid
import warnings
import weakref
from typing import Any, Dict, List, Optional

from ._config import parse_log_fsync
from ._errors import LogError

ENV_LOG_FSYNC = "GREENML_LOG_FSYNC"

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_logs: "weakref.WeakSet[RecordLog]" = weakref.WeakSet()


def json_number(x: Any) -> Any:
    """JSON has no NaN or infinity: an unknown float is written as null, anything else as is."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def json_numbers(d: Dict[str, Any]) -> Dict[str, Any]:
    """``d`` with every unknown float value written as null (one level deep)."""
    return {k: json_number(v) for k, v in d.items()}


def _identity_fields() -> Dict[str, Any]:
    """Host, and rank and world size in a distributed job, for every record."""
    from ._distributed import identity  # the records module is imported by it

    try:
        return identity().record_fields()
    except Exception:  # an invalid GREENML_HOST_ID is reported where settings are read
        return {"host": socket.gethostname()}


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class RecordLog:
    """Appends JSON records to ``path``, one line each, written through as each finishes.

    Args:
        path: the JSON Lines file; created if missing, never truncated.
        fsync: fsync every record (and the directory once, when the file is new), so records
            survive a power loss; default: the ``GREENML_LOG_FSYNC`` environment variable
            (``1``/``0``), else off.
    """

    def __init__(self, path: "str | os.PathLike[str]", fsync: Optional[bool] = None) -> None:
        self.path = os.fspath(path)
        if fsync is None:
            fsync = parse_log_fsync(os.environ.get(ENV_LOG_FSYNC, ""))
        self.fsync = bool(fsync)
        self._lock = threading.Lock()
        self._warned = False
        existed = os.path.exists(self.path)
        try:
            fd = os.open(self.path, _FLAGS, 0o644)
        except OSError as exc:
            raise LogError(
                f"cannot open the log {self.path!r} for appending ({exc.strerror}); "
                "pick a writable path with log=..."
            ) from None
        try:
            if self.fsync and not existed:  # the new file's directory entry must last too
                os.fsync(fd)
                _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        finally:
            os.close(fd)
        _logs.add(self)

    def write(self, record: Dict[str, Any]) -> bool:
        """Appends one record; False when the file can no longer be written.

        A log that becomes unwritable mid-run (directory removed, disk full, permissions) is
        warned about once and its records are lost from then on, but the error never reaches
        the code being measured: results in memory are unaffected."""
        rec = {**_identity_fields(), **record}
        line = (json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            try:
                fd = os.open(self.path, _FLAGS, 0o644)
                try:
                    view = memoryview(line)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    warnings.warn(
                        f"cannot write to the log {self.path!r} ({exc.strerror}): records are "
                        "lost from now on while results in memory are kept; give a writable "
                        "log=... (warned once per log)",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                return False
        return True

    def _after_fork_in_child(self) -> None:
        # Another thread may have held the lock at fork: it never releases it in the child.
        self._lock = threading.Lock()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # e.g. no permission to open the directory: the file itself is synced
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def _reset_locks_in_child() -> None:
    for log in list(_logs):
        log._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_locks_in_child)

_decoder = json.JSONDecoder()


def _recover_tail(text: str) -> Optional[Any]:
    """The JSON object that ends a line whose start is torn, or None: the last record appended
    after a writer died mid-line begins at one of the line's ``{``."""
    start = text.find("{", 1)
    while start != -1:
        try:
            obj, end = _decoder.raw_decode(text, start)
        except ValueError:
            pass
        else:
            if isinstance(obj, dict) and not text[end:].strip():
                return obj
        start = text.find("{", start + 1)
    return None


def read_records(path: "str | os.PathLike[str]") -> List[Dict[str, Any]]:
    """All intact records in a JSON Lines log.

    A damaged line (a writer killed mid-record) is skipped with a ``RuntimeWarning`` naming the
    file and line number; a record appended after it on the same line is kept. A line that is
    JSON but not an object is skipped with a warning too.
    """
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as exc:
        raise LogError(f"cannot read the log {p!r} ({exc.strerror}); check the path") from None
    out: List[Dict[str, Any]] = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        text = raw.decode("utf-8", errors="replace")
        try:
            rec = json.loads(text)
        except ValueError:
            # A torn write never includes its newline, so a damaged line holds an appended
            # record only when something ended it with one: the file's unterminated last line
            # is a torn write alone, whatever object its text happens to end with.
            terminated = n < len(lines)
            rec = _recover_tail(text) if terminated else None
            kept = " (the record appended after it on the same line is kept)" if rec else ""
            warnings.warn(
                f"{p}:{n}: skipped a damaged line that is not a complete JSON record "
                f"(a writer was probably killed while writing it){kept}",
                RuntimeWarning,
                stacklevel=2,
            )
            if rec is not None:
                out.append(rec)
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            warnings.warn(
                f"{p}:{n}: skipped a line that holds a JSON {type(rec).__name__}, not a record "
                "object; greenml logs hold one JSON object per line",
                RuntimeWarning,
                stacklevel=2,
            )
    return out


def read_log(path: "str | os.PathLike[str]") -> Any:
    """A pandas DataFrame of a greenml log: one row per record, nested fields flattened
    (``by_domain.gpu:0``, ``carbon.gco2e_per_kwh``, ...). Damaged lines are skipped with a
    warning naming their line number; every intact record is kept (see :func:`read_records`)."""
    import pandas as pd

    records = read_records(path)
    if not records:
        return pd.DataFrame()
    return pd.json_normalize(records, max_level=1)
