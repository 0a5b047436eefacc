"""User sessions (``grants``): how one ends, for every caller (the session actors, the janitor,
the admin API and the ``steward`` commands), and what operators read of them.

When a grant ends, whoever ends it and for whatever reason, the same transaction
- changes its status (``ended_at`` set: retention keys on it) and closes its open connection
  rows with the status as their reason,
- drops its resource subscriptions and what the outbox holds for them (an update stops writing
  rows for a grant that can no longer receive them),
- marks its upstream tokens for revocation (actors/_revocation.py revokes them at the IdP).
``end_grants_ops`` adds what an ended session is seen by: one audit event per grant it ends
(the status as kind, ``reason`` the message) and a ``revoke_grant`` cluster event per grant.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from typing import Any

from actors._audit import grants_audit_op
from actors._events import ClusterEvent, grant_event_ops
from actors._statuses import CloseReason, ConnectionKind, GrantStatus
from actors._store import Conn, Op, Store

__all__ = [
    "ENDED_GRANTS_SQL",
    "LIVE",
    "OPERATOR_ENDED",
    "end_grants_ops",
    "grant_created",
    "grant_detail",
    "grant_end_ops",
    "grant_expired_op",
    "grant_row",
    "grant_touched_op",
    "grant_user",
    "lapsed_grants_expired",
    "list_grants",
    "live_grants_of",
    "session_grant",
    "user_end_ops",
]

LIVE = "('active', 'refreshing')"  # GrantStatus.live, in SQL
LIST_LIMIT = 10_000  # rows an operator's listing shows at most
OPERATOR_ENDED = "an operator ended this session"  # the reason of a session an operator ends

# The streams' targets of the grants ``$1`` (uuid[]): their transport sessions' and their open
# listen streams' (relay addresses, server/_relay.py).
_TARGETS = (
    "SELECT 'session:' || session_id FROM transport_sessions WHERE grant_id = ANY($1::uuid[]) "
    "UNION ALL SELECT 'listen:' || connection_id::text FROM connections "
    f"WHERE grant_id = ANY($1::uuid[]) AND closed_at IS NULL AND kind = '{ConnectionKind.LISTEN}'"
)

# What follows the end of the grants ``$1`` (uuid[]), before their connection rows close: their
# subscriptions and outbox rows go, their upstream tokens are marked for the revoker.
ENDED_GRANTS_SQL: tuple[str, ...] = (
    f"DELETE FROM resource_subscriptions WHERE target IN ({_TARGETS})",
    f"DELETE FROM outbox WHERE target IN ({_TARGETS})",
    "UPDATE upstream_tokens SET revoke_requested_at = now(), revoke_next_at = now() "
    "WHERE grant_id = ANY($1::uuid[]) AND revoke_requested_at IS NULL",
)


def grant_end_ops(
    grant_ids: Sequence[uuid.UUID], *, status: GrantStatus, message: str | None
) -> list[Op]:
    """The ops that end these grants (the live ones change status; all lose their subscriptions
    and have their upstream tokens marked for revocation)."""
    ids = list(grant_ids)
    return [
        *(Op(sql, (ids,)) for sql in ENDED_GRANTS_SQL),
        Op(
            "UPDATE grants SET status = $2, status_reason = $3, ended_at = coalesce(ended_at, now()) "
            f"WHERE grant_id = ANY($1::uuid[]) AND status IN {LIVE}",
            (ids, str(status), message),
        ),
        Op(
            "UPDATE connections SET closed_at = now(), close_reason = $2 "
            "WHERE grant_id = ANY($1::uuid[]) AND closed_at IS NULL",
            (ids, str(CloseReason(status))),
        ),
    ]


def user_end_ops(user_id: str, *, status: GrantStatus, message: str | None) -> list[Op]:
    """The ops that end every live grant of a user, as ``grant_end_ops`` does for one."""
    grants = f"ARRAY(SELECT grant_id FROM grants WHERE user_id = $1 AND status IN {LIVE})"
    return [
        *(Op(sql.replace("$1::uuid[]", grants), (user_id,)) for sql in ENDED_GRANTS_SQL),
        Op(
            "UPDATE grants SET status = $2, status_reason = $3, ended_at = coalesce(ended_at, now()) "
            f"WHERE user_id = $1 AND status IN {LIVE}",
            (user_id, str(status), message),
        ),
        Op(
            "UPDATE connections SET closed_at = now(), close_reason = $2 "
            "WHERE user_id = $1 AND closed_at IS NULL",
            (user_id, str(CloseReason(status))),
        ),
    ]


def end_grants_ops(
    grant_ids: Sequence[uuid.UUID], *, status: GrantStatus, message: str, origin: str
) -> list[Op]:
    """Everything that ending these grants writes, in one transaction: each live one audited
    (kind: the status; detail: ``reason``), ended (``grant_end_ops``), and every node told
    (``revoke_grant``, with the status and the message its streams end with). The one
    implementation behind the session actors, the admin API and ``steward sessions end``."""
    return [
        grants_audit_op(status, grant_ids, node_id=origin, detail={"reason": message}),
        *grant_end_ops(grant_ids, status=status, message=message),
        *grant_event_ops(
            ClusterEvent.REVOKE_GRANT,
            grant_ids,
            origin=origin,
            payload={"status": str(status), "message": message},
        ),
    ]


# -- what operators read -----------------------------------------------------------------------


async def list_grants(
    store: Store, *, user: str = "", status: str = "", limit: int = 200
) -> list[dict[str, Any]]:
    """User sessions, most recently seen first: those of users whose id contains ``user`` (any
    when empty), in ``status`` (any when empty), at most ``limit`` (1 to LIST_LIMIT); with the
    user's tier, override and revocation, and the count of open streams."""
    rows: list[dict[str, Any]] = await store.fetch(
        "SELECT g.grant_id, g.user_id, g.client_id, u.tier, u.tier_override, g.scopes, g.status, "
        "g.created_at, g.last_seen_at, "
        "(SELECT count(*) FROM connections c WHERE c.grant_id = g.grant_id AND c.closed_at IS NULL) "
        "AS open_streams, u.revoked_at IS NOT NULL AS user_revoked "
        "FROM grants g JOIN users u USING (user_id) "
        "WHERE ($1 = '' OR g.user_id ILIKE '%' || $1 || '%') AND ($2 = '' OR g.status = $2) "
        "ORDER BY g.last_seen_at DESC LIMIT $3",
        user,
        status,
        max(1, min(limit, LIST_LIMIT)),
    )
    return rows


