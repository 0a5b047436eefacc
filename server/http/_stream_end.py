"""Ending an idle SSE stream in the caller's step: its last event and the end of its body written
straight to the socket — the fast path, quarantined.

When a session ends, each of its streams must get a final error event and end. Through ASGI every
stream's pump wakes, and Hypercorn writes the event and the end of the body in two locked socket
writes, each a scheduling round of its own; with a thousand streams each round is a thousand
tasks' steps, and the last stream ends hundreds of milliseconds after the first
(docs/benchmarks.md, revocation-fanout). Here the session's actor writes each idle stream's end
itself, in one synchronous pass: h11 frames the event and the end of the chunked body, and one
non-blocking ``write`` puts both on the socket. The pump then only tidies up.

This reaches into Hypercorn's HTTP/1.1 objects, which are not Hypercorn's API, so the reach-in is
quarantined (docs/architecture.md, "The Hypercorn fast path"; the hook that would replace it:
docs/hypercorn-hook.md):

- Hypercorn's modules are imported at the first stream, not with this module.
- Every private fact (``FACTS``) is checked before use, when a stream opens: the first one
  missing turns the node's fast path off for good, logged once (``stream_fast_path_off``,
  naming the fact), and every stream ends through ASGI from then on.
- Any exception while ending a stream turns the fast path off the same way and the stream ends
  through ASGI (the normal final event and end of body, written by its pump), so the caller —
  the revocation loop over a session's streams — never sees one.
- The setting ``stream_fast_path`` turns it off from the start (docs/operating.md).

HTTP/2, TLS and any other server get no ``StreamEnd`` (their streams end through ASGI as
before) without turning anything off. A write the socket does not take whole leaves the rest to
the pump, which sends it through Hypercorn under its lock.

The same object wakes an idle pump (``nudge``): the pump waits on the request's ``receive`` for
the client's disconnect, and a message put on the queue that ``receive`` reads wakes it for a new
event, where a cancel scope per wait and a cancel per wake would cost memory and time. It is
offered only when ``receive`` is checked to read that very queue.
"""

from __future__ import annotations

import enum
import importlib
import importlib.metadata
import os
import socket
from collections.abc import Callable
from typing import Any

import attrs
import h11
import structlog
import trio

from actors import StreamEvent
from server.http._sse import encode_event

__all__ = ["FACTS", "FastPath", "FastPathState", "StreamEnd"]

log = structlog.get_logger("stream_end")

# What the fast path takes for granted about Hypercorn (0.18), each checked before use; the
# message of ``stream_fast_path_off`` names the one that failed.
FACTS = (
    "hypercorn.protocol.http_stream.HTTPStream is importable",
    "hypercorn.protocol.http_stream.ASGIHTTPState.RESPONSE exists",
    "hypercorn.protocol.h11.H11Protocol is importable",
    "hypercorn.trio.tcp_server.TCPServer is importable",
    "hypercorn.events.RawData is importable",
    "HTTPStream.send is a method of H11Protocol (HTTP/1.1)",
    "H11Protocol.connection is an h11.Connection",
    "H11Protocol.send is a method of TCPServer",
    "TCPServer.stream is a trio.SocketStream (plain TCP)",
    "TCPServer.send_lock is a trio.Lock",
    "HTTPStream.closed is a bool",
    "HTTPStream.state is an ASGIHTTPState",
    "HTTPStream.app_put is the send of a trio.MemorySendChannel",
)


class FastPathState(enum.Enum):
    UNPROBED = "unprobed"  # on, Hypercorn's objects not yet looked at (no stream yet)
    ON = "on"  # the facts held at the first stream
    OFF = "off"  # turned itself off: a fact missing, or an error while ending a stream
    DISABLED = "disabled"  # the setting ``stream_fast_path`` is false


class _Missing(Exception):
    """A fact of ``FACTS`` does not hold; the message names it."""


@attrs.frozen
class _Kinds:
    """Hypercorn's classes the fast path checks objects against, imported at the first stream."""

    http_stream: type
    response: object  # ASGIHTTPState.RESPONSE
    state_enum: type
    h11_protocol: type
    tcp_server: type
    raw_data: Callable[..., Any]


