"""wire-types: the cost of parsing and serializing one tools/call with lean dicts vs mcp-types."""

from __future__ import annotations

import json
import timeit
from typing import Any

import mcp_types as t

RAW = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hello"}},
    }
).encode()
RESULT = {"content": [{"type": "text", "text": "hello"}], "isError": False}


def _lean_parse() -> None:
    message = json.loads(RAW)
    if not (
        isinstance(message, dict)
        and message.get("jsonrpc") == "2.0"
        and isinstance(message.get("method"), str)
    ):
        raise ValueError
    if not isinstance(message.get("params") or {}, dict):
        raise ValueError


def _typed_parse() -> None:
    t.CallToolRequest.model_validate_json(RAW)


def _lean_dump() -> None:
    json.dumps({"jsonrpc": "2.0", "id": 7, "result": RESULT}, separators=(",", ":"))


def _typed_dump() -> None:
    t.CallToolResult.model_validate(RESULT).model_dump_json(by_alias=True, exclude_none=True)


def run(number: int = 50_000) -> dict[str, Any]:
    def us(fn: Any) -> float:
        return round(min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6, 2)

    figures = {
        "parse_lean_us": us(_lean_parse),
        "parse_mcp_types_us": us(_typed_parse),
        "serialize_lean_us": us(_lean_dump),
        "serialize_mcp_types_us": us(_typed_dump),
    }
    return {"benchmark": "wire-types", **figures}
