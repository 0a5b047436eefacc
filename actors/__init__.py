"""Steward's domain actors: the store, sessions, token keepers, notifier, janitor."""

from __future__ import annotations

from actors._migrations import (
    Migration,
    MigrationError,
    applied_migrations,
    load_migrations,
    migrate,
    pending_migrations,
)
from actors._redirect_uris import (
    REDIRECT_URI_LIMIT,
    redirect_uri_matches,
    redirect_uri_problem,
    valid_redirect_uri,
)
from actors._revocation import (
    RevokerPolicy,
    UpstreamRevoker,
    UserChange,
    grant_end_ops,
    reinstate_user,
    revoke_user_ops,
)
from actors._store import (
    Conn,
    Op,
    QueueFull,
    Store,
    StorePolicy,
    StoreStatistics,
    StoreUnavailable,
    WriteQueue,
    WriteRejected,
    store_child_spec,
)
from actors._store_retention import (
    RETENTION_RULES,
    RetentionPolicy,
    RetentionRule,
    retention_sweep,
)

__all__ = [
    "REDIRECT_URI_LIMIT",
    "RETENTION_RULES",
    "Conn",
    "Migration",
    "MigrationError",
    "Op",
    "QueueFull",
    "RetentionPolicy",
    "RetentionRule",
    "RevokerPolicy",
    "Store",
    "StorePolicy",
    "StoreStatistics",
    "StoreUnavailable",
    "UpstreamRevoker",
    "UserChange",
    "WriteQueue",
    "WriteRejected",
    "applied_migrations",
    "grant_end_ops",
    "load_migrations",
    "migrate",
    "pending_migrations",
    "redirect_uri_matches",
    "redirect_uri_problem",
    "reinstate_user",
    "retention_sweep",
    "revoke_user_ops",
    "store_child_spec",
    "valid_redirect_uri",
]
