"""The JSON-RPC parser: what it accepts agrees with mcp-types, what it refuses gets an error naming
the rule, and what Steward builds validates against mcp-types."""

from __future__ import annotations

import json
from typing import Any

import mcp_types as t
import pytest
from pydantic import TypeAdapter

from server.mcp._jsonrpc import (
    InvalidMessage,
    RpcError,
    error_response,
    kind_of,
    notification,
    parse_message,
    request,
    result_response,
)

MESSAGE: TypeAdapter[Any] = TypeAdapter(t.JSONRPCMessage)

VALID = [
    ({"jsonrpc": "2.0", "id": 1, "method": "ping"}, "request"),
    ({"jsonrpc": "2.0", "id": "a", "method": "tools/list", "params": {"cursor": "x"}}, "request"),
    ({"jsonrpc": "2.0", "method": "notifications/initialized"}, "notification"),
    ({"jsonrpc": "2.0", "id": 4, "result": {}}, "response"),
    ({"jsonrpc": "2.0", "id": 5, "error": {"code": -1, "message": "no"}}, "response"),
]


@pytest.mark.parametrize(("message", "kind"), VALID)
def test_valid_messages_parse_as_mcp_types_does(message: dict[str, Any], kind: str) -> None:
    body = json.dumps(message).encode()
    parsed = parse_message(body)
    assert kind_of(parsed) == kind
    MESSAGE.validate_json(body)  # the official models accept it too
    if kind != "response":
        assert isinstance(parsed["params"], dict)


INVALID = [
    (b"{", -32700, "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, -32700, "not valid JSON"),
    (b"[]", -32600, "batches are not accepted"),
    (b'"ping"', -32600, "not a JSON str"),
    (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', -32600, 'jsonrpc must be "2.0"'),
    (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', -32600, "id must be a string"),
    (b'{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}', -32600, "id must be a string"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": 7}', -32600, "method must be a non-empty string"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1]}', -32600, "must be an object"),
    (b'{"jsonrpc": "2.0", "id": 1}', -32600, "needs a method"),
    (b'{"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}}', -32600, "needs a method"),
    (b'{"jsonrpc": "2.0", "id": 1, "result": [Infinity]}', -32700, "not valid JSON"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"a": NaN}}', -32700, "not valid"),
    (b'{"jsonrpc": "2.0", "id": 1, "result": {"a": "\\u0000"}}', -32600, "NUL character"),
    (b'{"jsonrpc": "2.0", "method": "x", "params": {"\\u0000": 1}}', -32600, "NUL character"),
]


@pytest.mark.parametrize(("body", "code", "words"), INVALID)
def test_invalid_messages_are_refused_with_the_rule(body: bytes, code: int, words: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_message(body)
    assert info.value.code == code
    assert words in info.value.message


def test_an_invalid_message_keeps_its_id_when_it_has_a_usable_one() -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_message(b'{"jsonrpc": "2.0", "id": 12, "method": "x", "params": 3}')
    assert info.value.request_id == 12
    t.JSONRPCError.model_validate(error_response(info.value.request_id, info.value))


def test_what_steward_builds_validates_against_mcp_types() -> None:
    t.JSONRPCRequest.model_validate(request("s-1", "sampling/createMessage", {"maxTokens": 1}))
    t.JSONRPCNotification.model_validate(notification("notifications/progress", {"p": 1}))
    t.JSONRPCResponse.model_validate(result_response(3, {}))
    error = error_response(3, RpcError(-32602, "bad", {"argument": "x"}))
    t.JSONRPCError.model_validate(error)
    assert error["error"] == {"code": -32602, "message": "bad", "data": {"argument": "x"}}
