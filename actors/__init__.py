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
    "RETENTION_RULES",
    "Conn",
    "Migration",
    "MigrationError",
    "Op",
    "QueueFull",
    "RetentionPolicy",
    "RetentionRule",
    "Store",
    "StorePolicy",
    "StoreStatistics",
    "StoreUnavailable",
    "WriteQueue",
    "WriteRejected",
    "applied_migrations",
    "load_migrations",
    "migrate",
    "pending_migrations",
    "retention_sweep",
    "store_child_spec",
]
