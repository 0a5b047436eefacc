"""The audit log (``auth_events``): one row per authentication event, committed with what it
records where it can be, and never holding a secret."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from actors._statuses import LIVE_STATUSES, AuthEvent, GrantStatus
from actors._store import Op, Store

__all__ = ["audit_op", "grants_audit_op", "recent_auth_events"]

_COLUMNS = "(event_id, kind, user_id, client_id, grant_id, node_id, detail)"


def audit_op(
    kind: AuthEvent | GrantStatus,
    *,
    node_id: str,
    user_id: str | None = None,
    client_id: str | None = None,
    grant_id: uuid.UUID | None = None,
    detail: dict[str, Any] | None = None,
) -> Op:
    """The row of one authentication event (``auth_events``), to commit with what it records."""
    return Op(
        f"INSERT INTO auth_events {_COLUMNS} VALUES ($1, $2, $3, $4, $5, $6, $7) "
        "ON CONFLICT DO NOTHING",
        (uuid.uuid4(), str(kind), user_id, client_id, grant_id, node_id, detail or {}),
    )


def grants_audit_op(
    kind: AuthEvent | GrantStatus,
    grant_ids: Sequence[uuid.UUID],
    *,
    node_id: str,
    detail: dict[str, Any],
) -> Op:
    """One event per grant of ``grant_ids`` that is still live, with the grant's user and client
    read from its row. Put before the op that ends the grants: each grant ended is audited once,
    whoever ends it, and a grant already ended is not audited again."""
    return Op(
        f"INSERT INTO auth_events {_COLUMNS} "
        "SELECT gen_random_uuid(), $2, user_id, client_id, grant_id, $3, $4 FROM grants "
        "WHERE grant_id = ANY($1::uuid[]) AND status = ANY($5::text[])",
        (list(grant_ids), str(kind), node_id, detail, sorted(str(s) for s in LIVE_STATUSES)),
    )


async def recent_auth_events(store: Store, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` events, newest first."""
    rows: list[dict[str, Any]] = await store.fetch(
        "SELECT occurred_at, kind, user_id, client_id, grant_id, node_id, detail FROM auth_events "
        "ORDER BY occurred_at DESC LIMIT $1",
        limit,
    )
    return rows
