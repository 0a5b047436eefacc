"""Events onto streams: ids assigned, kept for resumption in ``stream_events``, queued in order."""

from __future__ import annotations

from typing import Any

from actors import (
    Connection,
    ConnectionKind,
    RelayAddress,
    Store,
    StreamEvent,
    store_stream_event_op,
)
from server.mcp._ports import CrossNode
from server.mcp._streams import StreamTable

__all__ = ["StreamOutlet"]


class StreamOutlet:
    """Sends on this node's streams and stores what a client may resume (the SQL of stream
    events); it is the ``Outlet`` of every exchange."""

    def __init__(self, store: Store, streams: StreamTable, relay: CrossNode | None) -> None:
        self.store = store
        self.streams = streams
        self.relay = relay
        self.events_stored = 0

    def store_event(
        self,
        session_id: str,
        stream_id: str,
        seq: int,
        user_id: str,
        message: dict[str, Any],
        *,
        elsewhere: bool = False,
    ) -> None:
        """Store one event of a resumable stream; ``elsewhere``: its client is not attached here,
        so a node that resumed the stream is woken to read it (server/cluster/_relay.py)."""
        self.events_stored += 1
        wake = (
            [self.relay.wake_op(RelayAddress.stream(session_id, stream_id))]
            if elsewhere and self.relay is not None
            else []
        )
        self.store.write_nowait(
            store_stream_event_op(session_id, stream_id, seq, user_id, message), *wake
        )

    def emit(self, conn: Connection, message: dict[str, Any], *, final: bool = False) -> None:
        """Send one message on a stream that is not a request's reply (GET, legacy, listen)."""
        event_id = conn.next_event_id()
        if conn.session_id is not None and conn.kind is ConnectionKind.GET:
            stream, _, seq = event_id.rpartition(":")
            self.store_event(
                conn.session_id, stream, int(seq), conn.session.context.user_id, message
            )
        self.streams.send(conn, self.stream_event(conn, message, event_id, final=final))

    @staticmethod
    def stream_event(
        conn: Connection, message: dict[str, Any], event_id: str, *, final: bool = False
    ) -> StreamEvent:
        legacy = conn.kind is ConnectionKind.LEGACY_SSE
        return StreamEvent(
            message,
            event_id=None if legacy else event_id,
            event="message" if legacy else None,
            final=final,
        )
