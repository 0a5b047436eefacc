"""Cluster events: a row in ``cluster_events`` and a NOTIFY, committed with the change they
announce. The notifier (actors/_cluster.py) brings them to every other node."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from typing import Any

from actors._store import Op

__all__ = ["CHANNEL", "ClusterEvent", "cluster_event_ops", "grant_event_ops"]

CHANNEL = "steward_events"


class ClusterEvent(enum.StrEnum):
    """``cluster_events.kind``: what a node tells the others."""

    REVOKE_USER = "revoke_user"  # the user's grants ended: close their streams, forget tokens
    REVOKE_GRANT = "revoke_grant"  # one grant ended (payload: status, message)
    TIER_CHANGED = "tier_changed"  # the user's effective tier (payload: tier)
    KEYS_ROTATED = "keys_rotated"  # the key file changed: reload it (actors/_keys.py)
    # read as ``revoke_grant`` is; no node of this version writes them
    END_SESSION = "end_session"
    REAUTH_REQUIRED = "reauth_required"

    @classmethod
    def parse(cls, kind: str) -> ClusterEvent | None:
        """The kind of a row; None for a kind this version does not know (skipped)."""
        try:
            return cls(kind)
        except ValueError:
            return None


# the kinds that end grants: their upstream tokens wait for a revoker
GRANT_ENDING = frozenset(
    {
        ClusterEvent.REVOKE_USER,
        ClusterEvent.REVOKE_GRANT,
        ClusterEvent.END_SESSION,
        ClusterEvent.REAUTH_REQUIRED,
    }
)

_INSERT = (
    "INSERT INTO cluster_events (kind, user_id, grant_id, payload, origin_node) "
    "VALUES ($1, $2, $3, $4, $5)"
)
_NOTIFY = "SELECT pg_notify($1, $2)"


def cluster_event_ops(
    kind: ClusterEvent,
    *,
    origin: str,
    user_id: str | None = None,
    grant_id: uuid.UUID | None = None,
    payload: dict[str, Any] | None = None,
) -> list[Op]:
    """The ops that publish a cluster event: a row, and a NOTIFY delivered when it commits."""
    return [
        Op(_INSERT, (str(kind), user_id, grant_id, payload or {}, origin)),
        Op(_NOTIFY, (CHANNEL, str(kind))),
    ]


def grant_event_ops(
    kind: ClusterEvent,
    grant_ids: Sequence[uuid.UUID],
    *,
    origin: str,
    payload: dict[str, Any] | None = None,
) -> list[Op]:
    """One event per grant of ``grant_ids`` that exists, with the grant's user read from its row
    (every caller names the same user, whatever it knows), and one NOTIFY."""
    return [
        Op(
            "INSERT INTO cluster_events (kind, user_id, grant_id, payload, origin_node) "
            "SELECT $2, user_id, grant_id, $3, $4 FROM grants WHERE grant_id = ANY($1::uuid[]) "
            "ORDER BY grant_id",
            (list(grant_ids), str(kind), payload or {}, origin),
        ),
        Op(_NOTIFY, (CHANNEL, str(kind))),
    ]
