"""The notifier and the janitor: the actors that keep one node in step with the others.

notifier: cross-node events (revocations, invalidations, session ends, tier changes) are rows in
``cluster_events`` plus a NOTIFY; each node LISTENs, and after its listening connection drops it
catches up from the last sequence number it saw, so no event is lost to a dropped connection.

janitor: periodically writes this node's heartbeat, expires sessions, reaps stale connections
and dead nodes' connections, and deletes rows past their retention.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
import structlog
import trio

from actors._crypto import KeyRing
from actors._events import CHANNEL, GRANT_ENDING, ClusterEvent, cluster_event_ops
from actors._grants import lapsed_grants_expired
from actors._nodes import dead_nodes_marked, node_beat_op, node_key_op
from actors._statuses import CloseReason, GrantStatus
from actors._store import Store, StoreUnavailable
from actors._store_retention import RETENTION_RULES, RetentionRule, retention_sweep
from actors.auth import AuthService
from actors.sessions import (
    SessionManager,
    dead_nodes_connections_closed,
    grant_connections_closed,
    idle_transport_sessions_ended,
    stale_connections_closed,
)
from runtime import Backoff, ChildSpec, fault_point

__all__ = ["CHANNEL", "KEYS_ROTATED", "Janitor", "JanitorPolicy", "Notifier", "cluster_event_ops"]

log = structlog.get_logger("cluster")

KEYS_ROTATED = ClusterEvent.KEYS_ROTATED  # the key file changed: reload it (actors/_keys.py)


class Notifier:
    """Brings other nodes' events to this node's sessions."""

    def __init__(
        self,
        store: Store,
        sessions: SessionManager,
        *,
        auth: AuthService,
        node_id: str,
        reconnect: Backoff | None = None,
        reload_keys: Callable[[], KeyRing] | None = None,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.auth = auth  # takes up the reloaded keys
        self.node_id = node_id
        self.reload_keys = reload_keys  # None: the key is set inline, only a restart changes it
        self.reconnect = reconnect or Backoff(min=0.1, max=5.0, jitter=0.2, reset_after=30.0)
        self.last_seq: int | None = None
        self.applied = 0

    def child_spec(self) -> ChildSpec:
        return ChildSpec("notifier", self.run, backoff=self.reconnect, shutdown_grace=2.0)

    async def run(
        self, *, task_status: trio.TaskStatus[Notifier] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # ready at once: a node starts, and this actor restarts, while the database is away;
        # it waits for the store inside its incarnation instead of crashing (docs/runtime.md)
        task_status.started(self)
        await self.store.wait_connected()
        if self.last_seq is None:
            self.last_seq = int(
                await self.store.fetchval("SELECT coalesce(max(seq), 0) FROM cluster_events") or 0
            )
        async with self.store.listen(CHANNEL) as inbox:
            await self.catch_up()  # events committed before LISTEN took effect
            async for _ in inbox:
                await fault_point("notifier.deliver")
                await self.catch_up()
        # the listening connection was lost: StoreUnavailable (a runtime.Unavailable), so the
        # supervisor restarts this actor with backoff without counting it as a crash; the next
        # incarnation waits for the store and catches up from last_seq
        msg = "the LISTEN connection was lost"
        raise StoreUnavailable(msg)

    async def catch_up(self) -> int:
        rows = await self.store.fetch(
            "SELECT seq, kind, user_id, grant_id, payload, origin_node FROM cluster_events WHERE seq > $1 ORDER BY seq LIMIT 10000",
            self.last_seq or 0,
        )
        for row in rows:
            self.last_seq = row["seq"]
            if row["origin_node"] == self.node_id:
                continue
            await self.apply(row)
        return len(rows)

    async def apply(self, row: dict[str, Any]) -> None:
        kind = ClusterEvent.parse(row["kind"])
        self.applied += 1
        log.info(
            "cluster_event", kind=row["kind"], origin=row["origin_node"], user_id=row["user_id"]
        )
        if kind is None:  # a kind this version does not know: nothing to do here
            return
        if kind in GRANT_ENDING:
            self.sessions.grants_ended()  # their upstream tokens wait for a revoker
        if kind is ClusterEvent.REVOKE_USER and row["user_id"]:
            await self.sessions.end_user_locally(row["user_id"])
        elif kind in GRANT_ENDING and row["grant_id"]:
            live = self.sessions.registry.lookup(row["grant_id"])
            if live is not None:
                await live.end_locally(
                    _status(row["payload"].get("status"), kind),
                    row["payload"].get("message", f"the session was ended: {kind}"),
                )
            self.sessions.forget(row["grant_id"], row["user_id"] or "")
        elif kind is ClusterEvent.KEYS_ROTATED:
            await self._reload_keys()
        elif kind is ClusterEvent.TIER_CHANGED and row["user_id"]:
            self.sessions.tier_changed_here(row["user_id"], str(row["payload"]["tier"]))

    async def _reload_keys(self) -> None:
        """Take up the key file's current ring and record its key id in this node's row (the
        rotation waits for every live node to do so before re-encrypting)."""
        if self.reload_keys is None:
            log.warning("key_reload_skipped", reason="the key is set inline: restart to change it")
            return
        try:
            ring = self.reload_keys()
        except (OSError, ValueError) as exc:
            log.error("key_reload_failed", error=str(exc))
            return
        self.auth.use_keyring(ring)
        log.info("keys_reloaded", key_id=ring.current, key_ids=ring.key_ids)
        await self.store.write(node_key_op(self.node_id, ring.current))


def _status(text: Any, kind: ClusterEvent) -> GrantStatus:
    """The status a grant-ending event names (the event's kind for one that names none)."""
    for value in (text, str(kind)):
        try:
            return GrantStatus(value)
        except ValueError:
            continue
    return GrantStatus.ENDED


@attrs.frozen
class JanitorPolicy:
    interval: float = 30.0  # between sweeps (and heartbeats)
    stale_connection: float = 120.0  # an open connection row whose heartbeat is older is closed
    dead_node: float = 90.0  # a node whose heartbeat is older is dead
    # after the store came back from an outage every heartbeat is old: reaping by heartbeat age
    # waits this long, so that live nodes and streams have written theirs (None: ``interval``)
    recovery_grace: float | None = None
    idle_chunk: int = 5_000  # idle transport sessions ended per sweep at most
    retention: tuple[RetentionRule, ...] = RETENTION_RULES  # usage_rules() sets the usage ones


class Janitor:
    def __init__(
        self,
        store: Store,
        sessions: SessionManager,
        *,
        node_id: str,
        policy: JanitorPolicy | None = None,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.node_id = node_id
        self.policy = policy or JanitorPolicy()
        self.sweeps = 0

    def child_spec(self) -> ChildSpec:
        return ChildSpec(
            "janitor", self.run, backoff=Backoff(min=1.0, max=30.0), shutdown_grace=2.0
        )

    async def run(
        self, *, task_status: trio.TaskStatus[Janitor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started(self)
        while True:
            await self.store.wait_connected()  # an outage is waited out here, not crashed on
            try:
                await self.sweep()
            except StoreUnavailable:
                log.warning("janitor_sweep_skipped", reason="database unreachable")
            await trio.sleep(self.policy.interval)

    def _reaping(self) -> bool:
        """Whether heartbeats are old enough to judge: not right after an outage."""
        recovered = self.store.statistics().recovered_at
        if recovered is None:
            return True
        grace = self.policy.recovery_grace
        grace = self.policy.interval if grace is None else grace
        return trio.current_time() - recovered >= grace

    async def sweep(self) -> dict[str, int]:
        """One pass; returns what it changed, by kind."""
        p = self.policy
        await self.store.write(
            node_beat_op(
                self.node_id,
                {
                    "sessions": len(self.sessions.registry),
                    "pid": os.getpid(),
                    "key_id": self.sessions.auth.keyring.current,
                },
            )
        )

        reap = self._reaping()
        if not reap:
            log.info("janitor_reaping_deferred", reason="the database just came back")

        async def sweep(conn: Any) -> dict[str, int]:
            expired = await lapsed_grants_expired(conn)
            if not reap:
                return {
                    "expired_sessions": len(expired),
                    "_expired": [r["grant_id"] for r in expired],  # type: ignore[dict-item]
                }
            dead = await dead_nodes_marked(conn, p.dead_node)
            dead_conns = await dead_nodes_connections_closed(conn, dead)
            stale = await stale_connections_closed(conn, p.stale_connection)
            # a transport session with no request and no stream for transport_idle ends (its
            # user's max_sessions counts live ones only); a bounded chunk per sweep
            idle = await idle_transport_sessions_ended(
                conn, self.sessions.policy.transport_idle, p.idle_chunk
            )
            for grant in expired:
                await grant_connections_closed(conn, grant["grant_id"], CloseReason.EXPIRED)
            return {
                "expired_sessions": len(expired),
                "dead_nodes": len(dead),
                "dead_node_connections": dead_conns,
                "stale_connections": stale,
                "idle_transport_sessions": idle,
                "_expired": [r["grant_id"] for r in expired],  # type: ignore[dict-item]
            }

        result = await self.store.transact(sweep)
        # the retention rules live with the schema (actors/_store_retention.py), in bounded chunks
        swept = await retention_sweep(self.store, rules=self.policy.retention)
        result["retention_deleted"] = sum(swept.values())
        ended = result.pop("_expired")
        if ended:
            self.sessions.grants_ended()
        for grant_id in ended:  # type: ignore[attr-defined]
            session = self.sessions.registry.lookup(grant_id)
            if session is not None:
                await session.end_locally(
                    GrantStatus.EXPIRED, "the session's lifetime ended; sign in again"
                )
        self.sweeps += 1
        if any(result.values()):
            log.info("janitor_sweep", **result)
        return result
