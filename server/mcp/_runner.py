"""The one request runner: a request of any era (2025 streamable HTTP, 2026-07-28 stateless,
legacy SSE) run against the dispatcher, its outcome counted, its answer sent as its exchange's
mode says; and what a client sends back (answers to server requests, cancellations)."""

from __future__ import annotations

import types
from collections.abc import Mapping
from functools import partial
from typing import Any

import structlog
import trio

from actors import (
    AuthenticationRequiredError,
    CloseReason,
    ConnectionKind,
    StoreUnavailable,
    UsageMeter,
    UserContext,
    UserSession,
)
from server.http import Receive, Send, send_json
from server.mcp._admission import Admission
from server.mcp._dispatch import Dispatcher, ScopeRequired, TierRefused, stamp_2026
from server.mcp._exchange import (
    SERVER_REQUEST_ID,
    Exchange,
    Reply,
    ReplyMode,
    ServerRequests,
    outcome_of,
    result_outcome,
    too_many,
    unavailable_reply,
    usage_name,
)
from server.mcp._jsonrpc import (
    INVALID_REQUEST,
    MISSING_CAPABILITY,
    RpcError,
    error_response,
    result_response,
)
from server.mcp._notify import Notifier
from server.mcp._outlet import StreamOutlet
from server.mcp._ports import CrossNode
from server.mcp._pump import SsePump
from server.mcp._streams import StreamTable
from server.oauth import ResourceServer

__all__ = ["REQUEST_STREAM", "RequestRunner"]

log = structlog.get_logger("mcp_http")

REQUEST_STREAM = "r"  # a request's stream id starts with it (a GET stream's is hexadecimal)


