"""Small ASGI helpers shared by Steward's endpoints: bodies with a bound, JSON, forms, redirects."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

__all__ = [
    "BodyTooLarge",
    "Headers",
    "InvalidInput",
    "Receive",
    "Scope",
    "Send",
    "contains_nul",
    "form",
    "header",
    "lifespan",
    "parse_json",
    "parse_storable_json",
    "query",
    "read_body",
    "redirect",
    "send_html",
    "send_json",
    "send_response",
    "unavailable",
    "unstorable",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

SECURITY_HEADERS: Headers = [
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
]


UNAVAILABLE_RETRY_AFTER = 5  # seconds: the Retry-After of a 503 for an unreachable database


def unavailable(
    description: str = "the database is unreachable; retry shortly",
) -> tuple[dict[str, str], Headers]:
    """The one answer to ``StoreUnavailable`` on every endpoint (with status 503): the body
    and the ``Retry-After`` header. docs/store.md says what the client may assume."""
    body = {"error": "temporarily_unavailable", "error_description": description}
    return body, [(b"retry-after", str(UNAVAILABLE_RETRY_AFTER).encode())]


class BodyTooLarge(Exception):
    """The request body is larger than the endpoint accepts (answer 413)."""


class InvalidInput(ValueError):
    """Request input that no endpoint can take (answer 400): a NUL character, which PostgreSQL
    text and jsonb cannot hold, in a query string or form field."""


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer an ASGI lifespan conversation: nothing to start or stop beyond the supervision tree."""
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (name in lower case), decoded as latin-1."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def query(scope: Scope) -> dict[str, str]:
    """The query string's parameters; a repeated one keeps its last value.

    Raises:
        InvalidInput: a name or value holds a NUL character.
    """
    raw = scope.get("query_string", b"").decode("latin-1")
    return _without_nul(dict(parse_qsl(raw, keep_blank_values=True)), "the query string")


def contains_nul(value: Any) -> bool:
    """Whether a parsed JSON value holds a NUL character in any string, key or value."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable(value: Any) -> str | None:
    """What in a parsed JSON value PostgreSQL text and jsonb cannot hold (a NUL character, a
    lone UTF-16 surrogate such as ``"\\ud800"``), or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "a NUL character"
            if _SURROGATE.search(item):
                return "a lone UTF-16 surrogate"
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _without_nul(fields: dict[str, str], where: str) -> dict[str, str]:
    if contains_nul(fields):
        msg = f"{where} holds a NUL character"
        raise InvalidInput(msg)
    return fields


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_json(raw: bytes | str) -> Any:
    """``json.loads``, with nesting too deep to parse refused as ValueError like any bad JSON
    (``json.loads`` raises RecursionError for it)."""
    try:
        return json.loads(raw)
    except RecursionError:
        msg = "the JSON is nested too deeply"
        raise ValueError(msg) from None


def _refuse_constant(name: str) -> Any:
    msg = f"the JSON holds {name}, which RFC 8259 does not allow"
    raise ValueError(msg)


def parse_storable_json(raw: bytes | str) -> Any:
    """JSON (RFC 8259) that PostgreSQL can store: ``NaN``, ``Infinity``, NUL characters and lone
    surrogates, which Python's ``json`` accepts, are refused.

    Raises:
        ValueError: the text is not JSON, nests too deeply, or holds one of those; the message
            names which.
    """
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        msg = "the JSON is nested too deeply"
        raise ValueError(msg) from None
    except ValueError as exc:
        if str(exc).startswith("the JSON holds"):
            raise
        msg = "the body is not valid JSON"
        raise ValueError(msg) from None
    problem = unstorable(value)
    if problem is not None:
        msg = f"the JSON holds {problem}"
        raise ValueError(msg)
    return value


def form(body: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body; a repeated field keeps its first value.

    Raises:
        InvalidInput: a name or value holds a NUL character.
    """
    out: dict[str, str] = {}
    for key, value in parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True):
        out.setdefault(key, value)
    return _without_nul(out, "the form")


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# one encoder for every JSON answer (``json.dumps`` with an argument builds a new one per call)
_COMPACT = json.JSONEncoder(separators=(",", ":"))


async def send_json(
    send: Send, status: int, payload: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send_response(
        send,
        status,
        _COMPACT.encode(payload).encode(),
        b"application/json",
        headers,
    )


async def send_html(
    send: Send, status: int, html: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    frame = [
        (b"x-frame-options", b"DENY"),
        (
            b"content-security-policy",
            # this server's own style sheet and icon (server/http/_static.py), no inline style
            b"frame-ancestors 'none'; default-src 'self'; style-src 'self'; base-uri 'none'",
        ),
    ]
    await send_response(
        send, status, html.encode(), b"text/html; charset=utf-8", [*frame, *headers]
    )


async def redirect(
    send: Send,
    location: str,
    params: dict[str, str] | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    if params:
        location = f"{location}{'&' if '?' in location else '?'}{urlencode(params)}"
    await send_response(send, 302, b"", b"text/plain", [(b"location", location.encode()), *headers])
