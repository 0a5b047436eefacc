"""2026-07-28 listen streams (``subscriptions/listen``, MCP-R16)."""

from __future__ import annotations

from typing import Any

from actors import (
    CloseReason,
    ConnectionKind,
    RelayAddress,
    Store,
    StoreUnavailable,
    UserSession,
    forget_subscriptions_op,
    subscribe_op,
)
from server.http import Receive, Send
from server.mcp._admission import Admission
from server.mcp._exchange import rpc_reply, unavailable_reply
from server.mcp._jsonrpc import INVALID_PARAMS, notification
from server.mcp._outlet import StreamOutlet
from server.mcp._pump import SsePump
from server.mcp._streams import META_SUBSCRIPTION, StreamTable

__all__ = ["Listen"]

_LISTEN_KEYS = ("toolsListChanged", "promptsListChanged", "resourcesListChanged")
MAX_LISTEN_URIS = 1000  # resource URIs one listen stream may watch


class Listen:
    """A long-lived stream of the notifications the client asked for; its resource
    subscriptions are rows, so an update published on any node finds it."""

    def __init__(
        self,
        store: Store,
        admission: Admission,
        streams: StreamTable,
        outlet: StreamOutlet,
        pump: SsePump,
    ) -> None:
        self.store = store
        self.admission = admission
        self.streams = streams
        self.outlet = outlet
        self.pump = pump

    async def serve(
        self,
        send: Send,
        receive: Receive,
        principal: Any,
        session: UserSession,
        message: dict[str, Any],
    ) -> None:
        requested = message["params"].get("notifications")
        if not isinstance(requested, dict):
            msg = "subscriptions/listen needs params.notifications"
            raise rpc_reply(400, message["id"], INVALID_PARAMS, msg)
        honoured: dict[str, Any] = {k: True for k in _LISTEN_KEYS if requested.get(k) is True}
        uris = requested.get("resourceSubscriptions")
        if isinstance(uris, list):
            honoured["resourceSubscriptions"] = [u for u in uris if isinstance(u, str)][
                :MAX_LISTEN_URIS
            ]
        conn = await self.admission.open_stream(
            session, ConnectionKind.LISTEN, None, token_expires_at=principal.expires_at
        )
        target = RelayAddress.listen(conn.id)
        if honoured.get("resourceSubscriptions"):
            # committed before the acknowledgement: from then on, an update published on any
            # node finds this stream
            try:
                await self.store.write(
                    subscribe_op(honoured["resourceSubscriptions"], target, principal.user_id)
                )
            except StoreUnavailable:
                await conn.close(CloseReason.DATABASE_UNREACHABLE)
                raise unavailable_reply() from None
        self.streams.add_listener(conn, {**honoured, "_id": message["id"]})
        ack = {"notifications": honoured, "_meta": {META_SUBSCRIPTION: message["id"]}}
        self.outlet.emit(conn, notification("notifications/subscriptions/acknowledged", ack))
        try:
            await self.pump.pump(conn, send, receive, priming_id=None)
        finally:
            self.streams.end_listener(conn)
            if honoured.get("resourceSubscriptions"):
                self.store.write_nowait(forget_subscriptions_op(target))
