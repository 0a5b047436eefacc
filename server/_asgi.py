"""The top-level ASGI application: ``/mcp``, the deprecated ``/sse`` + ``/messages``, the OAuth
endpoints, admin, health and metrics; a JSON 404 for anything else."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from actors import StoreUnavailable
from server._http import (
    InvalidInput,
    Receive,
    Scope,
    Send,
    lifespan,
    send_json,
    send_response,
    unavailable,
)
from server._legacy_sse import LegacySse
from server._limits import AddressLimiter
from server._mcp_http import McpHttp
from server._metrics import RequestCounter, render_metrics
from server._oauth import OAuthEndpoints
from server._static import send_public_file

__all__ = ["StewardAsgi"]

log = structlog.get_logger("asgi")

_MCP_PATHS = frozenset({"/mcp", "/sse", "/messages"})
_LEGACY_PATHS = frozenset({"/sse", "/messages"})
_OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# the anonymous endpoints limited per client address, by kind (server/_limits.py): the flow's
# browser steps share the authorize kind, a client's token calls the token kind
LIMITED = {
    "/register": "register",
    "/authorize": "authorize",
    "/callback": "authorize",
    "/consent": "consent",
    "/token": "token",
    "/revoke": "token",
}


class StewardAsgi:
    def __init__(self, mcp: McpHttp, oauth: OAuthEndpoints) -> None:
        self.mcp = mcp
        self.legacy = LegacySse(mcp)
        self.oauth = oauth
        self.requests = RequestCounter()
        self.metrics: CollectorRegistry | None = None
        self.readiness: Callable[[], Awaitable[dict[str, Any]]] | None = None
        self.admin: Any = None  # the admin API, once the node exists
        self.limiter: AddressLimiter | None = None  # rate limits per client address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        route = (
            path
            if path in _MCP_PATHS or path in _OPS_PATHS or self.oauth.handles(path)
            else "/admin"
            if path == "/admin" or path.startswith("/admin/")
            else "other"
        )
        counting_send = _CountingSend(send)

        try:
            if path == "/mcp":
                await self.mcp(scope, receive, counting_send)
            elif path in _LEGACY_PATHS:
                await self.legacy(scope, receive, counting_send)
            elif self.oauth.handles(path):
                kind = LIMITED.get(path)
                if (
                    kind is None
                    or self.limiter is None
                    or await self.limiter.check(kind, scope, counting_send)
                ):
                    await self.oauth(scope, receive, counting_send)
            elif self.admin is not None and self.admin.handles(path):
                await self.admin(scope, receive, counting_send)
            elif path == "/healthz":
                await send_json(counting_send, 200, {"status": "ok", "service": "steward"})
            elif path == "/readyz":
                await self._ready(counting_send)
            elif path == "/metrics" and self.metrics is not None:
                await send_response(
                    counting_send,
                    200,
                    render_metrics(self.metrics),
                    b"text/plain; version=0.0.4; charset=utf-8",
                )
            elif not await send_public_file(counting_send, scope["method"], path):
                await send_json(
                    counting_send,
                    404,
                    {"error": "not_found", "error_description": f"no endpoint at {path}"},
                )
        except InvalidInput as exc:
            await send_json(
                counting_send, 400, {"error": "invalid_request", "error_description": str(exc)}
            )
        except Exception as exc:
            if _unavailable_only(exc) and counting_send.status == 0:
                # the database away, on a path that did not answer it itself: not a defect
                log.warning("request_unavailable", path=path, error=type(exc).__name__)
                await send_json(counting_send, 503, *unavailable())
                return
            # a defect: logged with its type, answered without a traceback
            log.exception("request_failed", path=path, error=type(exc).__name__)
            try:
                await send_json(
                    send, 500, {"error": "server_error", "error_description": "internal error"}
                )
            except Exception:  # the response had already started
                pass
        finally:
            self.requests.add(scope["method"], route, counting_send.status)

    async def _ready(self, send: Send) -> None:
        report = await self.readiness() if self.readiness is not None else {"ready": True}
        await send_json(send, 200 if report.get("ready") else 503, report)


def _unavailable_only(exc: BaseException) -> bool:
    """``StoreUnavailable``, or a group of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(StoreUnavailable)[1] is None
    return isinstance(exc, StoreUnavailable)


class _CountingSend:
    """The ASGI send of a request, noting the response's status; ``inner`` is the server's own
    (server._stream_end looks behind it)."""

    __slots__ = ("inner", "status")

    def __init__(self, inner: Send) -> None:
        self.inner = inner
        self.status = 0

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.inner(message)
