"""A tier refusal reaches the user in the MCP answer, and each user lists only what their tier and
scopes allow, with list_changed when the tier changes: driven by the official SDK client."""

from __future__ import annotations

from typing import Any

import httpx
import httpx2
import pytest
import trio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from server._introspection import StreamKind
from server._node import Node
from server.app._steward import Context, Steward
from tests.harness._pg import psql
from tests.harness._steward import McpClient, running_node, sign_in
from tests.harness._wait import wait_until

app = Steward("tier-test")


@app.tool(scopes={"mcp:tools"})
async def echo(ctx: Context, text: str) -> str:
    """Echo."""
    return text


@app.tool(scopes={"mcp:tools"}, min_tier="pro")
async def report(ctx: Context, topic: str) -> str:
    """A pro report."""
    return f"report on {topic}"


@app.prompt()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}"


@app.prompt(min_tier="enterprise")
async def board_memo(ctx: Context) -> str:
    return "for the board"


@app.resource("test://public")
async def public(ctx: Context) -> str:
    return "public"


@app.resource("test://ledger", min_tier="pro")
async def ledger(ctx: Context) -> str:
    return "the ledger"


async def test_a_free_user_reads_the_tier_sentence_and_lists_what_the_tier_allows(
    fresh_db: str,
) -> None:
    """The free user's call of a pro tool is a tool result with isError and Steward's sentence
    (not a 403 that sends the SDK into a step-up that cannot change a tier); the pro tool, the
    enterprise prompt and the pro resource are not in the free user's lists; reading or getting
    them anyway is -32003 naming the tier. After an operator's set-tier the user's open stream
    gets tools, prompts and resources list_changed, and the lists and the call follow."""
    async with running_node(fresh_db, app=app) as node:
        async with httpx.AsyncClient() as http:
            tokens = await sign_in(http, node, "alice")
        changed: list[str] = []
        arrived = trio.Event()

        async def on_message(message: Any) -> None:
            method = getattr(message, "method", None)
            if isinstance(method, str) and method.endswith("/list_changed"):
                changed.append(method)
                if len(changed) == 3:
                    arrived.set()

        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        with trio.fail_after(30):
            async with (
                httpx2.AsyncClient(headers=headers, timeout=30) as client,
                streamable_http_client(node.info.mcp_url, http_client=client) as (read, write, *_),
                ClientSession(read, write, message_handler=on_message) as session,
            ):
                await session.initialize()
                assert {t.name for t in (await session.list_tools()).tools} == {"echo"}
                assert {p.name for p in (await session.list_prompts()).prompts} == {"greet"}
                resources = await session.list_resources()
                assert {str(r.uri) for r in resources.resources} == {"test://public"}
                refused = await session.call_tool("report", {"topic": "q3"})
                assert refused.is_error is True
                assert refused.content[0].text == (  # type: ignore[union-attr]
                    "tool 'report' needs the pro tier or above; this account is free"
                )
                with pytest.raises(MCPError, match="needs the pro tier or above") as raised:
                    await session.read_resource("test://ledger")
                assert raised.value.error.code == -32003
                assert raised.value.error.data == {"requiredTier": "pro", "tier": "free"}
                with pytest.raises(MCPError, match="needs the enterprise tier or above"):
                    await session.get_prompt("board_memo", {})
                # the operator moves alice to pro: her open stream is told
                user_id = psql(fresh_db, "SELECT user_id FROM users WHERE user_id LIKE '%|alice'")
                await wait_for_get_stream(node)
                change = await node.sessions.set_tier(user_id, "pro")
                assert change is not None and change.after == "pro"
                await arrived.wait()
                assert sorted(changed) == [
                    "notifications/prompts/list_changed",
                    "notifications/resources/list_changed",
                    "notifications/tools/list_changed",
                ]
                assert {t.name for t in (await session.list_tools()).tools} == {"echo", "report"}
                resources = await session.list_resources()
                assert {str(r.uri) for r in resources.resources} == {
                    "test://public",
                    "test://ledger",
                }
                done = await session.call_tool("report", {"topic": "q3"})
                assert done.is_error is False
                assert done.content[0].text == "report on q3"  # type: ignore[union-attr]
        # the refusal is recorded as such in the usage events, the later call as ok
        query = "SELECT string_agg(outcome, ',' ORDER BY occurred_at) FROM usage_events WHERE name = 'report'"
        await wait_until(lambda: psql(fresh_db, query) == "forbidden,ok", every=0.05, what=query)


async def wait_for_get_stream(node: Node) -> None:
    """Until the SDK's standalone GET stream is open on the node (it opens it after
    ``initialize``, in the background)."""
    await wait_until(lambda: node.streams(kind=StreamKind.GET), what="a GET stream")


async def test_a_missing_scope_is_still_a_403_that_names_only_the_missing_scope(
    fresh_db: str,
) -> None:
    """OAuth scopes the token lacks stay a 403 insufficient_scope: the description names only the
    missing one; the challenge's scope lists held and missing (MCP-R25: a step-up keeps what
    was granted). A tool the token's scopes do not reach is not listed either."""
    async with running_node(fresh_db, app=app) as node, httpx.AsyncClient() as http:
        narrow = await sign_in(http, node, "bob", scope="mcp:resources")
        mcp = McpClient(http, node, narrow["access_token"])
        await mcp.initialize()
        listed = await mcp.post("tools/list")
        assert listed.json()["result"]["tools"] == []
        r = await mcp.post("tools/call", {"name": "echo", "arguments": {"text": "x"}})
        assert r.status_code == 403
        assert r.json() == {
            "error": "insufficient_scope",
            "error_description": "tool 'echo' needs the scopes mcp:tools",
        }
        challenge = r.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="mcp:resources mcp:tools"' in challenge


async def test_the_deprecated_transport_gives_the_same_tier_sentence(fresh_db: str) -> None:
    """The SDK's sse_client (2024-11-05): the same lists and the same isError result."""
    from mcp.client.sse import sse_client

    async with running_node(fresh_db, app=app) as node:
        async with httpx.AsyncClient() as http:
            tokens = await sign_in(http, node, "alice")
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        with trio.fail_after(30):
            async with (
                sse_client(f"{node.info.listen_url}/sse", headers=headers) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                assert {t.name for t in (await session.list_tools()).tools} == {"echo"}
                refused = await session.call_tool("report", {"topic": "q3"})
                assert refused.is_error is True
                assert refused.content[0].text == (  # type: ignore[union-attr]
                    "tool 'report' needs the pro tier or above; this account is free"
                )
