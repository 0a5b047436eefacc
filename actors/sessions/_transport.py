"""Transport sessions (``Mcp-Session-Id``): created at ``initialize`` within the user's limit,
looked up per request through a bounded cache (misses arriving together read in one query),
ended by ``DELETE``; the ``transport_sessions`` statements are here."""

from __future__ import annotations

import math
import secrets
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import trio

from actors._batched import BatchedLookup
from actors._statuses import CloseReason
from actors._store import Conn, Op, Store, WriteRejected
from actors.auth import Principal
from actors.sessions._streams import Connection
from actors.sessions._values import SessionLimitReached, TransportSession, UserContext

__all__ = [
    "CACHE_SIZE",
    "TRANSPORT_READ_BATCH",
    "TransportSessions",
    "idle_transport_sessions_ended",
    "log_level_op",
]

SESSION_LIMIT = "STW01"  # the SQLSTATE of steward_session_slot's refusal (migration 0009)
CACHE_SIZE = 50_000  # transport sessions a node keeps in memory, the least recent out first
TRANSPORT_READ_BATCH = 500  # session ids read in one query at most (actors._batched)


def log_level_op(session_id: str, level: str) -> Op:
    """Record the log level a transport session asked for (logging/setLevel)."""
    return Op(
        "UPDATE transport_sessions SET log_level = $2 WHERE session_id = $1", (session_id, level)
    )


