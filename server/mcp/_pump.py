"""The SSE pump: a connection's outbox written to one HTTP response."""

from __future__ import annotations

from collections.abc import Callable

from actors import CloseReason, Connection, StreamEvent
from server.http import SSE_HEADERS, FastPath, Receive, Send, encode_event

__all__ = ["RETRY_MS", "SsePump"]

RETRY_MS = 1000  # the `retry:` of priming events: how soon a client reconnects a closed stream


class SsePump:
    """Writes streams; idle ones may end in the caller's step through the Hypercorn fast path
    (server/http/_stream_end.py) while its facts hold."""

    def __init__(self, fast_path: FastPath) -> None:
        self.fast_path = fast_path

    async def pump(
        self,
        conn: Connection,
        send: Send,
        receive: Receive | None,
        *,
        priming_id: str | None,
        on_disconnect: Callable[[], None] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """Write a connection's outbox to the HTTP response until its final event, until the
        stream is closed, or until the client leaves; ``on_end`` runs as it ends, however."""
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            if priming_id is not None:  # MCP-R4: an id to resume from, how soon to come back
                priming = encode_event(StreamEvent(event_id=priming_id, retry_ms=RETRY_MS))
                await send({"type": "http.response.body", "body": priming, "more_body": True})
            outbox = conn.outbox
            end = self.fast_path.for_send(send, receive)
            if end is not None:
                outbox.attach(ender=end.end, nudge=end.nudge)
            while True:
                event = outbox.take()
                if event is None:
                    if outbox.ended and end is not None:  # written by whoever ended the stream
                        await end.flush()
                        return
                    if outbox.closed:
                        break
                    if not await outbox.wait(receive) and not outbox.ended:  # the client left
                        # before a checkpoint: the close ends the pump
                        if on_disconnect is not None:
                            on_disconnect()
                        await conn.close(CloseReason.CLIENT_DISCONNECTED)
                        return
                    continue
                body = encode_event(event)
                if event.final:
                    # with the end of the body, at once, before anything is torn down
                    conn.finish(CloseReason.COMPLETE)  # keeps the reason of a close that came first
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                    return
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if on_end is not None:
                on_end()
