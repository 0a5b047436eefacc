"""Steward's edge: the ASGI application, MCP transports, OAuth endpoints, CLI and configuration."""

from __future__ import annotations

from server._config import ConfigError, Settings, load_settings
from server._embedded_pg import (
    EmbeddedPostgres,
    PostgresNotFound,
    PostgresStartError,
    find_postgres_bindir,
)

__all__ = [
    "ConfigError",
    "EmbeddedPostgres",
    "PostgresNotFound",
    "PostgresStartError",
    "Settings",
    "find_postgres_bindir",
    "load_settings",
]
