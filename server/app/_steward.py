"""The operator API: register tools, resources, prompts and completions on a ``Steward`` app.

    app = Steward("weather")

    @app.tool(scopes={"mcp:tools"}, min_tier="pro")
    async def forecast(ctx: Context, city: str, days: int = 3) -> str:
        await ctx.progress(1, 2)
        return f"sunny in {city}"

A handler's first parameter is the ``Context`` (the ``UserContext`` as ``ctx.user``, progress,
logging, sampling, elicitation); the others are the tool's arguments, with a JSON Schema derived
from their annotations unless one is given.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

import attrs

from actors import UpstreamUnavailable, UserContext
from server.app._emitter import Emitter

__all__ = [
    "Context",
    "InvalidArguments",
    "PromptDef",
    "ResourceDef",
    "Steward",
    "ToolDef",
    "ToolError",
]

Handler = Callable[..., Awaitable[Any]]


class ToolError(Exception):
    """Raised by a tool to report a failure to the model (a result with ``isError``)."""


class InvalidArguments(Exception):
    """Arguments that do not match a tool's or prompt's schema (JSON-RPC -32602)."""


class Context:
    """What a handler can do besides returning: report progress, log, sample, elicit."""

    def __init__(
        self, user: UserContext, emitter: Emitter, progress_token: str | int | None = None
    ) -> None:
        self.user = user
        self._emit = emitter
        self.progress_token = progress_token

    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        if self.progress_token is None:
            return
        params: dict[str, Any] = {"progressToken": self.progress_token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await self._emit.notify("notifications/progress", params)

    async def log(self, level: str, data: Any, logger: str | None = None) -> None:
        params: dict[str, Any] = {"level": level, "data": data}
        if logger:
            params["logger"] = logger
        await self._emit.log(params)

    @property
    def client_capabilities(self) -> dict[str, Any]:
        """What the client declared it supports (``sampling``, ``elicitation``, ``roots``...)."""
        capabilities = getattr(self._emit, "client_capabilities", None)
        return capabilities if isinstance(capabilities, dict) else {}

    async def ask(self, requests: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """Ask the client several things at once — ``{key: (method, params)}`` with methods
        ``sampling/createMessage``, ``elicitation/create`` or ``roots/list`` — and return their
        results by key. In the 2026-07-28 era they travel together as one ``input_required``
        result (SEP-2322) and ``key`` is what the client sees."""
        many = getattr(self._emit, "request_many", None)
        if many is not None:
            answers: dict[str, Any] = await many(requests)
            return answers
        return {k: await self._emit.request(m, p) for k, (m, p) in requests.items()}

    async def _ask_one(self, key: str | None, method: str, params: dict[str, Any]) -> Any:
        name = key or method.replace("/", "_")
        return (await self.ask({name: (method, params)}))[name]

    async def sample(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int = 256,
        key: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Ask the client's model (sampling/createMessage) and return its result."""
        params = {"messages": messages, "maxTokens": max_tokens, **extra}
        result: dict[str, Any] = await self._ask_one(key, "sampling/createMessage", params)
        return result

    async def list_roots(self, *, key: str | None = None) -> list[dict[str, Any]]:
        """The client's roots (roots/list)."""
        result = await self._ask_one(key, "roots/list", {})
        roots = result.get("roots") if isinstance(result, dict) else None
        return roots if isinstance(roots, list) else []

    async def resource_updated(self, uri: str) -> int:
        """Tell every subscriber of ``uri`` that it changed (notifications/resources/updated),
        on whichever node its stream is; returns how many streams on this node were told at once
        (the others get it through the database, docs/scaling.md)."""
        notify = getattr(self._emit, "resource_updated", None)
        sent: int = await notify(uri) if notify is not None else 0
        return sent

    async def close_stream(self) -> None:
        """Close the SSE stream this request's reply travels on, without ending the request.

        The client reconnects with ``Last-Event-ID`` and receives what the handler sends next
        (SSE polling, SEP-1699); on a JSON reply or a transport without resumption it does nothing.
        """
        close = getattr(self._emit, "close_stream", None)
        if close is not None:
            await close()

    async def upstream_token(self) -> str:
        """The user's access token at the upstream IdP, for calling the IdP's APIs on their behalf.

        Raises:
            UpstreamUnavailable: it expired and its refresh has not succeeded yet (the client gets
                a retryable error).
            AuthenticationRequiredError: its refresh failed for good; the client gets the 401
                challenge and authorizes again.
        """
        session = getattr(self._emit, "session", None)
        if session is None:
            raise UpstreamUnavailable("no user session for this request")
        token: str = await session.upstream_access_token()
        return token

    async def elicit(
        self, message: str, requested_schema: dict[str, Any], *, key: str | None = None
    ) -> dict[str, Any]:
        """Ask the user for structured input (elicitation/create) and return the answer."""
        params = {"message": message, "requestedSchema": requested_schema}
        result: dict[str, Any] = await self._ask_one(key, "elicitation/create", params)
        return result


