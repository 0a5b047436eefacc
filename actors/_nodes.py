"""What the ``nodes`` rows (and the open ``connections`` rows) tell about the cluster: which
nodes are alive, and which node holds a stream. The janitor (actors/_cluster.py) writes their
heartbeats; a node's new incarnation marks its row started (``node_started_op``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from actors._statuses import ConnectionKind
from actors._store import Conn, Op, Store

__all__ = [
    "alive_nodes",
    "dead_nodes_marked",
    "legacy_stream_node",
    "node_beat_op",
    "node_key_op",
    "node_started_op",
    "other_alive_nodes",
]


async def alive_nodes(store: Store, node_ids: Sequence[str]) -> set[str]:
    """Those of ``node_ids`` whose row says alive."""
    rows = await store.fetch(
        "SELECT node_id FROM nodes WHERE node_id = ANY($1::text[]) AND status = 'alive'",
        list(node_ids),
    )
    return {r["node_id"] for r in rows}


async def legacy_stream_node(store: Store, session_id: str) -> str | None:
    """The node holding the open legacy (HTTP+SSE) stream of ``session_id``, the newest if
    several; None when none is open."""
    node: str | None = await store.fetchval(
        "SELECT node_id FROM connections WHERE session_id = $1 AND kind = $2 "
        "AND closed_at IS NULL ORDER BY opened_at DESC LIMIT 1",
        session_id,
        ConnectionKind.LEGACY_SSE,
    )
    return node


def node_started_op(node_id: str) -> Op:
    """A new incarnation of ``node_id`` took over its row: alive, started and beating now."""
    return Op(
        "UPDATE nodes SET started_at = now(), heartbeat_at = now(), status = 'alive' "
        "WHERE node_id = $1",
        (node_id,),
    )


async def other_alive_nodes(store: Store, node_id: str) -> int:
    """How many nodes but ``node_id`` are alive."""
    return int(
        await store.fetchval(
            "SELECT count(*) FROM nodes WHERE status = 'alive' AND node_id <> $1", node_id
        )
    )


def node_beat_op(node_id: str, info: dict[str, Any]) -> Op:
    """The node's heartbeat (the janitor's, each sweep), with what it tells of itself."""
    return Op(
        "INSERT INTO nodes (node_id, heartbeat_at, status, info) VALUES ($1, now(), 'alive', $2) "
        "ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now(), status = 'alive', "
        "info = EXCLUDED.info",
        (node_id, info),
    )


def node_key_op(node_id: str, key_id: str) -> Op:
    """The node took up the key ring whose current key is ``key_id``."""
    return Op(
        "UPDATE nodes SET info = info || jsonb_build_object('key_id', $2::text) WHERE node_id = $1",
        (node_id, key_id),
    )


async def dead_nodes_marked(conn: Conn, silent_for: float) -> list[str]:
    """Mark dead the alive nodes whose last heartbeat is older than ``silent_for`` seconds; their
    ids."""
    rows = await conn.fetch(
        "UPDATE nodes SET status = 'dead' WHERE status = 'alive' "
        "AND heartbeat_at < now() - make_interval(secs => $1) RETURNING node_id",
        silent_for,
    )
    return [r["node_id"] for r in rows]
