"""User sessions: the live sessions of the node, their token keepers, connections and transport
sessions.

``SessionManager`` is the registry of live sessions and the one name the edge holds; the other
roles are its parts: ``TransportSessions``, ``StreamSlots``, ``UpstreamRefresher`` (with each
session's ``TokenKeeper``) and ``TierChanges``. The package's public names are here; the rest of
``actors`` imports them from this module, and the edge imports them from ``actors``. See
docs/sessions.md.
"""

from __future__ import annotations

from actors.sessions._manager import SessionManager
from actors.sessions._session import UserSession
from actors.sessions._slots import StreamSlots
from actors.sessions._streams import (
    Connection,
    Outbox,
    dead_nodes_connections_closed,
    grant_connections_closed,
    stale_connections_closed,
)
from actors.sessions._tier_changes import TierChanges
from actors.sessions._tokens import (
    NO_REFRESH_TOKEN,
    TokenKeeper,
    TokenState,
    UpstreamRefresher,
    refresh_gap,
)
from actors.sessions._transport import (
    TransportSessions,
    idle_transport_sessions_ended,
    log_level_op,
)
from actors.sessions._values import (
    AuthenticationRequiredError,
    SessionLimitReached,
    SessionPolicy,
    SessionRestarting,
    StreamEvent,
    StreamLimitReached,
    TransportSession,
    UserContext,
    final_event,
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
    "StreamSlots",
    "TierChanges",
    "TokenKeeper",
    "TokenState",
    "TransportSession",
    "TransportSessions",
    "UpstreamRefresher",
    "UserContext",
    "UserSession",
    "dead_nodes_connections_closed",
    "final_event",
    "grant_connections_closed",
    "idle_transport_sessions_ended",
    "log_level_op",
    "refresh_gap",
    "stale_connections_closed",
]
