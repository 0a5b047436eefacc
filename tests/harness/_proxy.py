"""A TCP fault proxy (Trio) between Steward and a backend such as PostgreSQL.

Modes, switchable at run time: pass through, delay every chunk, black-hole (hold connections,
forward nothing), reset (close every connection with RST and reset new ones).
"""

from __future__ import annotations

import enum
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio

__all__ = ["FaultProxy", "Mode", "ProxyStatistics"]

CHUNK = 65536  # bytes read at once: the most a connection buffers inside the proxy, each way
CLOSE_GRACE = 1.0  # seconds to close a client's socket once its connection ends


class Mode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    BLACKHOLE = "blackhole"
    RESET = "reset"


@attrs.frozen
class ProxyStatistics:
    """The proxy's counters: connections accepted in all, open now, and bytes forwarded."""

    mode: Mode
    accepted: int
    active: int
    bytes_up: int  # client -> target
    bytes_down: int  # target -> client


def _rst(stream: trio.SocketStream) -> None:
    """Close with RST instead of FIN: SO_LINGER on with a zero timeout."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    stream.socket.close()


@attrs.define(eq=False)
class _Connection:
    client: trio.SocketStream
    scope: trio.CancelScope
    upstream: trio.SocketStream | None = None


class FaultProxy:
    """Listens on 127.0.0.1 (``port``) and forwards each connection to ``target``.

    Open it with `FaultProxy.open`; switch modes at any time with `pass_through`, `delay`,
    `blackhole` and `reset`.
    """

    def __init__(
        self, target_host: str, target_port: int, *, receive_buffer: int | None = None
    ) -> None:
        self.target = (target_host, target_port)
        self.receive_buffer = receive_buffer
        self.port = 0
        self._mode = Mode.PASS
        self._delay = 0.0
        self._changed = trio.Event()
        self._conns: set[_Connection] = set()
        self._accepted = 0
        self._up = 0
        self._down = 0

    @classmethod
    @asynccontextmanager
    async def open(
        cls, target_host: str, target_port: int, *, receive_buffer: int | None = None
    ) -> AsyncIterator[FaultProxy]:
        """A proxy listening on a free port of 127.0.0.1 until the block ends (its
        connections end with it). ``receive_buffer`` (bytes) shrinks the kernel buffer of each
        connection to the target, so that a black hole stops the target's writes soon."""
        proxy = cls(target_host, target_port, receive_buffer=receive_buffer)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, proxy._handle, 0, host="127.0.0.1")
            )
            proxy.port = listeners[0].socket.getsockname()[1]
            try:
                yield proxy
            finally:
                nursery.cancel_scope.cancel()

    @property
    def mode(self) -> Mode:
        return self._mode

    def _set(self, mode: Mode) -> None:
        self._mode = mode
        self._changed.set()
        self._changed = trio.Event()

    def pass_through(self) -> None:
        """Forward everything; connections held by a black hole go on."""
        self._set(Mode.PASS)

    def delay(self, seconds: float) -> None:
        """Hold every chunk, each way, ``seconds`` before forwarding it."""
        if seconds < 0:
            msg = f"a proxy delay must be at least 0 seconds, got {seconds}"
            raise ValueError(msg)
        self._delay = seconds
        self._set(Mode.DELAY)

    def blackhole(self) -> None:
        """Accept and hold connections, forward nothing: new and existing connections stall."""
        self._set(Mode.BLACKHOLE)

    def reset(self) -> None:
        """Reset every current connection, both sides, and every new one until the mode changes."""
        self._set(Mode.RESET)
        for conn in list(self._conns):
            _rst(conn.client)
            if conn.upstream is not None:
                _rst(conn.upstream)
            conn.scope.cancel()

    def statistics(self) -> ProxyStatistics:
        return ProxyStatistics(self._mode, self._accepted, len(self._conns), self._up, self._down)

    async def _wait_not_blackholed(self) -> None:
        while self._mode is Mode.BLACKHOLE:
            await self._changed.wait()

    async def _handle(self, client: trio.SocketStream) -> None:
        self._accepted += 1
        if self._mode is Mode.RESET:
            _rst(client)
            return
        with trio.CancelScope() as scope:
            conn = _Connection(client, scope)
            self._conns.add(conn)
            try:
                await self._wait_not_blackholed()
                upstream = conn.upstream = await trio.open_tcp_stream(*self.target)
                if self.receive_buffer is not None:
                    upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, True, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, client, False, nursery.cancel_scope)
            except OSError:
                # the target refused: the client sees a reset, as it would without the proxy
                _rst(client)
            finally:
                self._conns.discard(conn)
                if conn.upstream is not None:
                    conn.upstream.socket.close()
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            try:
                await client.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, up: bool, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                data = await src.receive_some(CHUNK)
                if not data:
                    break
                await self._wait_not_blackholed()
                if self._mode is Mode.DELAY:
                    await trio.sleep(self._delay)
                await dst.send_all(data)
                if up:
                    self._up += len(data)
                else:
                    self._down += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()
