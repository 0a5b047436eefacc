"""JSON-RPC 2.0 messages as plain dicts, parsed and checked in a few comparisons.

No validation framework runs per request: ``json.loads`` and the checks below cost about as much
as ``mcp-types``' pydantic parsing of the same body and allocate nothing besides the dict
(docs/protocol.md has the measurement). What Steward sends is validated against ``mcp-types`` in
the tests.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from server.http import contains_nul

__all__ = [
    "HEADER_MISMATCH",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "MISSING_CAPABILITY",
    "PARSE_ERROR",
    "REQUEST_CANCELLED",
    "REQUEST_TIMEOUT",
    "RESOURCE_NOT_FOUND",
    "UNSUPPORTED_VERSION",
    "UPSTREAM_UNAVAILABLE",
    "InvalidMessage",
    "Kind",
    "RpcError",
    "error_response",
    "kind_of",
    "notification",
    "parse_message",
    "request",
    "result_response",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002
UPSTREAM_UNAVAILABLE = -32002  # with data.retryable: docs/sessions.md names this code
REQUEST_CANCELLED = -32800
HEADER_MISMATCH = -32020  # 2026-07-28: a header and the body (or its _meta) disagree
REQUEST_TIMEOUT = -32001
TIER_REQUIRED = -32003  # a prompt or resource needs a higher tier: data names both tiers
MISSING_CAPABILITY = -32021  # 2026-07-28: the request needs a capability the client lacks
UNSUPPORTED_VERSION = -32022  # 2026-07-28: a version this server does not speak

Kind = Literal["request", "notification", "response"]


class RpcError(Exception):
    """A JSON-RPC error to answer a request with (``code``, ``message``, optional ``data``)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class InvalidMessage(RpcError):
    """A body that is not one well-formed JSON-RPC 2.0 message (HTTP 400, or 413 for size).

    ``request_id`` is the id when the message had a usable one, so the error can answer it.
    """

    def __init__(self, code: int, message: str, request_id: Any = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


def error_response(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_dict()}


def result_response(request_id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def notification(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def request(request_id: str | int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def kind_of(message: dict[str, Any]) -> Kind:
    """What a parsed message is; only valid on the output of ``parse_message``."""
    if "method" in message:
        return "request" if "id" in message else "notification"
    return "response"


def _refuse_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity: Python's json accepts them, JSON (RFC 8259) and PostgreSQL's
    jsonb do not."""
    msg = f"{name} is not JSON"
    raise ValueError(msg)


# one decoder for every message (``json.loads`` with an argument builds a new one per call)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _loads(body: bytes | str) -> Any:
    """``json.loads(body, parse_constant=_refuse_constant)``, on the shared decoder."""
    if isinstance(body, str):
        if body.startswith("\ufeff"):
            msg = "Unexpected UTF-8 BOM (decode using utf-8-sig)"
            raise json.JSONDecodeError(msg, body, 0)
        return _DECODER.decode(body)
    return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))


def parse_message(body: bytes | str) -> dict[str, Any]:
    """One JSON-RPC 2.0 message from a request body; ``params`` is always a dict afterwards.

    Raises:
        InvalidMessage: -32700 for invalid JSON (NaN and Infinity included); -32600 for a batch
            (not accepted since 2025-11-25), a wrong ``jsonrpc``, an id that is neither a string
            nor an integer, a method that is not a string, params that are not an object, a
            message that is neither a request, a notification nor a response, or one holding
            a NUL character (PostgreSQL, where messages are kept and relayed, cannot store it).
    """
    try:
        message = _loads(body)
    except (ValueError, RecursionError):
        raise InvalidMessage(PARSE_ERROR, "the body is not valid JSON") from None
    if type(message) is not dict:
        if type(message) is list:
            msg = "JSON-RPC batches are not accepted; send one message per request"
        else:
            msg = f"the body must be a JSON-RPC 2.0 object, not a JSON {type(message).__name__}"
        raise InvalidMessage(INVALID_REQUEST, msg)
    has_id = "id" in message
    request_id = message.get("id")
    bad_id = has_id and not (type(request_id) is str or type(request_id) is int)
    if bad_id and not (request_id is None and "error" in message):  # an error may carry id null
        msg = f"id must be a string or an integer, got {json.dumps(request_id)[:40]}"
        raise InvalidMessage(INVALID_REQUEST, msg)
    if message.get("jsonrpc") != "2.0":
        msg = f'jsonrpc must be "2.0", got {json.dumps(message.get("jsonrpc"))[:40]}'
        raise InvalidMessage(INVALID_REQUEST, msg, request_id)
    raw = body if isinstance(body, bytes) else body.encode()
    if b"\\u0000" in raw and contains_nul(message):  # the walk only for the rare suspect
        msg = "a message must not hold a NUL character (\\u0000)"
        raise InvalidMessage(INVALID_REQUEST, msg, request_id)
    if "method" in message:
        method = message["method"]
        if type(method) is not str or not method:
            raise InvalidMessage(INVALID_REQUEST, "method must be a non-empty string", request_id)
        params = message.get("params")
        if params is None:
            message["params"] = {}
        elif type(params) is not dict:
            msg = f"params of {method!r} must be an object"
            raise InvalidMessage(INVALID_REQUEST, msg, request_id)
        return message
    if not has_id or ("result" in message) == ("error" in message):
        msg = (
            "a message needs a method (request or notification), or an id with a result or an error"
        )
        raise InvalidMessage(INVALID_REQUEST, msg, request_id)
    return message
