"""MCP over HTTP on one endpoint, both protocol eras, plus the deprecated HTTP+SSE transport.

Per request (MCP-R17): ``initialize`` starts a 2025-era transport session; a request carrying
``_meta["io.modelcontextprotocol/protocolVersion"]`` is a 2026-07-28 stateless request; anything
else needs an ``Mcp-Session-Id``. A request's reply is JSON unless the handler sends something
before its result (progress, logging, sampling, elicitation): then the reply becomes an SSE stream,
owned by a connection actor under the user's session.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import structlog
import trio

from actors import Op, Store, StoreUnavailable
from actors._sessions import (
    Connection,
    SessionInvalid,
    SessionManager,
    SessionRestarting,
    StreamEvent,
    UserContext,
    UserSession,
)
from actors._usage import RateLimited, UsageMeter
from server._dispatch import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SUPPORTED_2025,
    SUPPORTED_VERSIONS,
    Dispatcher,
    RpcError,
    ScopeRequired,
    error_response,
)
from server._http import (
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    header,
    query,
    read_body,
    send_json,
    send_response,
)
from server._oauth import AuthError, ResourceServer
from server._sse import encode_event

__all__ = ["McpHttp"]

log = structlog.get_logger("mcp_http")

SESSION_HEADER = b"mcp-session-id"
VERSION_HEADER = b"mcp-protocol-version"
RETRY_MS = 2000
META_VERSION = "io.modelcontextprotocol/protocolVersion"
_NAMED = {"tools/call": "name", "resources/read": "uri", "prompts/get": "name"}
_UNCOUNTED = frozenset({"initialize", "ping", "tools/list", "notifications/initialized"})


class _Reply(Exception):
    """A finished HTTP answer raised out of the request path."""

    def __init__(
        self, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []


def _rpc_reply(status: int, request_id: Any, code: int, message: str, data: Any = None) -> _Reply:
    return _Reply(status, error_response(request_id, RpcError(code, message, data)))


class _Exchange:
    """The outbound side of one request: JSON until the handler sends something first, then SSE."""

    def __init__(self, owner: McpHttp, request_id: Any) -> None:
        self.owner = owner
        self.request_id = request_id
        self.buffer: list[dict[str, Any]] = []
        self.conn: Connection | None = None
        self.final: dict[str, Any] | None = None
        self.decided = trio.Event()
        self.stream = False
        self.min_log_level: str | None = None

    def _out(self, message: dict[str, Any]) -> None:
        if self.conn is not None:
            self.owner.emit(self.conn, message)
        else:
            self.buffer.append(message)
            self.stream = True
            self.decided.set()

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        self._out({"jsonrpc": "2.0", "method": method, "params": params})
        await trio.lowlevel.checkpoint()

    async def log(self, params: dict[str, Any]) -> None:
        await self.notify("notifications/message", params)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        request_id = f"s-{secrets.token_hex(8)}"
        slot = self.owner.pending_slot(request_id)
        self._out({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        try:
            with trio.fail_after(self.owner.client_request_timeout):
                await slot[0].wait()
        except trio.TooSlowError:
            raise RpcError(INTERNAL_ERROR, f"the client did not answer {method} in time") from None
        finally:
            self.owner.pending.pop(request_id, None)
        answer = slot[1]
        if "error" in answer:
            raise RpcError(
                INTERNAL_ERROR, f"the client refused {method}: {answer['error'].get('message')}"
            )
        result: dict[str, Any] = answer.get("result", {})
        return result

    def finish(self, message: dict[str, Any]) -> None:
        if self.conn is not None:
            self.owner.emit(self.conn, message, final=True)
        else:
            self.final = message
            self.decided.set()


class McpHttp:
    """The ``/mcp``, ``/sse`` and ``/messages`` endpoints."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        sessions: SessionManager,
        resource_server: ResourceServer,
        store: Store,
        usage: UsageMeter,
        *,
        max_body: int = 4 * 1024 * 1024,
        allowed_origins: tuple[str, ...] = (),
        client_request_timeout: float = 60.0,
        max_pending: int = 10_000,
    ) -> None:
        self.dispatcher = dispatcher
        self.sessions = sessions
        self.rs = resource_server
        self.store = store
        self.usage = usage
        self.max_body = max_body
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins)
        self.client_request_timeout = client_request_timeout
        self.max_pending = max_pending
        self.pending: dict[str, tuple[trio.Event, dict[str, Any]]] = {}
        self.get_streams: dict[str, Connection] = {}  # transport session -> its GET stream
        self.legacy_streams: dict[str, Connection] = {}  # legacy session -> its SSE stream
        self.subscriptions: dict[str, set[str]] = {}  # uri -> transport sessions
        dispatcher.on_subscribe = self._on_subscribe

    # -- shared plumbing ---------------------------------------------------------------------------

    def pending_slot(self, request_id: str) -> tuple[trio.Event, dict[str, Any]]:
        if len(self.pending) >= self.max_pending:
            raise RpcError(INTERNAL_ERROR, "too many server requests awaiting an answer")
        slot: tuple[trio.Event, dict[str, Any]] = (trio.Event(), {})
        self.pending[request_id] = slot
        return slot

    def emit(self, conn: Connection, message: dict[str, Any], *, final: bool = False) -> None:
        event_id = conn.next_event_id()
        if conn.session_id is not None:
            stream, _, seq = event_id.rpartition(":")
            self.store.write_nowait(
                Op(
                    "INSERT INTO stream_events (session_id, stream_id, seq, user_id, payload) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    (conn.session_id, stream, int(seq), conn.session.context.user_id, message),
                )
            )
        conn.send_nowait(
            StreamEvent(
                message,
                event_id=event_id,
                event="message" if conn.kind == "legacy_sse" else None,
                final=final,
            )
        )

    def _on_subscribe(self, session_id: str | None, uri: str, on: bool) -> None:
        if session_id is None:
            return
        subscribers = self.subscriptions.setdefault(uri, set())
        if on:
            subscribers.add(session_id)
        else:
            subscribers.discard(session_id)

    def notify_resource_updated(self, uri: str) -> int:
        """Send notifications/resources/updated to each subscribed session's stream on this node."""
        sent = 0
        for session_id in self.subscriptions.get(uri, ()):
            conn = self.get_streams.get(session_id) or self.legacy_streams.get(session_id)
            if conn is not None and conn.closed_reason is None:
                self.emit(
                    conn,
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/resources/updated",
                        "params": {"uri": uri},
                    },
                )
                sent += 1
        return sent

    def _check_origin(self, scope: Scope) -> None:
        origin = header(scope, b"origin")
        if origin is None:
            return
        origin = origin.rstrip("/")
        if origin in self.allowed_origins:
            return
        host = origin.split("://", 1)[-1].split(":", 1)[0].strip("[]")
        if host in ("localhost", "127.0.0.1", "::1") and not self.allowed_origins:
            return
        raise _Reply(
            403, {"error": "forbidden", "error_description": f"origin {origin!r} is not allowed"}
        )

    async def _auth(self, scope: Scope) -> tuple[Any, UserSession]:
        try:
            principal = await self.rs.authenticate(scope)
        except AuthError as exc:
            raise _Reply(exc.status, exc.body, exc.headers) from None
        try:
            session = await self.sessions.session_for(principal)
        except SessionInvalid as exc:
            self.rs.forget_grant(principal.grant_id)
            err = self.rs.challenge(
                "invalid_token", f"the session is {exc.reason}; authorize again"
            )
            raise _Reply(err.status, err.body, err.headers) from None
        except StoreUnavailable:
            raise _Reply(
                503, {"error": "temporarily_unavailable"}, [(b"retry-after", b"5")]
            ) from None
        except SessionRestarting:
            body = {
                "error": "temporarily_unavailable",
                "error_description": "the session is restarting",
            }
            raise _Reply(503, body, [(b"retry-after", b"1")]) from None
        session.touch()
        return principal, session

    # -- the ASGI entry ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._check_origin(scope)
            path, method = scope["path"], scope["method"]
            if path == "/mcp":
                if method == "POST":
                    await self._post(scope, receive, send)
                elif method == "GET":
                    await self._get(scope, receive, send)
                elif method == "DELETE":
                    await self._delete(scope, send)
                else:
                    raise _Reply(
                        405, {"error": "method_not_allowed"}, [(b"allow", b"GET, POST, DELETE")]
                    )
            elif path == "/sse" and method == "GET":
                await self._legacy_get(scope, receive, send)
            elif path == "/messages" and method == "POST":
                await self._legacy_post(scope, receive, send)
            else:
                raise _Reply(405, {"error": "method_not_allowed"})
        except _Reply as reply:
            await send_json(send, reply.status, reply.body, reply.headers)
        except ClientGone:
            return

    async def _read_json(self, scope: Scope, receive: Receive) -> Any:
        try:
            body = await read_body(receive, self.max_body)
        except BodyTooLarge:
            raise _rpc_reply(
                413, None, INVALID_REQUEST, f"the body exceeds {self.max_body} bytes"
            ) from None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise _rpc_reply(400, None, PARSE_ERROR, "the body is not valid JSON") from None

    # -- POST /mcp -------------------------------------------------------------------------------------

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> None:
        accept = header(scope, b"accept") or ""
        content_type = header(scope, b"content-type") or ""
        if "application/json" not in content_type:
            raise _rpc_reply(415, None, INVALID_REQUEST, "Content-Type must be application/json")
        principal, session = await self._auth(scope)
        message = await self._read_json(scope, receive)
        if isinstance(message, list):
            raise _rpc_reply(400, None, INVALID_REQUEST, "JSON-RPC batches are not accepted")
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise _rpc_reply(
                400, None, INVALID_REQUEST, "the body must be one JSON-RPC 2.0 message"
            )
        method = message.get("method")
        request_id = message.get("id")
        is_request = isinstance(method, str) and "id" in message
        if method is not None and not isinstance(method, str):
            raise _rpc_reply(400, request_id, INVALID_REQUEST, "method must be a string")
        if (
            "id" in message and not (request_id is None or isinstance(request_id, (str, int)))
        ) or isinstance(request_id, bool):
            raise _rpc_reply(400, None, INVALID_REQUEST, "id must be a string or a number")
        params = message.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise _rpc_reply(400, request_id, INVALID_REQUEST, "params must be an object")
        if method is None and "result" not in message and "error" not in message:
            raise _rpc_reply(
                400, request_id, INVALID_REQUEST, "a message needs a method, a result or an error"
            )
        meta = params.get("_meta")
        era_2026 = isinstance(meta, dict) and META_VERSION in meta
        if is_request and (
            "application/json" not in accept or ("text/event-stream" not in accept and not era_2026)
        ):
            raise _rpc_reply(
                406,
                request_id,
                INVALID_REQUEST,
                "Accept must list application/json and text/event-stream",
            )
        if era_2026:
            await self._post_2026(scope, send, session, message, meta)  # type: ignore[arg-type]
            return
        if method == "initialize":
            await self._initialize(send, session, request_id, params)
            return
        session_id = header(scope, SESSION_HEADER)
        if session_id is None:
            raise _rpc_reply(
                400, request_id, INVALID_REQUEST, "Mcp-Session-Id is required (initialize first)"
            )
        ts = await self._transport(principal, session_id)
        version = header(scope, VERSION_HEADER)
        if version is not None and version not in SUPPORTED_2025:
            raise _rpc_reply(
                400,
                request_id,
                INVALID_REQUEST,
                f"unsupported MCP-Protocol-Version {version!r}; supported: {', '.join(SUPPORTED_2025)}",
            )
        if method is None:
            self._client_response(message)
            await send_response(send, 202, b"", b"application/json")
            return
        if not is_request:
            await send_response(send, 202, b"", b"application/json")
            return
        await self._run_request(
            send,
            session,
            session.context_for(ts.session_id),
            ts.session_id,
            message,
            stream_ok=True,
        )

    async def _transport(self, principal: Any, session_id: str) -> Any:
        try:
            ts = await self.sessions.transport_session(principal, session_id)
        except StoreUnavailable:
            raise _Reply(
                503, {"error": "temporarily_unavailable"}, [(b"retry-after", b"5")]
            ) from None
        if ts is None:
            raise _rpc_reply(404, None, INVALID_REQUEST, "Session not found")
        return ts

    def _client_response(self, message: dict[str, Any]) -> None:
        slot = self.pending.get(str(message.get("id")))
        if slot is not None:
            slot[1].update(message)
            slot[0].set()

    async def _initialize(
        self, send: Send, session: UserSession, request_id: Any, params: dict[str, Any]
    ) -> None:
        result = self.dispatcher.initialize_result(params.get("protocolVersion"))
        client_info = params.get("clientInfo") if isinstance(params.get("clientInfo"), dict) else {}
        capabilities = (
            params.get("capabilities") if isinstance(params.get("capabilities"), dict) else {}
        )
        try:
            session_id = await self.sessions.create_transport_session(
                session,
                protocol_version=result["protocolVersion"],
                client_info=client_info or {},
                capabilities=capabilities or {},
            )
        except StoreUnavailable:
            raise _Reply(
                503, {"error": "temporarily_unavailable"}, [(b"retry-after", b"5")]
            ) from None
        await send_json(
            send,
            200,
            {"jsonrpc": "2.0", "id": request_id, "result": result},
            [(b"mcp-session-id", session_id.encode())],
        )

    async def _run_request(
        self,
        send: Send,
        session: UserSession,
        user: UserContext,
        session_id: str | None,
        message: dict[str, Any],
        *,
        stream_ok: bool,
    ) -> None:
        method: str = message["method"]
        request_id = message["id"]
        params = message.get("params") or {}
        if method not in _UNCOUNTED:
            try:
                self.usage.check(user.user_id, user.tier)
            except RateLimited as exc:
                raise _rpc_reply(
                    429,
                    request_id,
                    INVALID_REQUEST,
                    "rate limit exceeded for this subscription tier",
                    {"retryAfter": exc.retry_after},
                ) from None
        exchange = _Exchange(self, request_id)
        started = trio.current_time()

        async def run() -> None:
            outcome = "ok"
            try:
                result = await self.dispatcher.call(user, method, params, exchange)
                exchange.finish({"jsonrpc": "2.0", "id": request_id, "result": result})
            except RpcError as exc:
                outcome = "error"
                exchange.finish(error_response(request_id, exc))
            except ScopeRequired as exc:
                outcome = "forbidden"
                exchange.final = {"forbidden": exc}  # only possible before anything was sent
                exchange.decided.set()
            finally:
                self.usage.record(
                    user,
                    method,
                    params.get("name") if method == "tools/call" else None,
                    outcome,
                    trio.current_time() - started,
                )

        forbidden: _Reply | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await exchange.decided.wait()
            if exchange.stream and stream_ok:
                conn = await session.open_connection(kind="post", session_id=session_id)
                for buffered in exchange.buffer:
                    self.emit(conn, buffered)
                exchange.conn = conn
                if exchange.final is not None:
                    self.emit(conn, exchange.final, final=True)
                await self._pump(conn, send, None, priming=session_id is not None)
            else:
                while exchange.final is None:  # a stream is not possible: wait for the result
                    exchange.decided = trio.Event()
                    await exchange.decided.wait()
                denied = exchange.final.get("forbidden")
                if isinstance(denied, ScopeRequired):
                    err = self.rs.insufficient_scope(denied.needed, user.scopes)
                    err.body["error_description"] = str(denied)
                    forbidden = _Reply(403, err.body, err.headers)
                else:
                    await send_json(send, 200, exchange.final)
        if forbidden is not None:
            raise forbidden

    # -- SSE pumping ----------------------------------------------------------------------------------

    async def _pump(
        self,
        conn: Connection,
        send: Send,
        receive: Receive | None,
        *,
        priming: bool,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Write a connection's outbox to the HTTP response until its final event or the client leaves."""
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *(extra_headers or []),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if priming:
            await send(
                {
                    "type": "http.response.body",
                    "body": encode_event(
                        StreamEvent(event_id=conn.next_event_id(), retry_ms=RETRY_MS, data=None)
                    ),
                    "more_body": True,
                }
            )
        async with trio.open_nursery() as nursery:
            if receive is not None:

                async def watch() -> None:
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            await conn.close("client_disconnected")
                            nursery.cancel_scope.cancel()
                            return

                nursery.start_soon(watch)
            async for event in conn.outbox:
                await send(
                    {"type": "http.response.body", "body": encode_event(event), "more_body": True}
                )
                if event.final:
                    await conn.close("complete")  # keeps the reason of a close that came first
                    break
            nursery.cancel_scope.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- GET /mcp, DELETE /mcp ----------------------------------------------------------------------------

    async def _get(self, scope: Scope, receive: Receive, send: Send) -> None:
        if "text/event-stream" not in (header(scope, b"accept") or ""):
            raise _Reply(
                406,
                {
                    "error": "not_acceptable",
                    "error_description": "Accept must list text/event-stream",
                },
            )
        principal, session = await self._auth(scope)
        session_id = header(scope, SESSION_HEADER)
        if session_id is None:
            raise _rpc_reply(400, None, INVALID_REQUEST, "Mcp-Session-Id is required")
        ts = await self._transport(principal, session_id)
        last = header(scope, b"last-event-id")
        replay: list[dict[str, Any]] = []
        stream_id: str | None = None
        if last:
            stream_id, _, seq = last.rpartition(":")
            if not stream_id or not seq.isdigit():
                raise _rpc_reply(
                    400, None, INVALID_REQUEST, "Last-Event-ID is not an event id of this server"
                )
            replay = await self.store.fetch(
                "SELECT seq, payload FROM stream_events WHERE session_id = $1 AND stream_id = $2 AND seq > $3 ORDER BY seq LIMIT 10000",
                ts.session_id,
                stream_id,
                int(seq),
            )
        existing = self.get_streams.get(ts.session_id)
        if existing is not None and existing.closed_reason is None and not last:
            raise _rpc_reply(409, None, INVALID_REQUEST, "this session already has a GET stream")
        conn = await session.open_connection(
            kind="get", session_id=ts.session_id, stream_id=stream_id
        )
        if replay:
            conn._seq = max(r["seq"] for r in replay)
            for row in replay:
                conn.send_nowait(
                    StreamEvent(row["payload"], event_id=f"{conn.stream_id}:{row['seq']}")
                )
        self.get_streams[ts.session_id] = conn
        try:
            await self._pump(conn, send, receive, priming=not replay)
        finally:
            if self.get_streams.get(ts.session_id) is conn:
                del self.get_streams[ts.session_id]

    async def _delete(self, scope: Scope, send: Send) -> None:
        principal, _session = await self._auth(scope)
        session_id = header(scope, SESSION_HEADER)
        if session_id is None:
            raise _rpc_reply(400, None, INVALID_REQUEST, "Mcp-Session-Id is required")
        if not await self.sessions.end_transport_session(principal, session_id):
            raise _rpc_reply(404, None, INVALID_REQUEST, "Session not found")
        for subscribers in self.subscriptions.values():
            subscribers.discard(session_id)
        await send_response(send, 204, b"", b"application/json")

    # -- 2026-07-28 stateless requests ---------------------------------------------------------------------

    async def _post_2026(
        self,
        scope: Scope,
        send: Send,
        session: UserSession,
        message: dict[str, Any],
        meta: dict[str, Any],
    ) -> None:
        request_id = message.get("id")
        version = meta.get(META_VERSION)
        if version not in SUPPORTED_VERSIONS:
            raise _rpc_reply(
                400,
                request_id,
                -32022,
                f"unsupported protocol version {version!r}",
                {"supported": list(SUPPORTED_VERSIONS)},
            )
        if header(scope, VERSION_HEADER) != version:
            raise _rpc_reply(
                400,
                request_id,
                -32020,
                "the MCP-Protocol-Version header must equal _meta's protocol version",
            )
        method = message.get("method")
        if header(scope, b"mcp-method") != method:
            raise _rpc_reply(
                400,
                request_id,
                INVALID_REQUEST,
                "the Mcp-Method header must equal the body's method",
            )
        name_key = _NAMED.get(method or "")
        if name_key is not None and header(scope, b"mcp-name") != (message.get("params") or {}).get(
            name_key
        ):
            raise _rpc_reply(
                400,
                request_id,
                INVALID_REQUEST,
                f"the Mcp-Name header must equal the body's {name_key}",
            )
        if "id" not in message:
            await send_response(send, 202, b"", b"application/json")
            return
        if method == "server/discover":
            await send_json(
                send,
                200,
                {"jsonrpc": "2.0", "id": request_id, "result": self.dispatcher.discover_result()},
            )
            return
        if method == "subscriptions/listen":
            conn = await session.open_connection(kind="listen", session_id=None)
            await self._pump(conn, send, None, priming=False)
            return
        if not self.dispatcher.knows(method or ""):
            raise _rpc_reply(404, request_id, METHOD_NOT_FOUND, f"method {method!r} not found")
        await self._run_request(
            send,
            session,
            session.context,
            None,
            message,
            stream_ok="text/event-stream" in (header(scope, b"accept") or ""),
        )

    # -- the deprecated HTTP+SSE transport (2024-11-05) ------------------------------------------------------

    async def _legacy_get(self, scope: Scope, receive: Receive, send: Send) -> None:
        _principal, session = await self._auth(scope)
        session_id = await self.sessions.create_transport_session(
            session, protocol_version="2024-11-05", client_info={}, capabilities={}
        )
        conn = await session.open_connection(kind="legacy_sse", session_id=None)
        self.legacy_streams[session_id] = conn
        conn.send_nowait(StreamEvent(event="endpoint", text=f"/messages?session_id={session_id}"))
        try:
            await self._pump(conn, send, receive, priming=False)
        finally:
            self.legacy_streams.pop(session_id, None)

    async def _legacy_post(self, scope: Scope, receive: Receive, send: Send) -> None:
        session_id = query(scope).get("session_id", "")
        message = await self._read_json(scope, receive)
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise _rpc_reply(
                400, None, INVALID_REQUEST, "the body must be one JSON-RPC 2.0 message"
            )
        principal, session = await self._auth(scope)
        ts = await self._transport(principal, session_id)
        conn = self.legacy_streams.get(session_id)
        if conn is None or conn.closed_reason is not None:
            raise _rpc_reply(404, message.get("id"), INVALID_REQUEST, "Session not found")
        await send_response(send, 202, b"", b"application/json")
        method = message.get("method")
        if method is None:
            self._client_response(message)
            return
        if "id" not in message:
            return
        user = session.context_for(ts.session_id)
        request_id = message["id"]
        params = message.get("params") or {}
        if method == "initialize":
            self.emit(
                conn,
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "result": self.dispatcher.initialize_result(params.get("protocolVersion")),
                },
            )
            return
        exchange = _Exchange(self, request_id)
        exchange.conn = conn
        try:
            result = await self.dispatcher.call(user, method, params, exchange)
            self.emit(conn, {"jsonrpc": "2.0", "id": request_id, "result": result})
        except RpcError as exc:
            self.emit(conn, error_response(request_id, exc))
        except ScopeRequired as exc:
            self.emit(
                conn, error_response(request_id, RpcError(-32001, f"insufficient_scope: {exc}"))
            )
