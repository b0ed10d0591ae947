"""Changing a limit safely: the original is saved to a state file before the first change, and
restored at the end, on exceptions, on SIGINT/SIGTERM, at interpreter exit, and after a crash
by ``greenml powercap restore`` (which reads the state file).

The state file is JSON::

    {"version": 1, "pid": 1234, "host": "node7", "created_unix": 1.7e9,
     "limits": [{"domain": "gpu:0", "source": "nvml", "uuid": "GPU-...", "library": "...",
                 "original_w": 300.0},
                {"domain": "package:0", "source": "rapl", "path": ".../constraint_0_power_limit_uw",
                 "original_w": 125.0}]}

GPUs are restored by UUID (another process may number them differently), RAPL zones by the
absolute path of the file that was written.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from .._config import Settings, settings_from_env
from ._limits import PowercapError, PowerLimit, limit_of, set_gpu_limit_by_uuid, set_rapl_limit

#: Where the state file lives (overrides the default below).
STATE_ENV = "GREENML_POWERCAP_STATE"
_VERSION = 1
_SIGNALS = (signal.SIGINT, signal.SIGTERM)

PathLike = Union[str, "os.PathLike[str]"]


def default_state_path(env: Optional[Mapping[str, str]] = None) -> Path:
    """``$GREENML_POWERCAP_STATE``, else ``$XDG_STATE_HOME/greenml/powercap-state.json``
    (``~/.local/state/greenml/powercap-state.json`` when XDG_STATE_HOME is unset)."""
    env = os.environ if env is None else env
    if env.get(STATE_ENV):
        return Path(env[STATE_ENV])
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "greenml" / "powercap-state.json"


class _StateExists(Exception):
    """The state file exists: another run saved originals it has not restored."""


def _write_state(path: Path, state: Dict[str, Any], exclusive: bool) -> None:
    """Writes the state durably (temp file, fsync, then link or rename into place), so a crash
    leaves the old state or the new one, never half of one. ``exclusive``: fail if the file
    exists (two runs must not both believe they saved the originals)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".powercap-state-", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                raise _StateExists(str(path)) from None
        else:
            os.replace(tmp, path)
            tmp = ""
    finally:
        if tmp:
            os.unlink(tmp)
    dfd = os.open(str(path.parent), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_state(path: PathLike) -> Dict[str, Any]:
    try:
        state = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise PowercapError(
            f"cannot read the power-limit state file {path}: {exc}; its limits must be restored "
            "by hand (nvidia-smi -pl, or the RAPL constraint files)"
        ) from None
    if not isinstance(state, dict) or state.get("version") != _VERSION:
        raise PowercapError(f"{path} is not a greenml power-limit state file (version 1)")
    return state


def _restore_entry(entry: Mapping[str, Any], settings: Settings) -> None:
    watts = float(entry["original_w"])
    if entry["source"] == "nvml":
        lib = entry.get("library") or settings.nvml_library
        set_gpu_limit_by_uuid(replace(settings, nvml_library=lib), str(entry["uuid"]), watts)
    elif entry["source"] == "rapl":
        set_rapl_limit(str(entry["path"]), watts)
    else:
        raise PowercapError(f"unknown source {entry['source']!r} in the state file")


def _describe(entry: Mapping[str, Any]) -> str:
    where = entry.get("uuid") or entry.get("path") or ""
    return f"{entry['domain']} ({where})" if where else str(entry["domain"])


def _restore_entries(entries: List[Dict[str, Any]], settings: Settings) -> tuple:
    """Restores in reverse order of change; returns (restored, failed as (entry, message))."""
    done: List[Dict[str, Any]] = []
    failed: List[tuple] = []
    for entry in reversed(entries):
        try:
            _restore_entry(entry, settings)
            done.append(entry)
        except PowercapError as exc:
            failed.append((entry, str(exc)))
    return done, failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def restore_from_state(
    path: Optional[PathLike] = None, *, force: bool = False, settings: Optional[Settings] = None
) -> List[Dict[str, Any]]:
    """Restores every limit saved in the state file (after a crash or a kill), then removes the
    file. Returns the entries restored (empty when there was no file).

    Refuses while the process that wrote it is still running on this host (it restores them
    itself when it ends), unless ``force``. When some limit cannot be restored, the file keeps
    those entries and PowercapError says which and why.
    """
    path = Path(path) if path is not None else default_state_path()
    settings = settings or settings_from_env()
    try:
        state = read_state(path)
    except FileNotFoundError:
        return []
    pid = int(state.get("pid", 0))
    same_host = state.get("host") == socket.gethostname()
    if not force and same_host and pid > 0 and pid != os.getpid() and _alive(pid):
        raise PowercapError(
            f"process {pid}, which changed these limits, is still running: it restores them "
            "when it ends (also on SIGINT/SIGTERM); use --force to restore them now"
        )
    done, failed = _restore_entries(list(state.get("limits", [])), settings)
    if failed:
        state["limits"] = [e for e, _ in reversed(failed)]
        _write_state(path, state, exclusive=False)
        lines = "; ".join(f"{_describe(e)} back to {e['original_w']:g} W: {m}" for e, m in failed)
        raise PowercapError(f"could not restore {len(failed)} limit(s) (kept in {path}): {lines}")
    path.unlink()
    return list(reversed(done))


class LimitGuard:
    """Changes limits with their originals saved first, and restores them on every exit path.

    ``with LimitGuard() as g: g.set("gpu:0", 200)`` -- before the first change of each domain
    its original is added to the state file (created exclusively: a file left by an earlier run
    means its limits were never restored, so this refuses until ``greenml powercap restore``
    ran). On close, an exception in the block, SIGINT/SIGTERM (then the previous handler runs,
    or the process dies of the signal as it would have), or interpreter exit, the originals are
    restored and the state file removed. Signal handlers are installed only from the main
    thread; atexit always.
    """

    def __init__(
        self,
        state_path: Optional[PathLike] = None,
        settings: Optional[Settings] = None,
        install_handlers: bool = True,
    ) -> None:
        self.settings = settings or settings_from_env()
        self.state_path = (
            Path(state_path) if state_path is not None else default_state_path(self.settings.env)
        )
        self._install_handlers = install_handlers
        self._entries: List[Dict[str, Any]] = []
        self._state: Optional[Dict[str, Any]] = None
        self._pid = os.getpid()
        self._prev: Dict[int, Any] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._atexit = False
        #: Called after a restore forced by a signal or exit (e.g. to tell a tuner it is over).
        self.on_restore: Optional[Callable[[], None]] = None

    # -- changing ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def changed(self) -> List[str]:
        """Domains whose limit this guard changed (and will restore)."""
        return [e["domain"] for e in self._entries]

    def original_w(self, domain: str) -> Optional[float]:
        for e in self._entries:
            if e["domain"] == domain:
                return float(e["original_w"])
        return None

    def set(self, domain: str, watts: float) -> PowerLimit:
        """Sets ``domain``'s limit to ``watts`` (saving its original first). Raises
        LimitOutOfRange, NoPrivilege or PowercapError, with nothing changed, when it cannot."""
        with self._lock:
            if self._closed:
                raise PowercapError(
                    "this power-limit guard has restored its limits and is closed; start a new one"
                )
            lim = limit_of(domain, self.settings)
            lim.check(float(watts))
            first = self.original_w(domain) is None
            if first:
                self._save(lim)  # before the change: a crash right after it can be undone
            try:
                if lim.source == "nvml":
                    set_gpu_limit_by_uuid(self.settings, lim.uuid, float(watts))
                else:
                    set_rapl_limit(lim.path, float(watts))
            except PowercapError:
                if first:  # nothing changed: nothing to restore for it
                    self._forget(domain)
                raise
            return lim

    def _forget(self, domain: str) -> None:
        self._entries = [e for e in self._entries if e["domain"] != domain]
        assert self._state is not None
        if self._entries:
            self._state = {**self._state, "limits": list(self._entries)}
            _write_state(self.state_path, self._state, exclusive=False)
            return
        self._state = None
        self.state_path.unlink(missing_ok=True)
        self._uninstall()

    def _save(self, lim: PowerLimit) -> None:
        if lim.current_w is None:
            raise PowercapError(
                f"the current limit of {lim.domain} cannot be read, so it could not be restored; "
                "nothing was changed"
            )
        entry: Dict[str, Any] = {
            "domain": lim.domain,
            "source": lim.source,
            "original_w": lim.current_w,
        }
        if lim.source == "nvml":
            entry.update(uuid=lim.uuid, library=self.settings.nvml_library)
        else:
            entry.update(path=os.path.abspath(lim.path))
        first = self._state is None
        state = self._state or {
            "version": _VERSION,
            "pid": self._pid,
            "host": socket.gethostname(),
            "created_unix": time.time(),
            "limits": [],
        }
        state = {**state, "limits": [*state["limits"], entry]}
        try:
            _write_state(self.state_path, state, exclusive=first)
        except _StateExists:
            raise PowercapError(self._stale_message()) from None
        except OSError as exc:
            raise PowercapError(
                f"cannot save the original power limits to {self.state_path} ({exc}); nothing "
                f"was changed; set {STATE_ENV} to a writable path"
            ) from None
        self._state = state
        self._entries.append(entry)
        if first:
            self._install()

    def _stale_message(self) -> str:
        try:
            old = read_state(self.state_path)
            who = f"process {old.get('pid')} on {old.get('host')}"
        except (PowercapError, FileNotFoundError):
            who = "another run"
        return (
            f"{self.state_path} holds original power limits saved by {who} and not restored yet "
            "(still running, or it crashed); run `greenml powercap restore` (add --state "
            f"{self.state_path} if it is not the default) before changing limits again; nothing "
            "was changed"
        )

    # -- restoring --------------------------------------------------------------------------

    def restore(self) -> None:
        """Restores every changed limit and removes the state file. Raises PowercapError when
        some limit cannot be restored (the file then keeps it for ``greenml powercap
        restore``)."""
        with self._lock:
            if os.getpid() != self._pid:
                return  # a forked child: the limits are the parent's to restore
            self._closed = True
            self._uninstall()
            if not self._entries:
                return
            done, failed = _restore_entries(self._entries, self.settings)
            self._entries = [e for e, _ in reversed(failed)]
            if failed:
                assert self._state is not None
                self._state = {**self._state, "limits": self._entries}
                _write_state(self.state_path, self._state, exclusive=False)
                lines = "; ".join(f"{_describe(e)}: {m}" for e, m in failed)
                raise PowercapError(
                    f"could not restore {len(failed)} power limit(s); they stay in "
                    f"{self.state_path} for `greenml powercap restore`: {lines}"
                )
            try:
                self.state_path.unlink()
            except FileNotFoundError:
                pass
            self._state = None

    close = restore

    def _restore_reporting(self, why: str) -> None:
        try:
            self.restore()
        except Exception as exc:  # noqa: BLE001 - a handler must not raise; say it instead
            print(f"greenml: restoring power limits on {why} failed: {exc}", file=sys.stderr)
        if self.on_restore is not None:
            self.on_restore()

    def __enter__(self) -> "LimitGuard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    # -- exit paths -------------------------------------------------------------------------

    def _install(self) -> None:
        atexit.register(self._at_exit)
        self._atexit = True
        if not self._install_handlers or threading.current_thread() is not threading.main_thread():
            return
        for sig in _SIGNALS:
            self._prev[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _uninstall(self) -> None:
        if self._atexit:
            atexit.unregister(self._at_exit)
            self._atexit = False
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, prev in list(self._prev.items()):
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._prev.clear()

    def _at_exit(self) -> None:
        self._restore_reporting("interpreter exit")

    def _on_signal(self, signum: int, frame: Any) -> None:
        prev = self._prev.get(signum)
        if os.getpid() == self._pid:
            self._restore_reporting(signal.Signals(signum).name)
        # Then whatever would have happened without us.
        if callable(prev):
            prev(signum, frame)
        elif prev != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