class TransportSessions:
    """The transport sessions of every user: their rows, and a bounded cache of them for the
    per-request lookup (a copy unused for ``idle`` seconds is read again, so that an end by
    the janitor or another node is seen). ``streams_of`` gives this node's streams of a grant,
    which end with their transport session."""

    def __init__(
        self,
        store: Store,
        *,
        touch_interval: float,
        idle: float,
        streams_of: Callable[[uuid.UUID], Iterable[Connection]],
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._store = store
        self.touch_interval = touch_interval
        self.idle = idle
        self._streams_of = streams_of
        self._cache_size = cache_size
        self._cache: dict[str, TransportSession] = {}  # bounded: oldest out past cache_size
        self._touched: dict[str, float] = {}  # session id -> last_seen written (Trio time)
        # cache misses arriving together (clients back after a restart) read in one query
        self._lookup: BatchedLookup[str, dict[str, Any]] = BatchedLookup(
            self._read, TRANSPORT_READ_BATCH
        )

    async def create(
        self,
        context: UserContext,
        *,
        protocol_version: str,
        client_info: dict[str, Any],
        capabilities: dict[str, Any],
        max_sessions: int | None = None,
    ) -> str:
        """Store a new transport session of the session's user, or raise SessionLimitReached
        when the user already holds ``max_sessions`` live ones (nothing is stored then).

        The insert goes through the group commit like every other write, conditional on the
        user's live rows: ``steward_session_slot`` (migration 0009) counts them in the inserting
        transaction, stopping at the limit, and refuses the statement at it; the store reports
        that to this write alone. Statements of one batch see each other, so the limit is exact
        on one node; two nodes committing the same user's sessions within the same few
        milliseconds can each pass one (docs/scaling.md). A refusal makes the store commit the
        rest of its batch entry by entry; ``initialize_per_minute`` bounds how often one user can
        cause that."""
        session_id = secrets.token_urlsafe(24)
        user_id = context.user_id
        row = (
            session_id,
            context.grant_id,
            user_id,
            context.client_id,
            protocol_version,
            client_info,
            capabilities,
        )
        if max_sessions is None:
            op = Op(
                "INSERT INTO transport_sessions (session_id, grant_id, user_id, client_id, protocol_version, client_info, capabilities) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                row,
            )
        else:
            op = Op(
                "INSERT INTO transport_sessions (session_id, grant_id, user_id, client_id, protocol_version, client_info, capabilities) "
                "SELECT $1, $2, $3, $4, $5, $6::jsonb, $7::jsonb WHERE steward_session_slot($3, $8) "
                "ON CONFLICT DO NOTHING",
                (*row, max_sessions),
            )
        try:
            # durable before the answer (docs/store.md, "What is durable before the answer")
            await self._store.write(op)
        except WriteRejected as exc:
            if max_sessions is None or getattr(exc.__cause__, "sqlstate", None) != SESSION_LIMIT:
                raise
            raise SessionLimitReached(max_sessions) from None
        self._remember(
            TransportSession(
                session_id,
                context.grant_id,
                user_id,
                context.client_id,
                protocol_version,
                client_info,
                capabilities,
                None,
            )
        )
        return session_id

    def _remember(self, ts: TransportSession) -> None:
        self._cache[ts.session_id] = ts
        self._touched[ts.session_id] = trio.current_time()
        if len(self._cache) > self._cache_size:
            oldest = next(iter(self._cache))
            self._cache.pop(oldest)
            self._touched.pop(oldest, None)

    def _forget(self, session_id: str) -> None:
        self._cache.pop(session_id, None)
        self._touched.pop(session_id, None)

    async def lookup(self, principal: Principal, session_id: str) -> TransportSession | None:
        """The transport session, or None when it does not exist, ended, or belongs to another
        principal (MCP-R20: answered exactly as if it did not exist)."""
        ts = self._cache.get(session_id)
        now = trio.current_time()
        if ts is not None and now - self._touched.get(session_id, now) > self.idle:
            # unused here for longer than the idle end: the janitor may have ended it
            self._forget(session_id)
            ts = None
        if ts is None:
            row = await self._lookup.get(session_id)
            if row is None:
                return None
            ts = TransportSession(
                row["session_id"],
                row["grant_id"],
                row["user_id"],
                row["client_id"],
                row["protocol_version"],
                row["client_info"],
                row["capabilities"],
                row["log_level"],
            )
            self._remember(ts)
        # bound to the principal (user and client, MCP-R19), not to a grant: after the user
        # authorized again the same client keeps its transport session under the new grant
        if ts.user_id != principal.user_id or ts.client_id != principal.client_id:
            return None
        if now - self._touched.get(session_id, -math.inf) >= self.touch_interval:
            self._touched[session_id] = now
            self._store.write_nowait(
                Op(
                    "UPDATE transport_sessions SET last_seen_at = now() WHERE session_id = $1 AND ended_at IS NULL",
                    (session_id,),
                )
            )
        if ts.grant_id != principal.grant_id:
            ts = attrs.evolve(ts, grant_id=principal.grant_id)
            self._cache[session_id] = ts
            self._store.write_nowait(
                Op(
                    "UPDATE transport_sessions SET grant_id = $2 WHERE session_id = $1",
                    (session_id, principal.grant_id),
                )
            )
        return ts

    async def _read(self, session_ids: list[str]) -> dict[str, dict[str, Any]]:
        rows = await self._store.fetch(
            "SELECT * FROM transport_sessions WHERE session_id = ANY($1::text[]) AND ended_at IS NULL",
            session_ids,
        )
        return {row["session_id"]: row for row in rows}

    async def end(self, principal: Principal, session_id: str) -> bool:
        """End the principal's transport session (``DELETE``); False when it has none by that
        id (answered as if it did not exist)."""
        if await self.lookup(principal, session_id) is None:
            return False
        self._forget(session_id)
        # durable before the answer, in one statement (one round trip, no BEGIN/COMMIT): a
        # deleted session never answers again, even after a crash (docs/store.md)
        await self._store.write(session_ended_op(session_id, CloseReason.SESSION_DELETED))
        for conn in self._streams_of(principal.grant_id):
            if conn.session_id == session_id:
                # the client ended it: its streams end quietly, as a completed response (an
                # error event would reach a client that is closing and log an error there)
                conn.finish(CloseReason.SESSION_DELETED)
        return True

    # -- invalidation ----------------------------------------------------------------------------------


def session_ended_op(session_id: str, reason: CloseReason) -> Op:
    """End a transport session and close the rows of its streams, in one statement."""
    return Op(
        "WITH ended AS (UPDATE transport_sessions SET ended_at = now() "
        "WHERE session_id = $1 AND ended_at IS NULL RETURNING session_id) "
        "UPDATE connections SET closed_at = now(), close_reason = $2 "
        "WHERE session_id = $1 AND closed_at IS NULL",
        (session_id, str(reason)),
    )


async def idle_transport_sessions_ended(conn: Conn, idle: float, limit: int) -> int:
    """End at most ``limit`` transport sessions with no request and no stream (open, or closed
    within the period) for ``idle`` seconds (their user's ``max_sessions`` counts live ones
    only); how many."""
    status = await conn.execute(
        "WITH idle AS (SELECT session_id FROM transport_sessions t WHERE t.ended_at IS NULL "
        "AND t.last_seen_at < now() - make_interval(secs => $1) AND NOT EXISTS ("
        "SELECT 1 FROM connections c WHERE c.session_id = t.session_id "
        "AND (c.closed_at IS NULL OR c.closed_at > now() - make_interval(secs => $1))) "
        "LIMIT $2 FOR UPDATE SKIP LOCKED) "
        "UPDATE transport_sessions s SET ended_at = now() FROM idle "
        "WHERE s.session_id = idle.session_id",
        idle,
        limit,
    )
    return int(status.split()[-1])
