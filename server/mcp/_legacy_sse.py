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

from actors import (
    Connection,
    ConnectionKind,
    Principal,
    SessionManager,
    Store,
    StoreUnavailable,
    StreamEvent,
    TransportSession,
    UserSession,
)
from server.http import OriginPolicy, Receive, Scope, Send, query, send_response
from server.mcp._admission import Admission
from server.mcp._dispatch import Dispatcher
from server.mcp._errors import ErrorAnswers
from server.mcp._exchange import Reply, ReplyMode, rpc_reply, unavailable_reply
from server.mcp._gate import Gate
from server.mcp._jsonrpc import INVALID_REQUEST, result_response
from server.mcp._outlet import StreamOutlet
from server.mcp._ports import CrossNode
from server.mcp._pump import SsePump
from server.mcp._read import read_message
from server.mcp._runner import RequestRunner
from server.mcp._streams import StreamTable
from server.mcp._subscriptions import Subscriptions

__all__ = ["LegacySse"]

log = structlog.get_logger("legacy_sse")

LEGACY_VERSION = "2024-11-05"


class LegacySse:
    """``GET /sse`` and ``POST /messages``, sharing authentication, limits and the request
    runner with ``/mcp``."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        sessions: SessionManager,
        store: Store,
        origins: OriginPolicy,
        gate: Gate,
        errors: ErrorAnswers,
        admission: Admission,
        runner: RequestRunner,
        streams: StreamTable,
        subscriptions: Subscriptions,
        outlet: StreamOutlet,
        pump: SsePump,
        relay: CrossNode | None,
        max_body: int,
        messages_path: str = "/messages",
    ) -> None:
        self.dispatcher = dispatcher
        self.sessions = sessions
        self.store = store
        self.origins = origins
        self.gate = gate
        self.errors = errors
        self.admission = admission
        self.runner = runner
        self.streams = streams
        self.subscriptions = subscriptions
        self.outlet = outlet
        self.pump = pump
        self.relay = relay
        self.max_body = max_body
        self.messages_path = messages_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.errors.answer(send, lambda: self._route(scope, receive, send), scope["path"])

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = self.origins.refusal(scope)
        if refused is not None:
            raise Reply(403, refused)
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
        principal, session = await self.gate.authenticate(scope)
        try:
            session_id = await self.admission.new_transport_session(
                session, None, protocol_version=LEGACY_VERSION, client_info={}, capabilities={}
            )
        except StoreUnavailable:
            raise unavailable_reply() from None
        try:
            conn = await self.admission.open_stream(
                session,
                ConnectionKind.LEGACY_SSE,
                session_id,
                token_expires_at=principal.expires_at,
            )
        except Reply:  # refused (a stream limit): the transport session made for it ends
            with contextlib.suppress(StoreUnavailable):
                await self.sessions.end_transport_session(principal, session_id)
            raise
        self.streams.set_legacy_stream(session_id, conn)
        # the stream's row is committed before the client learns where to POST: a POST that
        # reaches another node finds this one through it (server/cluster/_relay.py)
        await self.store.write()
        endpoint = f"{self.messages_path}?session_id={session_id}"
        conn.send_nowait(StreamEvent(event="endpoint", text=endpoint))

        def ended() -> None:
            self.streams.end_legacy_stream(session_id, conn)
            self.subscriptions.forget_log_level(session_id)

        await self.pump.pump(conn, send, receive, priming_id=None, on_end=ended)

    async def _message(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal, session = await self.gate.authenticate(scope)
        session_id = query(scope).get("session_id", "")
        ts = await self.gate.transport(principal, session_id)
        message = await read_message(receive, self.max_body)
        if self.streams.legacy_stream(ts.session_id) is None and self.relay is not None:
            # the stream is held by another node: the message is handled there
            forward = {"kind": "legacy", "session_id": ts.session_id, "message": message}
            try:
                if await self.relay.forward_to_stream(ts.session_id, principal, forward, send):
                    return
            except StoreUnavailable:
                raise unavailable_reply() from None
        await self.handle(session, ts, message, send)

    async def handle_forwarded(
        self, principal: Principal, session_id: str, message: dict[str, Any], send: Send
    ) -> None:
        """A POSTed message that another node forwarded here, where its stream is (the relay's
        port, server/cluster/_relay.py)."""
        session = await self.sessions.session_for(principal)
        ts = await self.gate.transport(principal, session_id)
        await self.handle(session, ts, message, send)

    async def handle(
        self, session: UserSession, ts: TransportSession, message: dict[str, Any], send: Send
    ) -> None:
        """One POSTed message for a stream this node holds: 202, and its reply on the stream."""
        conn: Connection | None = self.streams.legacy_stream(ts.session_id)
        if conn is None:
            raise rpc_reply(404, None, INVALID_REQUEST, "Session not found (its stream is closed)")
        if "method" not in message or "id" not in message:
            await self.runner.client_message(ts.session_id, ts.user_id, message)
            await send_response(send, 202, b"", b"application/json")
            return
        await send_response(send, 202, b"", b"application/json")
        request_id, method = message["id"], message["method"]
        params: dict[str, Any] = message["params"]
        if method == "initialize":
            result = self.dispatcher.initialize_result(params.get("protocolVersion"))
            self.outlet.emit(conn, result_response(request_id, result))
            return
        user = session.context_for(ts.session_id)
        try:
            await self.admission.count(user, method, request_id)
        except (
            Reply
        ) as refused:  # answered 202 already: the 429's JSON-RPC error goes on the stream
            self.outlet.emit(conn, refused.body)
            return
        exchange = self.runner.exchange(
            message,
            ReplyMode.LEGACY,
            user=user,
            session=session,
            session_id=ts.session_id,
            log_level=self.subscriptions.log_level(ts.session_id, ts.log_level),
            legacy_conn=conn,
        )
        await self.runner.run(exchange, user, message, key=ts.session_id)
