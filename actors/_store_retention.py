"""Retention: the rule of every table that grows (stated in the schema's comments), and a sweep
that deletes the rows past it in bounded chunks. The janitor runs the sweep periodically."""

from __future__ import annotations

import attrs
import structlog

from actors._store import Conn, Store

__all__ = [
    "RETENTION_RULES",
    "RetentionPolicy",
    "RetentionRule",
    "retention_sweep",
    "usage_rules",
]

log = structlog.get_logger("retention")


@attrs.frozen
class RetentionRule:
    """Rows of ``table`` matching ``expired`` (a SQL condition) are deleted. With
    ``skip_locked`` the rows are locked first and rows another transaction holds are left for
    the next sweep (a row being referenced right now, e.g. a client getting its first grant)."""

    table: str
    expired: str
    skip_locked: bool = False


RETENTION_RULES: tuple[RetentionRule, ...] = (
    RetentionRule(  # deletes cascade to the grant's token families, tokens, upstream tokens,
        # transport sessions, connections and authorization codes
        "grants",
        "status IN ('ended', 'revoked', 'expired', 'reauth_required') "
        "AND coalesce(ended_at, last_seen_at) < now() - interval '30 days'",
    ),
    RetentionRule("tokens", "expires_at < now() - interval '1 day'"),
    RetentionRule("transport_sessions", "ended_at < now() - interval '7 days'"),
    RetentionRule("connections", "closed_at < now() - interval '7 days'"),
    RetentionRule("stream_events", "created_at < now() - interval '1 hour'"),
    RetentionRule("usage_events", "occurred_at < now() - interval '7 days'"),
    # the minute rollups cover the longest quota window (a day) and the recent charts; the
    # hourly rollups are the usage history (usage_rules() sets both from the configuration)
    RetentionRule("usage_rollups", "minute < now() - interval '48 hours'"),
    RetentionRule("usage_hourly", "hour < now() - interval '90 days'"),
    RetentionRule("auth_events", "occurred_at < now() - interval '90 days'"),
    RetentionRule("cluster_events", "created_at < now() - interval '1 hour'"),
    RetentionRule("outbox", "created_at < now() - interval '1 hour'"),
    RetentionRule(  # a subscription outlives neither its transport session nor its listen stream
        "resource_subscriptions",
        "created_at < now() - interval '1 minute' AND NOT EXISTS ("
        "SELECT 1 FROM transport_sessions t WHERE t.ended_at IS NULL "
        "AND resource_subscriptions.target = 'session:' || t.session_id) AND NOT EXISTS ("
        "SELECT 1 FROM connections c WHERE c.closed_at IS NULL "
        "AND resource_subscriptions.target = 'listen:' || c.connection_id::text)",
    ),
    RetentionRule("nodes", "status = 'dead' AND heartbeat_at < now() - interval '7 days'"),
    RetentionRule("store_applied_ops", "applied_at < now() - interval '7 days'"),
    RetentionRule("authorization_requests", "expires_at < now()"),
    RetentionRule(  # a registered client (dynamic or metadata document) that has no grant a day
        # after it was registered or last fetched, and no authorization in flight; clients from
        # the configuration stay. Its consents go with it (ON DELETE CASCADE).
        "oauth_clients",
        "source IN ('dynamic', 'metadata_document') "
        "AND coalesce(fetched_at, created_at) < now() - interval '1 day' "
        "AND NOT EXISTS (SELECT 1 FROM grants g WHERE g.client_id = oauth_clients.client_id) "
        "AND NOT EXISTS (SELECT 1 FROM authorization_requests r "
        "WHERE r.client_id = oauth_clients.client_id AND r.expires_at > now())",
        skip_locked=True,
    ),
    RetentionRule("authorization_codes", "expires_at < now() - interval '1 hour'"),
)


def usage_rules(
    *, days: int = 90, minute_hours: int = 48, rules: tuple[RetentionRule, ...] = RETENTION_RULES
) -> tuple[RetentionRule, ...]:
    """``rules`` with the usage history kept ``days`` (hourly rollups) and the minute rollups
    ``minute_hours`` (at least 25: a day quota counts the minute rollups of its day).

    Raises:
        ValueError: a retention out of range (the message says which).
    """
    if not 1 <= days <= 3660:
        msg = f"usage_retention_days is 1 to 3660, got {days}"
        raise ValueError(msg)
    if not 25 <= minute_hours <= 24 * days:
        msg = f"usage_minute_retention_hours is 25 to 24 x usage_retention_days, got {minute_hours}"
        raise ValueError(msg)
    swap = {
        "usage_rollups": f"minute < now() - interval '{int(minute_hours)} hours'",
        "usage_hourly": f"hour < now() - interval '{int(days)} days'",
    }
    return tuple(attrs.evolve(r, expired=swap.get(r.table, r.expired)) for r in rules)


@attrs.frozen
class RetentionPolicy:
    """How much one sweep may delete: ``chunk`` rows per transaction, at most ``max_chunks``
    transactions per table (the rest waits for the next sweep)."""

    chunk: int = 5_000
    max_chunks: int = 20


async def retention_sweep(
    store: Store,
    *,
    rules: tuple[RetentionRule, ...] = RETENTION_RULES,
    policy: RetentionPolicy | None = None,
) -> dict[str, int]:
    """Delete rows past their retention, a chunk per transaction; returns rows deleted by table.

    Raises:
        StoreUnavailable: the database cannot be reached (a later sweep continues).
    """
    policy = policy or RetentionPolicy()
    deleted: dict[str, int] = {}
    for rule in rules:
        lock = " FOR UPDATE SKIP LOCKED" if rule.skip_locked else ""
        sql = (
            f"DELETE FROM {rule.table} WHERE ctid = ANY(ARRAY("
            f"SELECT ctid FROM {rule.table} WHERE {rule.expired} LIMIT $1{lock}))"
        )

        async def chunk(conn: Conn, sql: str = sql) -> int:
            status = await conn.execute(sql, policy.chunk)
            return int(status.split()[-1])

        total = 0
        for _ in range(policy.max_chunks):
            n = await store.transact(chunk)
            total += n
            if n < policy.chunk:
                break
        deleted[rule.table] = total
    if any(deleted.values()):
        log.info("retention_swept", **{k: v for k, v in deleted.items() if v})
    return deleted