class RequestRunner:
    """Owns the table of requests in flight, by (caller key, request id), at most
    ``max_inflight``."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        usage: UsageMeter,
        admission: Admission,
        requests: ServerRequests,
        streams: StreamTable,
        outlet: StreamOutlet,
        notifier: Notifier,
        pump: SsePump,
        resource_server: ResourceServer,
        relay: CrossNode | None,
        max_inflight: int,
    ) -> None:
        self.dispatcher = dispatcher
        self.usage = usage
        self.admission = admission
        self.requests = requests
        self.streams = streams
        self.outlet = outlet
        self.notifier = notifier
        self.pump = pump
        self.rs = resource_server
        self.relay = relay
        self.max_inflight = max_inflight
        self._inflight: dict[tuple[str, Any], Exchange] = {}

    @property
    def inflight(self) -> Mapping[tuple[str, Any], Exchange]:
        """A read-only view of the requests being answered now."""
        return types.MappingProxyType(self._inflight)

    def exchange(
        self,
        message: dict[str, Any],
        mode: ReplyMode,
        *,
        user: UserContext,
        session: UserSession,
        session_id: str | None,
        log_level: str | None,
        client_capabilities: Any = None,
        legacy_conn: Any = None,
    ) -> Exchange:
        """The exchange of one request, built with everything it needs."""
        provided = message["params"].get("inputResponses")
        return Exchange(
            request_id=message["id"],
            mode=mode,
            user=user,
            session=session,
            session_id=session_id,
            log_level=log_level,
            requests=self.requests,
            outlet=self.outlet,
            resource_updated=self.notifier.resource_updated,
            client_capabilities=client_capabilities
            if isinstance(client_capabilities, dict)
            else None,
            provided=provided
            if mode is ReplyMode.STATELESS and isinstance(provided, dict)
            else None,
            legacy_conn=legacy_conn,
        )

    async def run(
        self, exchange: Exchange, user: UserContext, message: dict[str, Any], *, key: str
    ) -> None:
        """Run one request to its end: the handler's result, error, refusal or cancellation is
        finished on the exchange, its usage recorded. An ``AuthenticationRequiredError`` before
        anything was sent on a reply of its own is raised (answered 401 with the challenge)."""
        method: str = message["method"]
        params: dict[str, Any] = message["params"]
        slot = (key, exchange.request_id)
        self._inflight[slot] = exchange
        started = trio.current_time()
        outcome = "ok"
        try:
            with exchange.cancel_scope:
                try:
                    try:
                        result = await self.dispatcher.call(user, method, params, exchange)
                    except TierRefused as exc:  # a result all the same (docs/protocol.md)
                        outcome = outcome_of(exc)
                        result = exc.result
                except RpcError as exc:
                    outcome = outcome_of(exc)
                    exchange.finish(error_response(exchange.request_id, exc))
                except ScopeRequired as exc:
                    outcome = outcome_of(exc)
                    exchange.deny(exc)
                except AuthenticationRequiredError as exc:
                    outcome = outcome_of(exc)
                    if exchange.mode is not ReplyMode.LEGACY and not exchange.attached.is_set():
                        raise  # answered 401 with the challenge, like any other request
                    msg = f"authentication required: {exc}"
                    exchange.finish(
                        error_response(exchange.request_id, RpcError(INVALID_REQUEST, msg))
                    )
                else:
                    if outcome == "ok":  # a refusal by tier stays "forbidden"
                        outcome = result_outcome(result)
                    if exchange.mode is ReplyMode.STATELESS:
                        result = stamp_2026(method, result, self.dispatcher.server_meta)
                    exchange.finish(result_response(exchange.request_id, result))
            if exchange.cancel_scope.cancelled_caught:
                outcome = "cancelled"
                exchange.cancelled()
        finally:
            if self._inflight.get(slot) is exchange:
                del self._inflight[slot]
            # resumption after this point reads the stored events
            self.streams.forget_live(exchange.session_id or "", exchange.stream_id)
            self.usage.record(
                user, method, usage_name(method, params), outcome, trio.current_time() - started
            )

    async def run_http(
        self,
        send: Send,
        receive: Receive,
        exchange: Exchange,
        user: UserContext,
        message: dict[str, Any],
        *,
        key: str,
        stream_ok: bool,
    ) -> None:
        """Run one request and answer its HTTP request: JSON, or SSE once the handler sends
        something first."""
        if len(self._inflight) >= self.max_inflight:
            raise unavailable_reply(
                f"too many requests in flight (max_inflight={self.max_inflight})"
            )
        await self.admission.count(user, message["method"], exchange.request_id)
        slot = (key, exchange.request_id)
        self._inflight[slot] = exchange  # a cancellation finds it from now on
        answer = partial(self.answer, send, receive, exchange, user, stream_ok=stream_ok)
        try:
            async with trio.open_nursery() as nursery:
                if exchange.mode is not ReplyMode.STREAMABLE:
                    # a 2026 handler may park with its answer decided (input_required): the
                    # answer cannot wait for the handler's end
                    nursery.start_soon(partial(self.run, exchange, user, message, key=key))
                    await answer()
                    return
                # 2025: the answer is decided when the handler ends, unless it sends something
                # first; the handler runs in this task, and the answer starts beside it (an SSE
                # stream) as soon as something is buffered, or here once it has ended (JSON).
                # Most replies are JSON: no task is started for them.
                streaming = False

                def buffered() -> None:
                    nonlocal streaming
                    if not streaming:
                        streaming = True
                        nursery.start_soon(answer)

                exchange.when_buffered(buffered)
                await self.run(exchange, user, message, key=key)
                if not streaming:
                    await answer()
        finally:
            exchange.when_buffered(None)
            if self._inflight.get(slot) is exchange:
                del self._inflight[slot]

    async def answer(
        self,
        send: Send,
        receive: Receive,
        exchange: Exchange,
        user: UserContext,
        *,
        stream_ok: bool,
    ) -> None:
        """Answer the HTTP request with what the handler produces: JSON, or an SSE stream."""
        await exchange.decided.wait()
        if exchange.buffer and stream_ok:
            await self._reply_stream(send, receive, exchange)
            return
        await exchange.settled()
        if exchange.denied is not None:
            err = self.rs.insufficient_scope(exchange.denied.missing, user.scopes)
            err.body["error_description"] = str(exchange.denied)
            raise Reply(403, err.body, err.headers)
        final = exchange.final or {}
        error = final.get("error")
        status = 400 if isinstance(error, dict) and error.get("code") == MISSING_CAPABILITY else 200
        await send_json(send, status, final)

    async def _reply_stream(self, send: Send, receive: Receive, exchange: Exchange) -> None:
        exchange.name_stream(REQUEST_STREAM)
        assert exchange.session is not None
        conn = await self.admission.open_stream(
            exchange.session, ConnectionKind.POST, exchange.session_id, exchange.stream_id
        )
        resumable = exchange.session_id is not None
        priming = exchange.next_id() if resumable else None
        if resumable and exchange.final is None and exchange.denied is None:  # still running
            self.streams.keep_live(exchange.session_id or "", exchange.stream_id, exchange)
        exchange.attach(conn)
        if exchange.close_requested:
            await conn.close(CloseReason.RECONNECT)

        def gone() -> None:
            if exchange.stateless:  # MCP-R15; in the 2025 era a disconnect is no cancel (R4)
                exchange.cancel_scope.cancel()

        await self.pump.pump(conn, send, receive, priming_id=priming, on_disconnect=gone)

    # -- what the client sends back ----------------------------------------------------------------

    async def client_message(self, key: str, user_id: str, message: dict[str, Any]) -> None:
        """A response to a server request, or a notification (cancellation) from the client.

        A response to a request this node did not send goes to the outbox: the node whose
        handler awaits it claims it (server/cluster/_relay.py). Only an id of the form this
        server gives its requests travels, and a user's unclaimed answers there are bounded
        (429 beyond).
        """
        if "method" not in message:
            if self.requests.resolve(message) or self.relay is None:
                return
            if not SERVER_REQUEST_ID.fullmatch(str(message.get("id"))):
                log.debug("answer_dropped", reason="no server request has such an id")
                return
            try:
                forwarded = await self.relay.forward_reply(message, user_id)
            except StoreUnavailable:
                raise unavailable_reply() from None
            if not forwarded:
                limit = self.relay.max_replies
                msg = f"too many answers to server requests awaiting delivery (max_replies={limit})"
                raise too_many(None, msg, 1)
            return
        if message["method"] == "notifications/cancelled":
            request_id = message["params"].get("requestId")
            if not isinstance(request_id, (str, int)):  # no request has such an id
                return
            exchange = self._inflight.get((key, request_id))
            if exchange is not None:
                log.info("request_cancelled", request_id=str(exchange.request_id))
                exchange.cancel_scope.cancel()
