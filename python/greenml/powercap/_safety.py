"""Changing a limit safely: the original is saved to a state file before the first change, and
restored at the end, on exceptions, on SIGINT/SIGTERM, at interpreter exit, and after a crash
by ``greenml powercap restore`` (which reads the state file).

The state file is JSON::

    {"version": 1, "pid": 1234, "host": "node7", "boot_id": "d63b...", "created_unix": 1.7e9,
     "limits": [{"domain": "gpu:0", "source": "nvml", "uuid": "GPU-...", "library": "...",
                 "original_w": 300.0},
                {"domain": "package:0", "source": "rapl", "path": ".../constraint_0_power_limit_uw",
                 "original_w": 125.0}]}

GPUs are restored by UUID (another process may number them differently), RAPL zones by the
absolute path of the file that was written. ``host`` and ``boot_id`` (the kernel's boot id) say
where and in which boot the originals were saved: a file written on another host (a state file
in an NFS home) is not applied here, and one written before a reboot is stale (a reboot resets
power limits).
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
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from .._config import Settings, settings_from_env
from .._distributed import boot_id as _boot_id
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
    file. Returns the entries restored (empty when there was no file, or when it was stale).

    Unless ``force``, refuses (PowercapError, the file kept) when another host wrote it (its
    limits are that host's: restore them there) or while the process that wrote it is still
    running (it restores them itself when it ends). A file written on this host before its last
    reboot is stale: the reboot reset the limits, so nothing is written, the file is removed
    and a RuntimeWarning says so. When some limit cannot be restored, the file keeps those
    entries and PowercapError says which and why.
    """
    path = Path(path) if path is not None else default_state_path()
    settings = settings or settings_from_env()
    try:
        state = read_state(path)
    except FileNotFoundError:
        return []
    pid = int(state.get("pid", 0))
    host, here = state.get("host"), socket.gethostname()
    if not force and host is not None and host != here:
        raise PowercapError(
            f"{path} was written on host {host} (process {pid}), not on this host ({here}): its "
            f"limits are {host}'s; run `greenml powercap restore --state {path}` on {host}, or "
            "add --force to write them here"
        )
    boot, now = state.get("boot_id"), _boot_id()
    if not force and boot and now and boot != now:
        # The process that wrote it belongs to an earlier boot (its pid may have been reused),
        # and the reboot reset the power limits: writing the old originals would only undo
        # whatever was set since.
        path.unlink(missing_ok=True)
        warnings.warn(
            f"{path} was written before this host's last reboot (by process {pid}); a reboot "
            "resets power limits, so nothing was restored; the stale file was removed (use "
            "--force to write its limits anyway)",
            RuntimeWarning,
            stacklevel=2,
        )
        return []
    if not force and pid > 0 and pid != os.getpid() and _alive(pid):
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
        LimitOutOfRange, NoPrivilege or PowercapError, with nothing changed, when it cannot.

        A SIGINT/SIGTERM that arrives while it runs (on the main thread) is handled when it
        returns, as if it had arrived just after: the saved state and the limit written always
        agree, and the handler restores them both."""
        with _signals_deferred():
            with self._lock:
                return self._set(domain, float(watts))

    def _set(self, domain: str, watts: float) -> PowerLimit:
        if self._closed:
            raise PowercapError(
                "this power-limit guard has restored its limits and is closed; start a new one"
            )
        lim = limit_of(domain, self.settings)
        lim.check(watts)
        first = self.original_w(domain) is None
        if first:
            self._save(lim)  # before the change: a crash right after it can be undone
        original = self.original_w(domain)
        try:
            self._write(lim, watts)
        except PowercapError:
            if first:  # nothing changed: nothing to restore for it
                self._forget(domain)
            raise
        if self._closed:
            # restore() ran during the write (called from a handler that is not greenml's):
            # it could not undo a limit not yet written, so undo it here.
            assert original is not None
            self._write(lim, original)
            raise PowercapError(
                f"the guard was closed while {domain}'s limit was being set; its original "
                f"{original:g} W was written back"
            )
        return lim

    def _write(self, lim: PowerLimit, watts: float) -> None:
        if lim.source == "nvml":
            set_gpu_limit_by_uuid(self.settings, lim.uuid, watts)
        else:
            set_rapl_limit(lim.path, watts)

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
            "boot_id": _boot_id(),
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
            host = old.get("host")
            who = f"process {old.get('pid')} on {host}"
        except (PowercapError, FileNotFoundError):
            who, host = "another run", None
        if host is not None and host != socket.gethostname():
            return (
                f"{self.state_path} holds original power limits saved by {who}, another host, "
                f"and not restored yet; run `greenml powercap restore --state {self.state_path}` "
                f"on {host}, or give this host its own state file ({STATE_ENV}); nothing was "
                "changed"
            )
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
        with _signals_deferred(), self._lock:
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
        if self._install_handlers:
            _register(self)

    def _uninstall(self) -> None:
        if self._atexit:
            atexit.unregister(self._at_exit)
            self._atexit = False
        _unregister(self)

    def _at_exit(self) -> None:
        self._restore_reporting("interpreter exit")


# -- signals ----------------------------------------------------------------------------------
#
# One handler per signal serves every open guard: installed (from the main thread) when the
# first guard registers, it restores every open guard and then chains to the handler it
# replaced; it is put back when the last guard closes, if it is still the one installed.
# Guards may close in any order. A handler replaced by someone else stays valid (it keeps its
# own previous handler to chain to), and a later guard installs a new one on top.

_registry_lock = threading.RLock()
_guards: List[LimitGuard] = []
_handlers: Dict[int, Callable[[int, Any], None]] = {}
#: Depth of LimitGuard.set() calls running on the main thread, and signals that arrived then.
_deferring = 0
_pending: List[tuple] = []


def _register(guard: LimitGuard) -> None:
    with _registry_lock:
        if guard not in _guards:
            _guards.append(guard)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in _SIGNALS:
            h = _handlers.get(sig)
            if h is None or signal.getsignal(sig) is not h:
                h = _make_handler(signal.getsignal(sig))
                signal.signal(sig, h)
                _handlers[sig] = h


def _unregister(guard: LimitGuard) -> None:
    with _registry_lock:
        if guard in _guards:
            _guards.remove(guard)
        if _guards or threading.current_thread() is not threading.main_thread():
            return  # off the main thread the handler stays: it chains, restoring nothing
        for sig, h in list(_handlers.items()):
            if signal.getsignal(sig) is h:
                signal.signal(sig, _reinstallable(sig, h.previous))  # type: ignore[attr-defined]
            del _handlers[sig]


def _reinstallable(sig: int, prev: Any) -> Any:
    """What to put back: the previous handler; where it was not set from Python (None),
    Python's own default (KeyboardInterrupt for SIGINT)."""
    if prev is None:
        return signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
    return prev


