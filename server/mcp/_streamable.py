"""MCP Streamable HTTP on ``/mcp``, both protocol eras, chosen per request (MCP-R17).

``initialize`` starts a 2025-era transport session; a request carrying
``_meta["io.modelcontextprotocol/protocolVersion"]`` is a 2026-07-28 stateless request (routed
to server/mcp/_stateless.py); anything else needs an ``Mcp-Session-Id``. A request's reply is
JSON unless the handler sends something before its result (progress, logging, sampling,
elicitation): then it becomes an SSE stream owned by a connection actor under the user's session
(docs/protocol.md, "JSON or SSE"). This module is the router of the 2025 era; the parts it routes
to each hold one role.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors import (
    AuthenticationRequiredError,
    CloseReason,
    Connection,
    ConnectionKind,
    RelayAddress,
    SessionManager,
    Store,
    StoreUnavailable,
    StreamEvent,
    TransportSession,
    UserSession,
    stream_events_after,
)
from server.http import (
    ClientGone,
    OriginPolicy,
    Receive,
    Scope,
    Send,
    header,
    send_json,
    send_response,
)
from server.mcp._admission import Admission
from server.mcp._dispatch import SUPPORTED_2025, Dispatcher
from server.mcp._errors import ErrorAnswers
from server.mcp._exchange import Reply, ReplyMode, rpc_reply, unavailable_reply
from server.mcp._gate import Gate
from server.mcp._jsonrpc import (
    INVALID_REQUEST,
    result_response,
)
from server.mcp._ports import CrossNode
from server.mcp._pump import SsePump
from server.mcp._read import read_message
from server.mcp._runner import REQUEST_STREAM, RequestRunner
from server.mcp._stateless import Stateless
from server.mcp._stateless_rules import is_stateless
from server.mcp._streams import StreamTable
from server.mcp._subscriptions import Subscriptions

__all__ = ["McpHttp"]

SESSION_HEADER = b"mcp-session-id"
VERSION_HEADER = b"mcp-protocol-version"
DEFAULT_2025 = "2025-03-26"  # MCP-R12: a request without MCP-Protocol-Version


class McpHttp:
    """The ``/mcp`` endpoint: routes each request by method and era."""

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
        stateless: Stateless,
        streams: StreamTable,
        subscriptions: Subscriptions,
        pump: SsePump,
        relay: CrossNode | None,
        max_body: int,
    ) -> None:
        self.dispatcher = dispatcher
        self.sessions = sessions
        self.store = store
        self.origins = origins
        self.gate = gate
        self.errors = errors
        self.admission = admission
        self.runner = runner
        self.stateless = stateless
        self.streams = streams
        self.subscriptions = subscriptions
        self.pump = pump
        self.relay = relay
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # routes and answers in one frame: an idle GET stream keeps this await chain alive for
        # as long as it is open (docs/benchmarks.md, idle-streams)
        try:
            refused = self.origins.refusal(scope)
            if refused is not None:
                raise Reply(403, refused)
            method = scope["method"]
            if method == "POST":
                await self._post(scope, receive, send)
            elif method == "GET":
                await self._get(scope, receive, send)
            elif method == "DELETE":
                await self._delete(scope, send)
            else:
                body = {"error": "method_not_allowed", "error_description": f"{method} /mcp"}
                raise Reply(405, body, [(b"allow", b"GET, POST, DELETE")])
        except (Reply, AuthenticationRequiredError, ClientGone, BaseExceptionGroup) as exc:
            await self.errors.answer_error(send, exc)

    # -- POST /mcp -------------------------------------------------------------------------------

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = header(scope, b"content-type") or ""
        if not content_type.startswith("application/json"):
            msg = f"Content-Type must be application/json, got {content_type!r}"
            raise rpc_reply(415, None, INVALID_REQUEST, msg)
        principal, session = await self.gate.authenticate(scope)
        message = await read_message(receive, self.max_body)
        if is_stateless(message, header(scope, VERSION_HEADER)):
            await self.stateless.post(scope, receive, send, principal, session, message)
            return
        params: dict[str, Any] = message.get("params") or {}
        method = message.get("method")
        request_id = message.get("id")
        accept = header(scope, b"accept") or ""
        if (
            "id" in message
            and method is not None
            and not ("application/json" in accept and "text/event-stream" in accept)
        ):
            msg = "Accept must list application/json and text/event-stream (MCP-R3)"
            raise rpc_reply(406, request_id, INVALID_REQUEST, msg)
        if method == "initialize":
            await self._initialize(send, session, request_id, params)
            return
        session_id = header(scope, SESSION_HEADER)
        if session_id is None:
            msg = "Mcp-Session-Id is required after initialize (MCP-R9)"
            raise rpc_reply(400, request_id, INVALID_REQUEST, msg)
        ts = await self.gate.transport(principal, session_id)
        version = header(scope, VERSION_HEADER) or DEFAULT_2025
        if version not in SUPPORTED_2025:
            msg = f"unsupported MCP-Protocol-Version {version!r}; supported: {', '.join(SUPPORTED_2025)}"
            raise rpc_reply(400, request_id, INVALID_REQUEST, msg)
        if method is None or "id" not in message:
            await self.runner.client_message(ts.session_id, ts.user_id, message)
            await send_response(send, 202, b"", b"application/json")
            return
        user = session.context_for(ts.session_id)
        exchange = self.runner.exchange(
            message,
            ReplyMode.STREAMABLE,
            user=user,
            session=session,
            session_id=ts.session_id,
            log_level=self.subscriptions.log_level(ts.session_id, ts.log_level),
            client_capabilities=ts.capabilities,
        )
        await self.runner.run_http(
            send, receive, exchange, user, message, key=ts.session_id, stream_ok=True
        )

    async def _initialize(
        self, send: Send, session: UserSession, request_id: Any, params: dict[str, Any]
    ) -> None:
        result = self.dispatcher.initialize_result(params.get("protocolVersion"))
        client_info = params.get("clientInfo")
        capabilities = params.get("capabilities")
        session_id = await self.admission.new_transport_session(
            session,
            request_id,
            protocol_version=result["protocolVersion"],
            client_info=client_info if isinstance(client_info, dict) else {},
            capabilities=capabilities if isinstance(capabilities, dict) else {},
        )
        await send_json(
            send, 200, result_response(request_id, result), [(SESSION_HEADER, session_id.encode())]
        )

    # -- GET /mcp, DELETE /mcp -------------------------------------------------------------------

    async def _get(self, scope: Scope, receive: Receive, send: Send) -> None:
        if "text/event-stream" not in (header(scope, b"accept") or ""):
            body = {
                "error": "not_acceptable",
                "error_description": "Accept must list text/event-stream (MCP-R5)",
            }
            raise Reply(406, body)
        principal, session = await self.gate.authenticate(scope)
        session_id = header(scope, SESSION_HEADER)
        if session_id is None:
            raise rpc_reply(400, None, INVALID_REQUEST, "Mcp-Session-Id is required (MCP-R9)")
        ts = await self.gate.transport(principal, session_id)
        last = header(scope, b"last-event-id")
        if last:
            await self._resume(send, receive, principal, session, ts, last)
            return
        if self.streams.get_stream(ts.session_id) is not None:
            msg = "this session already has a GET stream; resume it with Last-Event-ID"
            raise rpc_reply(409, None, INVALID_REQUEST, msg)
        conn = await self.admission.open_stream(
            session, ConnectionKind.GET, ts.session_id, token_expires_at=principal.expires_at
        )
        ended = self._serve_get(conn, ts.session_id)
        await self.pump.pump(conn, send, receive, priming_id=conn.next_event_id(), on_end=ended)

    def _serve_get(self, conn: Connection, session_id: str) -> Callable[[], None]:
        """``conn`` becomes the session's GET stream; what forgets it as it ends is returned."""
        self.streams.set_get_stream(session_id, conn)
        if self.relay is not None:  # what waited in the outbox for this session's stream
            self.relay.wake(RelayAddress.session(session_id))
        return lambda: self.streams.end_get_stream(session_id, conn)

    async def _resume(
        self,
        send: Send,
        receive: Receive,
        principal: Any,
        session: UserSession,
        ts: TransportSession,
        last: str,
    ) -> None:
        """MCP-R7: replay only the disconnected stream's messages after ``Last-Event-ID``."""
        stream_id, _, seq_text = last.rpartition(":")
        if not stream_id or not seq_text.isdigit():
            msg = f"Last-Event-ID {last[:80]!r} is not an event id of this server"
            raise rpc_reply(400, None, INVALID_REQUEST, msg)
        after = int(seq_text)
        exchange = self.streams.live(ts.session_id, stream_id)
        if exchange is not None:  # the request still runs on this node
            conn = await self.admission.open_stream(
                session, ConnectionKind.POST, ts.session_id, stream_id
            )
            old = exchange.conn
            exchange.resume(conn, after)
            if old is not None and old is not conn:
                await old.close(CloseReason.RESUMED)
            await self.pump.pump(conn, send, receive, priming_id=None)
            return
        try:
            await self.store.write()  # what this node queued is committed before reading it back
            replay = await stream_events_after(self.store, ts.session_id, stream_id, after)
        except StoreUnavailable:
            raise unavailable_reply() from None
        ends = any(_is_response(payload) for _, payload in replay)
        if not ends and stream_id.startswith(REQUEST_STREAM) and self.relay is not None:
            # the request still runs on another node (or ended without its response there):
            # this stream follows what that node stores for it, until the response
            conn = await self.admission.open_stream(
                session, ConnectionKind.POST, ts.session_id, stream_id
            )
            conn.advance_to(after)
            async with self.relay.following(conn):
                await self.pump.pump(conn, send, receive, priming_id=None)
            return
        conn = await self.admission.open_stream(
            session,
            ConnectionKind.POST if ends else ConnectionKind.GET,
            ts.session_id,
            stream_id,
            token_expires_at=None if ends else principal.expires_at,
        )
        conn.advance_to(max([after, *(seq for seq, _ in replay)]))
        for seq, payload in replay:
            conn.send_nowait(
                StreamEvent(payload, event_id=f"{stream_id}:{seq}", final=_is_response(payload))
            )
        if ends:  # a request's stream: it ends with the response
            await self.pump.pump(conn, send, receive, priming_id=None)
        else:  # the session's GET stream continues where it left off
            ended = self._serve_get(conn, ts.session_id)
            await self.pump.pump(conn, send, receive, priming_id=None, on_end=ended)

    async def _delete(self, scope: Scope, send: Send) -> None:
        principal, _session = await self.gate.authenticate(scope)
        session_id = header(scope, SESSION_HEADER)
        if session_id is None:
            raise rpc_reply(400, None, INVALID_REQUEST, "Mcp-Session-Id is required (MCP-R9)")
        try:
            ended = await self.sessions.end_transport_session(principal, session_id)
        except StoreUnavailable:
            raise unavailable_reply() from None
        if not ended:
            raise rpc_reply(404, None, INVALID_REQUEST, "Session not found")
        self.subscriptions.forget_session(session_id)
        await send_response(send, 204, b"", b"application/json")


def _is_response(payload: Any) -> bool:
    return isinstance(payload, dict) and "method" not in payload and "id" in payload
