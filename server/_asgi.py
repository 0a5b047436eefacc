"""The top-level ASGI application: routes to the MCP endpoints, the OAuth endpoints and health."""

from __future__ import annotations

import structlog

from server._http import Receive, Scope, Send, send_json
from server._mcp_http import McpHttp
from server._oauth import OAuthEndpoints

__all__ = ["StewardAsgi"]

log = structlog.get_logger("asgi")

_MCP_PATHS = frozenset({"/mcp", "/sse", "/messages"})


class StewardAsgi:
    def __init__(self, mcp: McpHttp, oauth: OAuthEndpoints) -> None:
        self.mcp = mcp
        self.oauth = oauth
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        self.requests += 1
        path = scope["path"]
        try:
            if path in _MCP_PATHS:
                await self.mcp(scope, receive, send)
            elif self.oauth.handles(path):
                await self.oauth(scope, receive, send)
            elif path == "/healthz":
                await send_json(send, 200, {"status": "ok"})
            else:
                await send_json(
                    send, 404, {"error": "not_found", "error_description": f"no endpoint at {path}"}
                )
        except Exception as exc:
            # a defect: logged with its type, answered without a traceback
            log.exception("request_failed", path=path, error=type(exc).__name__)
            try:
                await send_json(
                    send, 500, {"error": "server_error", "error_description": "internal error"}
                )
            except Exception:  # the response had already started
                pass