async def grant_detail(store: Store, grant_id: uuid.UUID) -> dict[str, Any] | None:
    """One user session with its streams and transport sessions (the newest 100 of each);
    None when there is no such session."""
    grant = await store.fetchrow(
        "SELECT g.grant_id, g.user_id, g.client_id, g.status, g.status_reason, u.tier, "
        "u.tier_override, u.idp_tier, g.scopes, g.expires_at, g.created_at, g.last_seen_at "
        "FROM grants g JOIN users u USING (user_id) WHERE g.grant_id = $1",
        grant_id,
    )
    if grant is None:
        return None
    streams = await store.fetch(
        "SELECT connection_id, node_id, kind, session_id, opened_at, closed_at, close_reason "
        "FROM connections WHERE grant_id = $1 ORDER BY opened_at DESC LIMIT 100",
        grant_id,
    )
    transports = await store.fetch(
        "SELECT session_id, protocol_version, created_at, ended_at FROM transport_sessions "
        "WHERE grant_id = $1 ORDER BY created_at DESC LIMIT 100",
        grant_id,
    )
    return {"session": grant, "streams": streams, "transport_sessions": transports}


async def grant_user(store: Store, grant_id: uuid.UUID) -> str | None:
    """The user of a grant; None when there is no such grant."""
    user_id: str | None = await store.fetchval(
        "SELECT user_id FROM grants WHERE grant_id = $1", grant_id
    )
    return user_id


async def live_grants_of(store: Store, user_id: str) -> list[uuid.UUID]:
    """The user's live grants, in id order."""
    rows = await store.fetch(
        f"SELECT grant_id FROM grants WHERE user_id = $1 AND status IN {LIVE} ORDER BY grant_id",
        user_id,
    )
    return [r["grant_id"] for r in rows]


def grant_touched_op(grant_id: uuid.UUID) -> Op:
    """The grant was used (``last_seen_at``; a session writes it at most every touch interval)."""
    return Op("UPDATE grants SET last_seen_at = now() WHERE grant_id = $1", (grant_id,))


def grant_expired_op(grant_id: uuid.UUID) -> Op:
    """An active grant found past its ``expires_at`` becomes ``expired``."""
    return Op(
        "UPDATE grants SET status = 'expired' WHERE grant_id = $1 AND status = 'active'",
        (grant_id,),
    )


async def grant_row(store: Store, grant_id: uuid.UUID) -> dict[str, Any] | None:
    """The grant's row as it is, None if there is none."""
    row: dict[str, Any] | None = await store.fetchrow(
        "SELECT * FROM grants WHERE grant_id = $1", grant_id
    )
    return row


async def session_grant(store: Store, grant_id: uuid.UUID) -> dict[str, Any] | None:
    """What a session actor starts from: the grant's user, client, scopes, expiry and status,
    with its user's tier (every grant of a user has one tier)."""
    row: dict[str, Any] | None = await store.fetchrow(
        "SELECT g.grant_id, g.user_id, g.client_id, g.scopes, g.expires_at, g.status, u.tier "
        "FROM grants g JOIN users u USING (user_id) WHERE g.grant_id = $1",
        grant_id,
    )
    return row


async def lapsed_grants_expired(conn: Conn) -> list[dict[str, Any]]:
    """Live grants past their lifetime become ``expired`` (the janitor, in its transaction), with
    what an ended grant takes along but its connection rows (``ENDED_GRANTS_SQL``); their
    ``grant_id`` and ``user_id``."""
    rows = await conn.fetch(
        "UPDATE grants SET status = 'expired', status_reason = 'session lifetime ended' "
        f"WHERE status IN {LIVE} AND expires_at < now() RETURNING grant_id, user_id"
    )
    if rows:
        ids = [r["grant_id"] for r in rows]
        for sql in ENDED_GRANTS_SQL:  # subscriptions dropped, upstream tokens marked
            await conn.execute(sql, ids)
    return [dict(r) for r in rows]


async def grant_created(
    conn: Conn,
    grant_id: uuid.UUID,
    *,
    user_id: str,
    client_id: str,
    resource: str,
    tier: str,
    scopes: Sequence[str],
    expires_at: datetime.datetime,
) -> None:
    """A new grant (the user session an authorization completes into), in the caller's
    transaction."""
    await conn.execute(
        "INSERT INTO grants (grant_id, user_id, client_id, resource, tier, scopes, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        grant_id,
        user_id,
        client_id,
        resource,
        tier,
        list(scopes),
        expires_at,
    )
