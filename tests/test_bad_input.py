"""Input that PostgreSQL or the parsers cannot take is a clear 4xx at the edge, never a 500 (the
cases the fuzzer in tests/fuzz found, kept as plain regression tests)."""

from __future__ import annotations

import httpx

from server._app import Context, Steward
from tests.harness._pg import psql
from tests.harness._steward import REDIRECT_URI, McpClient, register, running_node, sign_in


async def test_a_nul_character_in_any_input_is_a_400(fresh_db: str) -> None:
    """PostgreSQL text and jsonb cannot hold NUL: a query string, form or JSON value with one is
    refused before it reaches a query."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        base = node.info.base_url
        tokens = await sign_in(http, node, "alice")
        client_id = await register(http, node)
        before = psql(fresh_db, "SELECT count(*) FROM oauth_clients")
        r = await http.get(f"{base}/authorize", params={"client_id": "a\x00b"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
        r = await http.post(
            f"{base}/token", data={"grant_type": "refresh_token", "client_id": client_id + "\x00"}
        )
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
        r = await http.post(
            f"{base}/register", json={"redirect_uris": [REDIRECT_URI], "client_name": "\x00"}
        )
        assert r.status_code == 400 and r.json()["error"] == "invalid_client_metadata", r.text
        assert psql(fresh_db, "SELECT count(*) FROM oauth_clients") == before
        mcp = McpClient(http, node, tokens["access_token"])
        r = await http.post(
            f"{base}/messages?session_id=%00",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers=mcp.headers(),
        )
        assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
        r = await mcp.post(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "\x00"}},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == -32600, r.text
        assert psql(fresh_db, "SELECT count(*) FROM transport_sessions") == "0"


async def test_a_cancellation_naming_an_id_no_request_can_have_is_accepted_and_ignored(
    fresh_db: str,
) -> None:
    """notifications/cancelled with a list or object as requestId: 202, like any unknown id."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        for request_id in ([], {"a": 1}, None, 1.5):
            r = await http.post(
                mcp.url,
                json={
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": request_id},
                },
                headers=mcp.headers(),
            )
            assert r.status_code == 202, r.text
        assert (await mcp.call("ping"))["result"] == {}


async def test_a_reply_holding_what_postgresql_cannot_store_is_a_400(fresh_db: str) -> None:
    """A client's answer to an unknown server request is relayed through the outbox (jsonb):
    NaN, Infinity and NUL are refused when the message is parsed, not by the database (a 500)."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        for body, code in (
            (b'{"jsonrpc": "2.0", "id": 7, "result": [Infinity]}', -32700),
            (b'{"jsonrpc": "2.0", "id": 7, "result": {"x": NaN}}', -32700),
            (b'{"jsonrpc": "2.0", "id": 7, "result": {"x": "\\u0000"}}', -32600),
        ):
            r = await http.post(mcp.url, content=body, headers=mcp.headers())
            assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
        ok = b'{"jsonrpc": "2.0", "id": 7, "result": {"x": "\\\\u0000"}}'  # an escaped backslash
        assert (await http.post(mcp.url, content=ok, headers=mcp.headers())).status_code == 202


broken = Steward("bad-input-test")


@broken.prompt()
async def greet(ctx: Context, name: str) -> str:
    return f"hello {name}"


@broken.completion("ref/prompt", "greet")
async def complete_name(
    ctx: Context, argument: str, value: str, context: dict[str, object]
) -> list[str]:
    return [n for n in ("alice", "bob") if n.startswith(value)]


@broken.resource("bad://resource")
async def failing(ctx: Context) -> str:
    raise RuntimeError("a bug in the application")


async def test_completion_params_of_the_wrong_type_and_failing_handlers_are_jsonrpc_errors(
    fresh_db: str,
) -> None:
    """completion/complete with a list as ref.name or a number as argument.value is -32602, and
    a resource whose function raises is -32603: answers to the request, not HTTP 500s."""
    async with running_node(fresh_db, broken) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        for ref, argument in (
            ({"type": "ref/prompt", "name": []}, {"name": "name", "value": "a"}),
            ({"type": "ref/prompt", "name": "greet"}, {"name": "name", "value": 5}),
            ({"type": "ref/prompt", "name": "greet"}, {"name": {}, "value": "a"}),
        ):
            answer = await mcp.call("completion/complete", {"ref": ref, "argument": argument})
            assert answer["error"]["code"] == -32602, answer
        ok = await mcp.call(
            "completion/complete",
            {
                "ref": {"type": "ref/prompt", "name": "greet"},
                "argument": {"name": "name", "value": "a"},
            },
        )
        assert ok["result"]["completion"]["values"] == ["alice"]
        failed = await mcp.call("resources/read", {"uri": "bad://resource"})
        assert failed["error"] == {"code": -32603, "message": "resources/read failed: RuntimeError"}
