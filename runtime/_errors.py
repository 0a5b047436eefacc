"""The runtime's exceptions.

Exception
├── Shutdown                  an actor ends on purpose, with a reason (exit kind SHUTDOWN)
├── Unavailable               a dependency is away, not a defect (exit kind UNAVAILABLE)
└── SupervisionError          something the runtime refuses or gives up on
    ├── MaxChildrenError      a dynamic supervisor is full
    ├── IntensityExceededError  too many restarts in the window: escalated to the parent
    ├── StartTimeout          a child did not report readiness within its start grace
    ├── DuplicateKey          a registry key is taken
    ├── UnknownChild          no child with that id
    └── ActorExited           the actor behind a handle has exited
"""

from __future__ import annotations

__all__ = [
    "ActorExited",
    "DuplicateKey",
    "IntensityExceededError",
    "MaxChildrenError",
    "Shutdown",
    "StartTimeout",
    "SupervisionError",
    "Unavailable",
    "UnknownChild",
]


class Shutdown(Exception):
    """Raised by an actor to end on purpose; its exit is SHUTDOWN with this reason."""

    def __init__(self, reason: str = "shutdown") -> None:
        super().__init__(reason)
        self.reason = reason


class Unavailable(Exception):
    """Raised by an actor when something it depends on is away (a database, a network service).

    Its exit is UNAVAILABLE: the supervisor restarts it with backoff (the child's, or the
    supervisor's ``unavailable_backoff``) but does not count the restart against its intensity,
    because an outage of any length is not a crash loop (docs/runtime.md). Subclass it for the
    dependency (``actors.StoreUnavailable``)."""


class SupervisionError(Exception):
    """Base of the runtime's own errors."""


class MaxChildrenError(SupervisionError):
    """A dynamic supervisor already has ``max_children`` children."""


class IntensityExceededError(SupervisionError):
    """A supervisor saw more restarts than its intensity allows and gave up."""

    def __init__(self, supervisor: str, restarts: int, period: float) -> None:
        msg = f"supervisor {supervisor!r} exceeded restart intensity ({restarts} restarts in {period}s)"
        super().__init__(msg)
        self.supervisor = supervisor
        self.restarts = restarts
        self.period = period


class StartTimeout(SupervisionError):
    """A child did not call ``task_status.started()`` within its ``start_grace``."""


class DuplicateKey(SupervisionError):
    """A registry key is already registered."""


class UnknownChild(SupervisionError):
    """A supervisor has no child with the given id."""


class ActorExited(SupervisionError):
    """The actor behind a handle exited before it could answer."""
