"""Authentication at the MCP endpoints: the caller's token, its session, its transport session."""

from __future__ import annotations

from typing import Any

from actors import (
    SessionManager,
    SessionRestarting,
    StoreUnavailable,
    TransportSession,
    UserSession,
)
from server.http import Scope
from server.mcp._exchange import Reply, rpc_reply, unavailable_reply
from server.mcp._jsonrpc import INVALID_REQUEST
from server.oauth import AuthError, ResourceServer

__all__ = ["Gate"]


class Gate:
    """MCP-R18: every request, each stream's opening one included, carries a valid token; a
    transport session is found only for its own caller (MCP-R10, R20)."""

    def __init__(self, resource_server: ResourceServer, sessions: SessionManager) -> None:
        self.rs = resource_server
        self.sessions = sessions

    async def authenticate(self, scope: Scope) -> tuple[Any, UserSession]:
        """The request's principal and its user's session (touched: the session is in use)."""
        try:
            principal = await self.rs.authenticate(scope)
        except AuthError as exc:
            raise Reply(exc.status, exc.body, exc.headers) from None
        try:
            session = await self.sessions.session_for(principal)
        except StoreUnavailable:
            raise unavailable_reply() from None
        except SessionRestarting:
            raise Reply(
                503,
                {
                    "error": "temporarily_unavailable",
                    "error_description": "the session is restarting",
                },
                [(b"retry-after", b"1")],
            ) from None
        session.touch()
        return principal, session

    async def transport(self, principal: Any, session_id: str) -> TransportSession:
        """MCP-R10/R20: an unknown, ended or foreign session id is 404, never anything else."""
        try:
            ts = await self.sessions.transport_session(principal, session_id)
        except StoreUnavailable:
            raise unavailable_reply() from None
        if ts is None:
            raise rpc_reply(404, None, INVALID_REQUEST, "Session not found")
        return ts
