"""The embedded PostgreSQL cluster: found, initialised, started, kept alive and stopped by Steward."""

from __future__ import annotations

from server.postgres._embedded import (
    EmbeddedPostgres,
    PostgresNotFound,
    PostgresStartError,
    PostmasterKeeper,
    StopMode,
    audit_hba,
    find_postgres_bindir,
)

__all__ = [
    "EmbeddedPostgres",
    "PostgresNotFound",
    "PostgresStartError",
    "PostmasterKeeper",
    "StopMode",
    "audit_hba",
    "find_postgres_bindir",
]
