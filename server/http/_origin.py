"""Which browser origins may call the MCP endpoints (MCP-R2) and read their answers (CORS)."""

from __future__ import annotations

import urllib.parse
from typing import Any

from server.http._plumbing import Scope, header

__all__ = ["OriginPolicy"]


class OriginPolicy:
    """A present Origin must be allowed: the public URL's own, a configured one, or a loopback
    one while none is configured."""

    def __init__(
        self, allowed_origins: tuple[str, ...] = (), own_origin: str | None = None
    ) -> None:
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins)
        # the public URL's own origin is always allowed (a page served from there), and does not
        # count as a configured list (loopback origins stay allowed while none is configured)
        self.own_origin = own_origin.rstrip("/").lower() if own_origin else None

    def allowed(self, origin: str) -> bool:
        """The rule for one Origin value."""
        origin = origin.rstrip("/")
        if origin in self.allowed_origins or origin.lower() == self.own_origin:
            return True
        try:
            host = urllib.parse.urlsplit(origin).hostname
        except ValueError:  # a malformed Origin is not an allowed one
            host = None
        return not self.allowed_origins and host in ("localhost", "127.0.0.1", "::1")

    def refusal(self, scope: Scope) -> dict[str, Any] | None:
        """The body of the 403 a request from a refused origin gets; None when it may pass."""
        origin = header(scope, b"origin")
        if origin is None or self.allowed(origin):
            return None
        origin = origin.rstrip("/")
        return {"error": "forbidden", "error_description": f"origin {origin!r} is not allowed"}
