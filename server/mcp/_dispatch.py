"""JSON-RPC dispatch of MCP methods to the operator's application.

Lean on purpose: plain dicts and a few checks on the hot path (docs/protocol.md explains why no
validation framework runs per request); what Steward sends is validated against ``mcp-types`` in
the tests.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from actors import AuthenticationRequiredError, UpstreamUnavailable, UserContext
from server.app import (
    Context,
    Emitter,
    InvalidArguments,
    PromptDef,
    ResourceDef,
    Steward,
    ToolError,
    check_arguments,
)
from server.mcp._jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RESOURCE_NOT_FOUND,
    TIER_REQUIRED,
    UPSTREAM_UNAVAILABLE,
    RpcError,
    error_response,
)

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LATEST_2025",
    "LOG_LEVELS",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "SUPPORTED_2025",
    "SUPPORTED_VERSIONS",
    "V2026",
    "Dispatcher",
    "RpcError",
    "ScopeRequired",
    "TierRefused",
    "error_response",
    "stamp_2026",
]

log = structlog.get_logger("mcp")

V2026 = "2026-07-28"
LATEST_2025 = "2025-11-25"
SUPPORTED_2025 = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
SUPPORTED_VERSIONS = (V2026, *SUPPORTED_2025)

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


class ScopeRequired(Exception):
    """The caller's token lacks OAuth scopes (``missing``): HTTP 403 insufficient_scope, which a
    client answers by asking for them (step-up). A tier too low is not this: no authorization
    can change a tier (``tier_refusal``)."""

    def __init__(self, missing: frozenset[str], message: str) -> None:
        super().__init__(message)
        self.missing = missing


class TierRefused(Exception):
    """A tool above the caller's tier: answered with ``result``, a tool result with ``isError``
    (the transports send it as any result, and record the request as ``forbidden``)."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result["content"][0]["text"])
        self.result = result


def _require_scopes(what: str, needed: frozenset[str], user: UserContext) -> None:
    missing = needed - user.scopes
    if missing:
        raise ScopeRequired(missing, f"{what} needs the scopes {' '.join(sorted(missing))}")


def tier_sentence(what: str, min_tier: str | None, tier: str) -> str:
    """The one sentence of a tier refusal, for the user to read."""
    return f"{what} needs the {min_tier} tier or above; this account is {tier}"


_CACHEABLE = frozenset(
    {
        "server/discover",
        "tools/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
    }
)


SERVER_INFO_META = "io.modelcontextprotocol/serverInfo"


def stamp_2026(method: str, result: dict[str, Any], server_meta: dict[str, Any]) -> dict[str, Any]:
    """What a 2026-07-28 result carries besides its payload: ``resultType`` on every result, and a
    cache hint (``ttlMs``, ``cacheScope``) on the cacheable ones. Steward's lists depend on the
    caller (scopes, tier), so they are private and not cached by default. ``server_meta`` names
    the server in ``_meta`` (``Dispatcher.server_meta``)."""
    result.setdefault("resultType", "complete")
    meta = result.get("_meta")
    if not isinstance(meta, dict):
        result["_meta"] = server_meta
    elif SERVER_INFO_META not in meta:
        result["_meta"] = {**meta, **server_meta}
    if method in _CACHEABLE:
        result.setdefault("ttlMs", 0)
        result.setdefault("cacheScope", "private")
    return result


def _content(value: Any) -> dict[str, Any]:
    """A tool's return value as a CallToolResult."""
    if isinstance(value, dict) and "content" in value:
        return value
    if isinstance(value, str):
        return {"content": [{"type": "text", "text": value}], "isError": False}
    if isinstance(value, list) and all(isinstance(v, dict) and "type" in v for v in value):
        return {"content": value, "isError": False}
    return {
        "content": [{"type": "text", "text": json.dumps(value)}],
        "structuredContent": value if isinstance(value, dict) else {"result": value},
        "isError": False,
    }


