"""Ending an idle SSE stream in the caller's step: its last event and the end of its body written
straight to the socket.

When a session ends, each of its streams must get a final error event and end. Through ASGI every
stream's pump wakes, and Hypercorn writes the event and the end of the body in two locked socket
writes, each a scheduling round of its own; with a thousand streams each round is a thousand
tasks' steps, and the last stream ends hundreds of milliseconds after the first
(docs/benchmarks.md, revocation-fanout). Here the session's actor writes each idle stream's end
itself, in one synchronous pass: h11 frames the event and the end of the chunked body, and one
non-blocking ``write`` puts both on the socket. The pump then only tidies up.

This reaches into Hypercorn's HTTP/1.1 objects (the stream behind the ASGI ``send``, its h11
connection, the TCP server's send lock and socket), checked by type when a stream opens. Anything
else — HTTP/2, TLS, another server or Hypercorn version whose objects differ — gets no
``StreamEnd`` and its streams end through ASGI as before. A write the socket does not take whole
leaves the rest to the pump, which sends it through Hypercorn under its lock.

The same object wakes an idle pump (``nudge``): the pump waits on the request's ``receive`` for
the client's disconnect, and a message put on the queue that ``receive`` reads wakes it for a new
event, where a cancel scope per wait and a cancel per wake would cost memory and time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import h11
import trio
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.trio.tcp_server import TCPServer

from actors import StreamEvent
from server._sse import encode_event


class StreamEnd:
    """Ends one HTTP/1.1 stream served by Hypercorn's trio worker without a scheduling round."""

    __slots__ = ("_fd", "_h11", "_http", "_inbox", "_proto", "_rest", "_tcp")

    def __init__(
        self,
        http: HTTPStream,
        proto: H11Protocol,
        conn: h11.Connection,
        tcp: TCPServer,
        fd: int,
        inbox: trio.MemorySendChannel[Any],
    ) -> None:
        self._http = http
        self._proto = proto
        self._h11 = conn
        self._tcp = tcp
        self._fd = fd
        self._inbox = inbox
        self._rest = b""

    @classmethod
    def for_send(cls, send: Callable[..., Any]) -> StreamEnd | None:
        """The ``StreamEnd`` of the response that ``send`` (an ASGI send callable, or a wrapper
        of one with an ``inner`` attribute) writes, or None when it is not one this can end."""
        send = getattr(send, "inner", send)
        http = getattr(send, "__self__", None)
        if type(http) is not HTTPStream:
            return None
        proto = getattr(http.send, "__self__", None)
        if type(proto) is not H11Protocol:
            return None
        conn = proto.connection
        tcp = getattr(proto.send, "__self__", None)
        if type(conn) is not h11.Connection or type(tcp) is not TCPServer:
            return None
        stream: object = tcp.stream
        inbox = getattr(getattr(http, "app_put", None), "__self__", None)
        if type(stream) is not trio.SocketStream or not isinstance(inbox, trio.MemorySendChannel):
            return None  # TLS, or not the ASGI receive queue this module knows
        return cls(http, proto, conn, tcp, stream.socket.fileno(), inbox)

    def nudge(self) -> bool:
        """Wake the stream's task where it waits on the request's ``receive``: a message of a
        type only that task reads (``NUDGE``), put on the queue Hypercorn feeds ``receive``
        from. False when the queue takes nothing (the request is gone)."""
        try:
            self._inbox.send_nowait(NUDGE)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def end(self, event: StreamEvent) -> bool:
        """Write ``event`` and the end of the body now; False, having written nothing, when the
        response is not in a state to end this way (then it ends through ASGI)."""
        if (
            self._tcp.send_lock.locked()
            or self._http.closed
            or self._http.state is not ASGIHTTPState.RESPONSE
            or self._h11.our_state is not h11.SEND_BODY
        ):
            return False
        data = (self._h11.send(h11.Data(data=_encoded(event))) or b"") + (
            self._h11.send(h11.EndOfMessage()) or b""
        )
        try:
            written = os.write(self._fd, data)
        except OSError:  # would block, or the peer is gone: the pump's send finds out which
            written = 0
        self._rest = data[written:]
        return True

    async def flush(self) -> None:
        """What the socket did not take, through Hypercorn (its lock, its error handling)."""
        rest, self._rest = self._rest, b""
        if rest:
            await self._proto.send(RawData(data=rest))


NUDGE = {"type": "steward.nudge"}  # not an ASGI event: only the stream's own pump reads it

_last: tuple[StreamEvent | None, bytes] = (None, b"")


def _encoded(event: StreamEvent) -> bytes:
    """``encode_event``, once for a final event shared by all the streams a session ends."""
    global _last
    if _last[0] is not event:
        _last = (event, encode_event(event))
    return _last[1]
