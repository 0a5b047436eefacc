"""The 2026-07-28 header rules, as pure functions of the request's headers and body.

Each returns nothing when the request keeps the rule and raises ``RuleBroken`` (the JSON-RPC code,
the message, optional data) when it does not; the router turns that into a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from typing import Any

from server.mcp._dispatch import SUPPORTED_VERSIONS, V2026
from server.mcp._jsonrpc import HEADER_MISMATCH, INVALID_PARAMS, UNSUPPORTED_VERSION

__all__ = [
    "META_CAPS",
    "META_LOG_LEVEL",
    "META_VERSION",
    "RuleBroken",
    "check_capabilities",
    "check_method_headers",
    "check_param_headers",
    "check_version",
    "header_value",
    "is_stateless",
]

META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_CAPS = "io.modelcontextprotocol/clientCapabilities"
_ONLY_2026 = frozenset({V2026})  # versions that exist only in the stateless era
_METHODS_2026 = frozenset({"server/discover", "subscriptions/listen"})
_NAMED = {"tools/call": "name", "resources/read": "uri", "prompts/get": "name"}

Header = Callable[[bytes], str | None]  # a request header's value by its lower-case name


class RuleBroken(Exception):
    """A 2026-07-28 request broke a header rule: the JSON-RPC code, the message, the data."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def is_stateless(message: Mapping[str, Any], version_header: str | None) -> bool:
    """Whether a POSTed message belongs to the 2026-07-28 era (MCP-R17): its ``_meta`` names a
    protocol version, its header names a version of that era only, or its method exists only
    there."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return (
        (isinstance(meta, dict) and META_VERSION in meta)
        or version_header in _ONLY_2026
        or message.get("method") in _METHODS_2026
    )


def check_version(meta: Any, version_header: str | None) -> str:
    """The request's protocol version: ``_meta`` names it, the header repeats it, and this
    server speaks it."""
    if not isinstance(meta, dict) or META_VERSION not in meta:
        raise RuleBroken(
            INVALID_PARAMS, f"a {V2026} message carries params._meta with {META_VERSION!r}"
        )
    version = meta[META_VERSION]
    if version_header != version:
        msg = f"the MCP-Protocol-Version header ({version_header!r}) must equal _meta's protocol version ({version!r})"
        raise RuleBroken(HEADER_MISMATCH, msg)
    if version not in SUPPORTED_VERSIONS:
        data = {"supported": list(SUPPORTED_VERSIONS), "requested": version}
        raise RuleBroken(UNSUPPORTED_VERSION, f"unsupported protocol version {version!r}", data)
    return str(version)


def check_capabilities(message: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """A request (not a notification nor a response) declares the client's capabilities."""
    if "id" in message and "method" in message and not isinstance(meta.get(META_CAPS), dict):
        raise RuleBroken(
            INVALID_PARAMS, f"a {V2026} request carries params._meta with {META_CAPS!r}"
        )


def check_method_headers(method: str, params: Mapping[str, Any], header: Header) -> None:
    """``Mcp-Method`` repeats the body's method, and ``Mcp-Name`` the tool, resource or prompt
    it names."""
    sent_method = (header(b"mcp-method") or "").strip() or None
    if sent_method != method:
        msg = f"the Mcp-Method header ({sent_method!r}) must equal the body's method ({method!r})"
        raise RuleBroken(HEADER_MISMATCH, msg)
    name_key = _NAMED.get(method)
    if name_key is not None:
        sent_name = (header(b"mcp-name") or "").strip() or None
        name = params.get(name_key)
        if sent_name != name:
            msg = f"the Mcp-Name header ({sent_name!r}) must equal the body's {name_key} ({name!r})"
            raise RuleBroken(HEADER_MISMATCH, msg)


def check_param_headers(
    input_schema: Mapping[str, Any] | None, params: Mapping[str, Any], header: Header
) -> None:
    """SEP-2243: an argument whose schema names an ``x-mcp-header`` travels in
    ``Mcp-Param-<name>`` too (literal, or ``=?base64?…?=``) and must equal the body.
    ``input_schema``: the called tool's, None for a tool this server does not have."""
    if input_schema is None:
        return
    arguments = params.get("arguments")
    arguments = arguments if isinstance(arguments, dict) else {}
    for prop, schema in (input_schema.get("properties") or {}).items():
        name = schema.get("x-mcp-header") if isinstance(schema, dict) else None
        if not isinstance(name, str):
            continue
        sent = header(b"mcp-param-" + name.lower().encode("latin-1"))
        value = arguments.get(prop)
        if value is None:
            if sent is not None:
                raise RuleBroken(
                    HEADER_MISMATCH, f"Mcp-Param-{name} was sent but argument {prop!r} was not"
                )
            continue
        if sent is None:
            raise RuleBroken(
                HEADER_MISMATCH, f"argument {prop!r} needs the header Mcp-Param-{name}"
            )
        decoded = header_value(sent.strip())
        if decoded is None:
            raise RuleBroken(
                HEADER_MISMATCH, f"Mcp-Param-{name} is not valid =?base64?...?= encoding"
            )
        expected = json.dumps(value) if isinstance(value, bool) else str(value)
        if decoded != expected:
            msg = f"Mcp-Param-{name} ({decoded!r}) must equal argument {prop!r} ({expected!r})"
            raise RuleBroken(HEADER_MISMATCH, msg)


def header_value(raw: str) -> str | None:
    """A header value as sent: ``=?base64?…?=`` decoded strictly, anything else literally."""
    if not (raw.startswith("=?base64?") and raw.endswith("?=")):
        return raw
    try:
        return base64.b64decode(raw[9:-2], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
