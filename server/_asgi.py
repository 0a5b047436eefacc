"""The top-level ASGI application: ``/mcp``, the deprecated ``/sse`` + ``/messages``, the OAuth
endpoints, admin, health and metrics; a JSON 404 for anything else."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog
import trio
from prometheus_client import CollectorRegistry

from actors import StoreUnavailable
from server.http import (
    AddressLimiter,
    Cors,
    Headers,
    InvalidInput,
    OriginPolicy,
    Receive,
    Scope,
    Send,
    header,
    lifespan,
    send_json,
    send_public_file,
    send_response,
    unavailable,
)
from server.mcp import LegacySse, McpHttp
from server.oauth import OAuthEndpoints
from server.ops import AdminApi, RequestCounter, render_metrics

__all__ = ["StewardAsgi"]

log = structlog.get_logger("asgi")

# what is left of a request body the application answers without reading (a 401 before the
# body) is read and dropped before the answer ends, up to these bounds, so that the connection
# can carry the next request
DRAIN_BYTES = 1024 * 1024
DRAIN_SECONDS = 2.0
_MCP_PATHS = frozenset({"/mcp", "/sse", "/messages"})
_LEGACY_PATHS = frozenset({"/sse", "/messages"})
_OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# the anonymous endpoints limited per client address, by kind (server/http/_limits.py): the flow's
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
    """Routes each request to the part that serves its path; every part is given here."""

    def __init__(
        self,
        *,
        mcp: McpHttp,
        legacy: LegacySse,
        origins: OriginPolicy,
        oauth: OAuthEndpoints,
        admin: AdminApi,
        requests: RequestCounter,
        metrics: CollectorRegistry,
        readiness: Callable[[], Awaitable[dict[str, Any]]],
        limiter: AddressLimiter | None,  # rate limits per client address
    ) -> None:
        self.mcp = mcp
        self.legacy = legacy
        self.oauth = oauth
        self.admin = admin
        self.requests = requests
        self.metrics = metrics
        self.readiness = readiness
        self.limiter = limiter
        self.cors = Cors(
            origins.allowed,
            public_paths=frozenset(p for p in oauth.paths if p.startswith("/.well-known/")),
            messages_path=self.legacy.messages_path,
        )

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
        receive = _TrackedReceive(receive)
        cors = self.cors.handles(path)
        counting_send = _CountingSend(
            send,
            receive,
            self.cors.response_headers(path, header(scope, b"origin"))
            if cors and scope["method"] != "OPTIONS"
            else [],
        )

        try:
            if cors and scope["method"] == "OPTIONS":
                await self.cors.preflight(scope, counting_send)
            elif path == "/mcp":
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
            elif self.admin.handles(path):
                await self.admin(scope, receive, counting_send)
            elif path == "/healthz":
                await send_json(counting_send, 200, {"status": "ok", "service": "steward"})
            elif path == "/readyz":
                await self._ready(counting_send)
            elif path == "/metrics":
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
            if counting_send.status == 0:  # not started: a 500 a browser client can read too
                with contextlib.suppress(Exception):
                    await send_json(
                        counting_send,
                        500,
                        {"error": "server_error", "error_description": "internal error"},
                    )
        finally:
            self.requests.add(scope["method"], route, counting_send.status)

    async def _ready(self, send: Send) -> None:
        report = await self.readiness()
        await send_json(send, 200 if report.get("ready") else 503, report)


def _unavailable_only(exc: BaseException) -> bool:
    """``StoreUnavailable``, or a group of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(StoreUnavailable)[1] is None
    return isinstance(exc, StoreUnavailable)


class _TrackedReceive:
    """The ASGI receive of a request, noting whether the request body was read to its end."""

    __slots__ = ("body_done", "inner")

    def __init__(self, inner: Receive) -> None:
        self.inner = inner
        self.body_done = False

    async def __call__(self) -> MutableMapping[str, Any]:
        message = await self.inner()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True  # the last part, or the client is gone
        return message


async def _drain(receive: _TrackedReceive) -> None:
    """Read and drop the rest of a request body the application answers without reading (a 401
    or 415 before the body). Hypercorn closes a connection whose request was not read to its end
    once the answer ends, without a ``Connection: close`` on it, so a client that reuses the
    connection had its next request fail. Bounded: past ``DRAIN_BYTES`` or ``DRAIN_SECONDS``
    the connection is closed as before."""
    taken = 0
    with trio.move_on_after(DRAIN_SECONDS):
        while not receive.body_done and taken <= DRAIN_BYTES:
            message = await receive()
            taken += len(message.get("body", b""))


class _CountingSend:
    """The ASGI send of a request, noting the response's status and adding ``extra`` headers
    (CORS) to it; ``inner`` is the server's own (server.http._stream_end looks behind it). The
    answer's last part waits until the request body was read to its end (``_drain``)."""

    __slots__ = ("extra", "inner", "receive", "status")

    def __init__(self, inner: Send, receive: _TrackedReceive, extra: Headers) -> None:
        self.inner = inner
        self.receive = receive
        self.status = 0
        self.extra = extra

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.extra:
                message = {**message, "headers": [*message.get("headers", ()), *self.extra]}
        elif (
            message["type"] == "http.response.body"
            and not message.get("more_body", False)
            and not self.receive.body_done
        ):
            await _drain(self.receive)
        await self.inner(message)
