"""What the ``nodes`` rows (and the open ``connections`` rows) tell about the cluster: which
nodes are alive, and which node holds a stream. The janitor (actors/_cluster.py) writes their
heartbeats; a node's new incarnation marks its row started (``node_started_op``)."""

from __future__ import annotations

from collections.abc import Sequence

from actors._store import Op, Store

__all__ = [
    "alive_nodes",
    "legacy_stream_node",
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
        "SELECT node_id FROM connections WHERE session_id = $1 AND kind = 'legacy_sse' "
        "AND closed_at IS NULL ORDER BY opened_at DESC LIMIT 1",
        session_id,
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