def _make_handler(prev: Any) -> Callable[[int, Any], None]:
    def _greenml_powercap_handler(signum: int, frame: Any) -> None:
        if _deferring:  # inside LimitGuard.set() on the main thread: handled when it returns
            _pending.append((_greenml_powercap_handler, signum, frame))
            return
        with _registry_lock:
            open_guards = [g for g in reversed(_guards) if g._pid == os.getpid()]
        name = signal.Signals(signum).name
        for g in open_guards:  # the newest first; a forked child restores none of its parent's
            g._restore_reporting(name)
        # Then whatever would have happened without us.
        if callable(prev):
            prev(signum, frame)
        elif prev is None and signum == signal.SIGINT:
            signal.default_int_handler(signum, frame)
        elif prev != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    _greenml_powercap_handler.previous = prev  # type: ignore[attr-defined]
    return _greenml_powercap_handler


class _signals_deferred:
    """On the main thread, holds greenml's SIGINT/SIGTERM handling while a limit is saved and
    written (a handler would otherwise restore in the middle of it), then runs what arrived."""

    def __enter__(self) -> None:
        global _deferring
        self._main = threading.current_thread() is threading.main_thread()
        if self._main:
            _deferring += 1

    def __exit__(self, *exc: object) -> None:
        global _deferring
        if not self._main:
            return
        _deferring -= 1
        if _deferring or not _pending:
            return
        arrived = list(_pending)
        _pending.clear()
        seen = set()
        for handler, signum, frame in arrived:  # each signal once, as the kernel would
            if (handler, signum) not in seen:
                seen.add((handler, signum))
                handler(signum, frame)


def _after_fork_in_child() -> None:
    global _registry_lock, _deferring
    _registry_lock = threading.RLock()  # another thread may have held it at the fork
    _deferring = 0
    _pending.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
