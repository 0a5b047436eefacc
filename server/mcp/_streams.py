"""The stream table: every long-lived stream this node holds (a 2025 session's GET stream, a
legacy SSE stream, a 2026-07-28 listen stream), the request streams a client can resume here, and
the streams whose new events wait behind ones the relay delivers. Only this object writes it."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from actors import Connection, StreamEvent
from server.mcp._exchange import Exchange

__all__ = ["META_SUBSCRIPTION", "StreamTable", "tagged"]

META_SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"


def tagged(message: dict[str, Any], subscription_id: Any) -> dict[str, Any]:
    """A notification on a listen stream names its subscription (the listen request's id)."""
    params = {**message["params"], "_meta": {META_SUBSCRIPTION: subscription_id}}
    return {**message, "params": params}


def _open(conn: Connection | None) -> Connection | None:
    return conn if conn is not None and conn.closed_reason is None else None


class StreamTable:
    """The streams of this node, by what finds them."""

    def __init__(self) -> None:
        self._get: dict[str, Connection] = {}  # transport session -> its GET stream
        self._legacy: dict[str, Connection] = {}  # legacy session -> its SSE stream
        self._listeners: dict[Connection, dict[str, Any]] = {}  # listen stream -> its filters
        self._live: dict[tuple[str, str], Exchange] = {}  # (session, stream) -> running request
        self._held: dict[Connection, list[StreamEvent]] = {}  # see hold()

    # -- read-only views (statistics, introspection) ---------------------------------------------

    @property
    def get_streams(self) -> Mapping[str, Connection]:
        return types.MappingProxyType(self._get)

    @property
    def legacy_streams(self) -> Mapping[str, Connection]:
        return types.MappingProxyType(self._legacy)

    @property
    def listeners(self) -> Mapping[Connection, dict[str, Any]]:
        return types.MappingProxyType(self._listeners)

    @property
    def live_streams(self) -> Mapping[tuple[str, str], Exchange]:
        return types.MappingProxyType(self._live)

    # -- a 2025 session's GET stream, a legacy stream ---------------------------------------------

    def get_stream(self, session_id: str) -> Connection | None:
        """The session's GET stream while it is open."""
        return _open(self._get.get(session_id))

    def set_get_stream(self, session_id: str, conn: Connection) -> None:
        self._get[session_id] = conn

    def end_get_stream(self, session_id: str, conn: Connection) -> None:
        """Forget ``conn`` as the session's GET stream (a newer one stays)."""
        if self._get.get(session_id) is conn:
            del self._get[session_id]

    def legacy_stream(self, session_id: str) -> Connection | None:
        return _open(self._legacy.get(session_id))

    def set_legacy_stream(self, session_id: str, conn: Connection) -> None:
        self._legacy[session_id] = conn

    def end_legacy_stream(self, session_id: str, conn: Connection) -> None:
        if self._legacy.get(session_id) is conn:
            del self._legacy[session_id]

    def session_stream(self, session_id: str) -> Connection | None:
        """The open GET or legacy stream of a transport session, if this node holds it."""
        return _open(self._get.get(session_id) or self._legacy.get(session_id))

    def stream_sessions(self) -> list[str]:
        """The transport sessions whose GET or legacy stream this node holds."""
        return [*self._get, *self._legacy]

    def held(self) -> list[Connection]:
        """Every GET, legacy and listen stream in the table, closing ones included (the node's
        introspection, server/_introspection.py)."""
        return [*self._get.values(), *self._legacy.values(), *self._listeners]

    def session_streams(self) -> list[Connection]:
        """Every open GET and legacy stream."""
        return [c for c in [*self._get.values(), *self._legacy.values()] if c.closed_reason is None]

    # -- 2026-07-28 listen streams ---------------------------------------------------------------

    def add_listener(self, conn: Connection, filters: dict[str, Any]) -> None:
        self._listeners[conn] = filters

    def end_listener(self, conn: Connection) -> None:
        self._listeners.pop(conn, None)

    def listen_streams(self) -> list[Connection]:
        return list(self._listeners)

    def listening(self) -> list[tuple[Connection, dict[str, Any]]]:
        """Each listen stream with what it asked for (``_id``: its subscription id)."""
        return list(self._listeners.items())

    def for_stream(self, conn: Connection, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` as ``conn`` carries it: a listen stream tags it with its subscription."""
        wanted = self._listeners.get(conn)
        return message if wanted is None else tagged(message, wanted["_id"])

    # -- request streams a client can resume on this node ----------------------------------------

    def keep_live(self, session_id: str, stream_id: str, exchange: Exchange) -> None:
        self._live[(session_id, stream_id)] = exchange

    def forget_live(self, session_id: str, stream_id: str) -> None:
        self._live.pop((session_id, stream_id), None)

    def live(self, session_id: str, stream_id: str) -> Exchange | None:
        return self._live.get((session_id, stream_id))

    # -- ordering against the relay ------------------------------------------------------------------

    def send(self, conn: Connection, event: StreamEvent) -> None:
        """Queue ``event``; while the relay holds ``conn``, behind what it delivers first."""
        held = self._held.get(conn)
        if held is not None:
            held.append(event)
        else:
            conn.send_nowait(event)

    @contextlib.contextmanager
    def hold(self, conns: Iterable[Connection]) -> Iterator[list[Connection]]:
        """Hold back new events on ``conns`` (those not held already) until the block ends; the
        block sends its own first."""
        mine = [c for c in conns if c not in self._held]
        for conn in mine:
            self._held[conn] = []
        try:
            yield mine
        finally:
            for conn in mine:
                for event in self._held.pop(conn):
                    conn.send_nowait(event)
