"""What a node holds in memory, read as frozen values: the streams it serves, the subscriptions it
remembers and the statistics of its parts.

This is the node's read-only surface for operators' tools and for the tests: ``Node.streams()``,
``Node.stream()``, ``Node.subscribers()`` and ``Node.statistics()`` (server/_node.py) answer from
here, so nothing outside the edge reads its tables. It sits beside the composition root, above
the subpackages it reads: what it reads of the MCP endpoints is the narrow ``Observed`` protocol
below (``McpEdge`` implements it over the stream table and the subscriptions, server/mcp/), and
the parts' own ``statistics()`` records, nothing else.
"""

from __future__ import annotations

import enum
import uuid
from typing import Protocol

import attrs

from actors import CloseReason, Connection, StoreStatistics
from server.cluster import RelayStatistics
from server.mcp import McpEdge, McpHttpStatistics

__all__ = ["NodeStatistics", "Observed", "OpenStream", "StreamKind", "observed", "open_stream"]


class StreamKind(enum.StrEnum):
    """The long-lived streams a node holds (a POST's reply stream is a request, not listed)."""

    GET = "get"  # the GET stream of a 2025 transport session
    LEGACY_SSE = "legacy_sse"  # the ``/sse`` stream of a legacy (2024-11-05) session
    LISTEN = "listen"  # a 2026-07-28 ``subscriptions/listen`` stream


@attrs.frozen(kw_only=True)
class OpenStream:
    """One long-lived stream held by this node, as it was when read."""

    kind: StreamKind
    id: uuid.UUID  # the connection's id (``connections.connection_id``)
    user_id: str
    session_id: str | None  # the transport (or legacy) session; None for a listen stream
    closed_reason: CloseReason | None  # set once the stream is ending; it leaves the table after
    events_sent: int  # events handed to the client's socket so far
    # its pump is woken by a direct nudge of the server's task (the Hypercorn fast path,
    # server/http/_stream_end.py), not by cancelling a scope around each wait
    nudged: bool

    @property
    def open(self) -> bool:
        return self.closed_reason is None


class Observed(Protocol):
    """The part of the MCP endpoints that the introspection reads (``McpEdge`` implements it)."""

    def held_streams(self) -> list[Connection]:
        """Every GET, legacy and listen stream in the stream table, closing ones included."""
        ...

    def subscribers(self, uri: str) -> frozenset[str]:
        """The transport sessions on this node subscribed to ``uri``."""
        ...


def observed(edge: McpEdge) -> Observed:
    """The endpoints as this module reads them (mypy holds ``McpEdge`` to the protocol)."""
    return edge


def open_stream(conn: Connection) -> OpenStream:
    """``conn`` as a value."""
    return OpenStream(
        kind=StreamKind(conn.kind),
        id=conn.id,
        user_id=conn.session.context.user_id,
        session_id=conn.session_id,
        closed_reason=conn.closed_reason,
        events_sent=conn.sent,
        nudged=conn.outbox.nudge is not None,
    )


@attrs.frozen(kw_only=True)
class NodeStatistics:
    """A snapshot of one node's parts, each with its own statistics record."""

    endpoint: McpHttpStatistics  # the MCP endpoints' tables
    relay: RelayStatistics
    store: StoreStatistics
