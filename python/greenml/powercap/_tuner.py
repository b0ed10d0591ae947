"""Choosing a power limit during training: ``tuner.step()`` after each training step."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .._errors import GreenmlError
from ._limits import PowercapError, limit_of
from ._safety import LimitGuard
from ._sweep import Choice, Cycle, LimitPoint, Limits, choose, resolve_limits


def _warn(message: str) -> None:
    """A RuntimeWarning that never raises into the training loop, even when warnings are
    errors (it then goes to the ``greenml`` logger)."""
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=4)
    except Exception:  # noqa: BLE001
        logging.getLogger("greenml").warning("%s", message)


class Saving(float):
    """A fraction of energy saved (a float) with its standard error in ``uncertainty``."""

    uncertainty: float

    def __new__(cls, fraction: float, uncertainty: float) -> "Saving":
        obj = super().__new__(cls, fraction)
        obj.uncertainty = uncertainty
        return obj

    def __repr__(self) -> str:
        return f"Saving({float(self):.4f} +/- {self.uncertainty:.4f})"


class Tuner:
    """Finds and applies the power limit that saves the most energy within a slowdown budget,
    during the first steps of a real run (in the spirit of Zeus's power-limit optimizer).

    ::

        with greenml.powercap.Tuner(device="gpu:0", max_slowdown=0.05) as tuner:
            for batch in loader:
                train_step(batch)
                tuner.step()
        print(tuner.report())

    The first ``step()`` sets the highest limit of the grid; each limit then runs
    ``warmup_steps`` uncounted steps and ``steps_per_limit`` measured ones (energy and time per
    step through a meter). After the last limit, the tuner applies the limit with the least
    energy per step whose time per step (plus one standard error) is within ``max_slowdown`` of
    the highest limit's, or, with ``cost=eta``, the least ``eta * energy + (1 - eta) *
    max_limit * time`` within that budget (``max_slowdown=None``: no budget). It stays applied
    until ``close()`` (or the end of the ``with`` block), which restores the original limit;
    SIGINT, SIGTERM, interpreter exit and ``greenml powercap restore`` after a crash restore it
    too. Later ``step()`` calls cost one attribute check.

    Raises NoPrivilege at construction, with nothing changed, when this process cannot set the
    limit (the Lightning and Hugging Face callbacks turn that into a warning).
    """

    def __init__(
        self,
        device: str = "gpu:0",
        limits: Limits = "auto",
        max_slowdown: Optional[float] = 0.05,
        steps_per_limit: int = 20,
        warmup_steps: int = 5,
        cost: Optional[float] = None,
        *,
        settle_s: float = 0.0,
        state_path: Optional[Union[str, Path]] = None,
        runtime: Any = None,
    ) -> None:
        if max_slowdown is not None and not max_slowdown >= 0:
            raise GreenmlError(f"max_slowdown={max_slowdown!r}: give a fraction >= 0, e.g. 0.05")
        self.device = device
        self.max_slowdown = max_slowdown
        self.cost = cost
        self._guard = LimitGuard(state_path)
        self._guard.on_restore = self._stopped_by_restore
        self.limit = limit_of(device, self._guard.settings)
        self.limits = resolve_limits(limits, self.limit)
        self.limit.check(self.limits[0])  # privileges and range, before any change
        self._cycle = Cycle(
            self._guard, self.limit, self.limits, steps_per_limit, warmup_steps, settle_s, runtime
        )
        self.state = "ready"  # ready -> tuning -> applied -> closed
        self._choice: Optional[Choice] = None
        self._points: List[LimitPoint] = []
        self.steps = 0
        #: Why tuning stopped early (a failure of its bookkeeping), or None.
        self.error: Optional[str] = None

    # -- the training loop's side ------------------------------------------------------------

    def step(self) -> None:
        """Call after each training step.

        Raises only the PowercapError family (NoPrivilege, LimitOutOfRange, ...), when a limit
        cannot be changed or restored. Any other failure of the tuning (a measurement, the
        choice) stops it instead: the original limit is restored, a RuntimeWarning says why,
        ``error`` keeps the reason, ``state`` is ``"closed"``, and training goes on."""
        self.steps += 1
        if self.state == "applied" or self.state == "closed":
            return
        try:
            self._advance()
        except PowercapError:
            raise
        except Exception as exc:  # noqa: BLE001 - bookkeeping must not stop the training loop
            self._give_up(exc)

    def _advance(self) -> None:
        if self.state == "ready":
            self.state = "tuning"
            self._cycle.start()
            return
        self._cycle.step()
        if self._cycle.done and self.state == "tuning":  # not when a signal stopped it
            self._decide()

    def _decide(self) -> None:
        self._points = self._cycle.points()
        try:
            choice = choose(self._points, self.max_slowdown, self.cost, self.limit.max_w)
        except PowercapError as exc:  # nothing measured: no choice, not a limit change
            self._give_up(exc)
            return
        self._choice = choice
        self._guard.set(self.device, choice.limit_w)
        if not self._guard.closed:  # a signal may have restored it as the set returned
            self.state = "applied"

    def _give_up(self, exc: BaseException) -> None:
        self.error = f"{type(exc).__name__}: {exc}"
        self.state = "closed"
        try:
            try:
                self._cycle.abort()
            except Exception:  # noqa: BLE001 - the limit is restored below all the same
                pass
            self._guard.restore()  # a limit that cannot be restored: PowercapError
        finally:
            _warn(
                f"greenml's power-limit tuner stopped ({self.error}); the original limit of "
                f"{self.device} is restored and training goes on under it"
            )

    def _stopped_by_restore(self) -> None:
        # A signal or interpreter exit restored the limit: nothing is applied any more.
        self._cycle.abort()
        self.state = "closed"

    def close(self) -> None:
        """Restores the original limit (idempotent)."""
        if self.state == "closed" and self._guard.closed:
            return
        self._cycle.abort()
        self.state = "closed"
        self._guard.restore()

    def __enter__(self) -> "Tuner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- results -----------------------------------------------------------------------------

    @property
    def chosen_w(self) -> Optional[float]:
        """The limit applied after tuning (W); None while tuning."""
        return self._choice.limit_w if self._choice is not None else None

    @property
    def expected_saving(self) -> Optional[Saving]:
        """Fraction of energy per step saved against the highest limit, with its standard error
        (``.uncertainty``); None while tuning."""
        c = self._choice
        return Saving(c.saving, c.saving_se) if c is not None else None

    @property
    def expected_slowdown(self) -> Optional[Saving]:
        c = self._choice
        return Saving(c.slowdown, c.slowdown_se) if c is not None else None

    @property
    def points(self) -> List[LimitPoint]:
        return list(self._points)

    def report(self) -> Dict[str, Any]:
        """What the tuner did: state, limits tried, measurements, choice."""
        from .._records import json_numbers

        c = self._choice
        return json_numbers(
            {
                "device": self.device,
                "state": self.state,
                "error": self.error,
                "steps": self.steps,
                "limits_w": self.limits,
                "original_w": self.limit.current_w,
                "max_slowdown": self.max_slowdown,
                "cost": self.cost,
                "chosen_w": self.chosen_w,
                "reference_w": c.reference_w if c else None,
                "expected_saving": c.saving if c else None,
                "expected_saving_se": c.saving_se if c else None,
                "expected_slowdown": c.slowdown if c else None,
                "expected_slowdown_se": c.slowdown_se if c else None,
                "points": [
                    {**p.__dict__, "power_w": p.power_w if math.isfinite(p.time_s) else None}
                    for p in self._points
                ],
            }
        )

    def __repr__(self) -> str:
        c = self._choice
        return f"Tuner({self.device}, {self.state}" + (f", {c})" if c else ")")
