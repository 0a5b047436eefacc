"""CORS for browser-based clients (the MCP Inspector's web UI, web apps on the TypeScript SDK).

Two kinds of endpoint (docs/security.md, "Browser clients: CORS"):

- the public metadata documents: any origin may read them (``*``, no credentials);
- ``/mcp``, the deprecated ``/sse`` and ``/messages``, ``/token``, ``/register``, ``/revoke``:
  the origins the Origin check lets in (``allowed_origins``, the public URL's own origin, and
  loopback origins while none is configured), which may read ``Mcp-Session-Id``,
  ``WWW-Authenticate`` and ``MCP-Protocol-Version``. A preflight from any other origin is 403,
  like the request itself on ``/mcp``.
"""

from __future__ import annotations

from collections.abc import Callable

from server.http._plumbing import Headers, Scope, Send, header, send_json, send_response

__all__ = ["Cors"]

# what MCP and OAuth clients send (2026-07-28 adds Mcp-Method, Mcp-Name and Mcp-Param-<name>)
ALLOWED_HEADERS = (
    "authorization",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "mcp-method",
    "mcp-name",
)
PARAM_HEADER = "mcp-param-"
MAX_PARAMS = 32  # Mcp-Param-<name> headers echoed in one preflight answer
EXPOSED_HEADERS = b"Mcp-Session-Id, WWW-Authenticate, MCP-Protocol-Version"
MAX_AGE = b"600"  # seconds a browser may keep a preflight's answer

_PUBLIC_METHODS = b"GET"
_METHODS = {
    "/mcp": b"GET, POST, DELETE",
    "/sse": b"GET",
    "/messages": b"POST",
    "/token": b"POST",
    "/register": b"POST",
    "/revoke": b"POST",
}


class Cors:
    """Which paths answer which origins; the headers of a response and the preflight answer."""

    def __init__(
        self,
        origin_allowed: Callable[[str], bool],
        *,
        public_paths: frozenset[str],
        messages_path: str = "/messages",
    ) -> None:
        self.origin_allowed = origin_allowed
        self.public_paths = public_paths
        self.methods = dict(_METHODS)
        if messages_path != "/messages":
            self.methods[messages_path] = self.methods.pop("/messages")

    def handles(self, path: str) -> bool:
        return path in self.public_paths or path in self.methods

    def response_headers(self, path: str, origin: str | None) -> Headers:
        """What a response on ``path`` to a request from ``origin`` carries (none off a CORS path
        or for an origin that may not read it)."""
        if path in self.public_paths:
            return [(b"access-control-allow-origin", b"*")]
        if path not in self.methods:
            return []
        vary: Headers = [(b"vary", b"Origin")]
        if origin is None or not self.origin_allowed(origin):
            return vary
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", EXPOSED_HEADERS),
            *vary,
        ]

    async def preflight(self, scope: Scope, send: Send) -> None:
        """Answer ``OPTIONS`` on a CORS path: 204 with what the origin may do, 403 for an origin
        that may not; without ``Origin`` and ``Access-Control-Request-Method``, a plain OPTIONS
        (204 with ``Allow``)."""
        path = scope["path"]
        origin = header(scope, b"origin")
        requested = header(scope, b"access-control-request-method")
        public = path in self.public_paths
        methods = _PUBLIC_METHODS if public else self.methods[path]
        if origin is None or requested is None:
            await send_response(send, 204, b"", b"text/plain", [(b"allow", b"OPTIONS, " + methods)])
            return
        if not public and not self.origin_allowed(origin):
            body = {
                "error": "forbidden",
                "error_description": f"origin {origin.rstrip('/')!r} is not allowed",
            }
            await send_json(send, 403, body, [(b"vary", b"Origin")])
            return
        asked = [
            h.strip().lower()
            for h in (header(scope, b"access-control-request-headers") or "").split(",")
        ]
        params = [h for h in asked if h.startswith(PARAM_HEADER) and h.isascii()][:MAX_PARAMS]
        allowed = ", ".join([*ALLOWED_HEADERS, *params]).encode()
        headers: Headers = [
            (b"access-control-allow-origin", b"*" if public else origin.encode("latin-1")),
            (b"access-control-allow-methods", methods),
            (b"access-control-allow-headers", allowed),
            (b"access-control-max-age", MAX_AGE),
        ]
        if not public:
            headers.append((b"vary", b"Origin"))
        await send_response(send, 204, b"", b"text/plain", headers)