@attrs.frozen
class ToolDef:
    name: str
    fn: Handler
    description: str
    input_schema: dict[str, Any]
    scopes: frozenset[str]
    min_tier: str | None
    params: tuple[str, ...]
    required: frozenset[str]
    annotations: dict[str, Any] | None = None
    var_keyword: bool = False  # the handler takes **kwargs: any argument is passed through

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
        }
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@attrs.frozen
class ResourceDef:
    uri: str
    fn: Handler
    name: str
    description: str
    mime_type: str
    template: re.Pattern[str] | None = None
    scopes: frozenset[str] = frozenset()
    min_tier: str | None = None

    def describe(self) -> dict[str, Any]:
        key = "uriTemplate" if self.template is not None else "uri"
        return {
            key: self.uri,
            "name": self.name,
            "description": self.description,
            "mimeType": self.mime_type,
        }


@attrs.frozen
class PromptDef:
    name: str
    fn: Handler
    description: str
    arguments: tuple[dict[str, Any], ...]
    scopes: frozenset[str] = frozenset()
    min_tier: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "arguments": list(self.arguments),
        }


def _json_type(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:  # Annotated[int, "what it is"]: the string describes it
        base, *extras = typing.get_args(tp)
        out = _json_type(base)
        notes = [e for e in extras if isinstance(e, str)]
        return {**out, "description": notes[0]} if notes else out
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is dict or origin is dict:
        return {"type": "object"}
    if tp is list or origin in (list, tuple):
        args = typing.get_args(tp)
        return {"type": "array", **({"items": _json_type(args[0])} if args else {})}
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:
            return _json_type(options[0])
        return {"anyOf": [_json_type(a) for a in options]}
    return {}


def _schema(fn: Handler) -> tuple[dict[str, Any], tuple[str, ...], frozenset[str]]:
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    params = list(sig.parameters.values())[1:]  # the first is the Context
    properties: dict[str, Any] = {}
    required: list[str] = []
    for p in params:
        prop = _json_type(hints.get(p.name, Any))
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        elif p.default is not None:
            prop = {**prop, "default": p.default}
        properties[p.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, tuple(p.name for p in params), frozenset(required)


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def check_arguments(tool: ToolDef, arguments: Any) -> dict[str, Any]:
    """Validate arguments against the tool's schema (the subset Steward derives); a clear error names
    the argument."""
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise InvalidArguments(f"arguments of tool {tool.name!r} must be an object")
    missing = sorted(tool.required - arguments.keys())
    if missing:
        raise InvalidArguments(
            f"tool {tool.name!r} is missing the required argument {missing[0]!r}"
        )
    properties = tool.input_schema.get("properties", {})
    for key, value in arguments.items():
        if key not in properties:
            if key not in tool.params and not tool.var_keyword:
                raise InvalidArguments(f"tool {tool.name!r} has no argument {key!r}")
            continue
        prop = properties[key]
        kind = prop.get("type")
        if (
            kind in _TYPE_CHECKS
            and not _TYPE_CHECKS[kind](value)
            and not (value is None and key not in tool.required)
        ):
            raise InvalidArguments(
                f"argument {key!r} of tool {tool.name!r} must be of type {kind}, got {type(value).__name__}"
            )
        if "enum" in prop and value not in prop["enum"]:
            raise InvalidArguments(
                f"argument {key!r} of tool {tool.name!r} must be one of {prop['enum']}"
            )
    return arguments


def _template_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-zA-Z_][a-zA-Z0-9_]*\})", template)
    regex = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}$")