def _imported(module: str, name: str, fact: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise _Missing(fact) from exc


def _import_kinds() -> _Kinds:
    http_stream = _imported("hypercorn.protocol.http_stream", "HTTPStream", FACTS[0])
    state_enum = _imported("hypercorn.protocol.http_stream", "ASGIHTTPState", FACTS[1])
    response = getattr(state_enum, "RESPONSE", None)
    if not isinstance(state_enum, type) or not isinstance(response, state_enum):
        raise _Missing(FACTS[1])
    return _Kinds(
        http_stream=http_stream,
        response=response,
        state_enum=state_enum,
        h11_protocol=_imported("hypercorn.protocol.h11", "H11Protocol", FACTS[2]),
        tcp_server=_imported("hypercorn.trio.tcp_server", "TCPServer", FACTS[3]),
        raw_data=_imported("hypercorn.events", "RawData", FACTS[4]),
    )


def _owner(obj: object, name: str, fact: str) -> object:
    """The object whose bound method ``obj.<name>`` is."""
    owner = getattr(getattr(obj, name, None), "__self__", None)
    if owner is None:
        raise _Missing(fact)
    return owner


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class FastPath:
    """One node's fast path: on until a fact fails or an end raises, then off for good.

    ``for_send`` gives each new HTTP/1.1 stream its ``StreamEnd`` while on; the counters say how
    streams ended (``McpHttp.statistics()``, ``/metrics``)."""

    __slots__ = ("_kinds", "ended", "fallbacks", "off_reason", "state")

    def __init__(self, *, enabled: bool = True) -> None:
        self.state = FastPathState.UNPROBED if enabled else FastPathState.DISABLED
        self.off_reason: str | None = None if enabled else "the setting stream_fast_path is false"
        self._kinds: _Kinds | None = None
        self.ended = 0  # streams ended in the caller's step
        self.fallbacks = 0  # ends that raised and went through ASGI instead

    @property
    def on(self) -> bool:
        return self.state in (FastPathState.UNPROBED, FastPathState.ON)

    def turn_off(self, reason: str) -> None:
        """Off for good (logged once): every stream ends through ASGI from now on."""
        if not self.on:
            return
        self.state = FastPathState.OFF
        self.off_reason = reason
        log.warning(
            "stream_fast_path_off",
            reason=reason,
            hypercorn=_version("hypercorn"),
            h11=_version("h11"),
        )

    def for_send(
        self, send: Callable[..., Any], receive: Callable[..., Any] | None = None
    ) -> StreamEnd | None:
        """The ``StreamEnd`` of the response that ``send`` (an ASGI send callable, or a wrapper
        of one with an ``inner`` attribute) writes, or None when the fast path is off or this is
        not a response it can end. ``receive`` is the request's: the ``StreamEnd`` can wake a
        pump waiting on it only when it reads the queue Hypercorn's ``app_put`` feeds."""
        if not self.on:
            return None
        try:
            return self._for_send(send, receive)
        except _Missing as exc:
            self.turn_off(f"not as expected: {exc}")
        except Exception as exc:  # a shape no fact foresaw: off, not a failed stream
            self.turn_off(f"looking at a stream raised {type(exc).__name__}: {exc}"[:300])
        return None

    def _for_send(
        self, send: Callable[..., Any], receive: Callable[..., Any] | None
    ) -> StreamEnd | None:
        kinds = self._kinds
        if kinds is None:
            kinds = self._kinds = _import_kinds()
        http = getattr(getattr(send, "inner", send), "__self__", None)
        if type(http) is not kinds.http_stream:
            return None  # another server's send (or a test's): not one to end
        proto = _owner(http, "send", FACTS[5])
        if type(proto) is not kinds.h11_protocol:
            if type(proto).__name__ in ("H2Protocol", "H3Protocol"):
                return None  # HTTP/2 or HTTP/3: ends through ASGI
            raise _Missing(FACTS[5])
        conn = getattr(proto, "connection", None)
        if type(conn) is not h11.Connection:
            raise _Missing(FACTS[6])
        tcp = _owner(proto, "send", FACTS[7])
        if type(tcp) is not kinds.tcp_server:
            raise _Missing(FACTS[7])
        stream = getattr(tcp, "stream", None)
        if isinstance(stream, trio.SSLStream):
            return None  # TLS: the bytes must go through the TLS layer
        if type(stream) is not trio.SocketStream:
            raise _Missing(FACTS[8])
        if not isinstance(getattr(tcp, "send_lock", None), trio.Lock):
            raise _Missing(FACTS[9])
        if type(getattr(http, "closed", None)) is not bool:
            raise _Missing(FACTS[10])
        if not isinstance(getattr(http, "state", None), kinds.state_enum):
            raise _Missing(FACTS[11])
        inbox = _owner(http, "app_put", FACTS[12])
        if not isinstance(inbox, trio.MemorySendChannel):
            raise _Missing(FACTS[12])
        self.state = FastPathState.ON
        nudge_inbox = inbox if _reads(receive, inbox) else None
        return StreamEnd(self, kinds, http, proto, conn, tcp, stream.socket, nudge_inbox)


def _reads(receive: Callable[..., Any] | None, inbox: trio.MemorySendChannel[Any]) -> bool:
    """Whether ``receive`` takes what is sent on ``inbox``: the receive end of the same memory
    channel (Hypercorn hands the app ``app_receive_channel.receive``). A receive that is not
    known to be one makes no nudge: the pump then waits under a cancel scope instead. A wrapper
    the edge puts around the request's ``receive`` (``inner``) is looked behind, as for ``send``."""
    channel = getattr(getattr(receive, "inner", receive), "__self__", None)
    if not isinstance(channel, trio.MemoryReceiveChannel):
        return False
    state = getattr(inbox, "_state", None)  # trio's two ends share one state object
    return state is not None and getattr(channel, "_state", None) is state


class StreamEnd:
    """Ends one HTTP/1.1 stream served by Hypercorn's trio worker without a scheduling round."""

    __slots__ = (
        "_fast",
        "_h11",
        "_http",
        "_inbox",
        "_kinds",
        "_proto",
        "_rest",
        "_sock",
        "_tcp",
        "nudge",
    )

    def __init__(
        self,
        fast: FastPath,
        kinds: _Kinds,
        http: Any,
        proto: Any,
        conn: h11.Connection,
        tcp: Any,
        sock: trio.socket.SocketType,
        inbox: trio.MemorySendChannel[Any] | None,
    ) -> None:
        self._fast = fast
        self._kinds = kinds
        self._http = http
        self._proto = proto
        self._h11 = conn
        self._tcp = tcp
        self._sock = sock
        self._inbox = inbox
        self._rest = b""
        # what wakes a pump waiting on the request's receive; None when that receive does not
        # read the queue this can put on
        self.nudge: Callable[[], bool] | None = None if inbox is None else self._nudge

    def _nudge(self) -> bool:
        """Wake the stream's task where it waits on the request's ``receive``: a message of a
        type only that task reads (``NUDGE``), put on the queue Hypercorn feeds ``receive``
        from. False when the queue takes nothing (the request is gone)."""
        assert self._inbox is not None
        try:
            self._inbox.send_nowait(NUDGE)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def end(self, event: StreamEvent) -> bool:
        """Write ``event`` and the end of the body now; False, having written nothing, when the
        response is not in a state to end this way, when the fast path is off, or when ending
        raised (which turns it off): then the stream ends through ASGI. Never raises."""
        fast = self._fast
        if not fast.on:
            return False
        try:
            if (
                self._tcp.send_lock.locked()
                or self._http.closed
                or self._http.state is not self._kinds.response
                or self._h11.our_state is not h11.SEND_BODY
            ):
                return False
            data = (self._h11.send(h11.Data(data=_encoded(event))) or b"") + (
                self._h11.send(h11.EndOfMessage()) or b""
            )
        except Exception as exc:  # any failure: the stream ends through ASGI
            fast.fallbacks += 1
            fast.turn_off(f"ending a stream raised {type(exc).__name__}: {exc}"[:300])
            return False
        # h11 has the message ended: from here the bytes are this stream's to deliver
        try:
            written = os.write(self._sock.fileno(), data)
        except OSError:  # would block, or the peer is gone: the pump's send finds out which
            written = 0
        self._rest = data[written:]
        fast.ended += 1
        return True

    async def flush(self) -> None:
        """What the socket did not take, through Hypercorn (its lock, its error handling). If
        that fails, the connection is shut: a client must not wait for an end that never comes,
        nor get a truncated body followed by the next response."""
        rest, self._rest = self._rest, b""
        if not rest:
            return
        try:
            await self._proto.send(self._kinds.raw_data(data=rest))
        except Exception as exc:
            self._fast.turn_off(f"sending a stream's end raised {type(exc).__name__}: {exc}"[:300])
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


NUDGE = {"type": "steward.nudge"}  # not an ASGI event: only the stream's own pump reads it

_last: tuple[StreamEvent | None, bytes] = (None, b"")


def _encoded(event: StreamEvent) -> bytes:
    """``encode_event``, once for a final event shared by all the streams a session ends."""
    global _last
    if _last[0] is not event:
        _last = (event, encode_event(event))
    return _last[1]
