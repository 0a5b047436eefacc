"""A POSTed JSON-RPC message, read within the body limit."""

from __future__ import annotations

from typing import Any

from server.http import BodyTooLarge, Receive, read_body
from server.mcp._exchange import Reply, rpc_reply
from server.mcp._jsonrpc import INVALID_REQUEST, InvalidMessage, error_response, parse_message

__all__ = ["read_message"]


async def read_message(receive: Receive, max_body: int) -> dict[str, Any]:
    """The request's body as one JSON-RPC message: 413 past ``max_body``, 400 if malformed."""
    try:
        body = await read_body(receive, max_body)
    except BodyTooLarge:
        msg = f"the body exceeds max_body_bytes ({max_body} bytes)"
        raise rpc_reply(413, None, INVALID_REQUEST, msg) from None
    try:
        return parse_message(body)
    except InvalidMessage as exc:
        raise Reply(400, error_response(exc.request_id, exc)) from None