class Steward:
    """An operator's MCP application: what Steward serves."""

    def __init__(
        self,
        name: str = "steward",
        version: str = "0.1.0",
        *,
        instructions: str | None = None,
        tiers: Iterable[str] = ("free", "pro", "enterprise"),
    ) -> None:
        self.name = name
        self.version = version
        self.instructions = instructions
        self.tiers = tuple(tiers)
        self.tools: dict[str, ToolDef] = {}
        self.resources: dict[str, ResourceDef] = {}
        self.templates: list[ResourceDef] = []
        self.prompts: dict[str, PromptDef] = {}
        self.completions: dict[tuple[str, str], Handler] = {}
        self._watchers: list[weakref.WeakMethod[Callable[[str], object]]] = []

    def use_tiers(self, tiers: Iterable[str]) -> None:
        """The node serving this application names its configured tiers (lowest first): the
        order ``min_tier`` compares in from now on."""
        self.tiers = tuple(tiers)

    def watch(self, callback: Callable[[str], object]) -> None:
        """Call ``callback(kind)`` ("tools", "resources", "prompts") after the lists change; held
        weakly, so a server that stops serving this application is dropped. ``callback`` must be a
        bound method."""
        self._watchers = [w for w in self._watchers if w() is not None]
        self._watchers.append(weakref.WeakMethod(callback))

    def changed(self, kind: str) -> None:
        """Tell every server of this application that a list changed (list_changed)."""
        for ref in self._watchers:
            callback = ref()
            if callback is not None:
                callback(kind)

    def remove_tool(self, name: str) -> None:
        """Stop offering a tool; clients are told (notifications/tools/list_changed)."""
        if self.tools.pop(name, None) is not None:
            self.changed("tools")

    def remove_prompt(self, name: str) -> None:
        """Stop offering a prompt; clients are told (notifications/prompts/list_changed)."""
        if self.prompts.pop(name, None) is not None:
            self.changed("prompts")

    def tier_allows(self, tier: str, min_tier: str | None) -> bool:
        if min_tier is None:
            return True
        try:
            return self.tiers.index(tier) >= self.tiers.index(min_tier)
        except ValueError:
            return False

    def offers(self, user: UserContext, item: ToolDef | PromptDef | ResourceDef) -> bool:
        """Whether ``user`` sees ``item`` in its list: every scope it needs, and its tier."""
        return item.scopes <= user.scopes and self.tier_allows(user.tier, item.min_tier)

    def tiered(self, kind: str) -> bool:
        """Whether what a user sees of a list ("tools", "prompts", "resources") depends on the
        user's tier: a tier change then changes it (list_changed)."""
        items: Iterable[ToolDef | PromptDef | ResourceDef] = (
            self.tools.values()
            if kind == "tools"
            else self.prompts.values()
            if kind == "prompts"
            else [*self.resources.values(), *self.templates]
        )
        return any(item.min_tier is not None for item in items)

    def _check_tier(self, what: str, min_tier: str | None) -> None:
        if min_tier is not None and min_tier not in self.tiers:
            msg = f"{what}: min_tier {min_tier!r} is not one of {self.tiers}"
            raise ValueError(msg)

    @typing.overload
    def tool(self, name: Handler) -> Handler: ...

    @typing.overload
    def tool(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        scopes: Iterable[str] = (),
        min_tier: str | None = None,
        input_schema: dict[str, Any] | None = None,
        annotations: dict[str, Any] | None = None,
    ) -> Callable[[Handler], Handler]: ...

    def tool(
        self,
        name: str | Handler | None = None,
        *,
        description: str | None = None,
        scopes: Iterable[str] = (),
        min_tier: str | None = None,
        input_schema: dict[str, Any] | None = None,
        annotations: dict[str, Any] | None = None,
    ) -> Callable[[Handler], Handler] | Handler:
        """Register a tool: ``@app.tool`` or ``@app.tool("name", scopes=..., min_tier=...)``.

        Its input schema comes from the handler's type hints (``Annotated[T, "description"]``
        describes an argument) unless ``input_schema`` is given. A caller without every scope in
        ``scopes`` or below ``min_tier`` does not see it in ``tools/list``; calling it anyway, a
        missing scope is 403 insufficient_scope (OAuth step-up can grant it), a tier too low a
        tool result with ``isError`` that says which tier it needs (docs/protocol.md).
        """
        if callable(name):
            return self.tool()(name)

        def register(fn: Handler) -> Handler:
            schema, params, required = _schema(fn)
            if input_schema is not None:
                schema = input_schema
                required = frozenset(input_schema.get("required", ()))
            tool_name = name if isinstance(name, str) else fn.__name__
            self._check_tier(f"tool {tool_name!r}", min_tier)
            self.tools[tool_name] = ToolDef(
                tool_name,
                fn,
                description or inspect.getdoc(fn) or "",
                schema,
                frozenset(scopes),
                min_tier,
                params,
                required,
                annotations,
                any(
                    p.kind is inspect.Parameter.VAR_KEYWORD
                    for p in inspect.signature(fn).parameters.values()
                ),
            )
            self.changed("tools")
            return fn

        return register

    def resource(
        self,
        uri: str,
        *,
        name: str | None = None,
        description: str | None = None,
        mime_type: str = "text/plain",
        scopes: Iterable[str] = (),
        min_tier: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register a resource; ``scopes`` and ``min_tier`` as for a tool (a caller without them
        neither lists nor reads it)."""
        self._check_tier(f"resource {uri!r}", min_tier)

        def register(fn: Handler) -> Handler:
            self.resources[uri] = ResourceDef(
                uri,
                fn,
                name or fn.__name__,
                description or inspect.getdoc(fn) or "",
                mime_type,
                scopes=frozenset(scopes),
                min_tier=min_tier,
            )
            self.changed("resources")
            return fn

        return register

    def resource_template(
        self,
        uri_template: str,
        *,
        name: str | None = None,
        description: str | None = None,
        mime_type: str = "text/plain",
        scopes: Iterable[str] = (),
        min_tier: str | None = None,
    ) -> Callable[[Handler], Handler]:
        self._check_tier(f"resource template {uri_template!r}", min_tier)

        def register(fn: Handler) -> Handler:
            self.templates.append(
                ResourceDef(
                    uri_template,
                    fn,
                    name or fn.__name__,
                    description or inspect.getdoc(fn) or "",
                    mime_type,
                    _template_pattern(uri_template),
                    frozenset(scopes),
                    min_tier,
                )
            )
            self.changed("resources")
            return fn

        return register

    def prompt(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        scopes: Iterable[str] = (),
        min_tier: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register a prompt; ``scopes`` and ``min_tier`` as for a tool (a caller without them
        neither lists nor gets it)."""
        self._check_tier(f"prompt {name!r}", min_tier)

        def register(fn: Handler) -> Handler:
            sig = inspect.signature(fn)
            args = tuple(
                {"name": p.name, "required": p.default is inspect.Parameter.empty}
                for p in list(sig.parameters.values())[1:]
            )
            prompt_name = name or fn.__name__
            self.prompts[prompt_name] = PromptDef(
                prompt_name,
                fn,
                description or inspect.getdoc(fn) or "",
                args,
                frozenset(scopes),
                min_tier,
            )
            self.changed("prompts")
            return fn

        return register

    def completion(
        self, ref_type: Literal["ref/prompt", "ref/resource"], name: str
    ) -> Callable[[Handler], Handler]:
        """Complete an argument of a prompt (``name``) or a resource template (its URI template)."""

        def register(fn: Handler) -> Handler:
            self.completions[(ref_type, name)] = fn
            return fn

        return register

    def find_resource(self, uri: str) -> tuple[ResourceDef, dict[str, str]] | None:
        found = self.resources.get(uri)
        if found is not None:
            return found, {}
        for template in self.templates:
            assert template.template is not None
            match = template.template.match(uri)
            if match:
                return template, match.groupdict()
        return None
