"""Cluster events: a row in ``cluster_events`` and a NOTIFY, committed with the change they
announce. The notifier (actors/_cluster.py) brings them to every other node."""

from __future__ import annotations

import uuid
from typing import Any

from actors._store import Op

__all__ = ["CHANNEL", "cluster_event_ops"]

CHANNEL = "steward_events"


def cluster_event_ops(
    kind: str,
    *,
    origin: str,
    user_id: str | None = None,
    grant_id: uuid.UUID | None = None,
    payload: dict[str, Any] | None = None,
) -> list[Op]:
    """The ops that publish a cluster event: a row, and a NOTIFY delivered when it commits."""
    return [
        Op(
            "INSERT INTO cluster_events (kind, user_id, grant_id, payload, origin_node) VALUES ($1, $2, $3, $4, $5)",
            (kind, user_id, grant_id, payload or {}, origin),
        ),
        Op("SELECT pg_notify($1, $2)", (CHANNEL, kind)),
    ]
