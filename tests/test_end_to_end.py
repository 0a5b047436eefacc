"""A user signs in through the development IdP and uses MCP over real HTTP against real PostgreSQL."""

from __future__ import annotations

import attrs
import httpx

from tests.harness._steward import McpClient, running_node, sign_in, sse_messages


async def test_sign_in_and_call_tools(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "bob")
        assert tokens["token_type"] == "Bearer" and len(tokens["access_token"]) >= 43
        mcp = McpClient(http, node, tokens["access_token"])
        init = await mcp.initialize()
        assert init["protocolVersion"] == "2025-11-25"
        listed = await mcp.call("tools/list")
        assert {"echo", "whoami", "count", "report"} <= {
            t["name"] for t in listed["result"]["tools"]
        }
        echoed = await mcp.call("tools/call", {"name": "echo", "arguments": {"text": "hi"}})
        assert echoed["result"]["content"] == [{"type": "text", "text": "hi"}]
        who = await mcp.call("tools/call", {"name": "whoami", "arguments": {}})
        assert who["result"]["structuredContent"]["tier"] == "pro"
        report = await mcp.call("tools/call", {"name": "report", "arguments": {"topic": "x"}})
        assert report["result"]["isError"] is False


async def test_progress_turns_the_reply_into_an_sse_stream(fresh_db: str) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "alice")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        r = await mcp.post(
            "tools/call",
            {"name": "count", "arguments": {"to": 2}, "_meta": {"progressToken": "p1"}},
        )
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        messages = sse_messages(r.text)
        progress = [m for m in messages if m.get("method") == "notifications/progress"]
        assert [p["params"]["progress"] for p in progress] == [1, 2]
        assert messages[-1]["result"]["content"][0]["text"] == "counted to 2"


async def test_requests_without_a_valid_token_get_a_challenge(fresh_db: str) -> None:
    """MCP-R18, R21, R23: every request needs a valid token; the 401 points at the metadata."""
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        r = await http.post(
            node.info.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"accept": "application/json, text/event-stream"},
        )
        assert r.status_code == 401
        challenge = r.headers["www-authenticate"]
        assert (
            challenge.startswith("Bearer ")
            and "resource_metadata=" in challenge
            and 'scope="' in challenge
        )
        meta = (
            await http.get(f"{node.info.base_url}/.well-known/oauth-protected-resource/mcp")
        ).json()
        assert meta["resource"] == node.info.mcp_url and meta["authorization_servers"] == [
            node.info.issuer_url
        ]
        bad = await http.post(node.info.mcp_url, json={}, headers={"authorization": "Bearer nope"})
        assert bad.status_code == 401


async def test_a_tool_reaches_the_upstream_token_and_a_dead_one_is_a_retryable_error(
    fresh_db: str,
) -> None:
    async with running_node(fresh_db) as node, httpx.AsyncClient() as http:
        tokens = await sign_in(http, node, "bob")
        mcp = McpClient(http, node, tokens["access_token"])
        await mcp.initialize()
        ok = await mcp.call("tools/call", {"name": "profile", "arguments": {}})
        assert ok["result"]["structuredContent"]["upstream_token_length"] >= 32
        session = node.sessions.live()[0]
        assert session._keeper is not None and session._keeper.tokens is not None
        session._keeper.tokens = attrs.evolve(session._keeper.tokens, expires_at=0.0)
        dead = await mcp.call("tools/call", {"name": "profile", "arguments": {}})
        assert dead["error"]["code"] == -32002 and dead["error"]["data"]["retryable"] is True
