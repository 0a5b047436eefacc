"""The 2026-07-28 header rules are pure functions of a request's headers and body: each case
here is decided without a server (the transport tests show them on the wire)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from server.mcp._jsonrpc import HEADER_MISMATCH, INVALID_PARAMS, UNSUPPORTED_VERSION
from server.mcp._stateless_rules import (
    META_CAPS,
    META_VERSION,
    RuleBroken,
    check_capabilities,
    check_method_headers,
    check_param_headers,
    check_version,
    header_value,
    is_stateless,
)

V = "2026-07-28"


def headers(**values: str) -> Any:
    table = {k.replace("_", "-").encode(): v for k, v in values.items()}
    return lambda name: table.get(name)


def test_the_era_is_told_by_meta_header_or_method() -> None:
    assert is_stateless({"method": "tools/list", "params": {"_meta": {META_VERSION: V}}}, None)
    assert is_stateless({"method": "tools/list", "params": {}}, V)
    assert is_stateless({"method": "server/discover"}, None)
    assert not is_stateless({"method": "tools/list", "params": {}}, "2025-06-18")


def test_the_version_is_in_meta_repeated_by_the_header_and_spoken_here() -> None:
    assert check_version({META_VERSION: V}, V) == V
    with pytest.raises(RuleBroken) as missing:
        check_version({}, V)
    assert missing.value.code == INVALID_PARAMS
    with pytest.raises(RuleBroken) as differs:
        check_version({META_VERSION: V}, "2025-06-18")
    assert differs.value.code == HEADER_MISMATCH and "'2025-06-18'" in differs.value.message
    with pytest.raises(RuleBroken) as unknown:
        check_version({META_VERSION: "2099-01-01"}, "2099-01-01")
    assert unknown.value.code == UNSUPPORTED_VERSION
    assert unknown.value.data["requested"] == "2099-01-01"


def test_a_request_declares_capabilities_a_notification_need_not() -> None:
    check_capabilities({"id": 1, "method": "tools/list"}, {META_CAPS: {}})
    check_capabilities({"method": "notifications/cancelled"}, {})
    with pytest.raises(RuleBroken) as exc:
        check_capabilities({"id": 1, "method": "tools/list"}, {})
    assert exc.value.code == INVALID_PARAMS


def test_method_and_name_headers_repeat_the_body() -> None:
    params = {"name": "echo"}
    check_method_headers("tools/call", params, headers(mcp_method="tools/call", mcp_name="echo"))
    with pytest.raises(RuleBroken) as method:
        check_method_headers("tools/call", params, headers(mcp_method="tools/list"))
    assert method.value.code == HEADER_MISMATCH
    with pytest.raises(RuleBroken) as name:
        check_method_headers("tools/call", params, headers(mcp_method="tools/call", mcp_name="x"))
    assert "Mcp-Name" in name.value.message


def test_param_headers_match_the_arguments_literally_or_in_base64() -> None:
    schema = {"properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}
    params = {"name": "t", "arguments": {"region": "eu-west"}}
    check_param_headers(schema, params, headers(mcp_param_region="eu-west"))
    encoded = "=?base64?" + base64.b64encode(b"eu-west").decode() + "?="
    check_param_headers(schema, params, headers(mcp_param_region=encoded))
    check_param_headers(None, params, headers())  # a tool this server does not have
    with pytest.raises(RuleBroken, match="needs the header Mcp-Param-Region"):
        check_param_headers(schema, params, headers())
    with pytest.raises(RuleBroken, match="must equal argument"):
        check_param_headers(schema, params, headers(mcp_param_region="us-east"))
    with pytest.raises(RuleBroken, match="was sent but argument"):
        check_param_headers(schema, {"arguments": {}}, headers(mcp_param_region="eu-west"))
    assert header_value("=?base64?!!?=") is None
