"""The MCP protocol: JSON-RPC messages, the dispatcher that runs them against a ``Steward`` app,
and the transports (streamable HTTP for 2025-06-18, the stateless 2026-07-28 path, legacy SSE)."""

from __future__ import annotations

from server.mcp._dispatch import Dispatcher
from server.mcp._jsonrpc import RpcError
from server.mcp._legacy_sse import LegacySse
from server.mcp._streamable import McpHttp

__all__ = ["Dispatcher", "LegacySse", "McpHttp", "RpcError"]
