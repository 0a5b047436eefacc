"""The values the session actors and the edge share: a caller's context, a stream event, a
transport session, the sessions' policy and the errors a request may meet."""

from __future__ import annotations

import uuid
from typing import Any

import attrs

from runtime import Backoff

__all__ = [
    "AuthenticationRequiredError",
    "SessionLimitReached",
    "SessionPolicy",
    "SessionRestarting",
    "StreamEvent",
    "StreamLimitReached",
    "TransportSession",
    "UserContext",
    "final_event",
]


@attrs.frozen
class UserContext:
    """What an operator's handler sees of the caller."""

    user_id: str
    grant_id: uuid.UUID
    client_id: str
    tier: str
    scopes: frozenset[str]
    session_id: str | None = None


@attrs.frozen
class StreamEvent:
    """One SSE event: a JSON-RPC message, a priming event, a keep-alive comment or the final error."""

    data: dict[str, Any] | None = None
    text: str | None = None  # raw data instead of JSON (the legacy transport's endpoint event)
    event_id: str | None = None
    event: str | None = None
    retry_ms: int | None = None
    comment: str | None = None
    final: bool = False


@attrs.frozen
class TransportSession:
    session_id: str
    grant_id: uuid.UUID
    user_id: str
    client_id: str
    protocol_version: str
    client_info: dict[str, Any]
    capabilities: dict[str, Any]
    log_level: str | None


class SessionRestarting(Exception):
    """The session's actor is restarting; the request may be retried shortly (503)."""

    def __init__(self, grant_id: uuid.UUID) -> None:
        super().__init__(f"session {grant_id} is restarting")
        self.grant_id = grant_id


class StreamLimitReached(Exception):
    """The user already holds the most long-lived streams their tier allows (429)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this account already holds its maximum of {limit} open streams")
        self.limit = limit


class SessionLimitReached(Exception):
    """The user already holds the most live transport sessions their tier allows (429)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this account already holds its maximum of {limit} MCP sessions")
        self.limit = limit


class AuthenticationRequiredError(Exception):
    """The grant is not active any more (the upstream refresh failed for good, revoked, expired,
    ended): the client must authorize again. The edge answers it in one place, with the 401
    challenge that starts re-authorization (``McpHttp.reauthorize``)."""

    def __init__(self, reason: str, grant_id: uuid.UUID | None = None) -> None:
        super().__init__(f"the session is {reason}; authorize again")
        self.reason = reason
        self.grant_id = grant_id


@attrs.frozen
class SessionPolicy:
    outbox_size: int = 256  # events buffered per stream; past it the slow stream is closed
    heartbeat: float = 15.0  # keep-alive comment interval on every stream
    idle_timeout: float = 1800.0  # a session actor with no request and no stream stops (rows stay)
    # upstream tokens are refreshed ``refresh_lead`` before they expire, but never earlier than
    # ``refresh_lead_fraction`` of their lifetime before (a 30 s token: 7.5 s before); the lead
    # is spread by ± ``refresh_jitter`` of itself so a fleet does not refresh at once
    refresh_lead: float = 60.0
    refresh_lead_fraction: float = 0.25
    refresh_jitter: float = 0.2
    # no two refreshes of one grant start closer than ``refresh_floor``, on any node; each
    # refresh in a row answered with a lifetime shorter than that doubles it, up to
    # ``refresh_backoff_max`` (docs/sessions.md, "When the token keeper refreshes")
    refresh_floor: float = 5.0
    refresh_backoff_max: float = 300.0
    lease: float = 30.0  # how long a node may hold the single-flight refresh lease
    max_sessions: int = 100_000
    max_connections: int = 64  # streams per user session
    restart_wait: float = 2.0  # how long a request waits for a restarting session before 503
    touch_interval: float = 30.0  # last_seen writes per session at most this often
    reconnect_retry_ms: int = 1000  # the `retry:` of a stream's final reconnect event
    stream_count_wait: float = 0.25  # the read of other nodes' streams of a user, at most
    nodes_recheck: float = 10.0  # how long "no other node is alive" is believed before a re-read
    # a transport session with no request and no stream this long is ended (janitor); a node's
    # cached copy unused this long is read again (so it sees that end)
    transport_idle: float = 86400.0
    keeper_backoff: Backoff = Backoff(min=1.0, max=60.0, jitter=0.3, reset_after=120.0)  # noqa: RUF009
    # a session's own supervisor (its token keeper and connections): crashes past this many in
    # ``session_period`` end the session; a database outage is never counted (docs/runtime.md)
    session_intensity: int = 5
    session_period: float = 60.0


def final_event(level: str, data: dict[str, Any], retry_ms: int | None = None) -> StreamEvent:
    """The event a stream ends with: a JSON-RPC notification every MCP client understands (a
    custom SSE event type is dropped by some clients), marked final so the stream ends after it.
    It carries no event id, so a client resuming with Last-Event-ID continues after the event
    before it."""
    return StreamEvent(
        {
            "jsonrpc": "2.0",
            "method": "notifications/message",
            "params": {"level": level, "logger": "steward", "data": data},
        },
        retry_ms=retry_ms,
        final=True,
    )
