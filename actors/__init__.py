"""Steward's domain actors: the store, sessions, token keepers, notifier, janitor."""

from __future__ import annotations

from actors._migrations import (
    Migration,
    MigrationError,
    applied_migrations,
    migrate,
    pending_migrations,
)
from actors._store import (
    Conn,
    Op,
    Store,
    StorePolicy,
    StoreStatistics,
    StoreUnavailable,
    WriteQueue,
    WriteRejected,
    store_child_spec,
)

__all__ = [
    "Conn",
    "Migration",
    "MigrationError",
    "Op",
    "Store",
    "StorePolicy",
    "StoreStatistics",
    "StoreUnavailable",
    "WriteQueue",
    "WriteRejected",
    "applied_migrations",
    "migrate",
    "pending_migrations",
    "store_child_spec",
]
