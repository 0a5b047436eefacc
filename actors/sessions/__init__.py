"""User sessions: the live sessions of the node, their token keepers, connections and transport
sessions.

The package's public names are here; the rest of ``actors`` imports them from this module, and the
edge imports them from ``actors``. See docs/sessions.md.
"""

from __future__ import annotations

from actors.sessions._manager import (
    NO_REFRESH_TOKEN,
    AuthenticationRequiredError,
    Connection,
    Outbox,
    SessionLimitReached,
    SessionManager,
    SessionPolicy,
    SessionRestarting,
    StreamEvent,
    StreamLimitReached,
    TokenState,
    TransportSession,
    UserContext,
    UserSession,
    final_event,
    log_level_op,
    refresh_gap,
)

__all__ = [
    "NO_REFRESH_TOKEN",
    "AuthenticationRequiredError",
    "Connection",
    "Outbox",
    "SessionLimitReached",
    "SessionManager",
    "SessionPolicy",
    "SessionRestarting",
    "StreamEvent",
    "StreamLimitReached",
    "TokenState",
    "TransportSession",
    "UserContext",
    "UserSession",
    "final_event",
    "log_level_op",
    "refresh_gap",
]
