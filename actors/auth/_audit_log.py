"""The authentication audit: every event goes to ``auth_events`` (``audit_op``) and the log,
never with a secret."""

from __future__ import annotations

import uuid
from typing import Any

import structlog

from actors._audit import audit_op
from actors._statuses import AuthEvent, GrantStatus
from actors._store import Store

__all__ = ["AuthAudit"]

log = structlog.get_logger("auth")


class AuthAudit:
    """Records the authentication events of one node."""

    def __init__(self, store: Store, *, node_id: str) -> None:
        self._store = store
        self._node_id = node_id

    def __call__(
        self,
        kind: AuthEvent | GrantStatus,
        *,
        user_id: str | None = None,
        client_id: str | None = None,
        grant_id: uuid.UUID | None = None,
        **detail: Any,
    ) -> None:
        """Record an authentication event in the audit table and the log. Never pass a secret."""
        self._store.write_nowait(
            audit_op(
                kind,
                node_id=self._node_id,
                user_id=user_id,
                client_id=client_id,
                grant_id=grant_id,
                detail=detail,
            )
        )
        log.info(
            "auth_event",
            kind=str(kind),
            user_id=user_id,
            client_id=client_id,
            grant_id=str(grant_id) if grant_id else None,
            **detail,
        )
