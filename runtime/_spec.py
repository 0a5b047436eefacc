"""Child specifications and restart policies: immutable values."""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable

import attrs

__all__ = ["UNAVAILABLE_BACKOFF", "Backoff", "ChildSpec", "ChildState", "Restart", "Strategy"]


class Restart(enum.Enum):
    """When a child is restarted (OTP's restart types)."""

    PERMANENT = "permanent"  # after any exit
    TRANSIENT = "transient"  # only after an error exit
    TEMPORARY = "temporary"  # never, even when a sibling's failure stopped it


class ChildState(enum.StrEnum):
    """Where a supervised child is in its life (its value is what trees and logs show)."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    RESTARTING = "restarting"  # exited; the supervisor starts it again after its backoff
    STOPPED = "stopped"


class Strategy(enum.Enum):
    """Which children a supervisor restarts when one of them exits."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        msg = f"{attribute.name} must be >= 0, got {value!r}"
        raise ValueError(msg)


@attrs.frozen
class Backoff:
    """Exponential delay between restarts, with jitter, reset after a quiet period.

    The n-th consecutive restart waits ``min * 2**n`` seconds, capped at ``max``, spread by
    ``±jitter`` (a fraction). A child that stayed up for ``reset_after`` seconds starts over.
    """

    min: float = attrs.field(default=0.1, validator=_non_negative)
    max: float = attrs.field(default=30.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.2, validator=_non_negative)
    reset_after: float = attrs.field(default=60.0, validator=_non_negative)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before restart number ``attempt`` (0-based) of a run of failures."""
        base = min(self.max, self.min * (2 ** min(attempt, 62)))
        if self.jitter:
            spread = (rng or random).uniform(-self.jitter, self.jitter)
            base = min(self.max, max(0.0, base * (1.0 + spread)))
        return float(base)


# the restart delay of a child without a backoff of its own whose dependency is away (exit kind
# UNAVAILABLE): such restarts are not counted by intensity, so something must space them
UNAVAILABLE_BACKOFF = Backoff(min=0.5, max=5.0, jitter=0.2, reset_after=30.0)


@attrs.frozen
class ChildSpec:
    """How to start, restart and stop one child.

    ``start`` is ``async def start(*args, task_status)``: it calls ``task_status.started(face)``
    once ready (``face`` is the actor's public handle) and then runs until it returns or raises.
    """

    id: str
    start: Callable[..., Awaitable[object]]
    args: tuple[object, ...] = ()
    restart: Restart = Restart.PERMANENT
    shutdown_grace: float = attrs.field(default=5.0, validator=_non_negative)
    backoff: Backoff | None = None
    start_grace: float = attrs.field(default=10.0, validator=_non_negative)
