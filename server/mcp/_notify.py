"""Notifications fanned out to this node's streams: resource updates, list changes, a tier's."""

from __future__ import annotations

import structlog

from actors import RelayAddress
from server.app import Steward
from server.mcp._jsonrpc import notification
from server.mcp._outlet import StreamOutlet
from server.mcp._ports import CrossNode
from server.mcp._streams import StreamTable, tagged
from server.mcp._subscriptions import Subscriptions

__all__ = ["Notifier"]

log = structlog.get_logger("mcp_http")


class Notifier:
    """Reads the stream table and the subscriptions; sends through the outlet; the rest goes
    to the other nodes through the outbox."""

    def __init__(
        self,
        app: Steward,
        streams: StreamTable,
        subscriptions: Subscriptions,
        outlet: StreamOutlet,
        relay: CrossNode | None,
    ) -> None:
        self.app = app
        self.streams = streams
        self.subscriptions = subscriptions
        self.outlet = outlet
        self.relay = relay

    def resource_updated(self, uri: str) -> int:
        """Send notifications/resources/updated to each subscriber's stream (one stream per
        subscriber, MCP-R6): at once to the streams on this node (their count is returned), and
        through the outbox to every other subscriber, wherever its stream is or next opens."""
        message = notification("notifications/resources/updated", {"uri": uri})
        done: list[RelayAddress] = []
        for session_id in self.subscriptions.subscribers(uri):
            conn = self.streams.session_stream(session_id)
            if conn is not None:
                self.outlet.emit(conn, message)
                done.append(RelayAddress.session(session_id))
        for conn, wanted in self.streams.listening():
            if uri in (wanted.get("resourceSubscriptions") or ()):
                self.outlet.emit(conn, tagged(message, wanted["_id"]))
                done.append(RelayAddress.listen(conn.id))
        if self.relay is not None:
            self.relay.publish_to_subscribers(uri, message, exclude=done)
        return len(done)

    def list_changed(self, kind: str) -> int:
        """``notifications/{kind}/list_changed`` (tools, prompts, resources) to every session
        stream and every listen stream that asked for it on this node."""
        message = notification(f"notifications/{kind}/list_changed", {})
        sent = 0
        for conn in self.streams.session_streams():
            self.outlet.emit(conn, message)
            sent += 1
        for conn, wanted in self.streams.listening():
            if wanted.get(f"{kind}ListChanged"):
                self.outlet.emit(conn, tagged(message, wanted["_id"]))
                sent += 1
        return sent

    def tier_changed(self, user_id: str, tier: str) -> int:
        """A user's tier changed: what the user may list changes with it, so each list whose
        items depend on the tier gets ``notifications/<kind>/list_changed`` on the user's session
        and listen streams on this node (every node is told, the notifier calls each). Returns
        how many were sent."""
        sent = 0
        for kind in ("tools", "prompts", "resources"):
            if not self.app.tiered(kind):
                continue
            message = notification(f"notifications/{kind}/list_changed", {})
            for conn in self.streams.session_streams():
                if conn.session.context.user_id == user_id:
                    self.outlet.emit(conn, message)
                    sent += 1
            for conn, wanted in self.streams.listening():
                if (
                    wanted.get(f"{kind}ListChanged")
                    and conn.closed_reason is None
                    and conn.session.context.user_id == user_id
                ):
                    self.outlet.emit(conn, tagged(message, wanted["_id"]))
                    sent += 1
        log.info("tier_lists_changed", user_id=user_id, tier=tier, streams=sent)
        return sent
