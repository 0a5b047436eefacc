"""What the ``nodes`` rows (and the open ``connections`` rows) tell about the cluster: which
nodes are alive, and which node holds a stream. The janitor (actors/_cluster.py) writes them."""

from __future__ import annotations

from collections.abc import Sequence

from actors._store import Store

__all__ = ["alive_nodes", "legacy_stream_node"]


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