class Dispatcher:
    """Runs one JSON-RPC request for one caller."""

    def __init__(
        self,
        app: Steward,
        *,
        on_subscribe: Callable[[str | None, str, bool], Awaitable[None]] | None = None,
        on_log_level: Callable[[str | None, str], None] | None = None,
    ) -> None:
        self.app = app
        self.on_subscribe = on_subscribe
        self.on_log_level = on_log_level
        self._server_meta: dict[str, Any] | None = None
        self._methods: dict[
            str, Callable[[UserContext, dict[str, Any], Any], Awaitable[dict[str, Any]]]
        ] = {
            "ping": self._ping,
            "tools/list": self._tools_list,
            "tools/call": self._tools_call,
            "resources/list": self._resources_list,
            "resources/templates/list": self._templates_list,
            "resources/read": self._resources_read,
            "resources/subscribe": self._subscribe,
            "resources/unsubscribe": self._unsubscribe,
            "prompts/list": self._prompts_list,
            "prompts/get": self._prompts_get,
            "completion/complete": self._complete,
            "logging/setLevel": self._set_level,
        }

    def knows(self, method: str) -> bool:
        return method in self._methods

    def capabilities(self) -> dict[str, Any]:
        return {
            "tools": {"listChanged": True},
            "resources": {"subscribe": True, "listChanged": True},
            "prompts": {"listChanged": True},
            "logging": {},
            "completions": {},
        }

    def server_info(self) -> dict[str, Any]:
        return {"name": self.app.name, "version": self.app.version}

    @property
    def server_meta(self) -> dict[str, Any]:
        """``_meta`` that names this server on 2026-07-28 results (built once, shared)."""
        if self._server_meta is None:
            self._server_meta = {SERVER_INFO_META: self.server_info()}
        return self._server_meta

    def initialize_result(self, requested: Any) -> dict[str, Any]:
        version = requested if requested in SUPPORTED_2025 else LATEST_2025
        result: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": self.capabilities(),
            "serverInfo": self.server_info(),
        }
        if self.app.instructions:
            result["instructions"] = self.app.instructions
        return result

    def discover_result(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "supportedVersions": list(SUPPORTED_VERSIONS),
            "capabilities": self.capabilities(),
            "serverInfo": self.server_info(),
        }
        if self.app.instructions:
            result["instructions"] = self.app.instructions
        return result

    async def call(
        self, user: UserContext, method: str, params: dict[str, Any], emitter: Emitter
    ) -> dict[str, Any]:
        handler = self._methods.get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, f"method {method!r} not found")
        try:
            return await handler(user, params, emitter)
        except (RpcError, ScopeRequired, TierRefused, AuthenticationRequiredError):
            raise  # answered by the transport: a JSON-RPC error, a 403, a result, a 401
        except Exception as exc:
            # the application's prompt, resource or completion raised: a JSON-RPC error for this
            # request (tools answer such failures with isError), never an HTTP 500
            log.warning("handler_failed", method=method, error=type(exc).__name__)
            raise RpcError(INTERNAL_ERROR, f"{method} failed: {type(exc).__name__}") from None

    async def _ping(
        self, user: UserContext, params: dict[str, Any], emitter: Emitter
    ) -> dict[str, Any]:
        return {}

    async def _tools_list(
        self, user: UserContext, params: dict[str, Any], emitter: Emitter
    ) -> dict[str, Any]:
        app = self.app
        return {"tools": [t.describe() for t in app.tools.values() if app.offers(user, t)]}

    async def _tools_call(
        self, user: UserContext, params: dict[str, Any], emitter: Emitter
    ) -> dict[str, Any]:
        name = params.get("name")
        tool = self.app.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            raise RpcError(INVALID_PARAMS, f"unknown tool {name!r}")
        _require_scopes(f"tool {tool.name!r}", tool.scopes, user)
        if not self.app.tier_allows(user.tier, tool.min_tier):
            # in the MCP answer, where the user reads it: a 403 would send the client into an
            # OAuth step-up that cannot change a tier (docs/protocol.md, "Tiers and scopes")
            text = tier_sentence(f"tool {tool.name!r}", tool.min_tier, user.tier)
            raise TierRefused({"content": [{"type": "text", "text": text}], "isError": True})
        try:
            arguments = check_arguments(tool, params.get("arguments"))
        except InvalidArguments as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        meta = params.get("_meta") or {}
        ctx = Context(user, emitter, meta.get("progressToken") if isinstance(meta, dict) else None)
        try:
            return _content(await tool.fn(ctx, **arguments))
        except ToolError as exc:
            return {"content": [{"type": "text", "text": str(exc)}], "isError": True}
        except UpstreamUnavailable as exc:
            raise RpcError(
                UPSTREAM_UNAVAILABLE,
                "the upstream service is temporarily unavailable; retry shortly",
                {"retryable": True, "retryAfter": 5, "detail": str(exc)},
            ) from None
        except (RpcError, AuthenticationRequiredError):
            raise
        except Exception as exc:
            log.warning("tool_failed", tool=tool.name, error=type(exc).__name__)
            return {
                "content": [
                    {
                        "type": "text",
                        "text": f"tool {tool.name!r} failed: {type(exc).__name__}: {exc}",
                    }
                ],
                "isError": True,
            }

    def _check_access(self, what: str, item: PromptDef | ResourceDef, user: UserContext) -> None:
        """A prompt's or resource's scopes (403 insufficient_scope) and tier (-32003 naming the
        tier it needs: prompts/get and resources/read have no error result of their own)."""
        _require_scopes(what, item.scopes, user)
        if not self.app.tier_allows(user.tier, item.min_tier):
            raise RpcError(
                TIER_REQUIRED,
                tier_sentence(what, item.min_tier, user.tier),
                {"requiredTier": item.min_tier, "tier": user.tier},
            )

    async def _resources_list(
        self, user: UserContext, params: dict[str, Any], emitter: Emitter
    ) -> dict[str, Any]:
        app = self.app
        return {"resources": [r.describe() for r in app.resources.values() if app.offers(user, r)]}

    async def _templates_list(
        self, user: UserContext, params: dict[str, Any], emitter: Emitter
    ) -> dict[str, Any]:
        app = self.app
        return {"resourceTemplates": [r.describe() for r in app.templates if app.offers(user, r)]}

    async def _resources_read(
        self, user: UserContext, params: dict[str, Any], emitter: Emitter
    ) -> dict[str, Any]:
        uri = params.get("uri")
        found = self.app.find_resource(uri) if isinstance(uri, str) else None
        if found is None:
            # SEP-2164: -32602 from 2026-07-28 on; earlier eras said -32002
            code = INVALID_PARAMS if getattr(emitter, "stateless", False) else RESOURCE_NOT_FOUND
            raise RpcError(code, f"resource {uri!r} not found", {"uri": uri})
        resource, variables = found
        self._check_access(f"resource {uri!r}", resource, user)
        value = await resource.fn(Context(user, emitter), **variables)
        if isinstance(value, dict) and "contents" in value:
            return value
        if isinstance(value, bytes):
            item = {
                "uri": uri,
                "mimeType": resource.mime_type,
                "blob": base64.b64encode(value).decode(),
            }
        else:
            item = {"uri": uri, "mimeType": resource.mime_type, "text": str(value)}
        return {"contents": [item]}

    async def _subscribe(
        self, user: UserContext, params: dict[str, Any], emitter: Emitter
    ) -> dict[str, Any]:
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise RpcError(INVALID_PARAMS, "uri must be a string")
        if self.on_subscribe is not None:
            await self.on_subscribe(user.session_id, uri, True)
        return {}

    async def _unsubscribe(
        self, user: UserContext, params: dict[str, Any], emitter: Emitter
    ) -> dict[str, Any]:
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise RpcError(INVALID_PARAMS, "uri must be a string")
        if self.on_subscribe is not None:
            await self.on_subscribe(user.session_id, uri, False)
        return {}

    async def _prompts_list(
        self, user: UserContext, params: dict[str, Any], emitter: Emitter
    ) -> dict[str, Any]:
        app = self.app
        return {"prompts": [p.describe() for p in app.prompts.values() if app.offers(user, p)]}

    async def _prompts_get(
        self, user: UserContext, params: dict[str, Any], emitter: Emitter
    ) -> dict[str, Any]:
        name = params.get("name")
        prompt = self.app.prompts.get(name) if isinstance(name, str) else None
        if prompt is None:
            raise RpcError(INVALID_PARAMS, f"unknown prompt {name!r}")
        self._check_access(f"prompt {prompt.name!r}", prompt, user)
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, "arguments must be an object")
        missing = [
            a["name"] for a in prompt.arguments if a["required"] and a["name"] not in arguments
        ]
        if missing:
            raise RpcError(
                INVALID_PARAMS, f"prompt {prompt.name!r} is missing the argument {missing[0]!r}"
            )
        known = {a["name"] for a in prompt.arguments}
        value = await prompt.fn(
            Context(user, emitter), **{k: v for k, v in arguments.items() if k in known}
        )
        if isinstance(value, dict) and "messages" in value:
            return value
        if isinstance(value, str):
            value = [{"role": "user", "content": {"type": "text", "text": value}}]
        return {"description": prompt.description, "messages": value}

    async def _complete(
        self, user: UserContext, params: dict[str, Any], emitter: Emitter
    ) -> dict[str, Any]:
        ref = params.get("ref") or {}
        argument = params.get("argument") or {}
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise RpcError(INVALID_PARAMS, "ref and argument must be objects")
        key = (
            ref.get("type"),
            ref.get("name") if ref.get("type") == "ref/prompt" else ref.get("uri"),
        )
        strings = (*key, argument.get("name"), argument.get("value", ""))
        if not all(isinstance(v, str) for v in strings):
            msg = "ref.type, ref.name (or ref.uri), argument.name and argument.value are strings"
            raise RpcError(INVALID_PARAMS, msg)
        fn = self.app.completions.get(key)  # type: ignore[arg-type]
        values: list[str] = []
        if fn is not None:
            values = list(
                await fn(
                    Context(user, emitter),
                    argument.get("name"),
                    argument.get("value", ""),
                    params.get("context") or {},
                )
            )
        return {
            "completion": {
                "values": values[:100],
                "total": len(values),
                "hasMore": len(values) > 100,
            }
        }

    async def _set_level(
        self, user: UserContext, params: dict[str, Any], emitter: Emitter
    ) -> dict[str, Any]:
        level = params.get("level")
        if level not in LOG_LEVELS:
            msg = f"level must be one of {', '.join(LOG_LEVELS)}, got {level!r}"
            raise RpcError(INVALID_PARAMS, msg)
        if self.on_log_level is not None:
            self.on_log_level(user.session_id, level)
        return {}
