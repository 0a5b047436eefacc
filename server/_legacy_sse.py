"""The deprecated HTTP+SSE transport (MCP 2024-11-05), kept for old clients (MCP-R13).

GET ``/sse`` opens the stream and sends an ``endpoint`` event naming the URI to POST to,
``/messages?session_id=…``; every POST is answered 202 and its reply travels on the stream as a
``message`` event. Each stream is a connection actor and a transport session row, authenticated
like any other request; a POST must come from the stream's principal (404 otherwise, MCP-R20).
"""

from __future__ import annotations

import contextlib
from typing import Any

import structlog
import trio

from actors import (
    AuthenticationRequiredError,
    Connection,
    Principal,
    StoreUnavailable,
    StreamEvent,
    TransportSession,
    UserSession,
)
from server._dispatch import ScopeRequired, TierRefused
from server._http import Receive, Scope, Send, query, send_response
from server._jsonrpc import INVALID_REQUEST, RpcError, error_response, result_response
from server._mcp_http import (
    Exchange,
    McpHttp,
    Reply,
    _unavailable,
    outcome_of,
    result_outcome,
    rpc_reply,
)

__all__ = ["LegacySse"]

log = structlog.get_logger("legacy_sse")

LEGACY_VERSION = "2024-11-05"


class LegacySse:
    """``GET /sse`` and ``POST /messages``, sharing authentication and dispatch with ``/mcp``."""

    def __init__(self, mcp: McpHttp, *, messages_path: str = "/messages") -> None:
        self.mcp = mcp
        self.messages_path = messages_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.mcp.answer(send, lambda: self._route(scope, receive, send), scope["path"])

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.mcp.check_origin(scope)
        path, method = scope["path"], scope["method"]
        if path == "/sse" and method == "GET":
            await self._stream(scope, receive, send)
        elif path == self.messages_path and method == "POST":
            await self._message(scope, receive, send)
        else:
            allow = b"GET" if path == "/sse" else b"POST"
            body = {"error": "method_not_allowed", "error_description": f"{method} {path}"}
            raise Reply(405, body, [(b"allow", allow)])

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal, session = await self.mcp.authenticate(scope)
        try:
            session_id = await self.mcp.new_transport_session(
                session, None, protocol_version=LEGACY_VERSION, client_info={}, capabilities={}
            )
        except StoreUnavailable:
            raise _unavailable() from None
        try:
            conn = await self.mcp.open_stream(
                session, "legacy_sse", session_id, token_expires_at=principal.expires_at
            )
        except Reply:  # refused (a stream limit): the transport session made for it ends
            with contextlib.suppress(StoreUnavailable):
                await self.mcp.sessions.end_transport_session(principal, session_id)
            raise
        self.mcp.legacy_streams[session_id] = conn
        # the stream's row is committed before the client learns where to POST: a POST that
        # reaches another node finds this one through it (server/_relay.py)
        await self.mcp.store.write()
        endpoint = f"{self.messages_path}?session_id={session_id}"
        conn.send_nowait(StreamEvent(event="endpoint", text=endpoint))
        try:
            await self.mcp.pump(conn, send, receive, priming_id=None)
        finally:
            if self.mcp.legacy_streams.get(session_id) is conn:
                del self.mcp.legacy_streams[session_id]
            self.mcp.log_levels.pop(session_id, None)

    def _stream_of(self, session_id: str) -> Connection | None:
        conn = self.mcp.legacy_streams.get(session_id)
        return conn if conn is not None and conn.closed_reason is None else None

    async def _message(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal, session = await self.mcp.authenticate(scope)
        session_id = query(scope).get("session_id", "")
        ts = await self.mcp.transport(principal, session_id)
        message = await self.mcp.read_message(receive)
        relay = self.mcp.relay
        if self._stream_of(ts.session_id) is None and relay is not None:
            # the stream is held by another node: the message is handled there
            forward = {"kind": "legacy", "session_id": ts.session_id, "message": message}
            try:
                if await relay.forward_to_stream(ts.session_id, principal, forward, send):
                    return
            except StoreUnavailable:
                raise _unavailable() from None
        await self.handle(session, ts, message, send)

    async def handle_forwarded(
        self, principal: Principal, session_id: str, message: dict[str, Any], send: Send
    ) -> None:
        """A POSTed message that another node forwarded here, where its stream is (the relay's
        port, server/_relay.py)."""
        session = await self.mcp.sessions.session_for(principal)
        ts = await self.mcp.transport(principal, session_id)
        await self.handle(session, ts, message, send)

    async def handle(
        self, session: UserSession, ts: TransportSession, message: dict[str, Any], send: Send
    ) -> None:
        """One POSTed message for a stream this node holds: 202, and its reply on the stream."""
        conn = self._stream_of(ts.session_id)
        if conn is None:
            raise rpc_reply(404, None, INVALID_REQUEST, "Session not found (its stream is closed)")
        if "method" not in message or "id" not in message:
            await self.mcp.client_message(ts.session_id, ts.user_id, message)
            await send_response(send, 202, b"", b"application/json")
            return
        await send_response(send, 202, b"", b"application/json")
        request_id, method = message["id"], message["method"]
        params: dict[str, Any] = message["params"]
        if method == "initialize":
            result = self.mcp.dispatcher.initialize_result(params.get("protocolVersion"))
            self.mcp.emit(conn, result_response(request_id, result))
            return
        user = session.context_for(ts.session_id)
        try:
            await self.mcp.count(user, method, request_id)
        except (
            Reply
        ) as refused:  # answered 202 already: the 429's JSON-RPC error goes on the stream
            self.mcp.emit(conn, refused.body)
            return
        exchange = Exchange(
            self.mcp,
            request_id,
            session_id=ts.session_id,
            user_id=user.user_id,
            log_level=self.mcp.log_levels.get(ts.session_id, ts.log_level),
            legacy_conn=conn,
        )
        exchange.session = session
        key = (ts.session_id, request_id)
        self.mcp.inflight[key] = exchange
        started, outcome = trio.current_time(), "ok"
        try:
            with exchange.cancel_scope:
                try:
                    result = await self.mcp.dispatcher.call(user, method, params, exchange)
                except TierRefused as exc:  # a result all the same (docs/protocol.md)
                    outcome = outcome_of(exc)
                    result = exc.result
                else:
                    outcome = result_outcome(result)
                self.mcp.emit(conn, result_response(request_id, result))
            if exchange.cancel_scope.cancelled_caught:
                outcome = "cancelled"
        except RpcError as exc:
            outcome = outcome_of(exc)
            self.mcp.emit(conn, error_response(request_id, exc))
        except ScopeRequired as exc:
            outcome = outcome_of(exc)
            msg = f"insufficient_scope: {exc}"
            self.mcp.emit(conn, error_response(request_id, RpcError(INVALID_REQUEST, msg)))
        except AuthenticationRequiredError as exc:  # answered 202 already: the reply says it
            outcome = outcome_of(exc)
            msg = f"authentication required: {exc}"
            self.mcp.emit(conn, error_response(request_id, RpcError(INVALID_REQUEST, msg)))
        finally:
            if self.mcp.inflight.get(key) is exchange:
                del self.mcp.inflight[key]
            self.mcp.record_usage(user, method, params, outcome, started)
