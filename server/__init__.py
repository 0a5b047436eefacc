"""Steward's edge: the ASGI application, MCP transports, OAuth endpoints, CLI and configuration."""

from __future__ import annotations

from server._app import Context, InvalidArguments, Steward, ToolError
from server._config import ConfigError, Settings, load_settings
from server._demo import demo
from server._embedded_pg import (
    EmbeddedPostgres,
    PostgresNotFound,
    PostgresStartError,
    StopMode,
    find_postgres_bindir,
)
from server._jsonrpc import RpcError

__all__ = [
    "ConfigError",
    "Context",
    "EmbeddedPostgres",
    "InvalidArguments",
    "PostgresNotFound",
    "PostgresStartError",
    "RpcError",
    "Settings",
    "Steward",
    "StopMode",
    "ToolError",
    "demo",
    "find_postgres_bindir",
    "load_settings",
]
