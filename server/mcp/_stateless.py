"""The 2026-07-28 stateless path of ``/mcp``: the header rules checked, then a thin router to
discovery, a listen stream, a retry of a parked request, or the request runner."""

from __future__ import annotations

from typing import Any

from actors import StoreUnavailable, UserSession
from server.http import Receive, Scope, Send, header, send_json, send_response
from server.mcp._dispatch import Dispatcher, stamp_2026
from server.mcp._exchange import ReplyMode, ServerRequests, rpc_reply, unavailable_reply
from server.mcp._jsonrpc import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    RpcError,
    error_response,
    result_response,
)
from server.mcp._listen import Listen
from server.mcp._ports import CrossNode
from server.mcp._runner import RequestRunner
from server.mcp._stateless_rules import (
    META_CAPS,
    META_LOG_LEVEL,
    RuleBroken,
    check_capabilities,
    check_method_headers,
    check_param_headers,
    check_version,
)

__all__ = ["Stateless"]

VERSION_HEADER = b"mcp-protocol-version"
_REMOVED_2026 = frozenset(
    {"ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"}
)


class Stateless:
    """Routes one 2026-07-28 message; every request is answered on its own HTTP response."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        runner: RequestRunner,
        requests: ServerRequests,
        listen: Listen,
        relay: CrossNode | None,
        *,
        node_id: str,
    ) -> None:
        self.dispatcher = dispatcher
        self.runner = runner
        self.requests = requests
        self.listen = listen
        self.relay = relay
        self.node_id = node_id

    async def post(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        principal: Any,
        session: UserSession,
        message: dict[str, Any],
    ) -> None:
        request_id = message.get("id")
        params: dict[str, Any] = message.get("params") or {}
        meta = params.get("_meta")
        method = message.get("method")
        try:
            check_version(meta, header(scope, VERSION_HEADER))
            assert isinstance(meta, dict)
            check_capabilities(message, meta)
            if method is not None:
                check_method_headers(method, params, lambda name: header(scope, name))
                if method == "tools/call":
                    tool = self.dispatcher.app.tools.get(params.get("name"))  # type: ignore[arg-type]
                    schema = None if tool is None else tool.input_schema
                    check_param_headers(schema, params, lambda name: header(scope, name))
        except RuleBroken as exc:
            raise rpc_reply(400, request_id, exc.code, exc.message, exc.data) from None
        key = f"grant:{principal.grant_id}"
        if method is None or "id" not in message:  # a response to a server request, a notification
            await self.runner.client_message(key, principal.user_id, message)
            await send_response(send, 202, b"", b"application/json")
            return
        if method == "server/discover":
            result = stamp_2026(
                method, self.dispatcher.discover_result(), self.dispatcher.server_meta
            )
            await send_json(send, 200, result_response(request_id, result))
            return
        if method == "subscriptions/listen":
            await self.listen.serve(send, receive, principal, session, message)
            return
        if not self.dispatcher.knows(method) or method in _REMOVED_2026:
            raise rpc_reply(404, request_id, METHOD_NOT_FOUND, f"method {method!r} not found")
        stream_ok = "text/event-stream" in (header(scope, b"accept") or "")
        state = params.get("requestState")
        if state is not None:
            owner = state.partition(".")[2] if isinstance(state, str) else ""
            if owner and owner != self.node_id and self.relay is not None:
                # the request awaiting this input is parked on another node: it continues there
                forward = {
                    "kind": "retry",
                    "state": state,
                    "grant_id": str(principal.grant_id),
                    "message": message,
                    "stream_ok": stream_ok,
                }
                try:
                    if await self.relay.forward(owner, principal.user_id, forward, send, receive):
                        return
                except StoreUnavailable:
                    raise unavailable_reply() from None
            await self.retry(state, principal.grant_id, message, send, receive, stream_ok=stream_ok)
            return
        level = meta.get(META_LOG_LEVEL)
        user = session.context
        exchange = self.runner.exchange(
            message,
            ReplyMode.STATELESS,
            user=user,
            session=session,
            session_id=None,
            log_level=level if isinstance(level, str) else None,
            client_capabilities=meta.get(META_CAPS),
        )
        await self.runner.run_http(
            send, receive, exchange, user, message, key=key, stream_ok=stream_ok
        )

    async def retry(
        self,
        state: Any,
        grant_id: Any,
        message: dict[str, Any],
        send: Send,
        receive: Receive,
        *,
        stream_ok: bool,
    ) -> None:
        """A retry carrying ``inputResponses`` and a ``requestState`` parked on this node: the
        parked handler continues and its next output answers this request."""
        exchange = self.requests.parked_for(state)
        if exchange is None or exchange.grant_id != grant_id:
            msg = "requestState is not one this server issued to this caller, or it expired"
            await send_json(
                send, 200, error_response(message.get("id"), RpcError(INVALID_PARAMS, msg))
            )
            return
        self.requests.unpark(state)
        exchange.rebind(message["id"])
        exchange.answer(message["params"].get("inputResponses"))
        if exchange.asked:  # SEP-2322: re-request what is missing rather than fail
            exchange.ask_again()
        session = exchange.session
        await self.runner.answer(send, receive, exchange, session.context, stream_ok=stream_ok)
