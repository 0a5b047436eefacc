"""The user's long-lived streams, counted: this node's in memory, the other nodes' from the
``connections`` table when it matters."""

from __future__ import annotations

import collections

import structlog
import trio

from actors._nodes import other_alive_nodes
from actors._store import Store, StoreUnavailable
from actors.sessions._streams import open_streams_elsewhere
from actors.sessions._values import StreamLimitReached

__all__ = ["StreamSlots"]

log = structlog.get_logger("sessions")


class StreamSlots:
    """Each user's long-lived streams (all kinds but POST replies) held at once, within the
    limit their tier gives: ``take`` reserves one or raises StreamLimitReached, ``give_back``
    returns it when the stream closes."""

    def __init__(
        self, store: Store, *, node_id: str, count_wait: float, nodes_recheck: float
    ) -> None:
        self._store = store
        self._node_id = node_id
        self.count_wait = count_wait  # the read of other nodes' streams, at most
        self.nodes_recheck = nodes_recheck  # "no other node is alive" believed this long
        self.open_streams: collections.Counter[str] = collections.Counter()  # user -> here
        self._others_alive = True  # until the nodes table says otherwise
        self._nodes_checked_until = 0.0

    async def take(self, user_id: str, limit: int) -> None:
        """Reserve one of the user's ``limit`` long-lived streams, or raise StreamLimitReached.
        Other nodes' open streams are counted from the connections table when this node alone is
        under the limit; that read is bounded and skipped when the database does not answer."""
        if self.open_streams[user_id] < limit:
            elsewhere = 0
            with trio.move_on_after(self.count_wait):
                try:
                    if await self._other_nodes_alive():
                        elsewhere = await open_streams_elsewhere(
                            self._store, user_id, self._node_id
                        )
                except StoreUnavailable:
                    log.debug("stream_count_skipped", reason="database unreachable")
            if self.open_streams[user_id] + elsewhere < limit:
                self.open_streams[user_id] += 1
                return
        raise StreamLimitReached(limit)

    async def _other_nodes_alive(self) -> bool:
        """Whether another node may hold streams (the nodes table, re-read at most every
        ``nodes_recheck`` seconds): a lone node skips the per-stream read."""
        now = trio.current_time()
        if now >= self._nodes_checked_until:
            self._others_alive = await other_alive_nodes(self._store, self._node_id) > 0
            self._nodes_checked_until = now + self.nodes_recheck
        return self._others_alive

    def give_back(self, user_id: str) -> None:
        self.open_streams[user_id] -= 1
        if self.open_streams[user_id] <= 0:
            del self.open_streams[user_id]
