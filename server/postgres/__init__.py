"""The embedded PostgreSQL cluster: found, initialised, started, kept alive and stopped by Steward."""

from __future__ import annotations

from server.postgres._binaries import (
    PgBinaries,
    build_runpath_problem,
    find_postgres_binaries,
)
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
    "PgBinaries",
    "PostgresNotFound",
    "PostgresStartError",
    "PostmasterKeeper",
    "StopMode",
    "audit_hba",
    "build_runpath_problem",
    "find_postgres_binaries",
    "find_postgres_bindir",
]
