"""Steward's edge: the ASGI application, MCP transports, OAuth endpoints, CLI and configuration."""

from __future__ import annotations

from server.app import Context, InvalidArguments, Steward, ToolError
from server.config import ConfigError, Settings, load_settings
from server.dev import demo
from server.mcp import RpcError
from server.postgres import (
    EmbeddedPostgres,
    PostgresNotFound,
    PostgresStartError,
    StopMode,
    find_postgres_bindir,
)

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
