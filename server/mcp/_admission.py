"""The tier's limits at the MCP endpoints: what a caller may start (requests, transport sessions,
streams) and the 429 or 503 it gets past them."""

from __future__ import annotations

import time
from typing import Any

import trio

from actors import (
    Connection,
    ConnectionKind,
    RateLimited,
    SessionLimitReached,
    SessionManager,
    Store,
    StoreUnavailable,
    StreamLimitReached,
    UsageMeter,
    UserContext,
    UserSession,
)
from runtime import MaxChildrenError
from server.mcp._exchange import too_many, unavailable_reply
from server.mcp._refusals import refusal

__all__ = ["Admission"]

STREAM_RETRY_AFTER = 5  # the Retry-After of a refused stream: streams end at no known time
SESSION_RETRY_AFTER = 60  # the Retry-After of a refused transport session: sessions end when
# their client deletes them or after transport_session_idle
_UNCOUNTED = frozenset({"initialize", "ping", "tools/list"})


class Admission:
    """Keyed by user (MCP-R19 aside, a reconnect resets nothing)."""

    def __init__(
        self,
        usage: UsageMeter,
        store: Store,
        sessions: SessionManager,
        *,
        stream_token_grace: float = 60.0,
    ) -> None:
        self.usage = usage
        self.store = store
        self.sessions = sessions
        self.stream_token_grace = stream_token_grace

    async def count(self, user: UserContext, method: str, request_id: Any) -> None:
        """The request rate, and for tools/call the quota per period; 429 with Retry-After past
        them."""
        if method in _UNCOUNTED:
            return
        try:
            # the journal at its bound (a long outage): refuse before doing work whose usage
            # record could not be kept
            self.store.check_room()
        except StoreUnavailable as exc:
            raise unavailable_reply(str(exc)) from None
        try:
            self.usage.check(user.user_id, user.tier)
            if method == "tools/call":
                await self.usage.check_tool_call(user.user_id, user.tier)
        except RateLimited as exc:  # QuotaExceeded too: the refusal names its limit and reset
            msg, data = refusal(user.tier, exc)
            raise too_many(request_id, msg, exc.retry_after, data) from None

    async def new_transport_session(
        self,
        session: UserSession,
        request_id: Any,
        *,
        protocol_version: str,
        client_info: dict[str, Any],
        capabilities: dict[str, Any],
    ) -> str:
        """A new transport session (``initialize``, a legacy ``/sse`` stream) within the tier's
        limits: ``initialize_per_minute`` and ``max_sessions`` live at once. Past either: 429
        with Retry-After and a JSON-RPC error naming the limit; nothing stored."""
        user = session.context
        try:
            self.usage.check_initialize(user.user_id, user.tier)
        except RateLimited as exc:
            msg, data = refusal(user.tier, exc)
            raise too_many(request_id, msg, exc.retry_after, data) from None
        try:
            return await self.sessions.create_transport_session(
                session,
                protocol_version=protocol_version,
                client_info=client_info,
                capabilities=capabilities,
                max_sessions=self.usage.max_sessions(user.tier),
            )
        except StoreUnavailable:
            raise unavailable_reply() from None
        except SessionLimitReached as exc:
            msg = (
                f"the {user.tier} tier allows {exc.limit} live MCP sessions per account "
                "(max_sessions); end one with DELETE, or wait until an idle one expires"
            )
            data = {"limit": "max_sessions", "value": exc.limit}
            raise too_many(request_id, msg, SESSION_RETRY_AFTER, data) from None

    async def open_stream(
        self,
        session: UserSession,
        kind: ConnectionKind,
        session_id: str | None,
        stream_id: str | None = None,
        *,
        token_expires_at: float | None = None,
    ) -> Connection:
        """Start a connection actor for a stream within the session's and the tier's stream
        limits. A long-lived one (GET, listen, legacy) passes the expiry of the access token that
        opened it: ``stream_token_grace`` seconds past it, the stream ends with a reconnect hint
        (the client comes back with a fresh token)."""
        reconnect_at = None
        if token_expires_at is not None:
            left = token_expires_at + self.stream_token_grace - time.time()
            reconnect_at = trio.current_time() + max(0.0, left)
        try:
            return await session.open_connection(
                kind=kind,
                session_id=session_id,
                stream_id=stream_id,
                reconnect_at=reconnect_at,
                max_streams=self.usage.max_streams(session.context.tier),
            )
        except MaxChildrenError:
            limit = self.sessions.policy.max_connections
            msg = f"this session already holds its maximum of {limit} streams"
            raise too_many(None, msg, STREAM_RETRY_AFTER, {"limit": limit}) from None
        except StreamLimitReached as exc:
            msg = f"the {session.context.tier} tier allows {exc.limit} open streams per account; close one first"
            raise too_many(None, msg, STREAM_RETRY_AFTER, {"limit": exc.limit}) from None
