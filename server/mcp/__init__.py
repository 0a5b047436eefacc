"""The MCP protocol: JSON-RPC messages, the dispatcher that runs them against a ``Steward`` app,
and the transports (streamable HTTP for 2025-06-18, the stateless 2026-07-28 path, legacy SSE).

Each part holds one role: ``OriginPolicy`` (server.http) the origin checks, ``Gate``
authentication, ``ErrorAnswers`` the error-to-HTTP mapping, ``Admission`` the tier's limits,
``SsePump`` the SSE pump, ``StreamOutlet`` and ``Subscriptions`` the rows of stream events,
subscriptions and log levels, ``McpHttp`` the 2025 era, ``Stateless`` the 2026-07-28 era,
``LegacySse`` the 2024-11-05 era, ``Listen`` the listen streams; ``RequestRunner`` runs a
request of any era. ``StreamTable`` and ``ServerRequests`` are the tables, each written only by
itself. ``McpEdge`` composes them; ``CrossNode``, ``StreamsHere`` and ``ForwardedHere`` are the
ports between them and the relay (server.cluster).
"""

from __future__ import annotations

from server.mcp._dispatch import Dispatcher
from server.mcp._edge import LocalStreams, McpEdge, McpHttpStatistics, McpOptions
from server.mcp._exchange import Exchange, ReplyMode, ServerRequests
from server.mcp._jsonrpc import RpcError
from server.mcp._legacy_sse import LegacySse
from server.mcp._ports import CrossNode, ForwardedHere, StreamsHere
from server.mcp._streamable import McpHttp
from server.mcp._streams import StreamTable

__all__ = [
    "CrossNode",
    "Dispatcher",
    "Exchange",
    "ForwardedHere",
    "LegacySse",
    "LocalStreams",
    "McpEdge",
    "McpHttp",
    "McpHttpStatistics",
    "McpOptions",
    "ReplyMode",
    "RpcError",
    "ServerRequests",
    "StreamTable",
    "StreamsHere",
]
