"""A TCP fault proxy (Trio) between Steward and a backend such as PostgreSQL.

Modes, switchable at run time: pass through, delay every chunk, black-hole (hold connections,
forward nothing), reset (close every connection with RST and refuse new ones).
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


class Mode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    BLACKHOLE = "blackhole"
    RESET = "reset"


@attrs.frozen
class ProxyStatistics:
    mode: Mode
    accepted: int
    active: int
    bytes_up: int
    bytes_down: int


def _rst(stream: trio.SocketStream) -> None:
    """Close with RST instead of FIN: SO_LINGER with a zero timeout."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    stream.socket.close()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._mode = Mode.PASS
        self._delay = 0.0
        self._changed = trio.Event()
        self._conns: set[tuple[trio.SocketStream, trio.SocketStream | None, trio.CancelScope]] = (
            set()
        )
        self._accepted = 0
        self._up = 0
        self._down = 0

    @classmethod
    @asynccontextmanager
    async def open(cls, target_host: str, target_port: int) -> AsyncIterator[FaultProxy]:
        proxy = cls(target_host, target_port)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, proxy._handle, 0, host="127.0.0.1")
            )
            proxy.port = listeners[0].socket.getsockname()[1]
            try:
                yield proxy
            finally:
                nursery.cancel_scope.cancel()

    def _set(self, mode: Mode) -> None:
        self._mode = mode
        self._changed.set()
        self._changed = trio.Event()

    def pass_through(self) -> None:
        self._set(Mode.PASS)

    def delay(self, seconds: float) -> None:
        self._delay = seconds
        self._set(Mode.DELAY)

    def blackhole(self) -> None:
        self._set(Mode.BLACKHOLE)

    def reset(self) -> None:
        """Reset every current connection and every new one until the mode changes."""
        self._set(Mode.RESET)
        for client, upstream, scope in list(self._conns):
            _rst(client)
            if upstream is not None:
                _rst(upstream)
            scope.cancel()

    def statistics(self) -> ProxyStatistics:
        return ProxyStatistics(self._mode, self._accepted, len(self._conns), self._up, self._down)

    async def _handle(self, client: trio.SocketStream) -> None:
        self._accepted += 1
        if self._mode is Mode.RESET:
            _rst(client)
            return
        with trio.CancelScope() as scope:
            entry: tuple[trio.SocketStream, trio.SocketStream | None, trio.CancelScope] = (
                client,
                None,
                scope,
            )
            self._conns.add(entry)
            try:
                while self._mode is Mode.BLACKHOLE:
                    await self._changed.wait()
                if self._mode is Mode.RESET:
                    _rst(client)
                    return
                upstream = await trio.open_tcp_stream(*self.target)
                self._conns.discard(entry)
                entry = (client, upstream, scope)
                self._conns.add(entry)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, True, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, client, False, nursery.cancel_scope)
            except OSError:
                _rst(client)
            finally:
                self._conns.discard(entry)
        with trio.move_on_after(1, shield=True):
            try:
                await client.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, up: bool, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                data = await src.receive_some(65536)
                if not data:
                    break
                while self._mode is Mode.BLACKHOLE:
                    await self._changed.wait()
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
