"""Steward's edge: the ASGI application, MCP transports, OAuth endpoints, CLI and configuration."""

from __future__ import annotations

from server._app import Context, InvalidArguments, Steward, ToolError
from server._config import ConfigError, Settings, load_settings
from server._embedded_pg import (
    EmbeddedPostgres,
    PostgresNotFound,
    PostgresStartError,
    find_postgres_bindir,
)

__all__ = [
    "ConfigError",
    "Context",
    "EmbeddedPostgres",
    "InvalidArguments",
    "PostgresNotFound",
    "PostgresStartError",
    "Settings",
    "Steward",
    "ToolError",
    "find_postgres_bindir",
    "load_settings",
]
