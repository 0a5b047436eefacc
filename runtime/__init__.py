"""Steward's supervision runtime: OTP-style supervisors and actors on Trio.

The whole public API is here; see docs/runtime.md for the semantics.
"""

from __future__ import annotations

from runtime._errors import (
    ActorExited,
    DuplicateKey,
    IntensityExceededError,
    MaxChildrenError,
    Shutdown,
    StartTimeout,
    SupervisionError,
    Unavailable,
    UnknownChild,
)
from runtime._events import (
    ChildExited,
    ChildRestarted,
    ChildStarted,
    EventSubscription,
    IntensityExceeded,
    SupervisionEvent,
    subscribe_events,
)
from runtime._exit import Exit, ExitKind, classify_exit
from runtime._faults import FaultPoints, fault_point, faults
from runtime._mailbox import ActorHandle, Mailbox, MailboxStatistics, Reply, open_mailbox
from runtime._registry import Registration, Registry, live_registries
from runtime._spec import UNAVAILABLE_BACKOFF, Backoff, ChildSpec, ChildState, Restart, Strategy
from runtime._supervisor import (
    ChildInfo,
    DynamicSupervisor,
    Supervisor,
    SupervisorHandle,
    TreeNode,
    tree,
)

__all__ = [
    "UNAVAILABLE_BACKOFF",
    "ActorExited",
    "ActorHandle",
    "Backoff",
    "ChildExited",
    "ChildInfo",
    "ChildRestarted",
    "ChildSpec",
    "ChildStarted",
    "ChildState",
    "DuplicateKey",
    "DynamicSupervisor",
    "EventSubscription",
    "Exit",
    "ExitKind",
    "FaultPoints",
    "IntensityExceeded",
    "IntensityExceededError",
    "Mailbox",
    "MailboxStatistics",
    "MaxChildrenError",
    "Registration",
    "Registry",
    "Reply",
    "Restart",
    "Shutdown",
    "StartTimeout",
    "Strategy",
    "SupervisionError",
    "SupervisionEvent",
    "Supervisor",
    "SupervisorHandle",
    "TreeNode",
    "Unavailable",
    "UnknownChild",
    "classify_exit",
    "fault_point",
    "faults",
    "live_registries",
    "open_mailbox",
    "subscribe_events",
    "tree",
]
